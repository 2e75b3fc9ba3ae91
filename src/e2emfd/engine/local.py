"""Training on this machine's CPU cores: one process, or several local processes that
share each batch (PyTorch DDP over gloo), as ``torchrun --nproc-per-node`` would run them."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from e2emfd.config import Config
from e2emfd.engine.checkpoint import load_checkpoint
from e2emfd.engine.distributed import run_local_processes
from e2emfd.engine.trainer import CHECKPOINT_NAME, train


def local_processes(batch_size: int, cpus: int | None = None) -> int:
    """How many training processes to run on this machine: two with two or more cores
    (each takes half the batch), one otherwise. Two single-threaded processes train a
    CPU-sized model ~1.2x faster than one process with two threads
    (benchmarks/cpu_processes.py); more would leave too few images per process for batch
    norm."""
    cpus = cpus or os.cpu_count() or 1
    return 2 if cpus >= 2 and batch_size % 2 == 0 else 1


def _train_rank(
    cfg: Config, progress: bool, resume: bool, time_budget_s: float | None, overwrite: bool
) -> None:
    train(cfg, resume=resume, progress=progress, time_budget_s=time_budget_s, overwrite=overwrite)


def train_locally(
    cfg: Config,
    processes: int = 1,
    threads: int | None = None,
    resume: bool = False,
    progress: bool = True,
    time_budget_s: float | None = None,
    overwrite: bool = False,
) -> int:
    """Train ``cfg`` (``train.batch_size`` = the global batch) in ``processes`` local
    processes with ``threads`` intra-op threads each (default: the cores shared out);
    returns the step reached. The checkpoint is ``cfg.output_dir/checkpoint_last.pt``.
    ``resume`` and ``overwrite`` are :func:`train`'s. ``cfg`` is left as given."""
    if processes < 1 or cfg.train.batch_size % processes:
        raise ValueError(
            f"{processes} training processes cannot share batches of {cfg.train.batch_size}"
        )
    if processes == 1:
        return train(
            cfg, resume=resume, progress=progress, time_budget_s=time_budget_s, overwrite=overwrite
        ).step
    threads = threads or max(1, (os.cpu_count() or 1) // processes)
    per_process = dataclasses.replace(
        cfg, train=dataclasses.replace(cfg.train, batch_size=cfg.train.batch_size // processes)
    )
    run_local_processes(
        _train_rank, processes, (per_process, progress, resume, time_budget_s, overwrite), threads
    )
    return int(load_checkpoint(Path(cfg.output_dir) / CHECKPOINT_NAME)["step"])
