"""``e2emfd split``: a train/test split that keeps each video scene on one side."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Frame-level random splits of video datasets (M3FD's public split among them) put adjacent,
nearly identical frames on both sides, so test scores are optimistic. This command orders
the pairs of ROOT by id (frame order), finds scene cuts where consecutive visible frames
stop looking alike, and assigns whole scenes to the test side. It writes
ROOT/ImageSets/Main/<name>_train.txt and <name>_test.txt (use them with
data.train_split=<name>_train data.test_split=<name>_test) and prints the scenes found.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "split",
        help="write a scene-aware (leakage-free) train/test split",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("root", help="dataset folder (with Vis/ and Ir/ or vi/ and ir/)")
    parser.add_argument("--test-fraction", type=float, default=0.3, help="default 0.3")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default="scene", help="split file prefix (default: scene)")
    parser.add_argument("--threshold", type=float, help="scene-cut threshold (default: automatic)")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    import numpy as np
    from tqdm import tqdm

    from e2emfd.cli.paths import output_folder
    from e2emfd.data.datasets import IR_DIR_NAMES, VIS_DIR_NAMES, find_subdir, pair_images
    from e2emfd.data.splits import scene_boundaries, scene_split, thumbnail

    root = Path(args.root)
    out = output_folder(root / "ImageSets" / "Main", "ROOT/ImageSets/Main")
    vis = find_subdir(root, VIS_DIR_NAMES, "visible")
    ir = find_subdir(root, IR_DIR_NAMES, "infrared")
    pairs = pair_images(vis, ir)
    ids = sorted(pairs)
    thumbs = np.stack(
        [thumbnail(pairs[i][0]) for i in tqdm(ids, desc="reading", disable=args.no_progress)]
    )
    cuts = scene_boundaries(thumbs, args.threshold)
    train, test, scenes = scene_split(ids, cuts, args.test_fraction, args.seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}_train.txt").write_text("".join(f"{i}\n" for i in train))
    (out / f"{args.name}_test.txt").write_text("".join(f"{i}\n" for i in test))
    sizes = sorted(len(s) for s in scenes)
    print(
        f"{len(ids)} frames, {len(scenes)} scenes (frames per scene: min {sizes[0]}, "
        f"median {sizes[len(sizes) // 2]}, max {sizes[-1]}); "
        f"train {len(train)}, test {len(test)} ({len(test) / len(ids):.1%})"
    )
    print(f"wrote {out / f'{args.name}_train.txt'} and {out / f'{args.name}_test.txt'}")
    return 0
