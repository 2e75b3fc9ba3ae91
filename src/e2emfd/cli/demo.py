"""``e2emfd demo``: the main job on the embedded default, end to end on a CPU."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Generate synthetic infrared-visible street scenes, train a CPU-sized E2E-MFD (fusion +
detection, GMTA) within the time budget, evaluate it on the held-out scenes against
classical fusion, and write OUT/report.html (open it in any browser, no network needed)
plus OUT/summary.json. The whole command, data and evaluation included, fits the budget
(default 15 minutes on a 2-core CPU). With two or more cores, training runs as two local
processes that each take half of every batch (PyTorch DDP over gloo): for a model this
small that is faster than one process using all the threads. If
`e2emfd experiment modality --out OUT/experiment_modality` has been run, the report also
shows its table.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="train E2E-MFD on synthetic scenes and write an HTML report",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument(
        "--budget-minutes", type=float, default=15.0, help="wall-clock budget (default 15)"
    )
    parser.add_argument("--num-images", type=int, default=400, help="synthetic pairs (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--max-steps",
        type=int,
        help="at most this many training steps (default: as many as the budget allows)",
    )
    parser.add_argument(
        "--boxes",
        choices=["hbb", "obb"],
        default="hbb",
        help="hbb: street scenes, axis-aligned boxes (default); obb: drone scenes, rotated boxes",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from e2emfd.cli.main import CommandError
    from e2emfd.cli.paths import output_folder
    from e2emfd.demo.pipeline import run_demo
    from e2emfd.engine.trainer import NonFiniteLossError

    output_folder(args.out)
    try:
        summary = run_demo(
            args.out,
            args.budget_minutes,
            args.num_images,
            args.seed,
            list(args.overrides),
            not args.no_progress,
            boxes=args.boxes,
            max_steps=args.max_steps,
        )
    except NonFiniteLossError as exc:
        raise CommandError(str(exc)) from None
    det = summary["detection"]
    print()
    print(
        f"E2E-MFD demo: {summary['steps']} training steps, "
        f"{summary['total_minutes']:.1f} min in total ("
        + ", ".join(f"{k} {v:.1f}" for k, v in summary["phase_minutes"].items())
        + " min)"
    )
    print(f"detection (test split): AP50 {det['AP50']:.3f}   AP50:95 {det['AP']:.3f}")
    print(
        "  per class AP50: " + "  ".join(f"{k} {v:.2f}" for k, v in det["per_class_AP50"].items())
    )
    table = summary["fusion"]["python"]
    keys = ["EN", "MI", "VIF", "Qabf", "SSIM"]
    print("fusion (python convention)  " + "  ".join(f"{k:>6}" for k in keys))
    for method, values in table.items():
        cells = ("     -" if values[k] is None else f"{values[k]:6.3f}" for k in keys)
        print(f"  {method:<26}" + "  ".join(cells))
    print(f"report: {Path(args.out).resolve() / 'report.html'}")
    return 0
