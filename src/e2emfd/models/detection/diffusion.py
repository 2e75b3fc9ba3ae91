"""Gaussian diffusion of box signals: cosine schedule, forward noising and DDIM steps.

Notation follows DDPM/DDIM: ``abar_t`` is the cumulative product of ``1 - beta``;
``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def cosine_alphas_cumprod(timesteps: int, s: float = 0.008) -> Tensor:
    """(timesteps,) float64 ``abar_t`` of the cosine schedule (Nichol & Dhariwal 2021).

    ``f(t) = cos(((t / T) + s) / (1 + s) * pi / 2) ** 2``; the betas
    ``1 - f(t+1)/f(t)`` are clipped to 0.999 so that the last step stays invertible.
    """
    x = torch.linspace(0, timesteps, timesteps + 1, dtype=torch.float64)
    f = torch.cos(((x / timesteps) + s) / (1 + s) * math.pi * 0.5) ** 2
    f = f / f[0]
    betas = (1 - f[1:] / f[:-1]).clamp(0, 0.999)
    return torch.cumprod(1.0 - betas, dim=0)


def ddim_timesteps(timesteps: int, steps: int) -> list[tuple[int, int]]:
    """The (t, t_next) pairs of ``steps`` DDIM steps from ``T - 1`` down; the last
    ``t_next`` is -1, meaning "stop at the predicted x_0"."""
    if steps < 1:
        raise ValueError(f"sampling_steps must be >= 1, got {steps}")
    times = [int(-1 + i * timesteps / steps) for i in range(steps + 1)][::-1]
    return list(zip(times[:-1], times[1:]))


class BoxDiffusion(nn.Module):
    """The noise schedule and the DDPM/DDIM formulas used on box signals.

    Holds no parameters; the schedule is float64 on the host (for the per-step scalars of
    inference) and float32 buffers on the module's device (for batched training noising).
    """

    def __init__(self, timesteps: int = 1000, eta: float = 1.0) -> None:
        super().__init__()
        self.timesteps = timesteps
        self.eta = eta
        abar = cosine_alphas_cumprod(timesteps)
        self._abar64 = abar.tolist()
        self.register_buffer("sqrt_abar", abar.sqrt().float(), persistent=False)
        self.register_buffer("sqrt_one_minus_abar", (1 - abar).sqrt().float(), persistent=False)
        self.register_buffer("sqrt_recip_abar", (1 / abar).sqrt().float(), persistent=False)
        self.register_buffer("sqrt_recipm1_abar", (1 / abar - 1).sqrt().float(), persistent=False)

    def alpha_bar(self, t: int) -> float:
        return self._abar64[t]

    @staticmethod
    def _per_sample(values: Tensor, t: Tensor, like: Tensor) -> Tensor:
        # (B,) schedule values broadcast over every other dimension of ``like``
        return values[t].view(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Noise ``x0`` (B, ...) to timesteps ``t`` (B,) int64."""
        return (
            self._per_sample(self.sqrt_abar, t, x0) * x0
            + self._per_sample(self.sqrt_one_minus_abar, t, x0) * noise
        )

    def predict_noise(self, x_t: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        """The ``eps`` with ``x_t = q_sample(x0, t, eps)``: (B, ...) from t (B,) int64."""
        return (self._per_sample(self.sqrt_recip_abar, t, x_t) * x_t - x0) / self._per_sample(
            self.sqrt_recipm1_abar, t, x_t
        )

    def ddim_step(
        self,
        x0: Tensor,
        eps: Tensor,
        t: int,
        t_next: int,
        noise: Tensor | None = None,
        eta: float | None = None,
    ) -> Tensor:
        """One DDIM update from step ``t`` to ``t_next >= 0`` (Song et al. 2021, eq. 12).

        ``eta`` (default the module's) = 0 is deterministic DDIM, 1 matches DDPM's posterior
        variance; with ``eta > 0`` a ``noise`` like ``x0`` should be given (else drawn).
        """
        a, a_next = self.alpha_bar(t), self.alpha_bar(t_next)
        eta = self.eta if eta is None else eta
        sigma = eta * math.sqrt((1 - a / a_next) * (1 - a_next) / (1 - a))
        c = math.sqrt(max(1 - a_next - sigma**2, 0.0))
        out = x0 * math.sqrt(a_next) + c * eps
        if sigma > 0:
            out = out + sigma * (torch.randn_like(x0) if noise is None else noise)
        return out
