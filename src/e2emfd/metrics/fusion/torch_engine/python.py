"""The ``"python"`` convention: the ``Evaluator`` of the CDDFuse project (MMIF-CDDFuse,
``utils/Evaluator.py``), as commonly used in Python fusion papers.

Every metric works on the 0-255 greyscale image as loaded by :func:`load_grey` (OpenCV
BGR -> GRAY, rounded). The reference evaluator keeps much of its arithmetic in float32; this
implementation uses float64 throughout, so values agree to about 1e-6 relative.

Each function takes the fused image F and the sources A (infrared) and B (visible), each
``(B, H, W)`` float64 0..255 on any device, and returns ``(B,)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from e2emfd.metrics.fusion import METRIC_NAMES
from e2emfd.metrics.fusion.torch_engine.core import (
    entropy_bits,
    entropy_from_counts,
    filter2_valid_maps,
    gradient_magnitude_sum,
    grey_histogram,
    image_mean,
    joint_histogram,
    mse_pair,
    pearson,
    qabf,
    scd,
    spatial_frequency,
    to_levels,
)
from e2emfd.metrics.fusion.torch_engine.windowed import nabf, vifp


def en(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """EN: Shannon entropy in bits of the 256-bin histogram of uint8(round(F))."""
    return entropy_bits(f)


def sd(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SD: population standard deviation of F (``np.std``, ddof 0)."""
    centred = f - image_mean(f)[:, None, None]
    return torch.sqrt(image_mean(centred * centred))


def sf(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SF: sqrt(mean(horizontal first difference^2) + mean(vertical first difference^2))."""
    return spatial_frequency(f)


def ag(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """AG: mean over all M*N pixels of sqrt((gx^2 + gy^2) / 2), MATLAB-style gradients."""
    return gradient_magnitude_sum(f) / (f.shape[-1] * f.shape[-2])


def mutual_information_nats(x: Tensor, y: Tensor) -> Tensor:
    """MI(X, Y) in nats from the exact joint histogram of the grey levels, as
    ``sklearn.metrics.mutual_info_score`` gives for integer-valued images. ``(B,)``."""
    lx, ly = to_levels(x), to_levels(y)
    joint = entropy_from_counts(joint_histogram(lx, ly))
    return entropy_from_counts(grey_histogram(lx)) + entropy_from_counts(grey_histogram(ly)) - joint


def mi(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MI (nats): MI(F, A) + MI(F, B) from exact contingency tables (no saturation)."""
    return mutual_information_nats(f, a) + mutual_information_nats(f, b)


def scd_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SCD: corr(F - B, A) + corr(F - A, B) (Pearson over all pixels). NaN where A, B,
    F - B or F - A is constant: the evaluator divides 0 by 0 there."""
    return scd(f, a, b)


def cc(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """CC: (corr(A, F) + corr(B, F)) / 2 (Pearson over all pixels). NaN where A, B or F is
    constant: the evaluator divides 0 by 0 there."""
    return (pearson(a, f) + pearson(b, f)) / 2


def vif(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """VIF (the evaluator's VIFF): VIFp(A, F) + VIFp(B, F), multiscale pixel-domain VIF on
    floats (no saturation); a NaN term is replaced by 1 as in the evaluator."""
    terms = vifp([a, b], f)
    return sum(torch.nan_to_num(t, nan=1.0) for t in terms)


def qabf_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Qabf: Xydeas-Petrovic with the G = gF quirk where gX == gF, on 0-255 values (the
    Sobel responses of integer images are exact, so the equality test is order-free).
    NaN where neither source has an edge (both all black): the evaluator divides 0 by 0."""
    return qabf(f, a, b)


def nabf_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Nabf: Shreyamsha Kumar's modified fusion-artefact measure on 0-255 values (not part
    of the CDDFuse evaluator; see :func:`e2emfd.metrics.fusion.torch_engine.windowed.nabf`)."""
    return nabf(f, a, b)


def _round_to_float32_(x: Tensor) -> None:
    """Divide by 7 and round to float32 in place (values stay float64)."""
    x.div_(7)
    x.copy_(x.float())


def ssim_metric(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """SSIM: SSIM(F, A) + SSIM(F, B) as ``skimage.metrics.structural_similarity`` gives with
    defaults (7x7 uniform window, K1 0.01, K2 0.03, sample covariance 49/48, mean without a
    3-pixel border) and data_range=2 on 0-255 data (the legacy scikit-image default).
    Range up to 2.

    scikit-image computes in float32 for the evaluator's float32 images, and with C2 =
    0.0036 the float32 cancellation in var = E[x^2] - E[x]^2 changes the mean SSIM by up to
    2e-4 relative, so the float32 steps are reproduced; only the final mean is float64.
    The local means (``scipy.ndimage.uniform_filter``: axis 0, then axis 1, each pass
    averaged in double and stored as float32) come from float64 window sums, which are
    exact here (integers in the first pass, seven float32 values in the second).
    """
    n, h, w = f.shape
    if min(h, w) < 7:
        raise ValueError(f"SSIM needs images of at least 7x7, got {h}x{w}")
    # Squares and products of grey levels are exact in float32 (<= 65025 < 2^24).
    maps = [f, f * f, a, a * a, a * f, b, b * b, b * f]
    sums = filter2_valid_maps(maps, [1.0] * 7, between=_round_to_float32_)
    means = sums.div(7).float()
    cov_norm = 49.0 / 48.0
    c1 = (0.01 * 2.0) ** 2
    c2 = (0.03 * 2.0) ** 2
    ux, uxx = means[0], means[1]
    vx = cov_norm * (uxx - ux * ux)
    total = f.new_zeros(n)
    for i in range(2):
        uy, uyy, uxy = means[2 + 3 * i : 5 + 3 * i]
        vy = cov_norm * (uyy - uy * uy)
        vxy = cov_norm * (uxy - ux * uy)
        num = (2 * ux * uy + c1) * (2 * vxy + c2)
        den = (ux * ux + uy * uy + c1) * (vx + vy + c2)
        total += (num / den).double().mean(dim=(-2, -1))
    return total


def mse(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """MSE: (mean((A - F)^2) + mean((B - F)^2)) / 2 on 0-255."""
    return mse_pair(f, a, b)


def psnr(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """PSNR: 10 log10(max(F)^2 / MSE); the peak is the fused image's maximum, not 255.
    Not finite where the evaluator divides by zero or takes log10(0): inf where MSE is 0
    (F = A = B), NaN if F is then all black, -inf for an all-black F otherwise."""
    peak = f.amax(dim=(-2, -1))
    return 10 * torch.log10(peak * peak / mse_pair(f, a, b))


METRICS = dict(
    zip(
        METRIC_NAMES,
        (en, sd, sf, ag, mi, scd_metric, cc, vif, qabf_metric, nabf_metric, ssim_metric, psnr, mse),
    )
)
