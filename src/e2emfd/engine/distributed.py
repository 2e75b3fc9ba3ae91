"""Distributed training on PyTorch's own engine (``torchrun``): process-group set-up and
the few collectives the trainer needs. Everything degrades to a no-op in one process."""

from __future__ import annotations

import contextlib
import os
import pickle
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_kind: str) -> DistInfo:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on
    GPU, gloo on CPU); a plain ``python`` run is one process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def shutdown_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def any_rank(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any rank (no-op in one process): lets a
    rank-local decision, such as a spent time budget, stop all ranks at the same step."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([float(flag)])
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def run_local_processes(fn: Callable, world_size: int, args: tuple = (), threads: int = 1) -> None:
    """Run ``fn(*args)`` in ``world_size`` processes on this machine that join one gloo
    group, as ``torchrun --nproc-per-node`` would, each with ``threads`` intra-op threads.
    On a small CPU, processes with one thread each train a small model faster than one
    process with all the threads (its convolutions are too small to split well).
    ``fn`` must be importable (a module-level function); an exception in any process is
    raised here, as itself (a ValueError stays a ValueError, with its one-line message)."""
    import tempfile

    import torch.multiprocessing as mp

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="e2emfd-ranks-") as errors:
        try:
            mp.spawn(
                _local_rank_main, (world_size, port, threads, fn, args, errors), nprocs=world_size
            )
        except mp.ProcessRaisedException as exc:
            raised = _load_exception(Path(errors) / f"{exc.error_index}.pickle")
            if raised is None:
                raise
            raise raised from None


def _local_rank_main(
    rank: int, world_size: int, port: int, threads: int, fn, args, errors: str
) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(threads)
    try:
        fn(*args)
    except Exception as exc:
        # spawn hands the parent only the text of the traceback; keep the exception too
        with contextlib.suppress(Exception), open(Path(errors) / f"{rank}.pickle", "wb") as fh:
            pickle.dump(exc, fh)
        raise


def _load_exception(path: Path) -> Exception | None:
    """The exception a process saved, or None (none saved, or it cannot be rebuilt)."""
    try:
        with open(path, "rb") as fh:
            raised = pickle.load(fh)  # written by this run's own processes
    except Exception:  # noqa: BLE001
        return None
    return raised if isinstance(raised, Exception) else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
