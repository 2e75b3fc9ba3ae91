"""Checkpoints written before the two detection heads became one (issue #18) still load,
and give the same losses and detections under the same seeds.

``tests/data/pre_refactor/`` holds, per box kind, a tiny model's checkpoint written by the
code of the commit named in its ``*_expected.json``, the batch it was run on, and what that
code computed (``record.py`` made them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

DATA = Path(__file__).resolve().parent / "data" / "pre_refactor"
sys.path.insert(0, str(DATA))

from record import as_model_batch  # noqa: E402

from e2emfd.engine.checkpoint import load_model_for_inference  # noqa: E402


@pytest.mark.parametrize("kind", ["hbb", "obb"])
def test_pre_refactor_checkpoint_gives_the_recorded_outputs(kind):
    expected = json.loads((DATA / f"{kind}_expected.json").read_text())
    batch = torch.load(DATA / f"{kind}_batch.pt", weights_only=True)
    checkpoint = DATA / f"{kind}.pt"

    model, cfg = load_model_for_inference(checkpoint)
    assert cfg.model.detection.boxes == kind
    model.train()
    torch.manual_seed(1)
    terms = model(as_model_batch(batch))["terms"]
    assert set(terms) == set(expected["terms"])
    for name, value in expected["terms"].items():
        assert float(terms[name].detach()) == pytest.approx(value, rel=1e-5, abs=1e-6), name

    model, _ = load_model_for_inference(checkpoint)
    torch.manual_seed(2)
    detections = model.detect(batch["vis"], batch["ir"])
    fused = model.fuse(batch["vis"], batch["ir"])
    assert float(fused.double().sum()) == pytest.approx(expected["fused_sum"], rel=1e-6)
    assert torch.allclose(fused[0, :, 10, :8], torch.tensor(expected["fused_pixels"]), atol=1e-6)
    for got, want in zip(detections, expected["detections"], strict=True):
        assert len(got["scores"]) == len(want["scores"])
        assert torch.allclose(got["scores"], torch.tensor(want["scores"]), atol=1e-5)
        # near-equal scores may trade places: match each recorded detection by label and box
        for box, label in zip(want["boxes"], want["labels"]):
            close = (got["boxes"] - torch.tensor(box)).abs().amax(-1) < 1e-3
            assert bool((close & (got["labels"] == label)).any()), (box, label)
