"""Image-fusion quality metrics in two named conventions.

Published fusion papers report EN, SD, SF, AG, MI, SCD, CC, VIF, Qabf, Nabf, SSIM, PSNR and
MSE, but the numbers depend on which evaluator computed them. Two are reproduced here:

- ``convention="python"``: the CDDFuse ``Evaluator`` (0-255 floats everywhere, MI in nats,
  SSIM with data_range=2, PSNR peak = max(F)); see :mod:`e2emfd.metrics.fusion.torch_engine.python`.
- ``convention="matlab"``: the Linfeng-Tang MATLAB toolbox, 2022 state (uint8 saturation
  in SD, VIF and MI, MI in bits, 0-1 scaling for SF/CC/SCD/Qabf/MSE, PSNR peak 255 on the
  0-1 MSE); see :mod:`e2emfd.metrics.fusion.torch_engine.matlab`.

Values of the two conventions are not comparable for SD, VIF, MI, SF, MSE and PSNR.

Example::

    ir, vis, fused = (load_grey(p, "python") for p in ("ir.png", "vi.png", "fused.png"))
    scores = fusion_metrics(fused, ir, vis, convention="python", metrics=["EN", "MI"])
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from torch import Tensor

# What needs torch loads it on first use: the metric names and the summaries
# (e2emfd.metrics.fusion.summary) do not, and eval-fusion's main process, which only
# hands pairs out to its workers, is spared a second of importing torch.
_FROM_IO = ("CONVENTIONS", "check_convention", "load_grey", "to_grey_levels")


def __getattr__(name: str):
    if name not in _FROM_IO:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.io"), name)
    globals()[name] = value
    return value


__all__ = [
    "CONVENTIONS",
    "METRIC_NAMES",
    "fusion_metrics",
    "load_grey",
    "metric_definition",
    "resolve_metric_names",
    "to_grey_levels",
]

METRIC_NAMES: tuple[str, ...] = (
    "EN",
    "SD",
    "SF",
    "AG",
    "MI",
    "SCD",
    "CC",
    "VIF",
    "Qabf",
    "Nabf",
    "SSIM",
    "PSNR",
    "MSE",
)


def _implementations(convention: str) -> dict[str, Callable[[Tensor, Tensor, Tensor], Tensor]]:
    """The torch implementation of each metric in ``convention``."""
    from e2emfd.metrics.fusion.io import check_convention
    from e2emfd.metrics.fusion.torch_engine import matlab, python

    return {"python": python.METRICS, "matlab": matlab.METRICS}[check_convention(convention)]


def resolve_metric_names(metrics: Iterable[str] | str | None) -> list[str]:
    """Canonical metric names (case-insensitive input, a comma-separated string allowed);
    ``None`` means all of :data:`METRIC_NAMES`, in that order."""
    if metrics is None:
        return list(METRIC_NAMES)
    if isinstance(metrics, str):
        metrics = [m for m in metrics.split(",") if m.strip()]
    lookup = {name.lower(): name for name in METRIC_NAMES}
    names: list[str] = []
    for raw in metrics:
        name = lookup.get(raw.strip().lower())
        if name is None:
            raise ValueError(
                f"unknown metric {raw.strip()!r}; choose from {', '.join(METRIC_NAMES)}"
            )
        if name not in names:
            names.append(name)
    if not names:
        raise ValueError("no metric requested")
    return names


def metric_definition(name: str, convention: str) -> str:
    """The definition of one metric in one convention (the implementing function's docstring)."""
    (canonical,) = resolve_metric_names([name])
    doc = _implementations(convention)[canonical].__doc__ or ""
    return " ".join(doc.split())


def _as_batch(x: Tensor, role: str) -> Tensor:
    import torch

    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{role}: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in (2, 3):
        raise ValueError(f"{role}: expected shape (H, W) or (B, H, W), got {tuple(x.shape)}")
    if x.is_complex():
        raise ValueError(f"{role}: complex tensors are not images")
    x = x.to(torch.float64)
    return x.unsqueeze(0) if x.dim() == 2 else x


def fusion_metrics(
    fused: Tensor,
    ir: Tensor,
    vis: Tensor,
    convention: str = "python",
    metrics: Iterable[str] | str | None = None,
) -> dict[str, Tensor]:
    """Fusion metrics of ``fused`` against the sources ``ir`` (A) and ``vis`` (B).

    Args:
        fused, ir, vis: greyscale images in the convention's representation: tensors of
            shape ``(H, W)`` or ``(B, H, W)`` (all the same shape and device) holding
            integer grey levels 0..255, as :func:`load_grey` or :func:`to_grey_levels`
            return them. Any real dtype; computation is float64. Histogram metrics (EN, MI)
            round the values to grey levels.
        convention: ``"python"`` (CDDFuse evaluator) or ``"matlab"`` (Tang toolbox 2022).
        metrics: names from :data:`METRIC_NAMES` (case-insensitive); ``None`` = all.
    Returns:
        ``{name: values}`` in the requested order; values are float64 of shape ``(B,)`` on
        the input device, or 0-d tensors for unbatched input. Where the reference divides
        by zero (CC, SCD and the MATLAB VIF with a constant image, Qabf with two all-black
        sources, PSNR with no error) the value is its NaN or inf, as the reference gives
        it; :mod:`e2emfd.metrics.fusion.summary` reports such values as undefined.
    Raises:
        ValueError: unknown convention or metric, mismatched shapes, values outside 0..255,
            or images too small for a windowed metric (VIF needs 41x41).
    """
    return _fusion_metrics(fused, ir, vis, convention, metrics, engine="auto")


def _fusion_metrics(
    fused: Tensor,
    ir: Tensor,
    vis: Tensor,
    convention: str,
    metrics: Iterable[str] | str | None,
    engine: str,
) -> dict[str, Tensor]:
    """:func:`fusion_metrics` with a choice of implementation: ``"torch"`` (any device, any
    values), ``"cpu"`` (:mod:`e2emfd.metrics.fusion.cpu_engine`: CPU tensors of integer grey
    levels) or ``"auto"`` (the CPU engine where it applies)."""
    import torch

    from e2emfd.metrics.fusion import cpu_engine as fusion_cpu

    impl = _implementations(convention)
    names = resolve_metric_names(metrics)
    unbatched = isinstance(fused, torch.Tensor) and fused.dim() == 2
    f, a, b = _as_batch(fused, "fused"), _as_batch(ir, "ir"), _as_batch(vis, "vis")
    if not f.shape == a.shape == b.shape:
        shapes = f"fused {tuple(fused.shape)}, ir {tuple(ir.shape)}, vis {tuple(vis.shape)}"
        raise ValueError(f"images must have the same shape, got {shapes}")
    if not f.device == a.device == b.device:
        raise ValueError(f"images must be on one device, got {f.device}, {a.device}, {b.device}")
    if engine != "torch" and f.device.type == "cpu":
        arrays = [x.detach().contiguous().numpy() for x in (f, a, b)]
        values = np.empty((len(names), f.shape[0]))
        for i in range(f.shape[0]):
            pair = fusion_cpu.pair_metrics(*(x[i] for x in arrays), convention, names)
            if pair is None:  # not integer grey levels 0..255
                if engine == "cpu":
                    raise ValueError("the CPU engine needs integer grey levels 0..255")
                break
            values[:, i] = [pair[name] for name in names]
        else:
            out = {name: torch.from_numpy(values[k].copy()) for k, name in enumerate(names)}
            return {name: v[0] for name, v in out.items()} if unbatched else out
    stats = torch.stack([torch.stack(x.aminmax()) for x in (f, a, b)])
    lo, hi = stats.min().item(), stats.max().item()
    if not (0.0 <= lo and hi <= 255.0):  # NaN fails both comparisons too
        raise ValueError(f"grey levels must lie in 0..255, got values in [{lo:g}, {hi:g}]")
    results: dict[str, list[Tensor]] = {name: [] for name in names}
    for lo_i, hi_i in _chunks(f):
        fc, ac, bc = f[lo_i:hi_i], a[lo_i:hi_i], b[lo_i:hi_i]
        for name in names:
            results[name].append(impl[name](fc, ac, bc))
    out = {}
    for name in names:
        values = torch.cat(results[name])
        out[name] = values[0] if unbatched else values
    return out


# CPU work is split into chunks of about this many pixels. The metrics stack up to 8
# float64 maps per pixel; keeping such temporaries below glibc's 32 MiB mmap threshold lets
# freed memory be reused instead of being page-faulted in again, which is about 4x faster
# for these memory-bound passes. GPUs take the whole batch.
_CPU_CHUNK_PIXELS = 400_000


def _chunks(x: Tensor) -> list[tuple[int, int]]:
    """Index ranges splitting the batch of ``x`` (B, H, W) into memory-friendly chunks."""
    n, h, w = x.shape
    if x.device.type != "cpu":
        return [(0, n)]
    per_chunk = max(1, _CPU_CHUNK_PIXELS // (h * w))
    return [(i, min(n, i + per_chunk)) for i in range(0, n, per_chunk)]
