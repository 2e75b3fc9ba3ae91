"""``e2emfd eval CONFIG --weights CKPT``: detection and fusion metrics on the config's
test split, written to metrics.json."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Evaluate a checkpoint on the test split of a config's dataset (data.test_split; override
with data.test_split=NAME or a path to an id list). Writes --out (default:
<checkpoint folder>/metrics.json) with:
  detection   COCO AP50:95, AP50, AP75, APs/m/l, AR100, per-class AP (pycocotools), and
              VOC-style mAP50 (11-point VOC07 and all-point)
  fusion      EN SD SF AG MI SCD CC VIF Qabf Nabf SSIM PSNR MSE in both conventions
              (python = CDDFuse evaluator, matlab = Tang toolbox), means over the split
The model is the checkpoint's; the config supplies only the data section.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a checkpoint on a config's test split",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config whose data section names the test split")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--weights", required=True, help="checkpoint to evaluate")
    parser.add_argument("--out", help="output JSON (default: next to the checkpoint)")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-images", type=int, help="evaluate only the first N test pairs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from e2emfd.config import load_config
    from e2emfd.data import build_dataset, build_transforms
    from e2emfd.engine.checkpoint import load_model_for_inference
    from e2emfd.engine.evaluate import evaluate
    from e2emfd.engine.runtime import resolve_device

    cfg = load_config(args.config, args.overrides)
    device = resolve_device(args.device, setting="--device")
    model, _ = load_model_for_inference(args.weights, device)
    dataset = build_dataset(cfg.data, cfg.data.test_split, build_transforms(cfg.data, train=False))
    result = evaluate(
        model,
        dataset,
        device,
        dataset.classes,
        args.batch_size,
        conventions=("python", "matlab"),
        max_images=args.max_images,
        progress=not args.no_progress,
        voc=True,
    )
    result["weights"] = str(args.weights)
    result["split"] = cfg.data.test_split
    out = Path(args.out) if args.out else Path(args.weights).parent / "metrics.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(format_result(result))
    print(f"wrote {out}")
    return 0


def format_result(result: dict) -> str:
    lines = [f"{result['num_images']} test pairs"]
    det = result.get("detection")
    if det:
        parts = [
            ("AP50:95", "AP"),
            ("AP50", "AP50"),
            ("AP75", "AP75"),
            ("VOC07 mAP50", "voc07_mAP50"),
        ]
        lines.append(
            "detection  " + "  ".join(f"{name} {det[key]:.3f}" for name, key in parts if key in det)
        )
        lines.append(
            "  per class AP50: "
            + "  ".join(f"{k} {v:.3f}" for k, v in det["per_class_AP50"].items())
        )
    for conv, values in result.get("fusion", {}).items():
        lines.append(f"fusion ({conv}): " + "  ".join(f"{k} {v:.3f}" for k, v in values.items()))
    return "\n".join(lines)
