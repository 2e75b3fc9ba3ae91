"""``e2emfd experiment modality``: does fusing the modalities help detection?"""

from __future__ import annotations

import argparse

DESCRIPTION = """\
modality: train the same detector on the visible image only, the infrared image only, and
both (E2E-MFD: joint fusion + detection, with GMTA and with a plain loss sum), for the same
number of steps and several seeds, and score each run on the test split: AP50 and AP50:95
overall, per class and per scene condition (synthetic: day / glare / night / fog; MSRS:
day / night from the D/N suffix of the ids). Writes OUT/results.json and OUT/results.md.

Without --config: the demo's CPU-sized model on synthetic scenes generated into OUT/data
(run it with --out demo_out/experiment_modality and `e2emfd demo` shows the table in its
report). With --config: that config's data, model and recipe, e.g.
  e2emfd experiment modality --config configs/msrs_cpu.yaml --out runs/msrs_modality

Runs already in OUT are kept (OUT holds one --steps and one --config); an interrupted run
resumes from its last checkpoint; a run scored with other inference settings (key=value
overrides such as model.detection.num_proposals_test=...) is scored again from its
checkpoint. Processes running different --variants or --seeds may share one OUT.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "experiment",
        help="run a comparison experiment (modality: vis vs ir vs fused)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("name", choices=["modality"], help="which experiment")
    parser.add_argument("--out", default="demo_out/experiment_modality", help="output folder")
    parser.add_argument(
        "--config",
        help="base config (data, model, recipe); default: the demo model on synthetic scenes",
    )
    # strings, not ints: a list option would swallow the key=value overrides after it
    # (`--seeds 0 1 model.x=1`); run() takes them back
    parser.add_argument("--seeds", nargs="+", default=["0", "1"], help="seeds (default 0 1)")
    parser.add_argument(
        "--steps",
        type=int,
        default=2000,
        help="training steps per run (default 2000; on the synthetic scenes at 1000 the "
        "two-input models are still far behind; about 17 min per single-image run and 45 min "
        "per E2E-MFD run on one core)",
    )
    parser.add_argument(
        "--num-images", type=int, default=400, help="synthetic pairs (without --config)"
    )
    parser.add_argument("--variants", nargs="+", help="subset of variants (default: all)")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="local training processes per run, sharing each batch (DDP over gloo; default 1)",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2emfd.cli.main import CommandError
    from e2emfd.cli.paths import output_folder
    from e2emfd.demo.experiment import results_markdown, run_modality_experiment
    from e2emfd.engine.trainer import NonFiniteLossError

    output_folder(args.out)
    overrides = list(args.overrides)
    seeds = []
    for value in args.seeds:
        if "=" in value:
            overrides.append(value)
        elif value.lstrip("-").isdigit():
            seeds.append(int(value))
        else:
            raise CommandError(f"--seeds: {value!r} is not an integer seed")
    if not seeds:
        raise CommandError("--seeds: no seed given")
    variants = None
    if args.variants:
        variants = [v for v in args.variants if "=" not in v]
        overrides += [v for v in args.variants if "=" in v]
    try:
        results = run_modality_experiment(
            args.out,
            seeds,
            args.steps,
            args.num_images,
            variants,
            overrides,
            not args.no_progress,
            config=args.config,
            processes=args.processes,
        )
    except NonFiniteLossError as exc:
        raise CommandError(str(exc)) from None
    print(results_markdown(results))
    return 0
