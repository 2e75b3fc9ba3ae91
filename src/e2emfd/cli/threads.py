"""Thread pools of the processes that compute fusion metrics: one BLAS, OpenMP, OpenCV and
torch thread per process (the metrics of a pair are many small calls; more threads only
spin against each other and against other jobs)."""

from __future__ import annotations

import contextlib
import os

__all__ = [
    "cpu_cores",
    "single_threaded",
    "single_threaded_children",
    "single_threaded_worker",
    "torch_threads",
]


def cpu_cores() -> int:
    """CPU cores this process may use (its affinity where the platform tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


_THREAD_LIMITS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@contextlib.contextmanager
def single_threaded_children():
    """Processes spawned inside this block start their BLAS and OpenMP pools with one
    thread (they read these variables at import): one pool per core in every worker would
    only compete for the cores."""
    saved = {k: os.environ.get(k) for k in _THREAD_LIMITS}
    os.environ.update({k: "1" for k in _THREAD_LIMITS})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@contextlib.contextmanager
def single_threaded(torch_threads: int = 1):
    """One BLAS, OpenMP and OpenCV thread in this process inside the block (and
    ``torch_threads`` torch threads). The metrics of a pair are many small calls: more
    threads only spin, and on a busy machine pools that spin against other jobs made the
    command 25x slower (194 s instead of 7.8 s for 42 tno42 pairs, one process)."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    saved = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(torch_threads)
    cv2.setNumThreads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(saved[0])
        cv2.setNumThreads(saved[1])


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """``threads`` torch threads inside the block (None: leave them)."""
    import torch

    saved = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


def single_threaded_worker() -> None:
    """:func:`single_threaded`, for a worker process's whole life."""
    import cv2
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    threadpool_limits(limits=1)
