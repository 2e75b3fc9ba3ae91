"""``e2emfd fuse``: fuse folders or videos of infrared-visible pairs with a trained model
or a classical baseline, one 8-bit PNG per pair (and a video for videos)."""

from __future__ import annotations

import argparse
import contextlib

DESCRIPTION = """\
Fuse every pair of --vi and --ir (paired by file stem) and write one 8-bit PNG per pair,
with the same stem, to --out. Any image size works (padded to a multiple of 32 inside the
network and cropped back). Either --weights CKPT (a trained model's checkpoint) or
--method average|max|laplacian (classical baselines, no model needed).

--vi and --ir may also be two videos (any format OpenCV reads): frames are paired by index
up to the end of the shorter video (a warning says if the lengths differ) and written as
--out/NNNNNN.png (the frame index) and --out/fused.mp4.

Examples:
  e2emfd fuse --weights runs/x/checkpoint_last.pt --vi data/tno/vi --ir data/tno/ir --out fused/
  e2emfd fuse --method laplacian --vi data/tno/vi --ir data/tno/ir --out fused_lap/
  e2emfd fuse --weights ckpt.pt --vi drive_rgb.mp4 --ir drive_thermal.mp4 --out drive/
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "fuse",
        help="fuse image pairs with a trained model or a classical baseline",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--weights", help="checkpoint of a model with a fusion head")
    source.add_argument(
        "--method", choices=["average", "max", "laplacian"], help="classical baseline"
    )
    parser.add_argument("--vi", required=True, help="folder of visible images, or a video")
    parser.add_argument("--ir", required=True, help="folder of infrared images, or a video")
    parser.add_argument("--out", required=True, help="output folder (created if missing)")
    parser.add_argument(
        "--color",
        choices=["ycbcr", "hsv", "gray"],
        help="colour restoration (default: the model's setting, ycbcr for baselines)",
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=4,
        help="pairs per batch (same-size pairs batch together; a batch that runs out of "
        "memory is fused again one pair at a time)",
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from e2emfd.cli.main import CommandError
    from e2emfd.cli.paths import output_folder
    from e2emfd.data import write_png
    from e2emfd.data.video import VideoWriter, pair_source
    from e2emfd.engine.runtime import resolve_device
    from e2emfd.models.baselines import fuse_baseline

    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    out_dir = output_folder(args.out)
    device = resolve_device(args.device, setting="--device")
    source, total, video = pair_source(args.vi, args.ir)
    if args.weights:
        from e2emfd.engine.checkpoint import load_model_for_inference

        model, cfg = load_model_for_inference(args.weights, device)
        if model.fusion is None:
            raise ValueError(f"{args.weights}: this model has no fusion head")
        color = args.color or cfg.model.fusion.color

        def fuse(vis, ir):
            return model.fuse(vis, ir, color)
    else:
        color = args.color or "ycbcr"

        def fuse(vis, ir):
            return fuse_baseline(vis, ir, args.method, color)

    out_dir.mkdir(parents=True, exist_ok=True)
    # A video's frames share one size, so they stay in order through the batches.
    writer = VideoWriter(out_dir / "fused.mp4", video.fps) if video else contextlib.nullcontext()
    written = 0
    bar = tqdm(total=total, desc="fusing", unit="pair", disable=args.no_progress)

    def save(sample: dict, image) -> None:
        nonlocal written
        array = image.permute(1, 2, 0).numpy()
        array = array[:, :, 0] if array.shape[2] == 1 else array
        write_png(out_dir / f"{sample['image_id']}.png", array)
        if video:
            writer.write(array)
        written += 1
        bar.update(1)

    # Batch pairs of the same size together; sizes vary within TNO and RoadScene.
    groups: dict[tuple[int, int], list[dict]] = {}
    with writer:
        for sample in source:
            size = tuple(sample["vis"].shape[-2:])
            groups.setdefault(size, []).append(sample)
            if len(groups[size]) == args.batch_size:
                _flush(groups.pop(size), fuse, device, save)
        for batch in groups.values():
            _flush(batch, fuse, device, save)
    bar.close()
    also = f" and {writer.path}" if video else ""
    print(f"wrote {written} fused images to {out_dir}{also}")
    return 0


def _flush(batch: list[dict], fuse, device, save) -> None:
    for sample, image in zip(batch, _fuse_batch(batch, fuse, device)):
        save(sample, image)


def _fuse_batch(batch: list[dict], fuse, device):
    """Fused images of a batch of same-size pairs. Out of memory, a batch is fused again
    one pair at a time; a single pair that does not fit is an error naming it."""
    import torch

    from e2emfd.cli.main import CommandError
    from e2emfd.engine.runtime import is_out_of_memory

    try:
        vis = torch.stack([s["vis"] for s in batch]).to(device)
        ir = torch.stack([s["ir"] for s in batch]).to(device)
        with torch.no_grad():
            return fuse(vis, ir).float().cpu()
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
    vis = ir = None  # free what the failed attempt held before trying again
    if device.type == "cuda":
        torch.cuda.empty_cache()
    if len(batch) > 1:
        return torch.cat([_fuse_batch([s], fuse, device) for s in batch])
    h, w = batch[0]["vis"].shape[-2:]
    advice = "use --device cpu or downscale it" if device.type == "cuda" else "downscale it"
    raise CommandError(
        f"{batch[0]['vis_path']}: out of memory fusing this {w}x{h} pair on {device} (even "
        f"as a batch of one); {advice}"
    )
