"""Fusion-only training on synthetic scenes makes the fused images measurably better."""

import json

import pytest
import torch

from e2emfd.config import load_config
from e2emfd.data import build_dataset, build_transforms
from e2emfd.engine.evaluate import evaluate
from e2emfd.engine.trainer import train
from e2emfd.models import build_model
from e2emfd.synth.street import generate_dataset


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    generate_dataset(root, num=30, size=(128, 96), seed=3, test_fraction=0.2, progress=False)
    return root


def _cfg(root, out, *extra):
    return load_config(
        None,
        [
            f"data.root={root}",
            f"output_dir={out}",
            "model.backbone.depth=18",
            "model.backbone.width=8",
            "model.backbone.out_channels=16",
            "model.backbone.frozen_bn=false",
            "model.backbone.freeze_at=0",
            "model.fusion.pixel_channels=4",
            "model.fusion.hidden=16",
            "model.detection.enabled=false",
            "train.task=fusion",
            "train.batch_size=4",
            "train.max_iters=60",
            "train.lr=0.003",
            "train.warmup_iters=5",
            "train.schedule=cosine",
            "train.eval_every=-1",
            "train.checkpoint_every=0",
            "train.log_every=5",
            *extra,
        ],
    )


def test_fusion_training_improves_loss_mi_and_qabf(synth_root, tmp_path):
    cfg = _cfg(synth_root, tmp_path / "run")
    torch.manual_seed(cfg.seed)
    untrained = build_model(cfg.model)
    result = train(cfg, progress=False)
    log = [
        json.loads(line)
        for line in (result.output_dir / "train_log.jsonl").read_text().splitlines()
    ]
    losses = [r["loss_fusion"] for r in log if "loss_fusion" in r]
    assert len(losses) >= 10
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.9 * first, (first, last)

    from e2emfd.engine.checkpoint import load_model_for_inference

    trained, _ = load_model_for_inference(result.checkpoint)
    test_set = build_dataset(cfg.data, "test", build_transforms(cfg.data, train=False))
    before = evaluate(untrained, test_set, torch.device("cpu"), test_set.classes)["fusion"][
        "python"
    ]
    after = evaluate(trained, test_set, torch.device("cpu"), test_set.classes)["fusion"]["python"]
    assert after["MI"] > before["MI"], (before["MI"], after["MI"])
    assert after["Qabf"] > before["Qabf"], (before["Qabf"], after["Qabf"])
    assert (result.output_dir / "config.yaml").is_file()
