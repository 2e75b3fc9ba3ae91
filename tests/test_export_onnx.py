"""ONNX export (#19 item 3): the exported graph run by onnxruntime on CPU against the
PyTorch model, at batch sizes and image sizes other than the export example's.

The detector is crafted, not trained: random perturbations of every weight and the last
stage's class prior removed, so that its scores spread over (0, 1) and many overlapping
boxes reach NMS (an untrained head scores every box at its 0.01 prior). The exports take
half a minute each on a loaded 2-core machine, hence the slow marks; the first two tests
check the graph's parts eagerly in a second.
"""

from __future__ import annotations

import pytest
import torch

from conftest import TINY_JOINT
from e2emfd.boxes import box_codec
from e2emfd.cli.main import main
from e2emfd.config import config_to_dict, load_config
from e2emfd.engine.checkpoint import save_checkpoint
from e2emfd.export import (
    AllLevelsRoIAlign,
    InferenceGraph,
    compare_detections,
    graph_copy,
    read_metadata,
    run_onnx,
    select,
)
from e2emfd.models import build_model

OBB = ["data.boxes=obb", "model.detection.boxes=obb", "model.detection.num_classes=3"]


def _crafted(*extra):
    # 2 DDIM steps (box renewal and the ensemble in the graph), deterministic updates
    steps = ["model.detection.sampling_steps=2", "model.detection.ddim_eta=0.0"]
    cfg = load_config(None, TINY_JOINT + steps + list(extra))
    model = build_model(cfg.model).eval()
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.05)
        model.detector.stages[-1].class_logits.bias.zero_()
    return model, cfg


def _pair(b, h, w, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, h, w, generator=gen), torch.rand(b, 1, h, w, generator=gen)


def _assert_same_detections(got, expected):
    for a, b in zip(got, expected, strict=True):
        report = compare_detections(a, b)
        assert report["paired"] > 0 and report["unpaired"] == 0, report
        assert report["box_max_diff"] < 1e-2 and report["score_max_diff"] < 1e-3, report


@pytest.mark.parametrize("boxes", ["hbb", "obb"])
def test_graph_parts_equal_the_model_eagerly(boxes):
    # the fixed-shape pooler, the in-graph NMS and the whole graph, run by PyTorch
    model, _ = _crafted(*(OBB if boxes == "obb" else []))
    graph = InferenceGraph(graph_copy(model), ("fusion", "detection"))
    vis, ir = _pair(2, 64, 96)
    features = [torch.randn(2, 32, 64 // s, 96 // s) for s in (4, 8, 16, 32)]
    own = model.detector.pooler
    boxes_in = model.detector.codec.from_signal(
        torch.randn(2, 20, own.codec.dim),
        model.detector.box_scale(torch.tensor([[64, 96]] * 2))[:, None],
        2.0,
    )
    torch.testing.assert_close(
        AllLevelsRoIAlign.like(own)(features, boxes_in),
        own(own.prepare(features), boxes_in),
        atol=1e-5,
        rtol=1e-5,
    )
    noise = model.detector.draw_noise(2, 20, 2, "cpu")
    with torch.no_grad():
        fused, *dets = graph(vis, ir, noise)
    torch.testing.assert_close(fused, model.fuse(vis, ir), atol=1e-6, rtol=0)
    meta = {"nms": "graph" if boxes == "hbb" else "select", "config": config_to_dict(model.cfg)}
    got = select(meta, dict(zip(("boxes", "scores", "labels"), dets)), torch.tensor([[64, 96]] * 2))
    _assert_same_detections(got, model.detect(vis, ir, noise=noise))


def test_graph_nms_equals_select_detections():
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(3, 200, 2, generator=gen) * 80
    boxes = torch.cat([xy, xy + 5 + torch.rand(3, 200, 2, generator=gen) * 30], -1)
    scores = torch.rand(3, 200, generator=gen)
    labels = torch.randint(0, 4, (3, 200), generator=gen)
    whwh = torch.tensor([[96.0, 64.0, 96.0, 64.0]] * 3)
    cfg = load_config(None, ["model.detection.num_classes=4"]).model.detection
    from e2emfd.export import graph_select

    out = graph_select(scores, labels, boxes, whwh, cfg)
    got = select({"nms": "graph"}, dict(zip(("boxes", "scores", "labels"), out)), None)
    expected = box_codec("hbb").select((scores, labels, boxes), whwh, cfg)
    for a, b in zip(got, expected):
        assert len(a["scores"]) == len(b["scores"]) > 10
        torch.testing.assert_close(a["scores"], b["scores"])
        torch.testing.assert_close(a["boxes"], b["boxes"])
        assert torch.equal(a["labels"], b["labels"])


@pytest.fixture(scope="module")
def hbb_checkpoint(tmp_path_factory):
    model, cfg = _crafted()
    path = tmp_path_factory.mktemp("onnx") / "crafted.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(cfg), "step": 0})
    return model, path


@pytest.mark.slow
def test_exported_graph_matches_pytorch(hbb_checkpoint, capsys):
    model, ckpt = hbb_checkpoint
    onnx_path = ckpt.with_name("joint.onnx")
    assert main(["export", "--weights", str(ckpt), "--out", str(onnx_path), "--verify"]) == 0
    printed = capsys.readouterr().out
    assert "fused max |diff|" in printed and "0 unpaired" in printed
    meta = read_metadata(onnx_path)
    assert meta["inputs"] == ["visible", "infrared", "noise"]
    assert meta["outputs"] == ["fused", "boxes", "scores", "labels"]
    assert meta["noise_shape"] == [3, "batch", 20, 4] and meta["nms"] == "graph"
    for b, h, w in [(1, 64, 128), (3, 96, 64)]:  # not the export example's (2, 64, 96)
        vis, ir = _pair(b, h, w, seed=b)
        noise = torch.randn(3, b, 20, 4)
        out = run_onnx(onnx_path, vis, ir, noise)
        assert out["boxes"].shape == (b, 40, 4) and out["labels"].dtype.name == "int64"
        fused = torch.from_numpy(out["fused"])
        torch.testing.assert_close(fused, model.fuse(vis, ir), atol=1e-4, rtol=0)
        got = select(meta, out, torch.tensor([[h, w]] * b))
        _assert_same_detections(got, model.detect(vis, ir, noise=noise))


@pytest.mark.slow
def test_fusion_only_export(hbb_checkpoint):
    model, ckpt = hbb_checkpoint
    onnx_path = ckpt.with_name("fusion.onnx")
    assert main(["export", "--weights", str(ckpt), "--out", str(onnx_path), "--fusion-only"]) == 0
    meta = read_metadata(onnx_path)
    assert meta["inputs"] == ["visible", "infrared"] and meta["outputs"] == ["fused"]
    vis, ir = _pair(2, 96, 160)
    out = run_onnx(onnx_path, vis, ir)
    assert list(out) == ["fused"]
    torch.testing.assert_close(
        torch.from_numpy(out["fused"]), model.fuse(vis, ir), atol=1e-4, rtol=0
    )


@pytest.mark.slow
def test_rotated_export_ends_before_nms(tmp_path):
    from e2emfd.export import export_onnx

    # one step and one stage: the rotated pooling and the select step are what is new here
    model, _ = _crafted(*OBB, "model.detection.num_stages=1")
    meta = export_onnx(model, tmp_path / "obb.onnx", sampling_steps=1)
    assert meta["nms"] == "select" and meta["noise_shape"] == [1, "batch", 20, 5]
    vis, ir = _pair(2, 96, 64)
    noise = torch.randn(1, 2, 20, 5)
    out = run_onnx(tmp_path / "obb.onnx", vis, ir, noise)
    assert out["boxes"].shape == (2, 20, 5)  # the candidates before NMS
    got = select(read_metadata(tmp_path / "obb.onnx"), out, torch.tensor([[96, 64]] * 2))
    _assert_same_detections(got, model.detect(vis, ir, noise=noise))


def test_fusion_only_export_needs_a_fusion_head(tmp_path):
    from e2emfd.export import export_onnx

    with pytest.raises(ValueError, match=r"--fusion-only: this model has no fusion head"):
        export_onnx(
            _crafted("model.fusion.enabled=false")[0], tmp_path / "m.onnx", fusion_only=True
        )
