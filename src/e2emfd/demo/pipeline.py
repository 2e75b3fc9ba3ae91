"""The main job on the embedded default: synthetic scenes -> joint E2E-MFD training with
GMTA within a time budget -> evaluation against classical fusion -> an HTML report."""

from __future__ import annotations

import dataclasses
import itertools
import json
import os
import time
from pathlib import Path

import torch

from e2emfd.config import Config
from e2emfd.data import build_dataset, build_transforms, collate_pairs
from e2emfd.demo import report
from e2emfd.demo.config import demo_config
from e2emfd.demo.experiment import condition_means
from e2emfd.engine.checkpoint import load_model_for_inference
from e2emfd.engine.evaluate import baseline_fusion_scores, evaluate
from e2emfd.engine.local import local_processes, train_locally
from e2emfd.engine.trainer import CHECKPOINT_NAME
from e2emfd.models import build_model
from e2emfd.mtl import TaskBalancer
from e2emfd.synth.street import generate_dataset, is_test_index
from e2emfd.utils import results

CONVENTIONS = ("python", "matlab")
DEMO_TEST_FRACTION = 0.2  # the synthetic generators' default split
ABOUT = {
    "hbb": "<p>A CPU-sized E2E-MFD (shared ResNet-18/4 + FPN backbone, ORPPT fusion head, "
    "CFDP diffusion detection head) trained jointly with GMTA for {steps} steps on synthetic "
    "infrared-visible street scenes, where some objects show only in the infrared image "
    "(people at night, anything in fog) and some only in the visible one (lamps, parked "
    "cars, people by day at thermal crossover). All numbers are on the held-out test "
    "split.</p>",
    "obb": "<p>A CPU-sized E2E-MFD with the rotated CFDP head (oriented boxes) trained "
    "jointly with GMTA for {steps} steps on synthetic top-down drone scenes of the five "
    "DroneVehicle classes, where running vehicles are warm in the infrared image and parked "
    "ones are not, at day, night, in fog and glare. All numbers are on the held-out test "
    "split.</p>",
}


def seconds_per_step(cfg: Config, steps: int = 4, threads: int | None = None) -> float:
    """Median wall time of a full training step (forward, balanced backward, AdamW) of the
    configured model on real batches, with ``threads`` intra-op threads: what the step
    budget is computed from."""
    dataset = build_dataset(cfg.data, cfg.data.train_split, build_transforms(cfg.data, train=True))
    model = build_model(cfg.model).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    balancer = TaskBalancer(cfg.train.mtl, model.shared_parameters(), cfg.train.gmta_every)
    times = []
    saved_threads = torch.get_num_threads()
    torch.set_num_threads(threads or saved_threads)
    try:
        for step in range(steps + 1):
            batch = collate_pairs(
                [dataset[(i + step) % len(dataset)] for i in range(cfg.train.batch_size)]
            )
            start = time.perf_counter()
            optimizer.zero_grad()
            balancer.backward(model(batch)["losses"], step)
            optimizer.step()
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(saved_threads)
    # a balancing step is dearer than a plain one; weight them as in training
    plain = sorted(times[1:])[len(times[1:]) // 2]
    return plain * (1 + 0.6 / max(1, cfg.train.gmta_every))


def train_within_budget(
    cfg: Config, time_budget_s: float, progress: bool = True, max_steps: int | None = None
) -> int:
    """Train ``cfg`` (``train.batch_size`` = the global batch) for as many steps as fit the
    budget, on all the CPU cores; returns the number of steps done. The checkpoint is
    ``cfg.output_dir/checkpoint_last.pt``."""
    started = time.monotonic()
    processes = local_processes(cfg.train.batch_size)
    threads = max(1, (os.cpu_count() or 1) // processes)
    probe = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=cfg.train.batch_size // processes)
    )
    # all-reduce of the gradients, DDP's search for unused parameters, the stop flag:
    # measured 0.78 s per step against 0.71 estimated in one process (2 cores)
    step_s = seconds_per_step(probe, threads=threads) * (1.1 if processes > 1 else 1.0)
    # starting the processes (imports, data, model) takes ~10 s outside the training loop
    spawn_s = 10.0 if processes > 1 else 0.0
    budget = max(time_budget_s - (time.monotonic() - started) - spawn_s, 30.0)
    max_iters = max(20, int(budget / step_s))
    if max_steps is not None:
        max_iters = min(max_iters, max_steps)
    cfg.train.max_iters = max_iters
    cfg.train.warmup_iters = min(cfg.train.warmup_iters, max_iters // 10)
    if progress:
        print(
            f"demo: {processes} training process(es) x {threads} thread(s), {step_s:.2f} s per "
            f"step -> {max_iters} training steps in {budget / 60:.1f} min"
        )
    # the demo retrains from scratch: its previous run is replaced, not mixed into the logs
    return train_locally(
        cfg, processes, threads, progress=progress, time_budget_s=budget, overwrite=True
    )


def pick_scenes(data_root: Path, test_ids: list[str], per_condition: int = 2) -> dict[str, str]:
    """Test scenes for the report, id -> condition: a few of each condition (night and
    fog included)."""
    meta = json.loads((data_root / "meta.json").read_text())
    condition = {entry["id"]: entry["condition"] for entry in meta["images"]}
    chosen: dict[str, str] = {}
    for cond in ("night", "fog", "day", "glare"):
        for image_id in [i for i in test_ids if condition.get(i) == cond][:per_condition]:
            chosen[image_id] = cond
    return chosen


# the report (scene grid, curves, HTML) after the evaluation, and a margin on the measured
# evaluation time: the probe's images are few, and the load may change during training
REPORT_SECONDS = 20.0
EVAL_MARGIN = 1.3


def evaluation_seconds_per_pair(cfg: Config, test_set, pairs: int = 3) -> float:
    """Seconds per test pair of the demo's evaluation (the detector with its inference
    settings, both fusion-metric conventions, the classical baselines), measured on this
    machine now with an untrained model of the configured shape on a few test pairs."""
    subset = torch.utils.data.Subset(test_set, range(min(pairs, len(test_set))))
    model = build_model(cfg.model).eval()
    started = time.monotonic()
    evaluate(model, subset, torch.device("cpu"), test_set.classes, conventions=CONVENTIONS)
    baseline_fusion_scores(subset)
    return (time.monotonic() - started) / len(subset)


def check_arguments(num_images: int, budget_minutes: float, batch_size: int) -> None:
    """Refuse, before any work, arguments with which the demo cannot end: it needs a batch
    of training pairs and a test pair from the synthetic split (1 pair in 5 is a test pair)."""
    if not budget_minutes > 0:
        raise ValueError(f"--budget-minutes must be positive, got {budget_minutes}")

    def split(n: int) -> tuple[int, int]:
        test = sum(is_test_index(i, DEMO_TEST_FRACTION) for i in range(n))
        return n - test, test

    def enough(n: int) -> bool:
        train, test = split(n)
        return train >= batch_size and test >= 1

    if not enough(num_images):
        train, test = split(max(num_images, 0))
        least = next(n for n in itertools.count(1) if enough(n))
        raise ValueError(
            f"--num-images {num_images} gives {train} training and {test} test pairs; the demo "
            f"needs {batch_size} training pairs (a batch) and a test pair: use at least {least}"
        )


def run_demo(
    out: str | Path,
    budget_minutes: float = 15.0,
    num_images: int = 400,
    seed: int = 0,
    overrides: list[str] = (),
    progress: bool = True,
    experiment_dir: str | Path | None = None,
    boxes: str = "hbb",
    max_steps: int | None = None,
) -> dict:
    """Run the whole demo; returns the summary that is also written to summary.json.
    ``max_steps`` caps the training steps the budget allows (a run that must not depend on
    the machine's speed, e.g. a test)."""
    start = time.monotonic()
    out = Path(out)
    data_root = out / "data"
    cfg = demo_config(data_root, out / "run", [f"seed={seed}", *overrides], boxes)
    check_arguments(num_images, budget_minutes, cfg.train.batch_size)
    out.mkdir(parents=True, exist_ok=True)
    if not (data_root / "meta.json").is_file():
        generate = generate_dataset
        if boxes == "obb":
            from e2emfd.synth.aerial import generate_aerial_dataset as generate
        generate(
            data_root,
            num=num_images,
            seed=seed,
            test_fraction=DEMO_TEST_FRACTION,
            overwrite=True,
            progress=progress,
        )

    phases = {"data": time.monotonic() - start}

    # Leave time for the evaluation (model and baselines, both metric conventions) and the
    # report, as long as they take on this machine now: a busy machine evaluates slower.
    test_set = build_dataset(cfg.data, cfg.data.test_split, build_transforms(cfg.data, train=False))
    mark = time.monotonic()
    reserve_s = REPORT_SECONDS + EVAL_MARGIN * len(test_set) * evaluation_seconds_per_pair(
        cfg, test_set
    )
    phases["evaluation estimate"] = time.monotonic() - mark
    train_s = budget_minutes * 60 - (time.monotonic() - start) - reserve_s
    if progress:
        print(f"demo: {reserve_s:.0f} s kept for evaluating {len(test_set)} test pairs")
    mark = time.monotonic()
    steps = train_within_budget(cfg, train_s, progress, max_steps)
    phases["training"] = time.monotonic() - mark

    mark = time.monotonic()
    model, cfg = load_model_for_inference(Path(cfg.output_dir) / CHECKPOINT_NAME)
    scores = evaluate(
        model, test_set, torch.device("cpu"), test_set.classes, conventions=CONVENTIONS
    )
    baselines = baseline_fusion_scores(test_set)
    phases["evaluation"] = time.monotonic() - mark
    mark = time.monotonic()

    report_dir = out / "report_files"
    test_ids = [r.image_id for r in test_set.records]
    chosen = pick_scenes(data_root, test_ids)
    index_of = {image_id: i for i, image_id in enumerate(test_ids)}
    scenes = report.write_scene_grid(
        model, test_set, [index_of[i] for i in chosen], report_dir, test_set.classes
    )
    curves = report.plot_training_curves(out / "run" / "train_log.jsonl", report_dir)

    summary = {
        "boxes": boxes,
        "steps": steps,
        "train_minutes": round((time.monotonic() - start) / 60, 2),
        "detection": scores.get("detection", {}),
        "fusion": {
            conv: {"E2E-MFD": scores["fusion"][conv], **baselines[conv]} for conv in CONVENTIONS
        },
    }
    experiment = _load_experiment(experiment_dir or out / "experiment_modality")
    write_demo_report(out, summary, chosen, scenes, curves, experiment)
    phases["report"] = time.monotonic() - mark
    summary["phase_minutes"] = {name: round(sec / 60, 2) for name, sec in phases.items()}
    summary["total_minutes"] = round((time.monotonic() - start) / 60, 2)
    (out / "summary.json").write_text(results.dumps(summary, indent=2))
    return summary


def _load_experiment(folder: Path) -> dict | None:
    path = Path(folder) / "results.json"
    return json.loads(path.read_text()) if path.is_file() else None


def write_demo_report(
    out: Path, summary: dict, scenes_chosen: dict, scenes, curves, experiment
) -> Path:
    det = summary["detection"]
    sections = [
        (
            "What this is",
            ABOUT[summary.get("boxes", "hbb")].format(steps=summary["steps"]),
        ),
        (
            "Test scenes",
            "<p class='note'>Each row: visible | infrared | fused image with detections "
            "(score &ge; 0.3) | ground truth.</p>"
            + "".join(
                report.figure(path, out, f"test scene {image_id} ({condition})")
                for (image_id, condition), path in zip(scenes_chosen.items(), scenes)
            ),
        ),
        (
            "Detection (rotated boxes, VOC-style AP)"
            if summary.get("boxes") == "obb"
            else "Detection (COCO, pycocotools)",
            report.detection_table(det) if det else "<p>none</p>",
        ),
    ]
    for conv in CONVENTIONS:
        sections.append(
            (f"Fusion metrics ({conv} convention)", report.fusion_table(summary["fusion"][conv]))
        )
    sections.append(("Training", "".join(report.figure(p, out, c) for p, c in curves)))
    if experiment:
        sections.append(
            (
                "Does fusion help detection? (e2emfd experiment modality)",
                experiment_table(experiment),
            )
        )
    return report.write_html(out / "report.html", "E2E-MFD demo report", sections)


def experiment_table(experiment: dict) -> str:
    rows = []
    for name, result in experiment["variants"].items():
        rows.append(
            [name, result["AP50_mean"], result["AP50_std"], result["AP_mean"], len(result["seeds"])]
        )
    note = f"<p class='note'>{experiment.get('note', '')}</p>"
    html = report._table(["variant", "AP50 mean", "AP50 std", "AP50:95 mean", "seeds"], rows)
    by_condition = condition_means(experiment)
    if by_condition:
        conds = sorted({c for means in by_condition.values() for c in means})
        cells = [
            [name, *(m.get(c, float("nan")) for c in conds)] for name, m in by_condition.items()
        ]
        html += "<p>Test AP50 by scene condition (mean over seeds):</p>"
        html += report._table(["variant", *conds], cells)
    return html + note
