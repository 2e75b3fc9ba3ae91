"""Time per pair of all fusion metrics on shared/data/tno42 (42 pairs x 4 methods).

Prints one table: for each convention, device, number of worker processes and CPU
threads, the median over ``--repeats`` runs of the wall time per pair (images already
loaded, same-size pairs batched as ``e2emfd eval-fusion`` does), and the CPU time per pair
summed over the processes, which is the steadier figure on a shared machine. With W
workers, W single-threaded processes share the pairs out, as ``eval-fusion --workers W``
does.

    python benchmarks/fusion_metrics.py [--repeats 3] [--data PATH] [--threads 1,2]
        [--workers 1,2]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import time
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from e2emfd.cli.threads import single_threaded_children
from e2emfd.metrics.fusion import fusion_metrics, load_grey

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tno42"


def load_groups(root: Path, convention: str) -> list[tuple[torch.Tensor, ...]]:
    """(fused, ir, vis) stacks, one per image size, over all methods."""
    groups: dict[tuple[int, ...], list[list[torch.Tensor]]] = defaultdict(lambda: [[], [], []])
    methods = sorted(p.name for p in (root / "fused").iterdir() if p.is_dir())
    for ir_path in sorted((root / "ir").glob("*.png")):
        ir = load_grey(ir_path, convention)
        vis = load_grey(root / "vi" / ir_path.name, convention)
        for method in methods:
            fused = load_grey(root / "fused" / method / ir_path.name, convention)
            stacks = groups[tuple(ir.shape)]
            for stack, image in zip(stacks, (fused, ir, vis)):
                stack.append(image)
    return [tuple(torch.stack(s) for s in stacks) for stacks in groups.values()]


def time_all(groups, convention: str, device: torch.device, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median CPU seconds for one pass over all groups."""
    moved = [tuple(t.to(device) for t in g) for g in groups]

    def one_pass():
        for f, a, b in moved:
            fusion_metrics(f, a, b, convention=convention)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    one_pass()  # warm-up: caches, allocator, CUDA context
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        one_pass()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def load_pairs(root: Path, convention: str) -> list[tuple[torch.Tensor, ...]]:
    """(fused, ir, vis) of every pair, one by one."""
    return [tuple(t[i] for t in g) for g in load_groups(root, convention) for i in range(len(g[0]))]


_WORKER_PAIRS: list[tuple[torch.Tensor, ...]] = []


def _worker_load(root: Path, convention: str) -> None:
    """Worker initialiser: one thread, and every pair loaded once (outside the timing)."""
    torch.set_num_threads(1)
    _WORKER_PAIRS.extend(load_pairs(root, convention))


def _worker_pass(indices: list[int], convention: str) -> float:
    """Metrics of the given pairs; returns this process's CPU seconds."""
    cpu = time.process_time()
    for i in indices:
        fusion_metrics(*_WORKER_PAIRS[i], convention=convention)
    return time.process_time() - cpu


def time_workers(root: Path, convention: str, workers: int, repeats: int) -> tuple[float, float]:
    """Median wall seconds and median total CPU seconds for one pass over all pairs, shared
    out to ``workers`` single-threaded processes (pairs dealt round-robin, largest first)."""
    pairs = load_pairs(root, convention)
    order = sorted(range(len(pairs)), key=lambda i: -pairs[i][0].numel())
    shares = [order[k::workers] for k in range(workers)]
    context = multiprocessing.get_context("spawn")
    with (
        single_threaded_children(),
        ProcessPoolExecutor(
            workers, mp_context=context, initializer=_worker_load, initargs=(root, convention)
        ) as pool,
    ):
        walls, cpus = [], []
        for rep in range(repeats + 1):  # the first pass warms the workers up
            wall = time.perf_counter()
            jobs = [pool.submit(_worker_pass, share, convention) for share in shares]
            cpu = sum(job.result() for job in jobs)
            if rep:
                walls.append(time.perf_counter() - wall)
                cpus.append(cpu)
    return statistics.median(walls), statistics.median(cpus)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tno42 folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    parser.add_argument(
        "--threads", default=f"1,{torch.get_num_threads()}", help="CPU thread counts to try"
    )
    parser.add_argument(
        "--workers",
        default=f"{os.cpu_count() or 1}",
        help="numbers of single-threaded worker processes to try (1 = threads in this process)",
    )
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even if available")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: tno42 folder not found")
    threads = sorted({int(t) for t in args.threads.split(",")})
    workers = sorted({int(w) for w in args.workers.split(",")} - {1})
    cuda = torch.cuda.is_available() and not args.no_cuda

    rows = []
    for convention in ("python", "matlab"):
        groups = load_groups(args.data, convention)
        pairs = sum(len(g[0]) for g in groups)
        for n in threads:
            torch.set_num_threads(n)
            wall, cpu = time_all(groups, convention, torch.device("cpu"), args.repeats)
            rows.append((convention, "cpu", "1", str(n), wall / pairs, cpu / pairs))
        for w in workers:
            wall, cpu = time_workers(args.data, convention, w, args.repeats)
            rows.append((convention, "cpu", str(w), "1", wall / pairs, cpu / pairs))
        if cuda:
            wall, cpu = time_all(groups, convention, torch.device("cuda"), args.repeats)
            name = torch.cuda.get_device_name()
            rows.append((convention, name, "1", "-", wall / pairs, cpu / pairs))

    print(f"fusion metrics, all 13, tno42: {pairs} pairs per convention, median of {args.repeats}")
    header = ("convention", "device", "workers", "threads", "wall s/pair", "cpu s/pair")
    widths = (11, max(6, *(len(r[1]) for r in rows)), 8, 8, 12, 11)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for row in rows:
        cells = (*row[:4], f"{row[4]:.4f}", f"{row[5]:.4f}")
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))


if __name__ == "__main__":
    main()
