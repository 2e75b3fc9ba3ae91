"""Training the demo's model on a small CPU: one process using every core's thread, against
several single-threaded processes that share each batch (DistributedDataParallel over
gloo), the way `e2emfd demo` trains.

    python benchmarks/cpu_processes.py                 # 1 process x all cores vs 2 x 1
    python benchmarks/cpu_processes.py --processes 2 4 --repeats 10
    python benchmarks/cpu_processes.py --before-after    # the demo's step, issue 20

One joint training step (fusion + detection losses summed, backward, AdamW) of the demo's
CPU-sized model on a global batch of 4 synthetic 320x256 pairs; the median of ``repeats``
steps after two warm-up steps, per setting. ``--before-after``: instead, the demo's own
layout (2 single-threaded DDP processes) as it trained before issue 20 against its
changes added one by one (``train_step.ISSUE20_STEPS``), in interleaved rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import print_table  # noqa: E402
from e2emfd.config import load_config  # noqa: E402
from e2emfd.demo.config import DEMO_OVERRIDES  # noqa: E402
from e2emfd.engine.distributed import run_local_processes  # noqa: E402
from e2emfd.models import build_model  # noqa: E402
from e2emfd.ops import roi_align as roi_align_ops  # noqa: E402
from train_step import ISSUE20_STEPS, ratio_rows, synthetic_batch  # noqa: E402


def step_times(cfg, batch_size: int, width: int, height: int, repeats: int, ddp: bool) -> list:
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    net = DistributedDataParallel(model, find_unused_parameters=True) if ddp else model
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch = synthetic_batch(batch_size, width, height, torch.device("cpu"))
    times = []
    for _ in range(repeats + 2):
        if ddp:
            dist.barrier()  # every rank starts the step together
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        sum(net(batch)["losses"].values()).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return times[2:]


def _rank_main(cfg, batch_size, width, height, repeats, out: str, sparse=True) -> None:
    roi_align_ops.SPARSE_CPU_BACKWARD = sparse
    dist.init_process_group("gloo")
    try:
        times = step_times(cfg, batch_size, width, height, repeats, ddp=True)
        # a step lasts as long as its slowest rank
        slowest = torch.tensor(times)
        dist.all_reduce(slowest, op=dist.ReduceOp.MAX)
        if dist.get_rank() == 0:
            Path(out).write_text(json.dumps(slowest.tolist()))
    finally:
        dist.destroy_process_group()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--processes", type=int, nargs="+", default=[2])
    parser.add_argument("--batch", type=int, default=4, help="global batch (default 4)")
    parser.add_argument("--size", default="320x256")
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument(
        "--before-after",
        action="store_true",
        help="the demo's 2-process step before issue 20 against now, interleaved",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    cpus = os.cpu_count() or 1
    if args.before_after:
        before_after(args, width, height, cpus)
        return
    cfg = load_config(None, [*DEMO_OVERRIDES, "train.mtl=sum"])

    torch.set_num_threads(cpus)
    base = statistics.median(step_times(cfg, args.batch, width, height, args.repeats, False))
    rows = [["1", str(cpus), str(args.batch), f"{base:.3f}", f"{args.batch / base:.2f}", "1.00"]]
    for n in args.processes:
        if args.batch % n:
            raise SystemExit(f"--batch {args.batch} does not split over {n} processes")
        threads = max(1, cpus // n)
        median = ddp_step_seconds(cfg, args, width, height, n, threads, sparse=True)
        rows.append(
            [
                str(n),
                str(threads),
                str(args.batch // n),
                f"{median:.3f}",
                f"{args.batch / median:.2f}",
                f"{base / median:.2f}",
            ]
        )
    print(
        f"joint training step of the demo model, global batch {args.batch} at {args.size}, "
        f"{cpus} CPU cores, median of {args.repeats} steps"
    )
    print_table(
        ["processes", "threads each", "batch each", "s / step", "images / s", "speedup"], rows
    )


def ddp_step_seconds(cfg, args, width, height, processes, threads, sparse) -> float:
    """Median step of ``processes`` DDP processes sharing the global batch."""
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "times.json")
        run_local_processes(
            _rank_main,
            processes,
            (cfg, args.batch // processes, width, height, args.repeats, out, sparse),
            threads,
        )
        return statistics.median(json.loads(Path(out).read_text()))


def before_after(args, width: int, height: int, cpus: int) -> None:
    processes, threads = 2, max(1, cpus // 2)
    times: dict[str, list[float]] = {name: [] for name in ISSUE20_STEPS}
    for _ in range(args.rounds):
        for name, (overrides, sparse) in ISSUE20_STEPS.items():
            cfg = load_config(None, [*DEMO_OVERRIDES, "train.mtl=sum", *overrides])
            times[name].append(
                ddp_step_seconds(cfg, args, width, height, processes, threads, sparse)
            )
    print(
        f"the demo's joint step: {processes} DDP processes x {threads} thread, global batch "
        f"{args.batch} at {args.size}, median of {args.repeats} steps per round, "
        f"{args.rounds} interleaved rounds"
    )
    print_table(
        ["step", "ms", "each round ms", "images / s", "speed-up"],
        ratio_rows(times, args.batch),
    )


if __name__ == "__main__":
    main()
