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


def _chunk_size(total: int) -> int:
    """Elements per float64 chunk: about an eighth of the model, between 2^12 and 2^21.

    An eighth keeps the ``[T, chunk]`` float64 buffer at ``T / 4`` copies of float32 shared
    gradients for small models; the cap bounds it to ``T * 16`` MiB for large ones, which then
    need ``total / 2^21`` chunks (a few dozen launches for a ResNet-50), not one per tensor.
    """
    return min(1 << 21, max(1 << 12, -(-total // 8)))


def gram_matrix(task_grads: Sequence[Sequence[Tensor | None]]) -> Tensor:
    """Gram matrix ``G G^T`` of per-task gradient lists, without concatenating them.

    The parameters are walked in order and packed into float64 chunks of a few million
    elements (a tensor can span chunks); each chunk adds its ``[T, T]`` product. No host sync.

    Args:
        task_grads: ``T`` lists, each with one entry per shared parameter (same order and
            shapes across tasks); ``None`` stands for a zero gradient.

    Returns:
        ``[T, T]`` float64 on the device of the first non-``None`` gradient (CPU if all are
        ``None``).
    """
    n_tasks = len(task_grads)
    # One representative (non-None) gradient per parameter, for its size and device.
    present = [next((g for g in per if g is not None), None) for per in zip(*task_grads)]
    numels = [0 if g is None else g.numel() for g in present]
    device = next((g.device for g in present if g is not None), torch.device("cpu"))
    gram = torch.zeros(n_tasks, n_tasks, dtype=torch.float64, device=device)
    total = sum(numels)
    if total == 0:
        return gram
    chunk = _chunk_size(total)
    buf = torch.empty(n_tasks, min(chunk, total), dtype=torch.float64, device=device)
    flats = [[None if g is None else g.reshape(-1) for g in grads] for grads in task_grads]
    zero = torch.zeros((), device=device)
    segments: list[tuple[int, int, int]] = []  # (parameter, start, stop) in the open chunk
    size = 0

    def flush() -> None:
        for t in range(n_tasks):
            pieces = [
                zero.expand(b - a) if flats[t][k] is None else flats[t][k][a:b]
                for k, a, b in segments
            ]
            torch.cat(pieces, out=buf[t, :size])  # casts to float64 on the way
        gram.addmm_(buf[:, :size], buf[:, :size].T)
        segments.clear()

    for k, n in enumerate(numels):
        start = 0
        while start < n:
            take = min(n - start, chunk - size)
            segments.append((k, start, start + take))
            start += take
            size += take
            if size == chunk:
                flush()
                size = 0
    if segments:
        flush()
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
    ``.grad``. A parameter with ``None`` for every task keeps ``grad = None``. Parameters
    present in every task go through fused ``_foreach`` kernels.

    Args:
        params: ``K`` parameters.
        task_grads: ``T`` lists of ``K`` tensors or ``None``; modified in place.
        weights: ``T`` Python floats (no device sync is needed to apply them).
    """
    last = len(task_grads) - 1
    full: list[int] = []
    for k, p in enumerate(params):
        target = task_grads[last][k]
        if target is not None and target is not p.grad:
            raise ValueError("the last task's gradients must be the live .grad tensors")
        if all(grads[k] is not None for grads in task_grads):
            full.append(k)
            continue
        if target is not None:
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
    if full:
        targets = [task_grads[last][k] for k in full]
        torch._foreach_mul_(targets, weights[last])
        for t in range(last):
            torch._foreach_add_(targets, [task_grads[t][k] for k in full], alpha=weights[t])


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
