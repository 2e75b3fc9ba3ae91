"""Multi-task gradient balancing on the shared parameters: GMTA (Aligned-MTL) and baselines."""

from .balancer import METHODS, TaskBalancer
from .gmta import (
    aligned_condition_number,
    condition_number,
    gmta_transform,
    gmta_weights,
    psd_sqrt,
)
from .gradients import (
    allreduce_mean,
    average_gradients,
    combine_into_grads,
    gram_matrix,
)

__all__ = [
    "METHODS",
    "TaskBalancer",
    "aligned_condition_number",
    "allreduce_mean",
    "average_gradients",
    "combine_into_grads",
    "condition_number",
    "gmta_transform",
    "gmta_weights",
    "gram_matrix",
    "psd_sqrt",
]
