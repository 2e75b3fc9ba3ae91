"""The public E2E-MFD M3FD checkpoint's tensors, written from the table of
../shared/spec/official-checkpoint.md (every name and shape), and reference forwards of
its parts written from the public code's structure on those names: what the converter
(e2emfd.engine.official) is tested against. Nothing here imports the converter.

``Dims()`` is the real model; smaller dims give the same names with small shapes (the
fusion net's and head's widths follow the FPN width as in the public code's modules).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

SCHEDULE = (
    "betas alphas_cumprod alphas_cumprod_prev sqrt_alphas_cumprod "
    "sqrt_one_minus_alphas_cumprod log_one_minus_alphas_cumprod sqrt_recip_alphas_cumprod "
    "sqrt_recipm1_alphas_cumprod posterior_variance posterior_log_variance_clipped "
    "posterior_mean_coef1 posterior_mean_coef2"
).split()


@dataclass(frozen=True)
class Dims:
    width: int = 64  # ResNet stem width
    fpn: int = 256  # FPN channels (the fusion net's c2)
    pixel: int = 32  # PFMM first block width (its output, 4 x this, is fpn / 2)
    hidden: int = 256  # head d_model
    ffn: int = 2048
    dynamic: int = 64
    classes: int = 6
    stages: int = 6


def layout(d: Dims = Dims()) -> dict[str, tuple[tuple[int, ...], str]]:
    """name -> (shape, kind); kind: param, metabuffer (the fixed PFMM convs), frozen (a
    FrozenBN tensor), stat (BN running statistic), count (num_batches_tracked), schedule."""
    out: dict[str, tuple[tuple[int, ...], str]] = {}

    def add(name, shape, kind="param"):
        out[name] = (tuple(shape), kind)

    def frozen_bn(prefix, c):
        for k in ("weight", "bias", "running_mean", "running_var"):
            add(f"{prefix}.{k}", [c], "frozen")

    def bn(prefix, c):
        add(f"{prefix}.weight", [c])
        add(f"{prefix}.bias", [c])
        add(f"{prefix}.running_mean", [c], "stat")
        add(f"{prefix}.running_var", [c], "stat")
        add(f"{prefix}.num_batches_tracked", [], "count")

    # backbone: detectron2 ResNet-50 (blocks 3/4/6/3, stride in the 3x3) + FPN
    add("backbone.bottom_up.stem.conv1.weight", [d.width, 3, 7, 7])
    frozen_bn("backbone.bottom_up.stem.conv1.norm", d.width)
    cin = d.width
    for k, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        planes = d.width * 2 ** (k - 2)
        for i in range(blocks):
            p = f"backbone.bottom_up.res{k}.{i}"
            if i == 0:
                add(f"{p}.shortcut.weight", [4 * planes, cin, 1, 1])
                frozen_bn(f"{p}.shortcut.norm", 4 * planes)
            for j, shape in enumerate(
                ([planes, cin, 1, 1], [planes, planes, 3, 3], [4 * planes, planes, 1, 1]), 1
            ):
                add(f"{p}.conv{j}.weight", shape)
                frozen_bn(f"{p}.conv{j}.norm", shape[0])
            cin = 4 * planes
        add(f"backbone.fpn_lateral{k}.weight", [d.fpn, cin, 1, 1])
        add(f"backbone.fpn_lateral{k}.bias", [d.fpn])
        add(f"backbone.fpn_output{k}.weight", [d.fpn, d.fpn, 3, 3])
        add(f"backbone.fpn_output{k}.bias", [d.fpn])
    # fusion net
    half = d.fpn // 2
    for b, (cin, w) in enumerate(((4, d.pixel), (2 * d.pixel, 2 * d.pixel))):
        for j, name in enumerate(("conv1_1", "conv1_2", "conv1_3", "conv1_0_00", "conv1_0_01")):
            add(
                f"fusion.block1.block1.{b}.{name}.weight",
                [w, cin if j == 0 else w, 3, 3],
                "metabuffer",
            )
            add(f"fusion.block1.block1.{b}.{name}.bias", [w], "metabuffer")
    add("fusion.block1.conv2.weight", [half, 2 * d.fpn, 1, 1])
    add("fusion.block1.conv2.bias", [half])
    for a in (1, 2, 3):
        for i in (0, 1):
            add(f"fusion.block1.att{a}.conv.convs.{i}.0.weight", [2, d.fpn, 3, 3])
            bn(f"fusion.block1.att{a}.conv.convs.{i}.1", 2)
        reduction = max(d.fpn // 16, 32)
        add(f"fusion.block1.att{a}.conv.fc.0.weight", [reduction, 2])
        add(f"fusion.block1.att{a}.conv.fc.0.bias", [reduction])
        add(f"fusion.block1.att{a}.conv.fc.2.weight", [4, reduction])
        add(f"fusion.block1.att{a}.conv.fc.2.bias", [4])
    for m in ("conv_module", "conv_module_act", "conv_module_add"):
        add(f"fusion.block1.{m}.conv.weight", [half, half, 1, 1])
        bn(f"fusion.block1.{m}.bn", half)
    widths = [half, half // 2, half // 2, half // 2, half // 4]
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        add(f"fusion.block2.{2 * i}.weight", [b, a, 3, 3])
        add(f"fusion.block2.{2 * i}.bias", [b])
    add("fusion.block2.8.weight", [2, widths[-1], 1, 1])
    add("fusion.block2.8.bias", [2])
    # DiffusionDet head
    h = d.hidden
    add("head.time_mlp.1.weight", [4 * h, h])
    add("head.time_mlp.1.bias", [4 * h])
    add("head.time_mlp.3.weight", [4 * h, 4 * h])
    add("head.time_mlp.3.bias", [4 * h])
    for s in range(d.stages):
        p = f"head.head_series.{s}"
        add(f"{p}.self_attn.in_proj_weight", [3 * h, h])
        add(f"{p}.self_attn.in_proj_bias", [3 * h])
        add(f"{p}.self_attn.out_proj.weight", [h, h])
        add(f"{p}.self_attn.out_proj.bias", [h])
        add(f"{p}.inst_interact.dynamic_layer.weight", [2 * h * d.dynamic, h])
        add(f"{p}.inst_interact.dynamic_layer.bias", [2 * h * d.dynamic])
        for n, c in (("norm1", d.dynamic), ("norm2", h), ("norm3", h)):
            add(f"{p}.inst_interact.{n}.weight", [c])
            add(f"{p}.inst_interact.{n}.bias", [c])
        add(f"{p}.inst_interact.out_layer.weight", [h, h * 49])
        add(f"{p}.inst_interact.out_layer.bias", [h])
        add(f"{p}.linear1.weight", [d.ffn, h])
        add(f"{p}.linear1.bias", [d.ffn])
        add(f"{p}.linear2.weight", [h, d.ffn])
        add(f"{p}.linear2.bias", [h])
        for n in ("norm1", "norm2", "norm3"):
            add(f"{p}.{n}.weight", [h])
            add(f"{p}.{n}.bias", [h])
        add(f"{p}.block_time_mlp.1.weight", [2 * h, 4 * h])
        add(f"{p}.block_time_mlp.1.bias", [2 * h])
        for module, linears in (("cls_module", (0,)), ("reg_module", (0, 3, 6))):
            for i in linears:
                add(f"{p}.{module}.{i}.weight", [h, h])
                add(f"{p}.{module}.{i + 1}.weight", [h])
                add(f"{p}.{module}.{i + 1}.bias", [h])
        add(f"{p}.class_logits.weight", [d.classes, h])
        add(f"{p}.class_logits.bias", [d.classes])
        add(f"{p}.bboxes_delta.weight", [4, h])
        add(f"{p}.bboxes_delta.bias", [4])
    for name in SCHEDULE:
        add(name, [1000], "schedule")
    add("criterion_fuse.lap.gauss_kernel.weight", [1, 1, 5, 5], "param")
    return out


def diffusiondet_schedule(timesteps: int = 1000, s: float = 0.008) -> dict[str, torch.Tensor]:
    """DiffusionDet's buffers as its detector.py computes them (float64)."""
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    ac = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    ac = ac / ac[0]
    betas = torch.clip(1 - ac[1:] / ac[:-1], 0, 0.999)
    alphas = 1.0 - betas
    cum = torch.cumprod(alphas, 0)
    prev = F.pad(cum[:-1], (1, 0), value=1.0)
    var = betas * (1.0 - prev) / (1.0 - cum)
    return {
        "betas": betas,
        "alphas_cumprod": cum,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": torch.sqrt(cum),
        "sqrt_one_minus_alphas_cumprod": torch.sqrt(1.0 - cum),
        "log_one_minus_alphas_cumprod": torch.log(1.0 - cum),
        "sqrt_recip_alphas_cumprod": torch.sqrt(1.0 / cum),
        "sqrt_recipm1_alphas_cumprod": torch.sqrt(1.0 / cum - 1),
        "posterior_variance": var,
        "posterior_log_variance_clipped": torch.log(var.clamp(min=1e-20)),
        "posterior_mean_coef1": betas * torch.sqrt(prev) / (1.0 - cum),
        "posterior_mean_coef2": (1.0 - prev) * torch.sqrt(alphas) / (1.0 - cum),
    }


def make_state(d: Dims = Dims(), seed: int = 0, std: float = 0.05) -> dict[str, torch.Tensor]:
    """A state dict of the layout with random values (positive variances, true schedule)."""
    gen = torch.Generator().manual_seed(seed)
    schedule = diffusiondet_schedule()
    state = {}
    for name, (shape, kind) in layout(d).items():
        if kind == "schedule":
            state[name] = schedule[name]
        elif kind == "count":
            state[name] = torch.tensor(15000)
        elif name.endswith("running_var"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        elif name.endswith("norm.weight") or name.endswith("bn.weight"):
            state[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            state[name] = torch.randn(shape, generator=gen) * std
    return state
