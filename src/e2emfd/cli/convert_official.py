"""``e2emfd convert-official``: the public E2E-MFD M3FD checkpoint as an e2emfd checkpoint
(see :mod:`e2emfd.engine.official`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Convert the authors' M3FD checkpoint (icey-zhang/E2E-MFD-HOD, a detectron2 file
{"model": ..., "iteration": ...}, horizontal boxes) into an e2emfd checkpoint that
e2emfd fuse / detect / eval / info / export read with --weights, or that a training run
starts from (model.init_from). The model is built in the public code's layout
(configs/m3fd_official.yaml; --config for another file in that layout). Every tensor of
the file must map onto the model, and the model must get every tensor it has: anything
else refuses the file, naming the tensors. Dropped on purpose: the 12 diffusion-schedule
buffers (recomputed and checked equal), the fusion net's unused conv_module_add and the
fusion loss's unused Gaussian kernel.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "convert-official",
        help="convert the public E2E-MFD M3FD checkpoint into an e2emfd checkpoint",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("input", metavar="IN.pth", help="the public checkpoint")
    parser.add_argument("output", metavar="OUT.pt", help="the e2emfd checkpoint to write")
    parser.add_argument(
        "--config", help="a config in the public layout (default: configs/m3fd_official.yaml's)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2emfd.cli.paths import output_file
    from e2emfd.engine.official import convert_official

    out = output_file(args.output, "OUT.pt")
    report = convert_official(args.input, out, args.config)
    print(
        f"wrote {out}: {report['mapped']} of {report['read']} tensors mapped, "
        f"{len(report['dropped'])} dropped (schedule, unused modules), "
        f"{report['parameters']:,} parameters"
        + (f", iteration {report['step']}" if report["step"] is not None else "")
    )
    return 0
