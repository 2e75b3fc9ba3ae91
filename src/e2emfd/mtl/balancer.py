"""TaskBalancer: one backward step that balances task gradients on the shared parameters.

Contract of :meth:`TaskBalancer.backward` (the caller zeroes grads before, as for a plain
``loss.backward()``): afterwards every parameter that requires grad holds

- shared parameters: ``sum_t w_t g_t``, the balanced combination of the task gradients
  ``g_t = d loss_t / d shared`` (plain steps and method ``sum``: ``w_t = 1``);
- every other parameter: the plain sum of the task gradients, i.e. for a task head its own
  task's gradient (the other losses do not depend on it). Nothing is counted twice.

Memory on a balancing step, on top of a plain step: the retained graph of the first backward
(the activations a plain step also holds at its peak), one stashed copy of the shared
gradients per task except the last (one copy for two tasks), and a ``[T, chunk]`` float64
buffer for the Gram matrix (at most ``T / 4`` copies, and at most ``T * 16`` MiB). No
``create_graph``, no ``T x P`` Jacobian: every method works on the ``T x T`` Gram matrix
(torchjd's Gramian weightings take exactly that; Nash-MTL takes a ``T x T`` square root of
it, which has the same Gram).

Distributed training (DDP): on balancing steps (:meth:`TaskBalancer.balances`) the trainer
runs ``backward`` under ``model.no_sync()``, passes ``reduce_fn`` (e.g.
:func:`~e2emfd.mtl.gradients.allreduce_mean`), and afterwards calls
``average_gradients(task_specific_params, reduce_fn)`` for the parameters that are not
shared. The balancer calls ``reduce_fn`` once with the per-task shared gradients BEFORE the
Gram matrix is computed, so every rank aligns the same averaged gradients and applies the
same update. On plain steps DDP synchronises as usual and ``reduce_fn`` is not called.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .gmta import aligned_condition_number, condition_number, gmta_weights, psd_sqrt
from .gradients import GradList, ReduceFn, combine_into_grads, gram_matrix

__all__ = ["METHODS", "TaskBalancer"]

METHODS = ("sum", "gmta", "pcgrad", "cagrad", "nashmtl", "imtl", "mgda", "upgrad")

# cvxpy's warning that Nash-MTL's parametrised problem is not DPP (it re-canonicalises each
# solve: slower, still correct). Known and harmless here.
_DPP_WARNING = r".*(DPP|Disciplined Parametrized Programming).*"


def _torchjd_weighting(method: str, n_tasks: int, kwargs: Mapping[str, Any]) -> Callable:
    """A callable mapping the ``[T, T]`` float64 Gram to ``[T]`` weights, from torchjd."""
    from torchjd import aggregation as agg

    if method == "nashmtl":
        weighting = agg.NashMTL(n_tasks=n_tasks, **kwargs).weighting

        def nash(gram: Tensor) -> Tensor:
            # Nash-MTL reads only J J^T and |w^T J| = sqrt(w^T J J^T w) from the Jacobian J,
            # so the T x T square root R (R R^T = gram) gives the same weights.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=_DPP_WARNING)
                return weighting(psd_sqrt(gram))

        return nash
    if method == "cagrad":
        kwargs = {"c": 0.4, **kwargs}
    classes = {
        "pcgrad": agg.PCGrad,
        "cagrad": agg.CAGrad,
        "imtl": agg.IMTLG,
        "mgda": agg.MGDA,
        "upgrad": agg.UPGrad,
    }
    return classes[method](**kwargs).gramian_weighting


def _backward_into_trunk(
    attached: Sequence[Tensor], grads: Sequence[Tensor | None], retain: bool
) -> None:
    """Continue a backward pass into the trunk that produced ``attached``, with the
    gradients the heads left on the detached copies of those outputs."""
    pairs = [(a, g) for a, g in zip(attached, grads) if g is not None]
    if pairs:
        torch.autograd.backward([a for a, _ in pairs], [g for _, g in pairs], retain_graph=retain)


class TaskBalancer:
    """Multi-task backward with gradient balancing on the shared parameters.

    Args:
        method: one of :data:`METHODS`. ``sum``: plain ``sum(losses).backward()``. ``gmta``:
            Aligned-MTL (the paper's GMTA, :mod:`e2emfd.mtl.gmta`). ``pcgrad``, ``cagrad`` (c=0.4 by
            default), ``nashmtl``, ``imtl`` (IMTL-G), ``mgda``, ``upgrad``: the torchjd 0.18
            aggregators applied to the task gradients of the shared parameters.
        shared_params: the parameters every task depends on (backbone + FPN). Those with
            ``requires_grad=False`` are ignored.
        every: balance on steps with ``step % every == 0``; other steps are plain sums.
        reduce_fn: distributed only: averages a list of tensors in place across ranks (see
            the module docstring).
        method_kwargs: extra arguments for the torchjd aggregator (e.g. ``{"c": 0.5}``).
    """

    def __init__(
        self,
        method: str,
        shared_params: Sequence[nn.Parameter],
        every: int = 1,
        reduce_fn: ReduceFn | None = None,
        method_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")
        if every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.method = method
        self.every = every
        self.reduce_fn = reduce_fn
        self.method_kwargs = dict(method_kwargs or {})
        # Deduplicate (tied weights) while keeping the order, which reduce_fn relies on.
        seen: set[int] = set()
        self.shared_params: list[nn.Parameter] = []
        for p in shared_params:
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                self.shared_params.append(p)
        self._weighting: Callable | None = None
        self._n_tasks: int | None = None

    def balances(self, step: int) -> bool:
        """Whether ``backward(..., step)`` balances (DDP: run it under ``no_sync()`` then)."""
        return self.method != "sum" and step % self.every == 0

    def backward(
        self,
        losses: Mapping[str, Tensor],
        step: int,
        features: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
    ) -> dict[str, float]:
        """Backpropagate ``losses`` (scalars, in a fixed task order) and balance if due.

        Args:
            features: optional ``(attached, leaves)``: the shared trunk's outputs and the
                detached copies (``requires_grad``) the task heads were computed from. On a
                balancing step each head is then backpropagated once, freeing its graph,
                and only the trunk's graph is kept for the second task: the memory of a
                plain step plus one stashed copy of the shared gradients and the feature
                gradients, instead of every head's activations kept alive meanwhile.
                (Under DDP only pass them on steps run under ``no_sync()``.)

        Returns:
            On balancing steps: ``cos`` (cosine between the first two task gradients),
            ``norm_ratio`` (``|g_first| / |g_second|`` in the order of ``losses``),
            ``cond_before`` (condition number ``s_max / s_min`` of the task-gradient matrix),
            ``cond_after`` (``gmta`` only: that of the aligned matrix, 1 up to rounding) and
            ``w_<task>`` (weight of each task gradient in the shared update). Undefined
            ratios (a zero gradient) are ``nan``/``inf``. On plain steps: ``{}``.
        """
        if not losses:
            raise ValueError("losses is empty")
        if not self.balances(step):
            total = sum(loss for loss in losses.values() if loss.requires_grad)
            if isinstance(total, Tensor):
                total.backward()
            if features is not None:
                _backward_into_trunk(features[0], [leaf.grad for leaf in features[1]], False)
            return {}

        names = list(losses)
        task_grads = self._task_gradients(list(losses.values()), features)
        if self.reduce_fn is not None:
            self.reduce_fn([g for grads in task_grads for g in grads if g is not None])
        # The single host sync of the step: the T x T Gram goes to the CPU, where the
        # weights and all statistics are computed.
        gram = gram_matrix(task_grads).cpu()
        weights = self._weights(gram, len(names))
        combine_into_grads(self.shared_params, task_grads, weights.tolist())
        return self._stats(names, gram, weights)

    def _task_gradients(
        self,
        losses: list[Tensor],
        features: tuple[Sequence[Tensor], Sequence[Tensor]] | None = None,
    ) -> list[GradList]:
        """Per-task gradients of the shared parameters; the last list is the live ``.grad``.

        Each task is backpropagated in turn (the shared part of the graph is retained for the
        next task); its shared gradients are then copied aside and the live ``.grad`` zeroed
        (keeping the tensor, which DDP's bucket views and fused optimisers may hold on to),
        so the next task accumulates into a clean buffer. Non-shared parameters simply
        accumulate, each from its own task. With ``features``, the heads are backpropagated
        first (each graph freed at once) and the trunk then once per task.
        """
        with_graph = [i for i, loss in enumerate(losses) if loss.requires_grad]
        last_backward = with_graph[-1] if with_graph else -1
        feature_grads: list[list[Tensor | None]] = []
        if features is not None:
            for loss in losses:
                if loss.requires_grad:
                    loss.backward()
                feature_grads.append([leaf.grad for leaf in features[1]])
                for leaf in features[1]:
                    leaf.grad = None
        materialise = self.reduce_fn is not None
        task_grads: list[GradList] = []
        for i, loss in enumerate(losses):
            retain = i != last_backward
            if features is not None:
                _backward_into_trunk(features[0], feature_grads[i], retain)
            elif loss.requires_grad:
                loss.backward(retain_graph=retain)
            is_last = i == len(losses) - 1
            for p in self.shared_params:
                if p.grad is None and materialise:
                    # Every rank must hand reduce_fn the same tensors, even for a task that
                    # does not reach this parameter here.
                    p.grad = torch.zeros_like(p)
            live: GradList = [p.grad for p in self.shared_params]
            if is_last:
                task_grads.append(live)
                continue
            present = [g for g in live if g is not None]
            # Fused copy (x * 1 is exact) and zeroing: one launch per group, not per tensor.
            copies = iter(torch._foreach_mul(present, 1.0) if present else [])
            torch._foreach_zero_(present)
            task_grads.append([None if g is None else next(copies) for g in live])
        return task_grads

    def _weights(self, gram: Tensor, n_tasks: int) -> Tensor:
        """``[T]`` float64 CPU weights of the task gradients from the CPU Gram matrix."""
        if self.method == "gmta":
            return gmta_weights(gram, self.method_kwargs.get("scale_mode", "min"))
        if self._weighting is None or self._n_tasks != n_tasks:
            self._weighting = _torchjd_weighting(self.method, n_tasks, self.method_kwargs)
            self._n_tasks = n_tasks
        with torch.no_grad():
            return self._weighting(gram).to(torch.float64).reshape(n_tasks)

    def _stats(self, names: list[str], gram: Tensor, weights: Tensor) -> dict[str, float]:
        """Statistics of one balancing step, from CPU float64 tensors (no device sync)."""
        stats: dict[str, float] = {}
        if len(names) >= 2:
            g00, g11, g01 = gram[0, 0].item(), gram[1, 1].item(), gram[0, 1].item()
            denom = (g00 * g11) ** 0.5
            stats["cos"] = g01 / denom if denom > 0 else float("nan")
            if g11 > 0:
                stats["norm_ratio"] = (g00 / g11) ** 0.5
            else:
                stats["norm_ratio"] = float("inf") if g00 > 0 else float("nan")
        stats["cond_before"] = condition_number(gram).item()
        if self.method == "gmta":
            stats["cond_after"] = aligned_condition_number(gram).item()
        for name, w in zip(names, weights.tolist()):
            stats[f"w_{name}"] = w
        return stats
