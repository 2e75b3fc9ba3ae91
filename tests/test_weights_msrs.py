"""The checkpoint shipped in ``weights/``: it loads, fits the size limit, and scores on the
MSRS val pairs what ``weights/README.md`` states (within 0.01 AP50), so the README's figure
is checked against the file, not copied from a log."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from e2emfd.config import load_config
from e2emfd.data import build_dataset, build_transforms
from e2emfd.engine.checkpoint import load_checkpoint, load_model_for_inference
from e2emfd.engine.evaluate import evaluate

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "weights" / "msrs_cpu.pt"
README = ROOT / "weights" / "README.md"
MAX_BYTES = 10 * 1024 * 1024


def _stated(metric: str) -> float:
    """The figure the README states as ``<metric> (val): 0.xxx``."""
    match = re.search(rf"{re.escape(metric)} \(val\): \*?\*?([0-9.]+)", README.read_text())
    assert match, f"{README} states no '{metric} (val): ...'"
    return float(match.group(1))


def test_shipped_checkpoint_is_small_and_inference_only():
    assert WEIGHTS.stat().st_size <= MAX_BYTES
    state = load_checkpoint(WEIGHTS)
    # weights, config and step; no training state to carry around
    assert set(state) == {"format", "model", "config", "step"}
    assert state["config"]["model"]["detection"]["num_classes"] == 3


@pytest.mark.slow
def test_shipped_checkpoint_scores_what_its_readme_states(shared_data):
    root = shared_data / "msrs_det"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    model, _ = load_model_for_inference(WEIGHTS)
    cfg = load_config(ROOT / "configs" / "msrs_cpu.yaml", [f"data.root={root}"])
    val = build_dataset(cfg.data, cfg.data.test_split, build_transforms(cfg.data, train=False))
    assert len(val) == 76
    # the same evaluation as `e2emfd eval` (seeded starting boxes), without the fusion metrics
    scores = evaluate(model, val, torch.device("cpu"), val.classes, conventions=(), seed=0)
    assert abs(scores["detection"]["AP50"] - _stated("AP50")) <= 0.01
    assert abs(scores["detection"]["AP"] - _stated("AP50:95")) <= 0.01
