"""``e2emfd train CONFIG [key=value ...]``: train fusion-only, detection-only or joint."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Train E2E-MFD as a config describes (train.task: joint | fusion | detection).

Overrides use dotted keys, e.g.  train.max_iters=2000 model.backbone.depth=18 train.mtl=sum
Outputs go to output_dir (config.yaml, checkpoint_last.pt, train_log.jsonl,
metrics.jsonl, tensorboard/), which must be new or empty: a folder that holds files is
refused unless --resume (continue its run) or --overwrite (delete those files first;
other files stay). Multi-GPU/CPU: torchrun --nproc_per_node=K -m e2emfd train ...
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train a model from a YAML config",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    parser.add_argument("--output-dir", "-o", help="where outputs go (overrides output_dir)")
    existing = parser.add_mutually_exclusive_group()
    existing.add_argument(
        "--resume",
        action="store_true",
        help="continue from output_dir's last checkpoint (log records of later steps, which "
        "the run redoes, are dropped)",
    )
    existing.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in output_dir: delete the files training writes there first",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2emfd.cli.main import CommandError
    from e2emfd.cli.paths import output_folder
    from e2emfd.config import load_config
    from e2emfd.engine.trainer import NonFiniteLossError, train

    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={args.output_dir}")
    cfg = load_config(args.config, overrides)
    output_folder(cfg.output_dir, "-o (output_dir)")
    try:
        result = train(
            cfg, resume=args.resume, progress=not args.no_progress, overwrite=args.overwrite
        )
    except NonFiniteLossError as exc:
        raise CommandError(str(exc)) from None
    print(f"trained {result.step} steps; checkpoint: {result.checkpoint}")
    if result.evaluations:
        from e2emfd.cli.eval import format_result

        print(format_result(result.evaluations[-1]))
    return 0
