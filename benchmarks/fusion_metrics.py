"""Time per pair of all fusion metrics on shared/data/tno42 (42 pairs x 4 methods).

Prints one table: for each convention, device and CPU thread count, the median over
``--repeats`` runs of the wall time per pair (images already loaded, same-size pairs
batched as ``e2emfd eval-fusion`` does), and the process CPU time per pair, which is the
steadier figure on a shared machine.

    python benchmarks/fusion_metrics.py [--repeats 3] [--data PATH] [--threads 1,2]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from pathlib import Path

import torch

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tno42 folder")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes (median)")
    parser.add_argument(
        "--threads", default=f"1,{torch.get_num_threads()}", help="CPU thread counts to try"
    )
    parser.add_argument("--no-cuda", action="store_true", help="skip CUDA even if available")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"{args.data}: tno42 folder not found")
    threads = sorted({int(t) for t in args.threads.split(",")})
    cuda = torch.cuda.is_available() and not args.no_cuda

    rows = []
    for convention in ("python", "matlab"):
        groups = load_groups(args.data, convention)
        pairs = sum(len(g[0]) for g in groups)
        for n in threads:
            torch.set_num_threads(n)
            wall, cpu = time_all(groups, convention, torch.device("cpu"), args.repeats)
            rows.append((convention, "cpu", str(n), wall / pairs, cpu / pairs))
        if cuda:
            wall, cpu = time_all(groups, convention, torch.device("cuda"), args.repeats)
            rows.append((convention, torch.cuda.get_device_name(), "-", wall / pairs, cpu / pairs))

    print(f"fusion metrics, all 13, tno42: {pairs} pairs per convention, median of {args.repeats}")
    header = ("convention", "device", "threads", "wall s/pair", "cpu s/pair")
    widths = (11, max(6, *(len(r[1]) for r in rows)), 8, 12, 11)
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    for conv, dev, thr, wall, cpu in rows:
        cells = (conv, dev, thr, f"{wall:.4f}", f"{cpu:.4f}")
        print("  ".join(c.ljust(w) for c, w in zip(cells, widths)))


if __name__ == "__main__":
    main()
