"""The numbers people compare methods by: parameters and FLOPs per part of the model
(backbone, fusion head, detection head) and a one-screen summary of its config.

FLOPs are what ``torch.utils.flop_counter.FlopCounterMode`` counts on one inference
forward (:meth:`E2EMFD.infer`, both heads) of one pair: 2 per multiply-add of the
convolutions and matrix products. RoIAlign, NMS, interpolation and element-wise
operations are not counted; GMACs, the unit many papers call FLOPs, are half of it.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from e2emfd.config import Config


def parameter_counts(model: nn.Module) -> dict[str, dict[str, int]]:
    """Per part: all parameters and the trainable ones (frozen BN statistics and affine
    terms are buffers, not parameters, as in torchvision and detectron2)."""
    parts = {
        "backbone": model.backbone,
        "backbone.trunk": model.backbone.trunk,
        "backbone.fpn": model.backbone.fpn,
        "fusion": model.fusion,
        "detection": model.detector,
        "total": model,
    }
    return {
        name: {
            "parameters": sum(p.numel() for p in part.parameters()),
            "trainable": sum(p.numel() for p in part.parameters() if p.requires_grad),
        }
        for name, part in parts.items()
        if part is not None
    }


@torch.no_grad()
def count_flops(model: nn.Module, width: int, height: int) -> dict[str, int]:
    """FLOPs of one inference forward of one (height, width) pair (padded to the size
    divisor, as inference pads it), per part and in total. The detection head runs its
    configured proposals and DDIM steps."""
    model = model.eval()
    device = next(model.parameters()).device
    divisor = model.size_divisor
    padded = (math.ceil(height / divisor) * divisor, math.ceil(width / divisor) * divisor)
    vis = torch.rand(1, 3, *padded, device=device)
    ir = torch.rand(1, 1, *padded, device=device)
    counter = FlopCounterMode(display=False)
    spent: dict[str, int] = {}
    hooks = []
    for name in ("backbone", "backbone.trunk", "backbone.fpn", "fusion"):
        module = model.get_submodule(name) if name != "fusion" else model.fusion
        if module is None:
            continue

        def start(_module, _args, name=name):
            spent[name] = -counter.get_total_flops()

        def stop(_module, _args, _out, name=name):
            spent[name] += counter.get_total_flops()

        hooks += [module.register_forward_pre_hook(start), module.register_forward_hook(stop)]
    try:
        with counter:
            model.infer(vis, ir, torch.tensor([[height, width]], device=device))
    finally:
        for hook in hooks:
            hook.remove()
    total = counter.get_total_flops()
    if model.detector is not None:
        # the head runs through its own methods, not forward: it is what the others leave
        spent["detection"] = total - spent["backbone"] - spent.get("fusion", 0)
    spent["total"] = total
    return spent


def config_summary(cfg: Config) -> list[str]:
    """A few lines that say what the model is."""
    m = cfg.model
    b = m.backbone
    lines = [
        f"backbone: ResNet-{b.depth} (width {b.width}, "
        f"{'frozen BN' if b.frozen_bn else 'BN'}, freeze_at {b.freeze_at}) + FPN "
        f"{b.out_channels} ch P2-P{6 if b.p6 else 5}; inputs: {m.modality}",
    ]
    if m.fusion.enabled:
        f = m.fusion
        lines.append(
            f"fusion: ORPPT, {f.num_regions} region branches, pixel width {f.pixel_channels}, "
            f"hidden {f.hidden}, {f.norm} norm, colour {f.color}"
        )
    if m.detection.enabled:
        d = m.detection
        lines.append(
            f"detection: CFDP, {d.boxes} boxes, {d.num_classes} classes, "
            f"{d.inference_proposals()} proposals, {d.num_stages} stages, "
            f"{d.sampling_steps} DDIM step(s), hidden {d.hidden}"
        )
        lines.append(f"classes: {', '.join(cfg.data.classes[: d.num_classes])}")
    lines.append(f"trained for: {cfg.train.task}, {cfg.train.mtl}, {cfg.train.max_iters} steps")
    return lines
