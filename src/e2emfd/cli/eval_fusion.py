"""``e2emfd eval-fusion``: fusion-quality metrics of a folder of fused images against their
infrared and visible sources, in the CDDFuse-python or Tang-MATLAB convention."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from e2emfd.cli.main import CommandError
from e2emfd.cli.threads import (
    cpu_cores,
    single_threaded,
    single_threaded_children,
    single_threaded_worker,
    torch_threads,
)

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}

DESCRIPTION = """\
Evaluate every image of --fused against the --ir and --vi images with the same file stem
(any image extension, case-insensitive). Prints the mean and standard deviation of each
metric over the images, and with --out writes the per-image values (.json or .csv).
Where a reference implementation divides by zero (CC and SCD with a constant image, the
matlab VIF with a constant source, Qabf with two all-black sources, PSNR where the fused
image equals both sources) the value is undefined: null in JSON, empty in CSV, left out of
the mean (printed as "mean over N of M images"), and the images are named in a warning.

Conventions (values differ between them; report which one you used):
  python  the CDDFuse Evaluator: OpenCV greyscale, 0-255 floats, MI in nats,
          SSIM with data_range=2, PSNR peak = max(F)           (default)
  matlab  the Linfeng-Tang MATLAB toolbox (2022): uint8 saturation in SD, VIF and MI,
          MI in bits, SF/CC/SCD/Qabf/MSE on 0-1, PSNR peak 255 with 0-1 MSE
Metrics: EN SD SF AG MI SCD CC VIF Qabf Nabf SSIM PSNR MSE (default: all).

Examples:
  e2emfd eval-fusion --ir tno/ir --vi tno/vi --fused out/tno
  e2emfd eval-fusion --ir tno/ir --vi tno/vi --fused out/tno --convention matlab \\
      --metrics EN,MI,VIF,Qabf --out tno_matlab.csv

On a CPU the pairs are shared out to one single-threaded process per core (--workers):
the metrics of one pair are many small operations, which one core runs best.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval-fusion",
        help="fusion metrics (EN, MI, VIF, Qabf, SSIM, ...) of fused images",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--ir", required=True, help="folder of infrared source images")
    parser.add_argument("--vi", required=True, help="folder of visible source images")
    parser.add_argument("--fused", required=True, help="folder of fused images")
    parser.add_argument(
        "--convention", choices=["python", "matlab"], default="python", help="metric convention"
    )
    parser.add_argument("--metrics", help="comma-separated metric names (default: all)")
    parser.add_argument("--out", help="write per-image values to a .json or .csv file")
    parser.add_argument(
        "--batch-size",
        type=int,
        default=8,
        help="pairs per batch on a GPU (same-size pairs only; the CPU takes one pair at a time)",
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N | auto")
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads of the evaluating process (default: 1 on the CPU, where one "
        "pair's many small operations run best on one core; torch's choice on a GPU)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help="CPU processes evaluating pairs in parallel, one thread each (default: one per "
        "CPU core for --device cpu, 1 otherwise; 1 = in this process)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _images_by_stem(folder: Path, role: str) -> dict[str, Path]:
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: {role} folder not found")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS:
            if path.stem in found:
                raise CommandError(f"{path}: same stem as {found[path.stem].name} in {folder}")
            found[path.stem] = path
    return found


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) without decoding the pixels, via Pillow's lazy open."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.height, img.width
    except OSError as exc:
        raise ValueError(f"{path}: cannot be read as an image ({exc})") from None


def pair_images(ir_dir: Path, vi_dir: Path, fused_dir: Path) -> list[tuple[str, Path, Path, Path]]:
    """``(stem, fused, ir, vis)`` for every fused image; a missing partner or a size
    mismatch is an error naming the file."""
    fused = _images_by_stem(fused_dir, "fused")
    ir = _images_by_stem(ir_dir, "infrared")
    vi = _images_by_stem(vi_dir, "visible")
    if not fused:
        raise CommandError(f"{fused_dir}: no images ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    pairs = []
    for stem, path in fused.items():
        for role, table, folder in (("infrared", ir, ir_dir), ("visible", vi, vi_dir)):
            if stem not in table:
                raise CommandError(f"{path}: no {role} image named {stem}.* in {folder}")
        size = _image_size(path)
        for source in (ir[stem], vi[stem]):
            other = _image_size(source)
            if other != size:
                raise CommandError(
                    f"{path}: size {size[1]}x{size[0]} differs from {source} "
                    f"({other[1]}x{other[0]})"
                )
        pairs.append((stem, path, ir[stem], vi[stem]))
    return pairs


def _write(path: Path, convention: str, names, per_image, summary) -> None:
    """Per-image values as JSON (undefined ones null, with the means, deviations and the
    count of defined values per metric) or CSV (undefined ones empty)."""
    import csv
    import json

    from e2emfd.metrics.fusion.summary import defined

    suffix = path.suffix.lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    images = {stem: {n: defined(v[n]) for n in names} for stem, v in per_image.items()}
    if suffix == ".json":
        payload = {
            "convention": convention,
            "metrics": list(names),
            "mean": {n: summary[n].mean for n in names},
            "std": {n: summary[n].std for n in names},
            "defined": {n: summary[n].count for n in names},
            "images": images,
        }
        path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    else:
        with open(path, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["image", *names])
            for stem, values in images.items():
                writer.writerow(
                    [stem, *("" if values[n] is None else repr(values[n]) for n in names)]
                )


def _batches(pairs, batch_size: int) -> list[list[tuple[str, Path, Path, Path]]]:
    """Pairs grouped by image size, cut into batches of at most ``batch_size``."""
    groups: dict[tuple[int, int], list[tuple[str, Path, Path, Path]]] = {}
    for pair in pairs:
        groups.setdefault(_image_size(pair[1]), []).append(pair)
    return [
        group[start : start + batch_size]
        for group in groups.values()
        for start in range(0, len(group), batch_size)
    ]


def _evaluate_batch(batch, convention: str, names, device: str) -> dict[str, dict[str, float]]:
    """Metric values of one batch of same-size pairs, per image stem."""
    import torch

    from e2emfd.metrics.fusion import fusion_metrics, load_grey

    stacks = [
        torch.stack([load_grey(p[k], convention) for p in batch]).to(device) for k in (1, 2, 3)
    ]
    values = fusion_metrics(*stacks, convention=convention, metrics=names)
    return {stem: {n: values[n][i].item() for n in names} for i, (stem, *_) in enumerate(batch)}


def _evaluate_pair(pair, convention: str, names) -> tuple[str, dict[str, float]]:
    """Metric values of one pair on the CPU, where the engine takes pairs one at a time
    anyway (stacking a batch would only add copies)."""
    from e2emfd.metrics.fusion import fusion_metrics, load_grey

    stem, *paths = pair
    fused, ir, vis = (load_grey(path, convention) for path in paths)
    values = fusion_metrics(fused, ir, vis, convention=convention, metrics=names)
    return stem, {n: values[n].item() for n in names}


# What a worker runs: loaded once by the fork server (the metrics load torch lazily).
_WORKER_MODULES = (
    "cv2",
    "threadpoolctl",
    "torch",
    "e2emfd.metrics.fusion.io",
    "e2emfd.metrics.fusion.cpu_engine",
    "e2emfd.metrics.fusion.torch_engine.matlab",
    "e2emfd.metrics.fusion.torch_engine.python",
)


def _worker_context():
    """The start method of the workers: processes forked from a fork server that has
    imported the metrics once (a spawned worker spends one to two seconds importing torch
    before its first pair), where the platform has one; spawned elsewhere. Not a fork of
    this process: after a fork, thread pools that this process had started (OpenCV's,
    OpenMP's) hang the child (seen: OpenCV's pool in the tests, which run the command
    in-process). Called early, so that the server imports while this process starts up."""
    import multiprocessing

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__, *_WORKER_MODULES])
    with single_threaded_children():  # the server's libraries read them when they load
        forkserver.ensure_running()
    return context


def _evaluate(pairs, convention, names, device, *, workers, context, threads, batch_size, shown):
    """Per-image metric values, in the order of ``pairs``: on the GPU in batches of
    same-size pairs, on the CPU pair by pair, here (with ``threads`` torch threads) or in
    ``workers`` single-threaded processes started from ``context``."""
    from tqdm import tqdm

    per_image: dict[str, dict[str, float]] = {}
    with tqdm(total=len(pairs), unit="pair", disable=not shown, file=sys.stderr) as bar:
        if workers > 1:
            _run_in_pool(context, workers, per_image, pairs, convention, names, bar)
        elif device.startswith("cpu"):
            with single_threaded(threads or 1):
                for pair in pairs:
                    stem, per_image[stem] = _evaluate_pair(pair, convention, names)
                    bar.update(1)
        else:
            with torch_threads(threads):
                for batch in _batches(pairs, batch_size):
                    per_image.update(_evaluate_batch(batch, convention, names, device))
                    bar.update(len(batch))
    return {stem: per_image[stem] for stem, *_ in pairs}


def _run_in_pool(context, workers, per_image, pairs, convention, names, progress) -> None:
    """Fill ``per_image`` from ``pairs`` in ``workers`` single-threaded processes, one pair
    per job, largest first, so that the processes run out of work together. A failed pair
    cancels the rest."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    order = sorted(pairs, key=lambda p: -_pixels(p[1]))
    pool = ProcessPoolExecutor(workers, mp_context=context, initializer=single_threaded_worker)
    # Spawned processes (where there is no fork server) read the limits when they start.
    with single_threaded_children(), pool:
        jobs = [pool.submit(_evaluate_pair, pair, convention, names) for pair in order]
        try:
            for job in as_completed(jobs):
                stem, per_image[stem] = job.result()
                progress.update(1)
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def _pixels(path: Path) -> int:
    height, width = _image_size(path)
    return height * width


def run(args: argparse.Namespace) -> int:
    from e2emfd.cli.paths import output_file
    from e2emfd.metrics.fusion import resolve_metric_names
    from e2emfd.metrics.fusion.summary import summarize, undefined_warnings

    names = resolve_metric_names(args.metrics)
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".json", ".csv"):
        raise CommandError(f"{out}: --out must end in .json or .csv")
    if out is not None:
        output_file(out)
    if args.batch_size < 1:
        raise CommandError(f"--batch-size must be positive, got {args.batch_size}")
    if args.threads is not None and args.threads < 1:
        raise CommandError(f"--threads must be positive, got {args.threads}")
    if args.workers is not None and args.workers < 1:
        raise CommandError(f"--workers must be positive, got {args.workers}")
    wanted = args.workers or cpu_cores()
    # Workers are started first, so that they load the metrics while this process pairs
    # the files; for the CPU this process does not load torch at all.
    context = _worker_context() if args.device == "cpu" and wanted > 1 else None
    if args.device == "cpu":
        device = "cpu"
    else:
        from e2emfd.engine.runtime import resolve_device

        device = str(resolve_device(args.device, setting="--device"))

    pairs = pair_images(Path(args.ir), Path(args.vi), Path(args.fused))
    workers = min(wanted, len(pairs)) if device.startswith("cpu") else 1  # more would idle
    if workers > 1 and context is None:  # --device auto chose the CPU
        context = _worker_context()
    per_image = _evaluate(
        pairs,
        args.convention,
        names,
        device,
        workers=workers,
        context=context,
        threads=args.threads,
        batch_size=args.batch_size,
        shown=not args.no_progress,
    )

    summary = summarize(per_image, names)
    print(f"{len(pairs)} images, {args.convention} convention")
    print(f"{'metric':<8}{'mean':>14}{'std':>14}")
    for n in names:
        s = summary[n]
        if s.mean is None:
            print(f"{n:<8}{'undefined':>14}{'':>14}  (no image has a defined value)")
            continue
        note = f"  (mean over {s.count} of {s.total} images)" if s.undefined else ""
        print(f"{n:<8}{s.mean:>14.6g}{s.std:>14.6g}{note}")
    for line in undefined_warnings(summary):
        print(f"e2emfd eval-fusion: warning: {line}", file=sys.stderr)
    if out is not None:
        _write(out, args.convention, names, per_image, summary)
        print(f"per-image values written to {out}")
    return 0
