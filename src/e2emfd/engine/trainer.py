"""One training loop for fusion-only, detection-only and joint E2E-MFD training.

Read top to bottom: set-up (device, seed, data, model, optimiser, balancer, resume), then
the loop (batch -> forward -> per-task losses -> balanced backward -> clip -> step), with
logging, periodic evaluation and atomic checkpoints. ``torchrun`` runs the same code on K
processes with DistributedDataParallel.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader
from tqdm import tqdm

from e2emfd.config import Config, config_to_dict, save_config
from e2emfd.data import build_dataset, build_transforms, make_collate
from e2emfd.engine import checkpoint as ckpt
from e2emfd.engine import run_dir
from e2emfd.engine.distributed import (
    any_rank,
    barrier,
    init_distributed,
    shutdown_distributed,
)
from e2emfd.engine.evaluate import evaluate
from e2emfd.engine.optim import build_optimizer, build_scheduler
from e2emfd.engine.runtime import autocast_context, move_batch, resolve_device, seed_everything
from e2emfd.engine.sampler import TrainSampler
from e2emfd.engine.unused_parameters import UnusedParameters, prepare_for_ddp, zero_weighted
from e2emfd.models import build_model
from e2emfd.mtl import TaskBalancer, allreduce_mean, average_gradients
from e2emfd.utils import results

CHECKPOINT_NAME = "checkpoint_last.pt"


class NonFiniteLossError(RuntimeError):
    """Too many consecutive steps with a NaN/inf loss or gradient."""


@dataclass
class TrainResult:
    output_dir: Path
    step: int
    checkpoint: Path
    evaluations: list[dict] = field(default_factory=list)


def training_tasks(cfg: Config, model_tasks: tuple[str, ...]) -> tuple[str, ...]:
    wanted = {"joint": ("detection", "fusion"), "fusion": ("fusion",), "detection": ("detection",)}
    if cfg.train.task not in wanted:
        raise ValueError(f"train.task must be joint, fusion or detection, got {cfg.train.task!r}")
    missing = [t for t in wanted[cfg.train.task] if t not in model_tasks]
    if missing:
        raise ValueError(
            f"train.task={cfg.train.task} needs the {missing[0]} head: "
            f"set model.{missing[0]}.enabled=true"
        )
    return wanted[cfg.train.task]


class JsonlLog:
    """Append-only JSON-lines file (train_log.jsonl, metrics.jsonl) for plots and reports;
    a non-finite value (an AP with no ground truth) is written as null."""

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, record: dict) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(results.dumps(record) + "\n")


def _all_finite(values: list[torch.Tensor], distributed: bool) -> bool:
    """One flag for every rank: a step is skipped everywhere or nowhere."""
    flag = torch.stack([torch.isfinite(v.detach().float()).all() for v in values]).all().float()
    if distributed:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MIN)
    return bool(flag.item())


def train(
    cfg: Config,
    resume: bool = False,
    progress: bool = True,
    time_budget_s: float | None = None,
    overwrite: bool = False,
) -> TrainResult:
    """Train the model a config describes; write checkpoints, logs, evaluations and the
    resolved config under ``cfg.output_dir``. ``resume`` continues from its last
    checkpoint exactly. ``time_budget_s`` stops early (checkpointing) when spent.
    ``cfg.output_dir`` must be new or empty unless ``resume`` or ``overwrite`` (which
    deletes the files of the run it holds first)."""
    # ---------------------------------------------------------------- set-up
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(cfg.train.device, local_rank, "train.device")
    dist = init_distributed(device.type)
    out_dir = Path(cfg.output_dir)
    run_dir.check_output_dir(out_dir, resume, overwrite)
    barrier()  # every process has looked at the folder before the main one writes to it
    seed_everything(cfg.seed, cfg.train.deterministic)

    train_set = build_dataset(
        cfg.data, cfg.data.train_split, build_transforms(cfg.data, train=True)
    )
    test_set = None
    if cfg.data.test_split and cfg.train.eval_every >= 0:
        test_set = build_dataset(
            cfg.data, cfg.data.test_split, build_transforms(cfg.data, train=False)
        )

    if cfg.model.detection.enabled and cfg.model.detection.num_classes != len(train_set.classes):
        raise ValueError(
            f"model.detection.num_classes is {cfg.model.detection.num_classes} but the data has "
            f"{len(train_set.classes)} classes ({', '.join(train_set.classes)}); set them equal"
        )
    model = build_model(cfg.model).to(device)
    if dist.enabled and device.type == "cuda":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    tasks = training_tasks(cfg, model.tasks)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train)

    start_step, bad_steps = 0, 0
    checkpoint_path = out_dir / CHECKPOINT_NAME
    if resume and checkpoint_path.is_file():
        state = ckpt.load_checkpoint(checkpoint_path, map_location="cpu")
        mismatches = ckpt.config_mismatches(state["config"], cfg, "model")
        if mismatches:
            raise ValueError(
                f"{checkpoint_path}: written with a different model config: "
                + "; ".join(mismatches)
            )
        ckpt.load_model_state(model, state["model"], checkpoint_path)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        ckpt.set_rng_state(state["rng"])
        start_step, bad_steps = int(state["step"]), int(state.get("bad_steps", 0))
    elif resume and dist.is_main:
        warnings.warn(
            f"{checkpoint_path}: no checkpoint to resume from; starting fresh", stacklevel=2
        )
    if start_step == 0 and cfg.model.init_from:
        # every rank loads the same file, so the processes start from the same weights
        warm = ckpt.init_from_checkpoint(model, cfg.model.init_from)
        if dist.is_main:
            print(warm.summary())

    net = model
    unused = UnusedParameters()
    if dist.enabled:
        unused = prepare_for_ddp(model, tasks, cfg.model)
        net = DistributedDataParallel(
            model,
            device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=unused.find_unused,
        )
    reduce_fn = allreduce_mean() if dist.enabled else None
    mtl = cfg.train.mtl if len(tasks) > 1 else "sum"
    balancer = TaskBalancer(
        mtl,
        model.shared_parameters(),
        cfg.train.gmta_every,
        reduce_fn,
        {"scale_mode": cfg.train.gmta_scale} if mtl == "gmta" else None,
    )
    head_params = [p for t in tasks for p in model.task_parameters()[t]]

    sampler = TrainSampler(
        len(train_set), cfg.train.batch_size, cfg.seed, dist.rank, dist.world_size, start_step
    )
    loader = DataLoader(
        train_set,
        batch_size=cfg.train.batch_size,
        sampler=sampler,
        num_workers=cfg.data.num_workers,
        collate_fn=make_collate(cfg.model.size_divisor),
        pin_memory=device.type == "cuda",
        persistent_workers=cfg.data.num_workers > 0,
    )

    # Written only now, so that a run that fails to set up leaves its folder as it was.
    if dist.is_main:
        if overwrite:
            run_dir.remove_run_files(out_dir)
        elif resume:
            run_dir.tidy_for_resume(out_dir, start_step, cfg.train.max_iters)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")

    writer = None
    if dist.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=start_step)
    train_log = JsonlLog(out_dir / "train_log.jsonl", dist.is_main)
    metrics_log = JsonlLog(out_dir / "metrics.jsonl", dist.is_main)
    amp = cfg.train.amp and device.type == "cuda"

    def save(step: int) -> None:
        if dist.is_main:
            ckpt.save_checkpoint(
                checkpoint_path,
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(),
                    "step": step,
                    "bad_steps": bad_steps,
                    "rng": ckpt.rng_state(),
                    "config": config_to_dict(cfg),
                },
            )
        barrier()

    evaluations: list[dict] = []

    def run_eval(step: int) -> None:
        if dist.is_main and test_set is not None:
            result = evaluate(
                model,
                test_set,
                device,
                train_set.classes,
                cfg.train.batch_size,
                amp,
                conventions=("python",),
                progress=False,
            )
            result["step"] = step
            evaluations.append(result)
            metrics_log.write(result)
            for name, value in _flat_scalars(result).items():
                writer.add_scalar(f"eval/{name}", value, step)
        barrier()

    # ---------------------------------------------------------------- the loop
    model.train()
    bar = tqdm(
        total=cfg.train.max_iters,
        initial=start_step,
        disable=not (progress and dist.is_main),
        desc=f"train {cfg.train.task}",
        dynamic_ncols=True,
    )
    started = time.monotonic()
    step = start_step
    data = iter(loader)
    while step < cfg.train.max_iters:
        batch = move_batch(next(data), device)
        # On balancing steps under DDP the per-task gradients are averaged by the balancer
        # (reduce_fn) before alignment; DDP's own all-reduce would mix the tasks, so it is
        # switched off for the whole step (forward included: DDP arms its hooks there).
        balancing = balancer.balances(step)
        balancing_ddp = dist.enabled and balancing
        with net.no_sync() if balancing_ddp else contextlib.nullcontext():
            with autocast_context(device, amp):
                # Detached feature leaves let the balancer free each head's graph early;
                # DDP joins all outputs in one autograd node, so it keeps the direct path.
                out = net(batch, tasks, feature_leaves=balancing and not dist.enabled)
            losses = {t: out["losses"][t].float() for t in tasks}
            if unused.keep_in_graph:  # a pyramid level no box of this batch maps to
                losses["detection"] = losses["detection"] + zero_weighted(unused.keep_in_graph)
            # Under DDP, a parameter that a balancing step (run under no_sync) used but this
            # step does not must hold a zero gradient, not None: DDP counts the no_sync step
            # into this step's window and refuses to all-reduce an undefined gradient.
            optimizer.zero_grad(set_to_none=not dist.enabled)
            finite = _all_finite(list(losses.values()), dist.enabled)
            if finite:
                stats = balancer.backward(losses, step, out.get("features"))
        if not finite:
            bad_steps += 1
            _report_bad_step(step, losses, bad_steps, cfg.train.max_bad_steps, train_log)
            step += 1
            scheduler.step()
            bar.update(1)
            continue
        if balancing_ddp:
            average_gradients(head_params, reduce_fn)
        params = [p for p in model.parameters() if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_grad or float("inf"))
        if not _all_finite([grad_norm], dist.enabled):
            bad_steps += 1
            _report_bad_step(
                step, {"grad_norm": grad_norm}, bad_steps, cfg.train.max_bad_steps, train_log
            )
            optimizer.zero_grad(set_to_none=True)
            step += 1
            scheduler.step()
            bar.update(1)
            continue
        bad_steps = 0
        optimizer.step()
        scheduler.step()
        step += 1

        # ------------------------------------------------------------ bookkeeping
        if stats or step % cfg.train.log_every == 0 or step == cfg.train.max_iters:
            record = {
                "step": step,
                "lr": optimizer.param_groups[0]["lr"],
                "grad_norm": float(grad_norm),
            }
            named = {f"loss_{t}": v for t, v in losses.items()} | out["terms"]
            record.update(_mean_over_ranks(named, dist.enabled))
            record.update({f"mtl/{k}": v for k, v in stats.items()})
            train_log.write(record)
            if writer is not None:
                for key, value in record.items():
                    if key != "step" and math.isfinite(value):
                        writer.add_scalar(key if "/" in key else f"train/{key}", value, step)
            bar.set_postfix({t: f"{record[f'loss_{t}']:.3f}" for t in losses}, refresh=False)
        bar.update(1)
        if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
            save(step)
        if (
            cfg.train.eval_every > 0
            and step % cfg.train.eval_every == 0
            and step < cfg.train.max_iters
        ):
            run_eval(step)
        # every rank stops at the same step, or the others would wait in an all-reduce
        if time_budget_s is not None and any_rank(time.monotonic() - started > time_budget_s):
            break
    bar.close()
    save(step)
    if cfg.train.eval_every >= 0:
        run_eval(step)
    if writer is not None:
        writer.close()
    shutdown_distributed()
    return TrainResult(out_dir, step, checkpoint_path, evaluations)


def _mean_over_ranks(values: dict[str, torch.Tensor], distributed: bool) -> dict[str, float]:
    """Scalars averaged over processes (each process's losses are means over its part of
    the batch, so their mean is the loss of the global batch), with one host sync."""
    stacked = torch.stack([v.detach().float() for v in values.values()])
    if distributed:
        torch.distributed.all_reduce(stacked)
        stacked /= torch.distributed.get_world_size()
    return dict(zip(values, stacked.tolist()))


def _report_bad_step(step: int, values: dict, bad: int, limit: int, log: JsonlLog) -> None:
    shown = ", ".join(f"{k}={float(torch.as_tensor(v).detach()):.4g}" for k, v in values.items())
    # Steps are counted from 1 in the logs, like the completed steps.
    log.write({"step": step + 1, "skipped": True, "reason": shown})
    warnings.warn(
        f"step {step + 1}: non-finite loss or gradient ({shown}); step skipped", stacklevel=2
    )
    if bad >= limit:
        raise NonFiniteLossError(
            f"{bad} consecutive steps with a non-finite loss or gradient (last at step {step + 1}: "
            f"{shown}); lower train.lr, check the data, or raise train.max_bad_steps"
        )


def _flat_scalars(result: dict, prefix: str = "") -> dict[str, float]:
    out = {}
    for key, value in result.items():
        if isinstance(value, dict):
            out.update(_flat_scalars(value, f"{prefix}{key}/"))
        elif (
            isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        ):
            out[f"{prefix}{key}"] = float(value)
    return out
