"""The ``"matlab"`` convention: the MATLAB toolbox of ``Linfeng-Tang/Image-Fusion``
(``General Evaluation Metric/Evaluation``) in its 2022 state, which produced the published
``Metric_*.xlsx`` tables. Its quirks are reproduced on purpose:

- EN, MI, SD and VIF see uint8 images, with MATLAB's saturating integer arithmetic in SD,
  in VIF's scale-1 products and in MI's joint histogram;
- SF, CC, SCD, Qabf, MSE and PSNR see the 0-1 image ``double(x) / 255``;
- AG sees the 0-255 image and divides by (M-1)(N-1);
- MI is in bits; PSNR uses a peak of 255 with the 0-1 MSE (about 48.13 dB above the usual).

Each function takes the fused image F and the sources A (infrared) and B (visible), each
``(B, H, W)`` float64 holding integer grey levels 0..255 (the uint8 image the toolbox
reads), on any device, and returns ``(B,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from e2emfd.metrics.fusion import METRIC_NAMES
from e2emfd.metrics.fusion.torch_engine.core import (
    LN2,
    entropy_bits,
    entropy_from_counts,
    gaussian_taps,
    gradient_magnitude_sum,
    grey_histogram,
    joint_histogram,
    mse_pair,
    pearson,
    qabf,
    scd,
    spatial_frequency,
    to_levels,
)
from e2emfd.metrics.fusion.torch_engine.windowed import nabf, ssim, vifp


def _unit(x: Tensor) -> Tensor:
    """MATLAB ``im2double`` of a uint8 image: ``double(x) / 255``, a true division so the
    last bits match (Qabf's equality test depends on them). The divisor is a tensor on the
    image's device because PyTorch's CUDA kernel replaces division by a Python scalar with
    multiplication by its reciprocal."""
    return x / x.new_tensor(255.0)


def _round_half_away(x: Tensor) -> Tensor:
    """MATLAB's rounding when a double is stored in an integer type."""
    return torch.sign(x) * torch.floor(torch.abs(x) + 0.5)


def en(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """EN: MATLAB ``entropy`` of uint8 F, i.e. entropy in bits of the 256-bin histogram."""
    return entropy_bits(f)


def sd(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SD: ``SD_evaluation`` on uint8 F with MATLAB integer semantics.

    mu = mean(mean(F)) in double; d = F - mu stored as uint8 (rounded half away from zero,
    clipped to 0..255, so pixels below the mean give 0); d^2 stored as uint8, i.e.
    min(d^2, 255); SD = sqrt(sum(d^2) / (M N)). Not the ordinary standard deviation.
    """
    mu = f.mean(dim=-2).mean(dim=-1)  # column means first, as mean(mean(F))
    d = _round_half_away(f - mu[:, None, None]).clamp_(0, 255)
    d2 = (d * d).clamp_(max=255)
    return torch.sqrt(d2.sum(dim=(-2, -1)) / (f.shape[-1] * f.shape[-2]))


def sf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SF: sqrt(RF^2 + CF^2) on the 0-1 image (the 0-255 SF divided by 255)."""
    return spatial_frequency(_unit(f))


def ag(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """AG: sum of sqrt((gx^2 + gy^2) / 2) over all M*N pixels of the 0-255 image, with MATLAB
    ``gradient``, divided by (M-1)(N-1) rather than M*N."""
    return gradient_magnitude_sum(f) / ((f.shape[-1] - 1) * (f.shape[-2] - 1))


def mutual_information_bits(x: Tensor, f: Tensor) -> Tensor:
    """``MI_evaluation`` term MI(X, F) = H(X) + H(F) - H(F, X) in bits. ``(B,)``.

    H(X), H(F) come from exact 256-bin histograms. The joint histogram (``Hab.m``) indexes
    bins with ``uint8(grey) + 1``, which saturates at 255, so grey levels 254 and 255 share
    a bin there (only there).
    """
    lx, lf = to_levels(x), to_levels(f)
    marginal = entropy_from_counts(grey_histogram(lx)) + entropy_from_counts(grey_histogram(lf))
    joint = entropy_from_counts(joint_histogram(lf.clamp(max=254), lx.clamp(max=254)))
    return (marginal - joint) / LN2


def mi(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MI (bits): MI(A, F) + MI(B, F) with the saturated joint histogram (254/255 shared)."""
    return mutual_information_bits(a, f) + mutual_information_bits(b, f)


def scd_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SCD: corr2(F - B, A) + corr2(F - A, B) on the 0-1 images. NaN where A, B, F - B or
    F - A is constant: ``corr2`` divides 0 by 0 there."""
    return scd(_unit(f), _unit(a), _unit(b))


def cc(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """CC: (r(A, F) + r(B, F)) / 2, Pearson correlations on the 0-1 images. NaN where A, B
    or F is constant: ``CC_evaluation`` divides 0 by 0 there."""
    fu = _unit(f)
    return (pearson(_unit(a), fu) + pearson(_unit(b), fu)) / 2


def vif(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """VIF: vifp_mscale(A, F) + vifp_mscale(B, F) on uint8 images, so the scale-1 products
    ref*ref, F*F and ref*F saturate at 255 before filtering (the means do not). NaN where a
    source has no variance in any window (a constant image): ``vifp_mscale`` divides 0 by 0
    there, and unlike the python evaluator the toolbox keeps the NaN."""
    terms = vifp([a, b], f, saturate_uint8=True)
    return terms[0] + terms[1]


def qabf_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Qabf: ``analysis_Qabf`` on the 0-1 images, Sobel responses summed in MATLAB
    ``conv2`` order so that the G = gF exact-equality branch fires where MATLAB's does.
    NaN where neither source has an edge (both all black): the toolbox divides 0 by 0."""
    return qabf(_unit(f), _unit(a), _unit(b), matlab_order=True)


def nabf_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Nabf: Shreyamsha Kumar's modified fusion-artefact measure on 0-255 grey levels.

    The 2022 toolbox passed 0-1 images to ``analysis_nabf``, where the edge threshold of 2
    grey levels can never be reached, so every weight collapses to 0.001. We follow Kumar's
    definition on 0-255 (as the toolbox itself does since March 2023); the xlsx tables have
    no Nabf, so no published value depends on the choice.
    """
    return nabf(f, a, b)


_GAUSS11 = gaussian_taps(11, 1.5)


def ssim_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SSIM: SSIM(F, A) + SSIM(F, B) in the standard form of Wang et al. (``ssim_index.m``):
    11x11 Gaussian window with sigma 1.5, K1 0.01, K2 0.03, L = 255, population statistics,
    mean over the 'valid' region. The toolbox's xlsx has no SSIM; this is not its
    ``mef_ssim``."""
    return sum(ssim([a, b], f, _GAUSS11, data_range=255.0))


def mse(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MSE: (mean((F - A)^2) + mean((F - B)^2)) / 2 on the 0-1 images."""
    return mse_pair(_unit(f), _unit(a), _unit(b))


def psnr(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """PSNR: 20 log10(255 / sqrt(MSE)) with the 0-1 MSE (peak 255 on 0-1 errors). inf
    where MSE is 0 (F = A = B): the toolbox divides by zero there."""
    return 20 * torch.log10(255.0 / torch.sqrt(mse(f, a, b)))


METRICS = dict(
    zip(
        METRIC_NAMES,
        (en, sd, sf, ag, mi, scd_metric, cc, vif, qabf_metric, nabf_metric, ssim_metric, psnr, mse),
    )
)
