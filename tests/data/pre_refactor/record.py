"""Records the outputs that tests/test_refactor_equivalence.py checks: run once, at commit
<recorded below>, before the detection heads were merged into one (issue #18).

For each box kind: a tiny E2E-MFD (axis-aligned on street-scene classes, rotated on
aerial classes) trained for a few steps on a fixed random batch, its checkpoint, the batch,
its training losses under a fixed seed and its fused image and detections under another.

    python tests/data/pre_refactor/record.py
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from conftest import TINY_JOINT  # noqa: E402
from e2emfd.config import config_to_dict, load_config  # noqa: E402
from e2emfd.engine.checkpoint import load_model_for_inference, save_checkpoint  # noqa: E402
from e2emfd.models import build_model  # noqa: E402

KINDS = {
    "hbb": ["model.detection.num_classes=3"],
    "obb": [
        "data.boxes=obb",
        "model.detection.boxes=obb",
        "model.detection.num_classes=3",
    ],
}


def make_batch(kind: str) -> dict:
    gen = torch.Generator().manual_seed(7)
    vis = torch.rand(2, 3, 64, 96, generator=gen)
    ir = torch.rand(2, 1, 64, 96, generator=gen)
    if kind == "hbb":
        boxes = [
            torch.tensor([[10.0, 8, 40, 30], [50, 20, 80, 60]]),
            torch.tensor([[5.0, 5, 30, 50]]),
        ]
    else:
        boxes = [
            torch.tensor([[25.0, 20, 30, 12, 0.4], [65, 40, 28, 10, -1.0]]),
            torch.tensor([[20.0, 30, 40, 14, 1.2]]),
        ]
    labels = [torch.tensor([0, 2]), torch.tensor([1])]
    return {"vis": vis, "ir": ir, "boxes": boxes, "labels": labels}


def as_model_batch(b: dict, seeds=(11, 12)) -> dict:
    targets = [
        {"boxes": bx, "labels": lb, "difficult": torch.zeros(len(lb), dtype=torch.bool), "seed": s}
        for bx, lb, s in zip(b["boxes"], b["labels"], seeds)
    ]
    sizes = torch.tensor([[64, 96], [64, 96]])
    return {"vis": b["vis"], "ir": b["ir"], "image_sizes": sizes, "targets": targets}


def outputs(checkpoint: Path, b: dict) -> dict:
    """What the test compares: training losses (seed 1) and inference (seed 2)."""
    model, _ = load_model_for_inference(checkpoint)
    model.train()
    torch.manual_seed(1)
    terms = {k: float(v.detach()) for k, v in model(as_model_batch(b))["terms"].items()}
    model, _ = load_model_for_inference(checkpoint)
    torch.manual_seed(2)
    dets = model.detect(b["vis"], b["ir"])
    fused = model.fuse(b["vis"], b["ir"])
    return {
        "terms": terms,
        "detections": [{k: v.tolist() for k, v in d.items()} for d in dets],
        "fused_sum": float(fused.double().sum()),
        "fused_pixels": fused[0, :, 10, :8].tolist(),
    }


def main() -> None:
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=HERE
    ).stdout.strip()
    for kind, extra in KINDS.items():
        cfg = load_config(None, TINY_JOINT + extra)
        torch.manual_seed(0)
        model = build_model(cfg.model)
        b = make_batch(kind)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
        for step in range(20):  # a few steps, so that scores are not all the prior
            opt.zero_grad()
            torch.manual_seed(100 + step)
            losses = model(as_model_batch(b, (step, step + 50)))["losses"]
            sum(losses.values()).backward()
            opt.step()
        path = HERE / f"{kind}.pt"
        save_checkpoint(
            path, {"model": model.state_dict(), "config": config_to_dict(cfg), "step": 20}
        )
        torch.save(b, HERE / f"{kind}_batch.pt")
        record = {"commit": commit, **outputs(path, b)}
        (HERE / f"{kind}_expected.json").write_text(json.dumps(record, indent=1))
        print(kind, record["terms"], len(record["detections"][0]["scores"]))


if __name__ == "__main__":
    main()
