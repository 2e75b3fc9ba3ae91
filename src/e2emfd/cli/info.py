"""``e2emfd info``: what a checkpoint (or config) holds: its config in a few lines, the
parameters of each part and the FLOPs of one inference pass."""

from __future__ import annotations

import argparse

DEFAULT_SIZE = (640, 512)

DESCRIPTION = """\
Print a model's config summary, its parameters per part (backbone = ResNet trunk + FPN,
fusion head, detection head) and the FLOPs of one inference pass of one pair at --size
(default: a 640x512 pair as the config's training resize leaves it; padded to multiples
of 32 as inference pads it). FLOPs are torch.utils.flop_counter's: 2 per multiply-add of
convolutions and matrix products, not counting RoIAlign, NMS, interpolation and
element-wise operations; GMACs (what many papers call FLOPs) are half. The detection head
counts its configured proposals and DDIM steps (--num-proposals, --steps change them).
"""


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
        if w < 1 or h < 1:
            raise ValueError
    except ValueError:
        msg = f"size must be WIDTHxHEIGHT with positive sides, e.g. 640x512, got '{text}'"
        raise argparse.ArgumentTypeError(msg) from None
    return w, h


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "info",
        help="parameters and FLOPs of a checkpoint's model, per part",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("model", metavar="CKPT", help="a checkpoint, or a config .yaml")
    parser.add_argument("--size", type=_size, help="WIDTHxHEIGHT of the pair to measure")
    parser.add_argument("--num-proposals", type=int, help="proposals (default: the model's)")
    parser.add_argument("--steps", type=int, help="DDIM steps (default: the model's)")
    parser.add_argument("--json", action="store_true", help="print the numbers as JSON")
    parser.set_defaults(func=run)


def load(path: str):
    """(model, config, step) of a checkpoint, or of a config file (random weights)."""
    from pathlib import Path

    from e2emfd.config import load_config
    from e2emfd.engine.checkpoint import load_checkpoint, load_model_for_inference
    from e2emfd.models import build_model

    if Path(path).suffix.lower() in (".yaml", ".yml"):
        cfg = load_config(path)
        cfg.model.backbone.pretrained = cfg.model.init_from = ""
        return build_model(cfg.model).eval(), cfg, None
    model, cfg = load_model_for_inference(path)
    return model, cfg, load_checkpoint(path).get("step")


def measured_size(cfg, size: tuple[int, int] | None) -> tuple[int, int]:
    """(width, height): ``size``, else 640x512 resized as the config trains."""
    from e2emfd.data.transforms import Resize

    if size is not None:
        return size
    width, height = DEFAULT_SIZE
    factor = Resize(cfg.data.short_side, cfg.data.max_size).factor(height, width)
    return max(1, round(width * factor)), max(1, round(height * factor))


def run(args: argparse.Namespace) -> int:
    import json

    from e2emfd.cli.main import CommandError
    from e2emfd.engine.checkpoint import apply_inference_settings
    from e2emfd.models.summary import config_summary, count_flops, parameter_counts

    for option, value in (("--num-proposals", args.num_proposals), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise CommandError(f"{option} must be >= 1, got {value}")
    model, cfg, step = load(args.model)
    if model.detector is not None:
        settings = {"num_proposals_test": args.num_proposals, "sampling_steps": args.steps}
        apply_inference_settings(model, {k: v for k, v in settings.items() if v})
    width, height = measured_size(cfg, args.size)
    params = parameter_counts(model)
    flops = count_flops(model, width, height)
    if args.json:
        summary = {"model": args.model, "step": step, "size": [width, height]}
        summary.update(config=config_summary(cfg), parameters=params, flops=flops)
        print(json.dumps(summary, indent=2))
        return 0
    print(f"{args.model}" + (f" (step {step})" if step is not None else " (random weights)"))
    for line in config_summary(cfg):
        print(f"  {line}")
    rows = [
        ("backbone", "backbone"),
        ("  ResNet trunk", "backbone.trunk"),
        ("  FPN", "backbone.fpn"),
        ("fusion head", "fusion"),
        ("detection head", "detection"),
        ("total", "total"),
    ]
    print(f"\n{'part':<16}{'parameters':>14}{'trainable':>14}{f'GFLOPs @ {width}x{height}':>22}")
    for label, key in rows:
        if key not in params:
            continue
        gflops = f"{flops[key] / 1e9:.2f}" if key in flops else ""
        p = params[key]
        print(f"{label:<16}{p['parameters']:>14,}{p['trainable']:>14,}{gflops:>22}")
    print(
        "\nFLOPs: 2 per multiply-add of convolutions and matrix products (GMACs = half); "
        "RoIAlign, NMS, interpolation, element-wise ops not counted"
    )
    return 0
