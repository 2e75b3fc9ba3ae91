"""Per-parameter gradient helpers: Gram matrix, in-place weighted combination, all-reduce.

A task's gradient on the shared parameters is held as a list (one tensor or ``None`` per
parameter, ``None`` meaning zero); nothing is ever concatenated into one long vector, so the
only memory these helpers add is a bounded float64 chunk while computing the Gram matrix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "GradList",
    "ReduceFn",
    "allreduce_mean",
    "average_gradients",
    "combine_into_grads",
    "gram_matrix",
]

GradList = list[Tensor | None]
ReduceFn = Callable[[list[Tensor]], None]

# Elements per float64 chunk in gram_matrix: bounds its temporary to T * 2 MiB.
_GRAM_CHUNK = 1 << 18


def gram_matrix(task_grads: Sequence[Sequence[Tensor | None]]) -> Tensor:
    """Gram matrix ``G G^T`` of per-task gradient lists, by per-parameter dot products.

    Args:
        task_grads: ``T`` lists, each with one entry per shared parameter (same order and
            shapes across tasks); ``None`` stands for a zero gradient.

    Returns:
        ``[T, T]`` float64 on the device of the first non-``None`` gradient (CPU if all are
        ``None``). Products are accumulated in float64 in chunks of at most 2^18 elements.
    """
    n_tasks = len(task_grads)
    device = next(
        (g.device for grads in task_grads for g in grads if g is not None), torch.device("cpu")
    )
    gram = torch.zeros(n_tasks, n_tasks, dtype=torch.float64, device=device)
    for per_param in zip(*task_grads):
        present = [t for t, g in enumerate(per_param) if g is not None]
        if not present:
            continue
        flats = [per_param[t].reshape(-1) for t in present]
        block = torch.zeros(len(present), len(present), dtype=torch.float64, device=device)
        numel = flats[0].numel()
        buf = torch.empty(len(present), min(numel, _GRAM_CHUNK), dtype=torch.float64, device=device)
        for start in range(0, numel, _GRAM_CHUNK):
            stop = min(start + _GRAM_CHUNK, numel)
            chunk = buf[:, : stop - start]
            for row, f in zip(chunk, flats):
                row.copy_(f[start:stop])  # casts to float64 without another temporary
            block += chunk @ chunk.T
        idx = torch.tensor(present, device=device)
        gram[idx.unsqueeze(1), idx.unsqueeze(0)] += block
    return gram


def combine_into_grads(
    params: Sequence[nn.Parameter],
    task_grads: Sequence[GradList],
    weights: Sequence[float],
) -> None:
    """Write ``sum_t weights[t] * task_grads[t][k]`` into ``params[k].grad``, in place.

    The LAST task's list must be the live ``.grad`` tensors themselves (or ``None`` where a
    parameter has no grad): they are scaled in place and the other tasks are added to them, so
    no new full-size tensor is allocated. Where the last task has ``None``, the first other
    non-``None`` tensor (owned by the caller, e.g. a stash) is scaled in place and becomes
    ``.grad``. A parameter with ``None`` for every task keeps ``grad = None``.

    Args:
        params: ``K`` parameters.
        task_grads: ``T`` lists of ``K`` tensors or ``None``; modified in place.
        weights: ``T`` Python floats (no device sync is needed to apply them).
    """
    last = len(task_grads) - 1
    for k, p in enumerate(params):
        target = task_grads[last][k]
        if target is not None:
            if target is not p.grad:
                raise ValueError("the last task's gradients must be the live .grad tensors")
            target.mul_(weights[last])
        for t in range(last):
            g = task_grads[t][k]
            if g is None:
                continue
            if target is None:
                target = g.mul_(weights[t])
                p.grad = target
            else:
                target.add_(g, alpha=weights[t])


def average_gradients(params: Sequence[nn.Parameter], reduce_fn: ReduceFn) -> None:
    """Hand every ``.grad`` of ``params`` that require grad to ``reduce_fn`` in one call.

    Use it on balancing steps (run under DDP's ``no_sync()``) for the parameters that are NOT
    shared (the task heads): DDP did not all-reduce them, and :class:`TaskBalancer` only
    reduces the shared ones. A missing grad is materialised as zeros so that every rank passes
    the same list of tensors in the same order (a collective needs that).
    """
    grads: list[Tensor] = []
    for p in params:
        if not p.requires_grad:
            continue
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        grads.append(p.grad)
    if grads:
        reduce_fn(grads)


def allreduce_mean(group: object | None = None, bucket_bytes: int = 25 * 1024 * 1024) -> ReduceFn:
    """A ``reduce_fn`` that averages tensors in place across the ranks of ``group``.

    Tensors are flattened into buckets of at most ``bucket_bytes`` (per dtype and device) so a
    few large collectives replace many small ones while the extra memory stays bounded; a
    tensor bigger than a bucket is reduced on its own, in place. Requires an initialised
    ``torch.distributed`` process group.
    """
    import torch.distributed as dist

    def reduce_fn(tensors: list[Tensor]) -> None:
        world = dist.get_world_size(group)
        if world == 1:
            return
        open_buckets: dict[tuple[torch.dtype, torch.device], tuple[list[Tensor], int]] = {}
        full: list[list[Tensor]] = []
        for t in tensors:
            nbytes = t.numel() * t.element_size()
            if nbytes >= bucket_bytes:
                buf = t if t.is_contiguous() else t.contiguous()
                dist.all_reduce(buf, group=group)
                buf.div_(world)
                if buf is not t:
                    t.copy_(buf)
                continue
            key = (t.dtype, t.device)
            bucket, size = open_buckets.get(key, ([], 0))
            bucket.append(t)
            size += nbytes
            if size >= bucket_bytes:
                full.append(bucket)
                open_buckets.pop(key, None)
            else:
                open_buckets[key] = (bucket, size)
        full.extend(bucket for bucket, _ in open_buckets.values())
        for bucket in full:
            flat = torch.cat([b.reshape(-1) for b in bucket])
            dist.all_reduce(flat, group=group)
            flat.div_(world)
            offset = 0
            for b in bucket:
                b.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

    return reduce_fn
