"""``e2emfd eval CONFIG --weights CKPT``: detection and fusion metrics on the config's
test split, written to metrics.json."""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = """\
Evaluate a checkpoint on the test split of a config's dataset (data.test_split; override
with data.test_split=NAME or a path to an id list). Writes --out (default:
<checkpoint folder>/metrics.json) with:
  detection   COCO AP50:95, AP50, AP75, APs/m/l, AR100, per-class AP (pycocotools), and
              VOC-style mAP50 (11-point VOC07 and all-point)
  fusion      EN SD SF AG MI SCD CC VIF Qabf Nabf SSIM PSNR MSE in both conventions
              (python = CDDFuse evaluator, matlab = Tang toolbox), means over the split;
              a value the reference leaves undefined (0 / 0, e.g. CC of a constant image)
              is left out of the mean, the images are named in a warning and listed in
              fusion_undefined, and a mean over no image is null
  fusion_baselines  (with --baselines) the same fusion metrics of average, max and
              Laplacian-pyramid fusion of the same pairs, for a table beside the model's
The model is the checkpoint's; the config supplies only the data section. Images are
evaluated at the size the config's data section resizes them to (data.short_side), the
size the model works at.
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
    parser.add_argument(
        "--baselines",
        action="store_true",
        help="also score average, max and Laplacian fusion of the same pairs",
    )
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-images", type=int, help="evaluate only the first N test pairs")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from e2emfd.cli.paths import output_file
    from e2emfd.config import load_config
    from e2emfd.data import build_dataset, build_transforms
    from e2emfd.engine.checkpoint import load_model_for_inference
    from e2emfd.engine.evaluate import baseline_fusion_scores, evaluate
    from e2emfd.engine.runtime import resolve_device
    from e2emfd.utils import results

    cfg = load_config(args.config, args.overrides)
    out = output_file(Path(args.out) if args.out else Path(args.weights).parent / "metrics.json")
    device = resolve_device(args.device, setting="--device")
    model, trained = load_model_for_inference(args.weights, device)
    dataset = build_dataset(cfg.data, cfg.data.test_split, build_transforms(cfg.data, train=False))
    if model.detector is not None:
        check_classes(args.weights, trained, dataset.classes)
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
    if args.baselines:
        result["fusion_baselines"] = baseline_fusion_scores(dataset, ("python", "matlab"))
    result["weights"] = str(args.weights)
    result["split"] = cfg.data.test_split
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(results.dumps(result, indent=2))
    print(format_result(result))
    for line in undefined_warnings(result):
        print(f"e2emfd eval: warning: {line}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def check_classes(weights: str, trained, classes: list[str]) -> None:
    """A detector scores only the classes it was trained on: a checkpoint whose class count
    differs from the data's is an error that lists both."""
    from e2emfd.cli.main import CommandError

    count = trained.model.detection.num_classes
    if count == len(classes):
        return
    names = list(trained.data.classes)
    known = f" ({', '.join(names)})" if len(names) == count else ""
    raise CommandError(
        f"{weights}: the checkpoint's {count} classes{known} differ from the data's "
        f"{len(classes)} ({', '.join(classes)}); evaluate it on data with its classes"
    )


def undefined_warnings(result: dict) -> list[str]:
    """One line per fusion metric that is undefined for some images (from
    ``result["fusion_undefined"]``), naming them and saying what the mean is over."""
    from e2emfd.metrics.fusion.summary import MetricSummary
    from e2emfd.metrics.fusion.summary import undefined_warnings as lines

    total = result.get("num_images", 0)
    out = []
    for conv, metrics in result.get("fusion_undefined", {}).items():
        summaries = {
            name: MetricSummary(None, None, total - len(ids), total, ids)
            for name, ids in metrics.items()
        }
        out += [f"fusion ({conv}) {line}" for line in lines(summaries)]
    return out


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
        rows = {"E2E-MFD": values, **result.get("fusion_baselines", {}).get(conv, {})}
        lines.append(f"fusion ({conv} convention)")
        # one space at least between columns, even for "undefined" or an MSE of 2684.432
        lines.append(f"  {'':<10}" + "".join(f" {k:>9}" for k in values))
        for method, row in rows.items():
            shown = ("undefined" if row.get(k) is None else f"{row[k]:.3f}" for k in values)
            lines.append(f"  {method:<10}" + "".join(f" {v:>9}" for v in shown))
    return "\n".join(lines)
