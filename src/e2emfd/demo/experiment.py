"""The experiment behind the paper's claim: the same detector trained on the visible image
only, the infrared image only, and both (E2E-MFD, joint fusion + detection), with GMTA and
with a plain sum of the task losses. Same data, same number of steps, several seeds; AP50
and AP50:95 (pycocotools) overall, per class and per scene condition, with mean and spread.

By default on synthetic scenes (generated into OUT/data); with a config, on that config's
data (e.g. ``configs/msrs_cpu.yaml``: real MSRS pairs, scored on its ``val`` split, day vs
night)."""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from e2emfd.config import Config, load_config
from e2emfd.data import build_dataset, build_transforms
from e2emfd.demo.config import demo_config
from e2emfd.engine.checkpoint import (
    apply_inference_settings,
    inference_settings,
    load_model_for_inference,
)
from e2emfd.engine.evaluate import evaluate
from e2emfd.engine.local import train_locally
from e2emfd.synth.street import generate_dataset

VARIANTS: dict[str, list[str]] = {
    "visible only": ["model.modality=vis", "model.fusion.enabled=false", "train.task=detection"],
    "infrared only": ["model.modality=ir", "model.fusion.enabled=false", "train.task=detection"],
    # both images through the shared backbone, without the fusion task: separates what the
    # second input costs or brings from what training the fusion head alongside does
    "both images, detection only": ["model.fusion.enabled=false", "train.task=detection"],
    "E2E-MFD (fused, GMTA)": ["train.task=joint", "train.mtl=gmta"],
    "E2E-MFD (fused, sum)": ["train.task=joint", "train.mtl=sum"],
}
SYNTHETIC = "synthetic scenes"


def run_modality_experiment(
    out: str | Path,
    seeds: list[int] = (0, 1),
    steps: int = 2000,
    num_images: int = 400,
    variants: list[str] | None = None,
    overrides: list[str] = (),
    progress: bool = True,
    config: str | Path | None = None,
    processes: int = 1,
) -> dict:
    """Train and score every (variant, seed) run not yet in ``out/results.json``.

    ``config``: the base config (its data, model and training recipe; ``steps`` sets
    ``train.max_iters``); None = the demo's model on synthetic scenes generated into
    ``out/data``. ``overrides`` (key=value) apply on top of the variant's settings.
    ``processes``: local training processes per run (DDP over gloo)."""
    names = variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; choose from {', '.join(VARIANTS)}")
    out = Path(out)
    run_config = _run_config_factory(out, config, list(overrides), num_images, progress)
    source = SYNTHETIC if config is None else str(config)
    results_path = out / "results.json"
    results: dict = {"steps": steps, "config": source, "variants": {}}
    if results_path.is_file():  # resume: keep the runs already done
        results = json.loads(results_path.read_text())
        for key, want in (("steps", steps), ("config", source)):
            # its run folders would resume the other experiment's checkpoints
            if results.get(key, SYNTHETIC if key == "config" else None) != want:
                raise ValueError(
                    f"{results_path}: holds runs with {key} {results.get(key)!r}, not "
                    f"{want!r}; use another --out"
                )
    base_cfg = run_config(out / "runs", [])
    subsets_of = _subset_rule(base_cfg)
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
                done[seed].update(_evaluate_run(checkpoint, base_cfg, subsets_of))
                _save(results_path, results, name, [done[seed]])
                continue
            cfg = run_config(run_dir, [*VARIANTS[name], f"seed={seed}", f"train.max_iters={steps}"])
            started = time.monotonic()
            # an interrupted run continues from its last checkpoint
            train_locally(cfg, processes, resume=run_dir.exists(), progress=progress)
            done[seed] = {
                "seed": seed,
                **_evaluate_run(checkpoint, base_cfg, subsets_of),
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
        f"{len(seeds_used)} seed(s) x {steps} steps of batch {base_cfg.train.batch_size} per "
        f"variant on {source} (test split: {base_cfg.data.test_split}); spread = population "
        "standard deviation over seeds."
    )
    out.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(results, indent=2))
    (out / "results.md").write_text(results_markdown(results))
    return results


def _run_config_factory(
    out: Path, config: str | Path | None, overrides: list[str], num_images: int, progress: bool
) -> Callable[[Path, list[str]], Config]:
    """``(run_dir, variant overrides) -> Config`` for the experiment's base config."""
    if config is not None:
        return lambda run_dir, extra: load_config(
            config, [*extra, *overrides, f"output_dir={run_dir}"]
        )
    data_root = out / "data"
    if not (data_root / "meta.json").is_file():
        generate_dataset(data_root, num=num_images, seed=0, overwrite=True, progress=progress)
    return lambda run_dir, extra: demo_config(data_root, run_dir, [*extra, *overrides])


def _subset_rule(cfg: Config) -> Callable[[str], str | None]:
    """image id -> scene condition, for AP per condition: the synthetic scenes' condition
    (their meta.json), or day / night from a ``D`` / ``N`` id suffix (MSRS); None when
    neither applies."""
    meta = Path(cfg.data.root) / "meta.json"
    if meta.is_file():
        conditions = {e["id"]: e["condition"] for e in json.loads(meta.read_text())["images"]}
        return conditions.get
    return lambda image_id: {"D": "day", "N": "night"}.get(image_id[-1:].upper())


EVAL_SEED = 0  # of the detector's random starting boxes
# How the sampler turns that seed into boxes; a change makes every stored score stale.
# 2: all DDIM draws (start and renewals) taken at once, as one (steps, B, N, 4) tensor;
# 3: the DDIM update noise too, (2 * steps - 1, B, N, dim).
NOISE_LAYOUT = 3


def _eval_settings(cfg) -> dict:
    """What a test score depends on besides the checkpoint: the detector's inference-only
    settings, the seed of its random starting boxes and how they are drawn."""
    return {"seed": EVAL_SEED, "noise_layout": NOISE_LAYOUT, **inference_settings(cfg)}


def _evaluate_run(checkpoint: Path, cfg: Config, subset_of: Callable[[str], str | None]) -> dict:
    """Test-split AP of a run's checkpoint, overall, per class and per scene condition,
    with the inference settings of ``cfg`` (not those the run was trained with)."""
    model, saved_cfg = load_model_for_inference(checkpoint)
    settings = _eval_settings(cfg)
    apply_inference_settings(model, inference_settings(cfg))
    test_set = build_dataset(
        saved_cfg.data, saved_cfg.data.test_split, build_transforms(saved_cfg.data, train=False)
    )
    subsets: dict[str, list[int]] = {}
    for index, record in enumerate(test_set.records):
        condition = subset_of(record.image_id)
        if condition is not None:
            subsets.setdefault(condition, []).append(index)
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
    by_subset = scores.get("detection_by_subset", {})
    return {
        "eval": settings,
        "AP50": det["AP50"],
        "AP": det["AP"],
        "per_class_AP50": det["per_class_AP50"],
        "per_class_AP": det["per_class"],
        "AP50_by_condition": {c: by_subset[c]["AP50"] for c in sorted(by_subset)},
        "AP_by_condition": {c: by_subset[c]["AP"] for c in sorted(by_subset)},
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
    ap = [r["AP"] for r in runs]
    results["variants"][name] = {
        "seeds": runs,
        "AP50_mean": statistics.fmean(ap50),
        "AP50_std": statistics.pstdev(ap50) if len(ap50) > 1 else 0.0,
        "AP_mean": statistics.fmean(ap),
        "AP_std": statistics.pstdev(ap) if len(ap) > 1 else 0.0,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def results_markdown(results: dict) -> str:
    """The experiment's tables: AP50 and AP50:95 per variant (mean ± spread over seeds,
    and each seed), then AP50 per scene condition and per class (seed means)."""
    lines = [
        "| variant | AP50 (mean ± std) | per seed | AP50:95 (mean ± std) | seeds |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["variants"].items():
        per_seed = " / ".join(f"{s['AP50']:.3f}" for s in r["seeds"])
        lines.append(
            f"| {name} | {r['AP50_mean']:.3f} ± {r['AP50_std']:.3f} | {per_seed} "
            f"| {r['AP_mean']:.3f} ± {r.get('AP_std', 0.0):.3f} | {len(r['seeds'])} |"
        )
    for title, means in (
        ("AP50 by scene condition", condition_means(results)),
        ("AP50 by class", condition_means(results, "per_class_AP50")),
        ("AP50:95 by class", condition_means(results, "per_class_AP")),
    ):
        if not means:
            continue
        columns = list(dict.fromkeys(c for row in means.values() for c in row))
        lines += ["", f"| variant ({title}) | " + " | ".join(columns) + " |"]
        lines.append("|---" * (len(columns) + 1) + "|")
        for name, row in means.items():
            cells = [f"{row[c]:.3f}" if c in row else "-" for c in columns]
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n{results.get('note', '')}\n"


def condition_means(results: dict, key: str = "AP50_by_condition") -> dict[str, dict[str, float]]:
    """Per variant, the mean over its seeds of each entry of the runs' ``key`` table (AP50
    per scene condition by default; ``per_class_AP50``, ``per_class_AP``); NaN entries (a
    class absent from a subset) are left out of the mean."""
    out = {}
    for name, r in results["variants"].items():
        runs = [s[key] for s in r["seeds"] if key in s]
        if runs:
            columns = list(dict.fromkeys(c for run in runs for c in run))
            out[name] = {}
            for c in columns:
                values = [run[c] for run in runs if c in run and run[c] == run[c]]
                if values:
                    out[name][c] = statistics.fmean(values)
    return out


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
