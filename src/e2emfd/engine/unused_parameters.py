"""Parameters that a training step leaves without a gradient, under DistributedDataParallel.

DDP all-reduces each parameter's gradient as backward produces it; a parameter that gets
none fails the step ("Expected to have finished reduction") unless DDP searches every
step's graph for such parameters (``find_unused_parameters=True``). That search costs a
graph traversal per step, and DDP warns at start when the first step happens to use
every parameter. So the search is asked for only where a parameter can go unused in a way
nothing else handles:

- A built head whose task is not trained never runs: it is frozen (DDP leaves frozen
  parameters out), and stays as untouched as in one process.
- Detection: RoI pooling takes each box from the pyramid level of its size, and a batch
  can map no box to a level, whose FPN output convolution then gets no gradient (with the
  demo config in two gloo processes, P5 went unused at step 5 and the run failed without
  the search). The shared parameters are instead kept in every step's graph by a
  zero-weighted term: their gradients in such a step are zeros, which is what DDP
  all-reduces for them with the search too.
- Fusion only: its K regions read P2..P(K+1), so with K < 4 the FPN outputs above are
  never used. The search is kept there; a zero-weighted term would give those weights
  zero gradients every step, and weight decay would move weights that one process leaves
  alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from e2emfd.config import ModelConfig

# The pyramid levels that hold parameters: P2..P5 (P6, where enabled, is a pooling).
PYRAMID_LEVELS = 4


@dataclass
class UnusedParameters:
    """How a DDP run keeps every parameter accounted for: ``keep_in_graph`` goes into
    :func:`zero_weighted` each step; ``find_unused`` is DDP's flag."""

    keep_in_graph: list[nn.Parameter] = field(default_factory=list)
    find_unused: bool = False


def prepare_for_ddp(model: nn.Module, tasks: tuple[str, ...], cfg: ModelConfig) -> UnusedParameters:
    """Freeze the heads of the tasks not trained (before DDP wraps ``model``) and say how
    the rest is handled (see the module docstring)."""
    for task, params in model.task_parameters().items():
        if task not in tasks:
            for p in params:
                p.requires_grad_(False)
    if "detection" in tasks:
        return UnusedParameters(keep_in_graph=list(model.shared_parameters()))
    return UnusedParameters(find_unused=cfg.fusion.num_regions < PYRAMID_LEVELS)


def zero_weighted(params: list[nn.Parameter]) -> torch.Tensor:
    """0 * the sum of ``params``: a term that gives each a zero gradient."""
    return torch.stack([p.sum() for p in params]).sum() * 0.0
