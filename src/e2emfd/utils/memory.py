"""Counting tensor memory on any device, the CPU included (where PyTorch keeps no
allocator statistics): used by the benchmarks and the memory-budget tests."""

from __future__ import annotations

import weakref

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class LiveBytes(TorchDispatchMode):
    """Tracks the bytes of live tensor storages created by any op inside the context
    (autograd's saved tensors and gradients included): ``current`` and ``peak``."""

    def __init__(self) -> None:
        super().__init__()
        self.live: set[int] = set()
        self.current = 0
        self.peak = 0

    def _release(self, key: int, nbytes: int) -> None:
        self.live.discard(key)
        self.current -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, Tensor):
                continue
            # a sparse COO tensor has no storage of its own: count its indices and values
            parts = (t._indices(), t._values()) if t.layout == torch.sparse_coo else (t,)
            for part in parts:
                storage = part.untyped_storage()
                if storage._cdata in self.live:
                    continue
                self.live.add(storage._cdata)
                self.current += storage.nbytes()
                self.peak = max(self.peak, self.current)
                weakref.finalize(storage, self._release, storage._cdata, storage.nbytes())
        return out
