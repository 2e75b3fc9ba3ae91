"""Device choice, seeding, autocast and moving batches: the small runtime pieces shared by
training, evaluation and the inference commands."""

from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

DEVICES = "auto, cpu, cuda or cuda:N"


def resolve_device(
    name: str = "auto", local_rank: int = 0, setting: str = "device"
) -> torch.device:
    """``auto`` = CUDA when available (this process's local GPU), else CPU. A name other
    than :data:`DEVICES` is an error that names the ``setting`` and lists them."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{setting} '{name}' is not supported; use {DEVICES}")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"{setting} '{name}' requested but CUDA is not available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


def seed_everything(seed: int, deterministic: bool = True) -> None:
    random.seed(seed)
    np.random.seed(seed % (2**32))  # noqa: NPY002 - seeds code that uses the global RNG
    torch.manual_seed(seed)
    if deterministic:
        # Deterministic kernels where PyTorch has them; warn (not fail) where it has none.
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False


def autocast_context(device: torch.device, enabled: bool):
    """bf16 autocast on CUDA when enabled; nothing on CPU (bf16 there is slow and lossy)."""
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def move_batch(batch: dict, device: torch.device) -> dict:
    """Copy a collated batch's tensors (and its targets' tensors) to ``device``."""
    non_blocking = device.type == "cuda"
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device, non_blocking=non_blocking)
        elif key == "targets":
            out[key] = [
                {
                    k: v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v
                    for k, v in t.items()
                }
                for t in value
            ]
        else:
            out[key] = value
    return out


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is an allocation failure: CUDA's out-of-memory error, or the CPU
    allocator's RuntimeError (which has no class of its own)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return (
        isinstance(exc, RuntimeError)
        and "DefaultCPUAllocator" in text
        and ("can't allocate memory" in text or "not enough memory" in text)
    )
