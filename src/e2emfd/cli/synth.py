"""``e2emfd synth``: write the embedded synthetic infrared-visible dataset."""

from __future__ import annotations

import argparse


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        msg = f"size must be WIDTHxHEIGHT, e.g. 320x256, got '{text}'"
        raise argparse.ArgumentTypeError(msg) from None
    return w, h


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "synth",
        help="write synthetic infrared-visible scenes (M3FD layout)",
        description=(
            "Render synthetic street scenes as registered visible (RGB) and infrared "
            "(greyscale) pairs with the six M3FD classes, under day, night, fog and glare, "
            "where some objects show in only one modality. Writes OUT/Vis, OUT/Ir, "
            "OUT/Annotations (Pascal VOC), OUT/ImageSets/Main/{train,test}.txt and "
            "OUT/meta.json (per-object modality visibility). The output depends only on "
            "--seed, --size and the image index: a larger --num only adds images. OUT must "
            "be new or empty, or hold a dataset written by this command and --overwrite."
        ),
    )
    parser.add_argument("out", metavar="OUT", help="output folder")
    parser.add_argument("--num", type=int, default=200, help="number of pairs (default 200)")
    parser.add_argument(
        "--size", type=_size, default=(320, 256), help="image WIDTHxHEIGHT (default 320x256)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        help="fraction of images in the test split (default 0.2)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a synthetic dataset already in OUT: only the files this command wrote "
        "are deleted (other files, such as the split files of `e2emfd split`, stay)",
    )
    parser.add_argument(
        "--boxes",
        choices=["hbb", "obb"],
        default="hbb",
        help="hbb: street scenes, axis-aligned boxes, M3FD layout (default); obb: top-down "
        "drone scenes of the five DroneVehicle classes at any angle, rotated boxes, "
        "DroneVehicle layout ({train,test}/{rgb,ir}/{images,labels}, polygon XML)",
    )
    parser.add_argument(
        "--border", type=int, default=0, help="obb only: white border in pixels, as DroneVehicle's"
    )
    parser.add_argument(
        "--view",
        type=float,
        default=40.0,
        help="obb only: metres of ground the image height spans, +-15%% (default 40: a car "
        "is ~29x12 px at 320x256; smaller values zoom in)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2emfd.cli.paths import output_folder
    from e2emfd.synth.street import generate_dataset

    output_folder(args.out, "OUT")

    common = dict(
        num=args.num,
        size=args.size,
        seed=args.seed,
        test_fraction=args.test_fraction,
        overwrite=args.overwrite,
        progress=not args.quiet,
    )
    if args.boxes == "obb":
        from e2emfd.synth.aerial import generate_aerial_dataset

        out = generate_aerial_dataset(args.out, border=args.border, view_m=args.view, **common)
    else:
        out = generate_dataset(args.out, **common)
    print(f"wrote {args.num} synthetic pairs to {out}")
    return 0
