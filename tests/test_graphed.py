"""The fixed-shape inference runner (CUDA graphs on a GPU, the same code eagerly on CPU)
against the model's own tensor APIs ``fuse`` and ``detect``."""

import pytest
import torch

from conftest import TINY_JOINT
from e2emfd.config import load_config
from e2emfd.engine.graphed import GraphedInference
from e2emfd.models import build_model

H, W, B = 70, 90, 2  # not multiples of 32: the runner pads like fuse/detect do


def _model(*extra):
    model = build_model(load_config(None, TINY_JOINT + list(extra)).model).eval()
    # a detector at its initial prior scores every box alike; perturb it so that NMS and
    # the ranking have something to decide
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def _images(seed=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, 3, H, W, generator=g), torch.rand(B, 1, H, W, generator=g)


@pytest.mark.parametrize("boxes", ["hbb", "obb"])
def test_runner_matches_fuse_and_detect(boxes):
    # 3 DDIM steps with box renewal and the ensemble: the renewal draws are inputs too
    extra = ["model.detection.sampling_steps=3", "model.detection.box_renewal=true"]
    if boxes == "obb":
        extra += ["data.boxes=obb", "model.detection.boxes=obb", "model.detection.num_classes=3"]
    model = _model(*extra)
    vis, ir = _images()
    runner = GraphedInference(model, B, H, W)
    n, dim = runner.num_proposals, model.detector.codec.dim
    torch.manual_seed(11)
    noise = model.detector.draw_noise(B, n, 3, "cpu")
    assert noise.shape == (5, B, n, dim)
    out = runner(vis, ir, noise=noise)
    torch.manual_seed(11)  # detect draws the same starting boxes from the same seed
    expected = model.detect(vis, ir)

    assert out["fused_rgb"].shape == (B, 3, H, W)
    torch.testing.assert_close(out["fused_rgb"], model.fuse(vis, ir), rtol=0, atol=1e-6)
    assert len(out["detections"]) == B
    for got, ref in zip(out["detections"], expected):
        assert ref["scores"].numel() > 0
        for key in ("boxes", "scores", "labels"):
            torch.testing.assert_close(got[key], ref[key], rtol=0, atol=1e-5)


def test_runner_single_head_paths_and_shape_check():
    model = _model()
    vis, ir = _images()
    fusion_only = GraphedInference(model, B, H, W, detection=False)(vis, ir)
    assert fusion_only["detections"] is None and fusion_only["fused"].shape == (B, 1, H, W)
    detection_only = GraphedInference(model, B, H, W, fusion=False)(vis, ir)
    assert detection_only["fused"] is None and len(detection_only["detections"]) == B

    runner = GraphedInference(model, B, H, W, num_proposals=7)
    assert runner(vis, ir)["detections"][0]["scores"].numel() <= 7 * model.detector.num_classes
    with pytest.raises(ValueError, match="serves batches of 2 images of 70x90"):
        runner(vis[:, :, :64], ir[:, :, :64])
