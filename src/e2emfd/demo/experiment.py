"""The experiment behind the paper's claim, on synthetic scenes: the same detector trained
on the visible image only, the infrared image only, and both (E2E-MFD, joint fusion +
detection), with GMTA and with a plain sum of the task losses. Same data, same number of
steps, several seeds; test-split AP50 (pycocotools) with mean and spread."""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

import torch

from e2emfd.data import build_dataset, build_transforms
from e2emfd.data.synth import generate_dataset
from e2emfd.demo.config import demo_config
from e2emfd.engine.checkpoint import (
    apply_inference_settings,
    inference_settings,
    load_model_for_inference,
)
from e2emfd.engine.evaluate import evaluate
from e2emfd.engine.trainer import train

VARIANTS: dict[str, list[str]] = {
    "visible only": ["model.modality=vis", "model.fusion.enabled=false", "train.task=detection"],
    "infrared only": ["model.modality=ir", "model.fusion.enabled=false", "train.task=detection"],
    # both images through the shared backbone, without the fusion task: separates what the
    # second input costs or brings from what training the fusion head alongside does
    "both images, detection only": ["model.fusion.enabled=false", "train.task=detection"],
    "E2E-MFD (fused, GMTA)": ["train.task=joint", "train.mtl=gmta"],
    "E2E-MFD (fused, sum)": ["train.task=joint", "train.mtl=sum"],
}


def run_modality_experiment(
    out: str | Path,
    seeds: list[int] = (0, 1),
    steps: int = 2000,
    num_images: int = 400,
    variants: list[str] | None = None,
    overrides: list[str] = (),
    progress: bool = True,
) -> dict:
    names = variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    out = Path(out)
    data_root = out / "data"
    if not (data_root / "meta.json").is_file():
        generate_dataset(data_root, num=num_images, seed=0, overwrite=True, progress=progress)
    results_path = out / "results.json"
    results: dict = {"steps": steps, "variants": {}}
    if results_path.is_file():  # resume: keep the runs already done
        results = json.loads(results_path.read_text())
        if results.get("steps") != steps:
            # its run folders would resume the other length's checkpoints
            raise ValueError(
                f"{results_path}: holds runs of {results.get('steps')} steps, not {steps}; "
                "use another --out"
            )
    conditions = _conditions(data_root)
    base_cfg = demo_config(data_root, out / "runs", list(overrides))
    eval_settings = _eval_settings(base_cfg)
    for name in names:
        done = {r["seed"]: r for r in results["variants"].get(name, {}).get("seeds", [])}
        for seed in seeds:
            run_dir = out / "runs" / f"{_slug(name)}_seed{seed}"
            checkpoint = run_dir / "checkpoint_last.pt"
            if seed in done:
                if done[seed].get("eval") == eval_settings or not checkpoint.is_file():
                    continue
                # a run scored with other evaluation settings (or before they were
                # recorded): score it again, so that every row of the table is comparable
                done[seed].pop("eval_seed", None)  # the record's older form
                done[seed].update(_evaluate_run(checkpoint, base_cfg, conditions))
                _save(results_path, results, name, [done[seed]])
                continue
            cfg = demo_config(
                data_root,
                run_dir,
                [*VARIANTS[name], f"seed={seed}", f"train.max_iters={steps}", *overrides],
            )
            started = time.monotonic()
            # an interrupted run continues from its last checkpoint
            result = train(cfg, progress=progress, resume=checkpoint.is_file())
            done[seed] = {
                "seed": seed,
                **_evaluate_run(result.checkpoint, cfg, conditions),
                "minutes": round((time.monotonic() - started) / 60, 2),
            }
            if progress:
                print(
                    f"{name} seed {seed}: AP50 {done[seed]['AP50']:.3f}  AP {done[seed]['AP']:.3f}"
                )
            _save(results_path, results, name, [done[seed]])
    results = json.loads(results_path.read_text()) if results_path.is_file() else results
    seeds_used = sorted({r["seed"] for v in results["variants"].values() for r in v["seeds"]})
    results["note"] = (
        f"{len(seeds_used)} seed(s) x {steps} steps of batch 4 per variant on the same "
        "synthetic split; spread = population standard deviation over seeds."
    )
    out.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    return results


def _conditions(data_root: Path) -> dict[str, str]:
    meta = json.loads((data_root / "meta.json").read_text())
    return {entry["id"]: entry["condition"] for entry in meta["images"]}


EVAL_SEED = 0  # of the detector's random starting boxes
# How the sampler turns that seed into boxes; a change makes every stored score stale.
# 2: all DDIM draws (start and renewals) taken at once, as one (steps, B, N, 4) tensor.
NOISE_LAYOUT = 2


def _eval_settings(cfg) -> dict:
    """What a test score depends on besides the checkpoint: the detector's inference-only
    settings, the seed of its random starting boxes and how they are drawn."""
    return {"seed": EVAL_SEED, "noise_layout": NOISE_LAYOUT, **inference_settings(cfg)}


def _evaluate_run(checkpoint: Path, cfg, conditions: dict[str, str]) -> dict:
    """Test-split AP of a run's checkpoint, overall and per scene condition, with the
    inference settings of ``cfg`` (not those the run was trained with)."""
    model, saved_cfg = load_model_for_inference(checkpoint)
    settings = _eval_settings(cfg)
    apply_inference_settings(model, inference_settings(cfg))
    test_set = build_dataset(
        saved_cfg.data, saved_cfg.data.test_split, build_transforms(saved_cfg.data, train=False)
    )
    subsets: dict[str, list[int]] = {}
    for index, record in enumerate(test_set.records):
        subsets.setdefault(conditions.get(record.image_id, "unknown"), []).append(index)
    scores = evaluate(
        model,
        test_set,
        torch.device("cpu"),
        test_set.classes,
        conventions=(),
        subsets=subsets,
        seed=settings["seed"],
    )
    det = scores["detection"]
    return {
        "eval": settings,
        "AP50": det["AP50"],
        "AP": det["AP"],
        "per_class_AP50": det["per_class_AP50"],
        "AP50_by_condition": {
            cond: scores["detection_by_subset"][cond]["AP50"] for cond in sorted(subsets)
        },
    }


def _save(path: Path, results: dict, name: str, runs: list[dict]) -> None:
    """Record the runs (seeds) of variant ``name`` this process has just finished or
    rescored. Other processes may run other variants or seeds into the same file: what is
    on disk is kept and only ``runs`` replace their seeds' records (this process's copies
    of the other seeds may be stale)."""
    if path.is_file():
        on_disk = json.loads(path.read_text())
        if on_disk.get("steps") == results["steps"]:
            results["variants"].update(on_disk["variants"])
    by_seed = {r["seed"]: r for r in results["variants"].get(name, {}).get("seeds", [])}
    by_seed.update({r["seed"]: r for r in runs})
    runs = [by_seed[seed] for seed in sorted(by_seed)]
    ap50 = [r["AP50"] for r in runs]
    results["variants"][name] = {
        "seeds": runs,
        "AP50_mean": statistics.fmean(ap50),
        "AP50_std": statistics.pstdev(ap50) if len(ap50) > 1 else 0.0,
        "AP_mean": statistics.fmean(r["AP"] for r in runs),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def results_markdown(results: dict) -> str:
    lines = ["| variant | AP50 (mean ± std) | AP50:95 (mean) | seeds |", "|---|---|---|---|"]
    for name, r in results["variants"].items():
        lines.append(
            f"| {name} | {r['AP50_mean']:.3f} ± {r['AP50_std']:.3f} | {r['AP_mean']:.3f} "
            f"| {len(r['seeds'])} |"
        )
    by_condition = condition_means(results)
    if by_condition:
        conds = sorted({c for means in by_condition.values() for c in means})
        lines += ["", "| variant (AP50 by scene condition) | " + " | ".join(conds) + " |"]
        lines.append("|---" * (len(conds) + 1) + "|")
        for name, means in by_condition.items():
            cells = [f"{means[c]:.3f}" if c in means else "-" for c in conds]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{results.get('note', '')}\n"


def condition_means(results: dict) -> dict[str, dict[str, float]]:
    """Mean test AP50 per scene condition over the seeds that have it, per variant."""
    out = {}
    for name, r in results["variants"].items():
        runs = [s["AP50_by_condition"] for s in r["seeds"] if "AP50_by_condition" in s]
        if runs:
            out[name] = {c: statistics.fmean(run[c] for run in runs) for c in runs[0]}
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
