"""e2emfd convert-official (#19 item 2) on state dicts built from the spec's table of the
public M3FD checkpoint (../shared/spec/official-checkpoint.md; the real file cannot be
downloaded here): every tensor consumed, the converted file loads and runs, and each
part's numerics equal a reference forward written from the public code's structure on
the file's own tensor names (tests/official_reference.py).

Most tests use the same names with small widths (``TINY``); one converts the full-size
layout (111 M parameters)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import official_reference as ref
from e2emfd.cli.main import main
from e2emfd.config import ConfigError, config_to_dict, load_config
from e2emfd.engine.checkpoint import load_model_for_inference
from e2emfd.engine.official import convert_official, map_official, official_config
from official_layout import Dims, layout, make_state

ROOT = Path(__file__).resolve().parents[1]
TINY = Dims(width=8, fpn=16, pixel=2, hidden=16, ffn=32, dynamic=4, classes=3, stages=2)
TINY_YAML = """\
_base_: {base}
model:
  backbone: {{width: 8, out_channels: 16}}
  fusion: {{pixel_channels: 2, hidden: 8}}
  detection: {{hidden: 16, num_heads: 2, dim_dynamic: 4, dim_feedforward: 32,
              num_classes: 3, num_stages: 2, num_proposals: 10}}
"""


def _save(state, path, iteration=14999):
    # as detectron2's Checkpointer saves it
    torch.save(
        {"model": state, "optimizer": {"state": {}}, "scheduler": {}, "iteration": iteration}, path
    )
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("official")
    config = folder / "tiny_official.yaml"
    config.write_text(TINY_YAML.format(base=ROOT / "configs" / "m3fd_official.yaml"))
    state = make_state(TINY)
    source = _save(state, folder / "model_0014999.pth")
    out = folder / "converted.pt"
    assert main(["convert-official", str(source), str(out), "--config", str(config)]) == 0
    model, cfg = load_model_for_inference(out)
    return {"state": state, "model": model, "cfg": cfg, "config": config, "folder": folder}


def _pair(b=1, h=64, w=96, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=gen), torch.rand(b, 1, h, w, generator=gen)


def test_the_table_is_the_spec():
    # the spec's sizes, computed from the table's shapes
    table = layout()

    def values(keep):
        return sum(math.prod(shape) for name, (shape, kind) in table.items() if keep(name, kind))

    assert values(lambda n, k: "fpn_" in n) == 3_344_384
    assert values(lambda n, k: n.startswith("fusion.") and k == "param") == 310_118
    assert values(lambda n, k: k == "metabuffer") == 222_816
    assert values(lambda n, k: n.startswith("head.head_series.0.")) == 13_741_194
    assert values(lambda n, k: n.startswith("head.time_mlp")) == 1_312_768
    assert values(lambda n, k: n.startswith("head.")) == 83_759_932


def test_every_tensor_is_consumed_and_the_model_runs(tiny, capsys):
    state, model = tiny["state"], tiny["model"]
    mapped, unknown, missing, incomplete = map_official(state)
    assert not unknown and not missing and not incomplete
    # 10 PFMM head convolutions (weight, bias) pair up into 4 tensors; 19 are dropped
    assert len(mapped) == len(state) - 19 - 4
    own = model.state_dict()
    assert mapped.keys() == own.keys()
    for key, tensor in mapped.items():
        assert torch.equal(own[key], tensor.to(own[key].dtype)), key
    torch.testing.assert_close(
        own["fusion.pixel.block2.heads.0.weight"],
        torch.cat([state[f"fusion.block1.block1.1.conv1_0_0{i}.weight"] for i in (0, 1)]),
    )
    assert tiny["cfg"].model.fusion.sk_softmax == "maps"
    vis, ir = _pair(2, 70, 90)
    assert model.fuse(vis, ir).shape == (2, 3, 70, 90)
    detections = model.detect(vis, ir)
    assert len(detections) == 2 and detections[0]["boxes"].shape[1] == 4


def test_backbone_equals_detectron2_resnet_fpn(tiny):
    # FrozenBN, the 0-255 normalisation, stride in the 3x3, FPN and its max-pool top block
    vis, ir = _pair()
    with torch.no_grad():
        ours = tiny["model"].backbone(vis, ir)
        theirs = ref.backbone_features(tiny["state"], vis, ir)
    assert list(ours) == ["p2", "p3", "p4", "p5", "p6"]
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(ours["p6"], ours["p5"][..., ::2, ::2], atol=0, rtol=0)


def test_fusion_equals_the_public_fusion_net(tiny):
    model, state = tiny["model"], tiny["state"]
    vis, ir = _pair(2)
    with torch.no_grad():
        features = model.backbone(vis, ir)
        ours = model.fusion(features, vis, ir)
        weights = ref.fusion_weights(state, [features[k] for k in ("p2", "p3", "p4")],
                                     torch.cat([ir, vis], 1))  # fmt: skip
    torch.testing.assert_close(ours["w_ir"], weights[:, :1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours["w_vis"], weights[:, 1:], atol=1e-5, rtol=1e-4)
    # the fused channel: w_ir * IR + w_vis * V (HSV value), clipped as the public code's
    # conversion to 8 bits clips it
    expected = (weights[:, :1] * ir + weights[:, 1:] * vis.amax(1, keepdim=True)).clamp(0, 1)
    torch.testing.assert_close(model.fuse(vis, ir, color="gray"), expected, atol=1e-5, rtol=0)


def test_head_stages_equal_diffusiondet(tiny):
    model, state = tiny["model"], tiny["state"]
    head = model.detector
    gen = torch.Generator().manual_seed(3)
    t = torch.tensor([999, 321])
    time_emb = head.time_mlp(t)
    torch.testing.assert_close(time_emb, ref.time_embedding(state, t, 16), atol=1e-5, rtol=1e-5)
    xy = torch.rand(2, 10, 2, generator=gen) * 60
    boxes = torch.cat([xy, xy + 4 + torch.rand(2, 10, 2, generator=gen) * 40], -1)
    rois = torch.randn(20, 16, 7, 7, generator=gen)
    pro, ref_pro = None, None
    with torch.no_grad():
        for s, stage in enumerate(head.stages):
            logits, new_boxes, pro = stage(rois, boxes, pro, time_emb)
            r_logits, r_boxes, ref_pro = ref.rcnn_head(state, s, rois, boxes, ref_pro, time_emb, 2)
            torch.testing.assert_close(logits, r_logits, atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(new_boxes, r_boxes, atol=1e-3, rtol=1e-4)
            torch.testing.assert_close(pro, ref_pro, atol=1e-4, rtol=1e-4)


def test_roi_align_v2_with_the_detectron2_level_rule(tiny):
    pooler = tiny["model"].detector.pooler
    gen = torch.Generator().manual_seed(4)
    h, w = 128, 160
    features = {
        f"p{k}": torch.randn(2, 16, h // 2**k, w // 2**k, generator=gen) for k in (2, 3, 4, 5)
    }
    sides = [8.0, 30.0, 70.0, 110.0, 200.0, 300.0, 460.0, 700.0]  # all four levels, borders
    boxes = torch.tensor([[[10.0 + i, 5.0 + 2 * i, 10.0 + i + s, 5.0 + 2 * i + 0.7 * s]
                           for i, s in enumerate(sides)]] * 2)  # fmt: skip
    boxes[1] -= 20.0  # partly outside the image
    with torch.no_grad():
        pooled = pooler(pooler.prepare([features[f"p{k}"] for k in (2, 3, 4, 5)]), boxes)
    levels = set()
    for i in range(2):
        for j in range(len(sides)):
            expected, level = ref.roi_pool(features, i, boxes[i, j].tolist())
            levels.add(level)
            torch.testing.assert_close(pooled[i * len(sides) + j], expected, atol=1e-5, rtol=1e-4)
    assert levels == {2, 3, 4, 5}


def test_frozen_bn_uses_eps_1e5(tiny):
    bn = tiny["model"].backbone.trunk.bn1
    state = tiny["state"]
    x = torch.randn(2, 8, 5, 5)
    original = bn.running_var.clone()
    bn.running_var.fill_(1e-5)  # where eps matters: sqrt(2e-5), not sqrt(1e-5)
    try:
        p = "backbone.bottom_up.stem.conv1.norm"
        expected = (x - state[f"{p}.running_mean"][:, None, None]) / math.sqrt(2e-5)
        expected = (
            expected * state[f"{p}.weight"][:, None, None] + state[f"{p}.bias"][:, None, None]
        )
        torch.testing.assert_close(bn(x), expected, atol=1e-4, rtol=1e-5)
    finally:
        bn.running_var.copy_(original)


def _refused(tmp, state, config, match):
    path = _save(state, tmp / "bad.pth")
    with pytest.raises(ValueError, match=match) as info:
        convert_official(path, tmp / "out.pt", config)
    assert "\n" not in str(info.value)
    assert not (tmp / "out.pt").exists()


def test_files_in_another_layout_are_refused(tiny, tmp_path, capsys):
    state, config = tiny["state"], tiny["config"]
    _refused(tmp_path, {**state, "head.extra.weight": torch.zeros(1)}, config,
             r"1 tensors no rule maps: head\.extra\.weight")  # fmt: skip
    for gone, named in [
        ("head.head_series.1.norm2.bias", r"detector\.stages\.1\.norm2\.bias"),
        ("criterion_fuse.lap.gauss_kernel.weight", r"criterion_fuse\.lap\.gauss_kernel\.weight"),
        (
            "fusion.block1.block1.0.conv1_0_01.weight",
            r"fusion\.block1\.block1\.0\.conv1_0_01\.weight",
        ),
    ]:
        smaller = {k: v for k, v in state.items() if k != gone}
        _refused(tmp_path, smaller, config, r"1 missing tensors: " + named)
    wrong = {**state, "head.head_series.0.class_logits.weight": torch.zeros(5, 16)}
    named = r"detector\.stages\.0\.class_logits\.weight \(5, 16\) vs model \(3, 16\)"
    _refused(tmp_path, wrong, config, r"shapes that differ: " + named)
    schedule = {**state, "betas": state["betas"] * 1.01}
    _refused(tmp_path, schedule, config, r"betas is not the cosine schedule")
    # the full-size model's config on the small file: every shape is named as differing
    with pytest.raises(ValueError, match=r"shapes that differ: backbone\.fpn"):
        convert_official(_save(state, tmp_path / "small.pth"), tmp_path / "out.pt")
    torch.save({"weights": 1}, tmp_path / "foreign.pth")
    assert main(["convert-official", str(tmp_path / "foreign.pth"), str(tmp_path / "o.pt")]) == 2
    assert "foreign.pth: holds no 'model' state dict" in capsys.readouterr().err


def test_official_yaml_is_the_builtin_layout():
    yaml_cfg = official_config(ROOT / "configs" / "m3fd_official.yaml")
    assert config_to_dict(yaml_cfg)["model"] == config_to_dict(official_config())["model"]
    with pytest.raises(ConfigError, match=r"model\.fusion\.sk_softmax: expected paths or maps"):
        load_config(None, ["model.fusion.sk_softmax=channels"])


@pytest.mark.slow
def test_full_size_file_converts(tmp_path, capsys):
    source = _save(make_state(Dims(), std=0.01), tmp_path / "model_0014999.pth")
    out = tmp_path / "m3fd_official.pt"
    assert main(["convert-official", str(source), str(out)]) == 0
    printed = capsys.readouterr().out
    assert (
        "629 of 648 tensors mapped, 19 dropped" in printed and "111,075,522 parameters" in printed
    )
    model, cfg = load_model_for_inference(out)
    assert cfg.model.backbone.depth == 50 and cfg.data.classes[0] == "People"
    vis, ir = _pair(1, 64, 64)
    assert model.fuse(vis, ir).shape == (1, 3, 64, 64)
    assert len(model.detect(vis, ir, num_proposals=20)) == 1
