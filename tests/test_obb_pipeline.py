"""Rotated boxes end to end: synthetic aerial data -> joint training with the rotated head
-> rotated evaluation -> `e2emfd detect` records."""

import json

import pytest
import torch

from conftest import TINY_JOINT
from e2emfd.cli.main import main
from e2emfd.config import load_config
from e2emfd.data import build_dataset, build_transforms
from e2emfd.engine.evaluate import evaluate
from e2emfd.engine.trainer import train
from e2emfd.models import build_model

OBB = [
    "data.format=dronevehicle",
    "data.classes=[car,truck,bus,van,freight_car]",
    "data.boxes=obb",
    "model.detection.boxes=obb",
    "model.detection.num_classes=5",
]


@pytest.fixture(scope="module")
def aerial(tmp_path_factory):
    root = tmp_path_factory.mktemp("aerial")
    assert (
        main(["synth", str(root), "--boxes", "obb", "--num", "10", "--size", "128x96", "--quiet"])
        == 0
    )
    return root


def test_rotated_joint_training_and_evaluation(aerial, tmp_path):
    cfg = load_config(
        None,
        TINY_JOINT + OBB + [f"data.root={aerial}", f"output_dir={tmp_path}", "train.max_iters=2"],
    )
    result = train(cfg, progress=False)
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert all(r["loss_detection"] > 0 and "mtl/cond_after" in r for r in log)
    dataset = build_dataset(cfg.data, "test", build_transforms(cfg.data, train=False))
    assert dataset[0]["boxes"].shape[-1] == 5
    state = torch.load(result.checkpoint, weights_only=True)
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    scores = evaluate(model, dataset, torch.device("cpu"), dataset.classes, conventions=())
    assert {"AP", "AP50", "voc07_mAP50"} <= set(scores["detection"])

    out = tmp_path / "det"
    vi, ir = aerial / "test" / "rgb" / "images", aerial / "test" / "ir" / "images"
    assert (
        main(
            [
                "detect",
                "--weights",
                str(result.checkpoint),
                "--vi",
                str(vi),
                "--ir",
                str(ir),
                "--out",
                str(out),
                "--no-progress",
                "--no-draw",
            ]
        )
        == 0
    )
    records = json.loads((out / "detections.json").read_text())
    assert records and len(records[0]["obb"]) == 5 and len(records[0]["poly"]) == 8
