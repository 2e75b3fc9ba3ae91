"""The demo pipeline end to end with a tiny budget (so CI exercises it), and the modality
experiment on a handful of steps."""

import json
import re

import cv2
import pytest
import torch

from e2emfd.data import build_dataset, build_transforms
from e2emfd.demo.experiment import VARIANTS, _slug, run_modality_experiment
from e2emfd.demo.pipeline import run_demo
from e2emfd.engine.checkpoint import load_model_for_inference
from e2emfd.engine.evaluate import evaluate


@pytest.mark.slow
def test_demo_end_to_end_with_a_tiny_budget(tmp_path):
    out = tmp_path / "demo"
    # a step cap, not a tight budget: the run must not depend on how busy the machine is
    summary = run_demo(out, budget_minutes=10, num_images=30, progress=False, max_steps=6)
    assert summary["steps"] == 6
    assert set(summary["phase_minutes"]) == {
        "data",
        "evaluation estimate",
        "training",
        "evaluation",
        "report",
    }
    # the reported score is the saved checkpoint's, scored again independently
    model, cfg = load_model_for_inference(out / "run" / "checkpoint_last.pt")
    test_set = build_dataset(cfg.data, "test", build_transforms(cfg.data, train=False))
    again = evaluate(model, test_set, torch.device("cpu"), test_set.classes, conventions=())
    assert summary["detection"]["AP50"] == again["detection"]["AP50"]
    for conv in ("python", "matlab"):
        assert set(summary["fusion"][conv]) == {"E2E-MFD", "average", "max", "laplacian"}
        assert summary["fusion"][conv]["E2E-MFD"]["EN"] > 0
    page = (out / "report.html").read_text()
    sources = re.findall(r"<img src='([^']+)'", page)
    assert len(sources) >= 6  # scenes + loss curves + GMTA statistics
    assert any(src.endswith("gmta.png") for src in sources)
    for src in sources:
        assert not src.startswith(("http:", "https:", "/")), src  # offline, relative
        image = cv2.imread(str(out / src))
        assert image is not None and image.size > 0, src
    assert "Fusion metrics (matlab convention)" in page
    assert json.loads((out / "summary.json").read_text())["steps"] == summary["steps"]
    log = [json.loads(line) for line in (out / "run" / "train_log.jsonl").read_text().splitlines()]
    assert any("mtl/cond_after" in r for r in log)


@pytest.mark.slow
def test_modality_experiment_writes_a_table(tmp_path):
    names = ["visible only", "E2E-MFD (fused, GMTA)"]
    results = run_modality_experiment(
        tmp_path, seeds=[0], steps=3, num_images=12, variants=names, progress=False
    )
    assert list(results["variants"]) == names
    by_condition_first = results["variants"][names[0]]["seeds"][0]["AP50_by_condition"]
    for name in names:
        row = results["variants"][name]
        assert row["AP50_std"] == 0.0 and len(row["seeds"]) == 1
        # the table's figure is its checkpoint's score, evaluated here independently
        checkpoint = tmp_path / "runs" / f"{_slug(name)}_seed0" / "checkpoint_last.pt"
        model, cfg = load_model_for_inference(checkpoint)
        test_set = build_dataset(
            cfg.data, cfg.data.test_split, build_transforms(cfg.data, train=False)
        )
        scores = evaluate(model, test_set, torch.device("cpu"), test_set.classes, conventions=())
        assert row["AP50_mean"] == row["seeds"][0]["AP50"] == scores["detection"]["AP50"]
        by_condition = row["seeds"][0]["AP50_by_condition"]
        assert set(by_condition) <= {"day", "night", "fog", "glare"} and by_condition
    assert "AP50 by scene condition" in (tmp_path / "results.md").read_text()
    # a run recorded before per-condition scores and evaluation settings is scored again
    # from its checkpoint, and so is one scored with other inference settings
    results_path = tmp_path / "results.json"
    old = json.loads(results_path.read_text())
    first = old["variants"][names[0]]["seeds"][0]
    assert first["eval"]["num_proposals_test"] == 500 and first["eval"]["seed"] == 0
    del first["AP50_by_condition"], first["eval"]
    results_path.write_text(json.dumps(old))
    again = run_modality_experiment(
        tmp_path, seeds=[0], steps=3, num_images=12, variants=names[:1], progress=False
    )
    assert again["variants"][names[0]]["seeds"][0]["AP50_by_condition"] == by_condition_first
    fewer = run_modality_experiment(
        tmp_path,
        seeds=[0],
        steps=3,
        num_images=12,
        variants=names[:1],
        overrides=["model.detection.num_proposals_test=20"],
        progress=False,
    )
    assert fewer["variants"][names[0]]["seeds"][0]["eval"]["num_proposals_test"] == 20
    assert (tmp_path / "results.md").read_text().count("|") > 10
    with pytest.raises(ValueError, match="holds runs with steps 3, not 5"):
        run_modality_experiment(tmp_path, seeds=[0], steps=5, variants=names, progress=False)
    with pytest.raises(ValueError, match="unknown variant"):
        run_modality_experiment(tmp_path, seeds=[0], steps=1, variants=["thermal"], progress=False)
    assert set(VARIANTS) >= set(names)


@pytest.mark.slow
def test_demo_with_rotated_boxes(tmp_path):
    out = tmp_path / "demo_obb"
    summary = run_demo(
        out, budget_minutes=10, num_images=15, progress=False, boxes="obb", max_steps=4
    )
    assert summary["steps"] == 4
    assert summary["boxes"] == "obb" and summary["detection"]["boxes"] == "obb"
    assert {"AP", "AP50", "voc07_mAP50"} <= set(summary["detection"])
    page = (out / "report.html").read_text()
    assert "rotated boxes" in page and "DroneVehicle" in page
    for src in re.findall(r"<img src='([^']+)'", page):
        assert cv2.imread(str(out / src)) is not None, src


def test_concurrent_experiment_processes_keep_each_others_runs(tmp_path):
    from e2emfd.demo.experiment import _save

    path = tmp_path / "results.json"
    run = {"AP50": 0.5, "AP": 0.2, "per_class_AP50": {}, "minutes": 1.0}
    first = {"steps": 10, "variants": {}}
    _save(path, first, "visible only", [{**run, "seed": 0}])
    # two processes load the file, then each records another variant or seed
    a, b = (json.loads(path.read_text()) for _ in range(2))
    _save(path, a, "infrared only", [{**run, "seed": 1, "AP50": 0.7}])
    _save(path, b, "visible only", [{**run, "seed": 1, "AP50": 0.3}])
    on_disk = json.loads(path.read_text())["variants"]
    assert [r["seed"] for r in on_disk["visible only"]["seeds"]] == [0, 1]
    assert on_disk["visible only"]["AP50_mean"] == pytest.approx(0.4)
    assert on_disk["visible only"]["AP50_std"] == pytest.approx(0.1)
    assert on_disk["infrared only"]["AP50_mean"] == pytest.approx(0.7)


def test_experiment_process_does_not_overwrite_a_seed_another_process_rescored(
    tmp_path, monkeypatch
):
    """Process B trains seed 1 while process A rescores seed 0 of the same variant: B must
    record seed 1 only, not write back its stale copy of seed 0."""
    from e2emfd.demo import experiment

    out = tmp_path / "exp"
    (out / "data").mkdir(parents=True)
    (out / "data" / "meta.json").write_text(json.dumps({"images": []}))
    name = "visible only"
    stale = {"seed": 0, "AP50": 0.1, "AP": 0.1, "per_class_AP50": {}, "eval": {"old": 1}}
    (out / "results.json").write_text(
        json.dumps({"steps": 5, "variants": {name: {"seeds": [stale]}}})
    )
    rescored = {**stale, "AP50": 0.6, "eval": {"new": 1}}

    def train_seed_1(cfg, processes, resume, progress):
        # meanwhile, the other process rescores seed 0 and saves it
        experiment._save(
            out / "results.json", json.loads((out / "results.json").read_text()), name, [rescored]
        )
        return 5

    def evaluate(checkpoint, cfg, subset_of):
        return {"AP50": 0.4, "AP": 0.2, "per_class_AP50": {}, "AP50_by_condition": {}}

    monkeypatch.setattr(experiment, "train_locally", train_seed_1)
    monkeypatch.setattr(experiment, "_evaluate_run", evaluate)
    run_modality_experiment(out, seeds=[1], steps=5, variants=[name], progress=False)
    seeds = json.loads((out / "results.json").read_text())["variants"][name]["seeds"]
    assert [(r["seed"], r["AP50"]) for r in seeds] == [(0, 0.6), (1, 0.4)]


def test_report_table_of_the_experiment_shows_conditions():
    from e2emfd.demo.pipeline import experiment_table

    run = {"AP50": 0.5, "AP": 0.2, "per_class_AP50": {}, "seed": 0}
    experiment = {
        "variants": {
            "infrared only": {
                "seeds": [
                    {**run, "AP50_by_condition": {"day": 0.4, "night": 0.6}},
                    {**run, "seed": 1, "AP50_by_condition": {"day": 0.2, "night": 0.8}},
                ],
                "AP50_mean": 0.5,
                "AP50_std": 0.0,
                "AP_mean": 0.2,
            }
        },
        "note": "two seeds",
    }
    html = experiment_table(experiment)
    assert "by scene condition" in html and "<th>night</th>" in html
    assert "<td>0.300</td>" in html and "<td>0.700</td>" in html  # means over the seeds
