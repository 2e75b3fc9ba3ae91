"""``e2emfd info`` (#19 item 5): parameters and FLOPs per part of a checkpoint's model."""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from conftest import TINY_JOINT
from e2emfd.cli.main import main
from e2emfd.config import config_to_dict, load_config
from e2emfd.engine.checkpoint import save_checkpoint
from e2emfd.models import build_model
from e2emfd.models.summary import count_flops, parameter_counts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    cfg = load_config(None, TINY_JOINT + ["model.backbone.freeze_at=2", "data.short_side=240"])
    model = build_model(cfg.model).eval()
    path = tmp_path_factory.mktemp("info") / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(cfg), "step": 7})
    return model, path


def test_parameter_counts_add_up(tiny):
    model, _ = tiny
    counts = parameter_counts(model)
    total = sum(p.numel() for p in model.parameters())
    assert counts["total"]["parameters"] == total
    parts = ("backbone", "fusion", "detection")
    assert sum(counts[k]["parameters"] for k in parts) == total
    backbone = counts["backbone.trunk"]["parameters"] + counts["backbone.fpn"]["parameters"]
    assert backbone == counts["backbone"]["parameters"]
    trunk = model.backbone.trunk  # freeze_at=2: the stem and stage 1
    frozen = sum(p.numel() for m in (trunk.conv1, trunk.bn1, trunk.layer1) for p in m.parameters())
    assert counts["total"]["trainable"] == total - frozen > 0


def test_flops_per_part(tiny):
    model, _ = tiny
    h, w = 64, 96
    flops = count_flops(model, w, h)
    assert flops["total"] == flops["backbone"] + flops["fusion"] + flops["detection"]
    assert flops["backbone"] == flops["backbone.trunk"] + flops["backbone.fpn"]
    # the FPN by hand: both modalities (a batch of 2), a 1x1 lateral and a 3x3 output
    # convolution per level, 2 FLOPs per multiply-add
    out = model.cfg.backbone.out_channels
    fpn = 0
    for stride, channels in zip((4, 8, 16, 32), model.backbone.trunk.out_channels):
        pixels = 2 * (h // stride) * (w // stride)
        fpn += 2 * pixels * out * (channels + 9 * out)
    assert flops["backbone.fpn"] == fpn
    # the fusion head as counted on its own
    vis, ir = torch.rand(1, 3, h, w), torch.rand(1, 1, h, w)
    with torch.no_grad():
        features = model.backbone(vis, ir)
        with FlopCounterMode(display=False) as counter:
            model.fusion(features, vis, ir)
    assert flops["fusion"] == counter.get_total_flops()
    # the detection head's work is per DDIM step; an odd size is measured padded
    model.detector.cfg.sampling_steps = 2
    try:
        assert count_flops(model, w, h)["detection"] == 2 * flops["detection"]
    finally:
        model.detector.cfg.sampling_steps = 1
    assert count_flops(model, w - 5, h - 7)["backbone"] == flops["backbone"]


def test_info_command(tiny, capsys):
    _, path = tiny
    assert main(["info", str(path), "--size", "96x64"]) == 0
    text = capsys.readouterr().out
    assert "(step 7)" in text and "ResNet-18 (width 8" in text and "GFLOPs @ 96x64" in text
    labels = [line[:16].strip() for line in text.splitlines()]
    for row in ("backbone", "ResNet trunk", "FPN", "fusion head", "detection head", "total"):
        assert row in labels
    # default size: 640x512 as the config's training resize (short side 240) leaves it
    assert main(["info", str(path), "--json", "--steps", "2"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["size"] == [300, 240] and summary["step"] == 7
    assert "2 DDIM step(s)" in summary["config"][2]
    assert summary["flops"]["total"] > 0 and summary["parameters"]["total"]["parameters"] > 0
    with pytest.raises(SystemExit):
        main(["info", str(path), "--size", "96by64"])
    assert "size must be WIDTHxHEIGHT" in capsys.readouterr().err
    assert main(["info", str(path.with_name("missing.pt"))]) == 2
    assert "missing.pt: checkpoint not found" in capsys.readouterr().err
