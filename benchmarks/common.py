"""Timing and memory helpers shared by the benchmark scripts (each prints one table)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import contextmanager

import torch

from e2emfd.utils.memory import LiveBytes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    fn: Callable[[], object], device: torch.device, repeats: int = 5, warmup: int = 2
) -> float:
    """Median wall time of ``fn`` after ``warmup`` untimed calls (device-synchronised)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


@contextmanager
def peak_memory(device: torch.device):
    """Yields a dict whose ``bytes`` is set to the peak tensor memory of the block: CUDA's
    allocator statistics on GPU, :class:`LiveBytes` accounting on CPU."""
    result = {"bytes": 0}
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        yield result
        sync(device)
        result["bytes"] = torch.cuda.max_memory_allocated(device) - base
    else:
        with LiveBytes() as mem:
            yield result
        result["bytes"] = mem.peak


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(header, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).ljust(w) for x, w in zip(row, widths)) + " |")


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
