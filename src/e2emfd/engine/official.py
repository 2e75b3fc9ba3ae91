"""The public E2E-MFD M3FD checkpoint (icey-zhang/E2E-MFD-HOD, detectron2 + DiffusionDet)
converted into an e2emfd checkpoint (``e2emfd convert-official``).

The layout is ../shared/spec/official-checkpoint.md. The model is built from
:func:`official_config` (= ``configs/m3fd_official.yaml``): ResNet-50-FPN with frozen BN,
the fusion head in the public code's variant (``model.fusion.region_align_corners``,
``model.fusion.sk_softmax=maps``, HSV colour), the stock DiffusionDet head. Every tensor
of the file is either mapped onto a tensor of that model or dropped for a stated reason
(the diffusion schedule is recomputed and compared first); a tensor no rule knows, one
the model needs that the file lacks, or a shape that differs refuses the file, naming
them. The input conventions need no conversion: the public code normalises 0-255 pixels
with the ImageNet mean and std x 255, the same function as ours on [0, 1] pixels, and
feeds the fusion net cat(IR, RGB) / 255, as ours does.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import torch
from torch import Tensor

from e2emfd.config import Config, config_to_dict, load_config
from e2emfd.engine.checkpoint import load_model_state, save_checkpoint
from e2emfd.models.detection import cosine_alphas_cumprod

# the public model's settings; configs/m3fd_official.yaml holds the same model section
OFFICIAL_OVERRIDES = (
    "name=m3fd_official",
    "output_dir=runs/m3fd_official",
    "model.backbone.depth=50",
    "model.backbone.width=64",
    "model.backbone.out_channels=256",
    "model.backbone.p6=true",
    "model.backbone.frozen_bn=true",
    "model.backbone.freeze_at=2",
    "model.fusion.num_regions=3",
    "model.fusion.pixel_channels=32",
    "model.fusion.hidden=128",
    "model.fusion.region_paths=2",
    "model.fusion.norm=bn",
    "model.fusion.color=hsv",
    "model.fusion.region_align_corners=true",
    "model.fusion.sk_softmax=maps",
    "model.detection.boxes=hbb",
    "model.detection.num_classes=6",
    "model.detection.num_proposals=500",
    "model.detection.num_stages=6",
    "model.detection.hidden=256",
    "model.detection.sampling_steps=1",
)

SCHEDULE = (
    "betas",
    "alphas_cumprod",
    "alphas_cumprod_prev",
    "sqrt_alphas_cumprod",
    "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod",
    "sqrt_recip_alphas_cumprod",
    "sqrt_recipm1_alphas_cumprod",
    "posterior_variance",
    "posterior_log_variance_clipped",
    "posterior_mean_coef1",
    "posterior_mean_coef2",
)
_BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# in the file, not in the model, and why
DROPPED = {
    **{name: "diffusion schedule, recomputed by the head (checked equal)" for name in SCHEDULE},
    "criterion_fuse.lap.gauss_kernel.weight": "a fusion-loss kernel its forward never reads",
    "fusion.block1.conv_module_add.conv.weight": "a ConvModule built but never called",
    **{f"fusion.block1.conv_module_add.bn.{k}": "a ConvModule built but never called" for k in _BN},
}
# the two parallel head convolutions of each PFMM block, stored here as one convolution
# with both outputs (first conv1_0_00's, then conv1_0_01's)
HEAD_HALVES = re.compile(r"fusion\.block1\.block1\.([01])\.conv1_0_0([01])\.(weight|bias)")

Rule = tuple[re.Pattern, Callable[[re.Match], str]]


def _rules() -> list[Rule]:
    def layer(m):  # detectron2 res2..res5 = torchvision layer1..layer4
        return f"backbone.trunk.layer{int(m[1]) - 1}.{m[2]}"

    table: list[tuple[str, Callable[[re.Match], str]]] = [
        (r"backbone\.bottom_up\.stem\.conv1\.weight", lambda m: "backbone.trunk.conv1.weight"),
        (r"backbone\.bottom_up\.stem\.conv1\.norm\.(\w+)", lambda m: f"backbone.trunk.bn1.{m[1]}"),
        (
            r"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.weight",
            lambda m: f"{layer(m)}.conv{m[3]}.weight",
        ),
        (
            r"backbone\.bottom_up\.res([2-5])\.(\d+)\.conv([1-3])\.norm\.(\w+)",
            lambda m: f"{layer(m)}.bn{m[3]}.{m[4]}",
        ),
        (
            r"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.weight",
            lambda m: f"{layer(m)}.downsample.0.weight",
        ),
        (
            r"backbone\.bottom_up\.res([2-5])\.(\d+)\.shortcut\.norm\.(\w+)",
            lambda m: f"{layer(m)}.downsample.1.{m[3]}",
        ),
        (
            r"backbone\.fpn_lateral([2-5])\.(weight|bias)",
            lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0.{m[2]}",
        ),
        (
            r"backbone\.fpn_output([2-5])\.(weight|bias)",
            lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0.{m[2]}",
        ),
        (
            r"fusion\.block1\.block1\.([01])\.conv1_([1-3])\.(weight|bias)",
            lambda m: f"fusion.pixel.block{int(m[1]) + 1}.body.{int(m[2]) - 1}.0.{m[3]}",
        ),
        (r"fusion\.block1\.conv2\.weight", lambda m: "fusion.region_reduce.weight"),
        (r"fusion\.block1\.conv2\.bias", lambda m: "fusion.region_bias"),
        (
            r"fusion\.block1\.att(\d)\.conv\.convs\.(\d)\.([01])\.(\w+)",
            lambda m: f"fusion.regions.{int(m[1]) - 1}.attention.paths.{m[2]}.{m[3]}.{m[4]}",
        ),
        (
            r"fusion\.block1\.att(\d)\.conv\.fc\.0\.(weight|bias)",
            lambda m: f"fusion.regions.{int(m[1]) - 1}.attention.squeeze.0.{m[2]}",
        ),
        (
            r"fusion\.block1\.att(\d)\.conv\.fc\.2\.(weight|bias)",
            lambda m: f"fusion.regions.{int(m[1]) - 1}.attention.select.{m[2]}",
        ),
        # conv_module = P' (the pixels' projection), conv_module_act = the gate on R
        (r"fusion\.block1\.conv_module\.conv\.weight", lambda m: "fusion.pixel_proj.0.weight"),
        (r"fusion\.block1\.conv_module\.bn\.(\w+)", lambda m: f"fusion.pixel_proj.1.{m[1]}"),
        (r"fusion\.block1\.conv_module_act\.conv\.weight", lambda m: "fusion.gate.0.weight"),
        (r"fusion\.block1\.conv_module_act\.bn\.(\w+)", lambda m: f"fusion.gate.1.{m[1]}"),
        (
            r"fusion\.block2\.([0246])\.(weight|bias)",
            lambda m: f"fusion.decoder.{int(m[1]) // 2}.0.{m[2]}",
        ),
        (r"fusion\.block2\.8\.(weight|bias)", lambda m: f"fusion.decoder.4.{m[1]}"),
        (r"head\.time_mlp\.([13])\.(weight|bias)", lambda m: f"detector.time_mlp.{m[1]}.{m[2]}"),
    ]
    stage = [
        (
            r"self_attn\.(in_proj_weight|in_proj_bias|out_proj\.weight|out_proj\.bias)",
            "self_attn.{1}",
        ),
        (r"inst_interact\.dynamic_layer\.(weight|bias)", "inst_interact.dynamic_layer.{1}"),
        (r"inst_interact\.norm1\.(weight|bias)", "inst_interact.norms.0.{1}"),
        (r"inst_interact\.norm2\.(weight|bias)", "inst_interact.norms.1.{1}"),
        (r"inst_interact\.norm3\.(weight|bias)", "inst_interact.out_norm.{1}"),
        (r"inst_interact\.out_layer\.(weight|bias)", "inst_interact.out_layer.{1}"),
        (r"linear1\.(weight|bias)", "ffn.0.{1}"),
        (r"linear2\.(weight|bias)", "ffn.3.{1}"),
        (r"norm([123])\.(weight|bias)", "norm{1}.{2}"),
        (r"block_time_mlp\.1\.(weight|bias)", "time_scale_shift.1.{1}"),
        (r"cls_module\.(\d+)\.(weight|bias)", "cls_tower.{1}.{2}"),
        (r"reg_module\.(\d+)\.(weight|bias)", "reg_tower.{1}.{2}"),
        (r"class_logits\.(weight|bias)", "class_logits.{1}"),
        (r"bboxes_delta\.(weight|bias)", "box_deltas.{1}"),
    ]
    for pattern, target in stage:
        table.append(
            (
                r"head\.head_series\.(\d+)\." + pattern,
                lambda m, t=target: (
                    f"detector.stages.{m[1]}." + re.sub(r"\{(\d)\}", lambda g: m[int(g[1]) + 1], t)
                ),
            )
        )
    return [(re.compile(p), f) for p, f in table]


RULES = _rules()


def official_config(path: str | Path | None = None) -> Config:
    """The config of the public model: ``path`` (a YAML in its layout), else the built-in
    one. Its backbone needs no ImageNet weights: the checkpoint holds them."""
    cfg = load_config(path) if path is not None else load_config(None, list(OFFICIAL_OVERRIDES))
    cfg.model.backbone.pretrained = cfg.model.init_from = ""
    return cfg


def read_official(path: str | Path) -> tuple[dict[str, Tensor], int | None]:
    """The ``model`` state dict of a detectron2 checkpoint and its ``iteration``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: official checkpoint not found")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({first})") from None
    # a detectron2 checkpoint keeps the weights under "model"; a bare state dict is taken too
    state = raw.get("model", raw) if isinstance(raw, dict) else None
    tensors = (
        isinstance(state, dict) and state and all(isinstance(v, Tensor) for v in state.values())
    )
    if not tensors:
        raise ValueError(
            f"{path}: holds no 'model' state dict of tensors (a detectron2 checkpoint does)"
        )
    iteration = raw.get("iteration") if isinstance(raw, dict) else None
    return state, int(iteration) if isinstance(iteration, int) else None


def expected_schedule(timesteps: int) -> dict[str, Tensor]:
    """DiffusionDet's 12 schedule buffers (float64) for the cosine schedule of T steps."""
    abar = cosine_alphas_cumprod(timesteps)
    prev = torch.cat([abar.new_ones(1), abar[:-1]])
    betas = 1 - abar / prev
    posterior = betas * (1 - prev) / (1 - abar)
    return {
        "betas": betas,
        "alphas_cumprod": abar,
        "alphas_cumprod_prev": prev,
        "sqrt_alphas_cumprod": abar.sqrt(),
        "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
        "log_one_minus_alphas_cumprod": (1 - abar).log(),
        "sqrt_recip_alphas_cumprod": (1 / abar).sqrt(),
        "sqrt_recipm1_alphas_cumprod": (1 / abar - 1).sqrt(),
        "posterior_variance": posterior,
        "posterior_log_variance_clipped": posterior.clamp(min=1e-20).log(),
        "posterior_mean_coef1": betas * prev.sqrt() / (1 - abar),
        "posterior_mean_coef2": (1 - prev) * (1 - betas).sqrt() / (1 - abar),
    }


def check_schedule(state: dict[str, Tensor], timesteps: int, path: str | Path) -> None:
    """The file's schedule buffers must be the cosine schedule the head recomputes."""
    expected = expected_schedule(timesteps)
    for name in SCHEDULE:
        if name not in state:
            continue  # reported with the other missing tensors
        got = state[name].double()
        if got.shape != expected[name].shape:
            raise ValueError(
                f"{path}: {name} has {tuple(got.shape)} values; the head's schedule has "
                f"{timesteps} (model.detection.timesteps)"
            )
        # float32 copies of the float64 schedule are accepted too
        if not torch.allclose(got, expected[name], rtol=1e-6, atol=1e-9):
            diff = (got - expected[name]).abs().max().item()
            raise ValueError(
                f"{path}: {name} is not the cosine schedule (s=0.008, T={timesteps}) the head "
                f"uses (max difference {diff:.3g}); this is not the public model's layout"
            )


class Mapped(NamedTuple):
    """What :func:`map_official` made of a file."""

    tensors: dict[str, Tensor]  # by model name
    unknown: list[str]  # file names no rule knows
    missing: list[str]  # file names the layout has and the file lacks (those it can tell)
    incomplete: set[str]  # model names whose file tensors are among the missing


def map_official(state: dict[str, Tensor]) -> Mapped:
    """File names -> model names."""
    mapped: dict[str, Tensor] = {}
    halves: dict[str, dict[int, Tensor]] = {}
    unknown = []
    for name, tensor in state.items():
        if name in DROPPED:
            continue
        half = HEAD_HALVES.fullmatch(name)
        if half:
            target = f"fusion.pixel.block{int(half[1]) + 1}.heads.0.{half[3]}"
            halves.setdefault(target, {})[int(half[2])] = tensor
            continue
        for pattern, target in RULES:
            match = pattern.fullmatch(name)
            if match:
                mapped[target(match)] = tensor
                break
        else:
            unknown.append(name)
    missing = [name for name in DROPPED if name not in state]
    incomplete = set()
    for target, parts in halves.items():
        if len(parts) == 2:
            mapped[target] = torch.cat([parts[0], parts[1]])
        else:  # name the half that is not there
            block, kind = target.split(".")[2][-1], target.rsplit(".", 1)[1]
            lacking = 1 - next(iter(parts))
            missing.append(f"fusion.block1.block1.{int(block) - 1}.conv1_0_0{lacking}.{kind}")
            incomplete.add(target)
    return Mapped(mapped, unknown, missing, incomplete)


def _listing(names: list[str], limit: int = 8) -> str:
    more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def convert_official(path: str | Path, out: str | Path, config: str | Path | None = None) -> dict:
    """Convert the public checkpoint at ``path`` into an e2emfd checkpoint at ``out``
    (loadable with :func:`e2emfd.engine.checkpoint.load_model_for_inference`). Returns
    what was done: tensors read, mapped and dropped, the model's parameter count."""
    from e2emfd.models import build_model

    cfg = official_config(config)
    state, iteration = read_official(path)
    check_schedule(state, cfg.model.detection.timesteps, path)
    mapped, unknown, missing, incomplete = map_official(state)
    model = build_model(cfg.model)
    own = model.state_dict()
    missing += sorted(own.keys() - mapped.keys() - incomplete)
    extra = sorted(mapped.keys() - own.keys())  # a rule's target the config did not build
    shapes = [
        f"{k} {tuple(mapped[k].shape)} vs model {tuple(own[k].shape)}"
        for k in sorted(own.keys() & mapped.keys())
        if mapped[k].shape != own[k].shape
    ]
    problems = []
    for what, names in (
        ("tensors no rule maps", unknown),
        ("missing tensors", missing),
        ("tensors the config's model lacks", extra),
        ("shapes that differ", shapes),
    ):
        if names:
            problems.append(f"{len(names)} {what}: {_listing(names)}")
    if problems:
        raise ValueError(f"{path}: not the public E2E-MFD M3FD layout; " + "; ".join(problems))
    mapped = {k: v.to(own[k].dtype) for k, v in mapped.items()}
    load_model_state(model, mapped, path)
    save_checkpoint(
        out,
        {
            "model": model.state_dict(),
            "config": config_to_dict(cfg),
            "step": iteration if iteration is not None else 0,
            "converted_from": str(path),
        },
    )
    return {
        "read": len(state),
        "mapped": len(state) - sum(name in DROPPED for name in state),
        "dropped": sorted(name for name in state if name in DROPPED),
        "parameters": sum(p.numel() for p in model.parameters()),
        "step": iteration,
    }
