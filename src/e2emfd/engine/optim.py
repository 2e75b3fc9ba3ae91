"""AdamW with linear warm-up and step or cosine decay (the public M3FD recipe: lr 2.5e-5,
wd 1e-4, warm-up 1k iterations, x0.1 at 5k and 10k)."""

from __future__ import annotations

import math

import torch
from torch import nn

from e2emfd.config import TrainConfig


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    # No weight decay on norms and biases (1-D tensors): decaying them only hurts.
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.lr)


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Multiplier of the base learning rate at ``step``."""
    if cfg.warmup_iters and step < cfg.warmup_iters:
        alpha = step / cfg.warmup_iters
        warm = cfg.warmup_factor * (1 - alpha) + alpha
    else:
        warm = 1.0
    if cfg.schedule == "step":
        decay = cfg.lr_gamma ** sum(step >= s for s in cfg.lr_steps)
    elif cfg.schedule == "cosine":
        progress = min(
            1.0, max(0.0, (step - cfg.warmup_iters) / max(1, cfg.max_iters - cfg.warmup_iters))
        )
        decay = 0.5 * (1 + math.cos(math.pi * progress))
    elif cfg.schedule == "constant":
        decay = 1.0
    else:
        raise ValueError(f"train.schedule must be step, cosine or constant, got {cfg.schedule!r}")
    return warm * decay


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig
) -> torch.optim.lr_scheduler.LambdaLR:
    lr_factor(0, cfg)  # validate the schedule name up front
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, cfg))
