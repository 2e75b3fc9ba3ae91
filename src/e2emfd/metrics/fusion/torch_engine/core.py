"""Building blocks shared by both fusion-metric conventions.

Every function works on batches of same-size greyscale images ``(B, H, W)`` in float64 on
any device and reduces over the last two dimensions, returning ``(B,)``. Nothing here knows
about a convention; :mod:`.python` and :mod:`.matlab` combine these pieces with each
convention's scaling and quirks.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

LN2 = math.log(2.0)


def image_mean(x: Tensor) -> Tensor:
    """Mean over the last two dimensions: ``(B, H, W) -> (B,)``."""
    return x.mean(dim=(-2, -1))


def gaussian_taps(size: int, sigma: float) -> list[float]:
    """1-D factor of MATLAB ``fspecial('gaussian', size, sigma)``.

    ``fspecial`` zeroes taps below ``eps * max`` of the 2-D window and normalises it to sum
    1. For the windows used here no tap is that small, so the 2-D window is exactly the
    outer product of this normalised 1-D factor (mathematically; in floating point the
    separable filter differs from the 2-D one by a few ulps).
    """
    half = (size - 1) / 2.0
    taps = [math.exp(-((i - half) ** 2) / (2.0 * sigma * sigma)) for i in range(size)]
    if taps[0] * taps[0] < torch.finfo(torch.float64).eps:
        raise ValueError(f"gaussian window {size}x{size}, sigma {sigma} is not separable")
    total = math.fsum(taps)
    return [t / total for t in taps]


def correlate_valid(x: Tensor, taps: Sequence[float], dim: int, stride: int = 1) -> Tensor:
    """'valid' 1-D correlation of ``x`` with ``taps`` along ``dim``, keeping every ``stride``-th
    output (the first one included).

    Shape along ``dim``: ``n -> ceil((n - len(taps) + 1) / stride)``. Computed as a sum of
    shifted slices in tap order (exact summation order, no large temporaries).
    """
    n = len(taps)
    valid = x.shape[dim] - n + 1
    if valid < 1:
        raise ValueError(f"image side {x.shape[dim]} is smaller than a {n}-tap window")
    count = (valid - 1) // stride + 1
    span = (count - 1) * stride + 1
    index: list[slice] = [slice(None)] * x.dim()

    def shifted(k: int) -> Tensor:
        index[dim] = slice(k, k + span, stride)
        return x[tuple(index)]

    acc = shifted(0) * taps[0]
    for k in range(1, n):
        acc.add_(shifted(k), alpha=taps[k])
    return acc


@functools.lru_cache(maxsize=64)
def _band_matrices(
    taps: tuple[float, ...], block: int, dtype: torch.dtype, device: str
) -> tuple[Tensor, Tensor]:
    """Banded Toeplitz blocks for 'valid' correlation as matrix products.

    Returns ``(tall, pair)``: ``tall`` is ``(block + n - 1, block)`` with
    ``tall[j + k, j] = taps[k]``, so one block of ``block`` outputs is (window) @ tall.
    ``pair`` splits the same matrix at row ``block`` into two ``(block, block)`` halves
    stacked as ``(2, block, block)``: output block b of a flat signal cut into
    non-overlapping blocks X_b is ``X_b @ pair[0] + X_{b+1} @ pair[1]`` (needs
    n - 1 <= block).
    """
    n = len(taps)
    tall = torch.zeros(block + n - 1, block, dtype=dtype)
    t = torch.tensor(taps, dtype=dtype)
    for j in range(block):
        tall[j : j + n, j] = t
    pair = torch.zeros(2 * block, block, dtype=dtype)
    rows = min(2 * block, block + n - 1)
    pair[:rows] = tall[:rows]
    return tall.to(device), pair.view(2, block, block).to(device)


_ROW_BLOCK = 32  # outputs per matrix product in the pass down the columns
_FLAT_BLOCK = 16  # block length of the pass along the rows (must be >= taps - 1)


def filter2_valid_maps(
    maps: Sequence[Tensor],
    taps: Sequence[float],
    between: Callable[[Tensor], None] | None = None,
) -> Tensor:
    """Separable 2-D 'valid' filtering of several same-shape ``(B, H, W)`` maps with the
    window ``outer(taps, taps)``, down the columns first, then along the rows.

    Both passes are matrix products with small banded blocks, which keeps the data in cache
    (one slice-and-add pass per tap would stream every map through memory 2 * len(taps)
    times). The column pass multiplies each image's overlapping row blocks in place; the
    row pass treats all rows of all maps as one flat signal cut into blocks of
    ``_FLAT_BLOCK`` (outputs that straddle a row end are computed and discarded), so neither
    pass copies its input. Float64 results differ from the direct sum by rounding only.

    Args:
        maps: M tensors of identical shape ``(B, H, W)``, H and W >= len(taps).
        taps: symmetric 1-D window, at most ``_FLAT_BLOCK + 1`` taps.
        between: optional in-place transform of the intermediate ``(M, B, H', W)`` result
            (used to reproduce an evaluator that rounds between the passes).
    Returns:
        ``(M, B, H - n + 1, W - n + 1)``, a view with row stride W.
    """
    n = len(taps)
    b, h, w = maps[0].shape
    if min(h, w) < n:
        raise ValueError(f"image of {h}x{w} is smaller than a {n}x{n} window")
    if n - 1 > _FLAT_BLOCK:
        raise ValueError(f"windows of more than {_FLAT_BLOCK + 1} taps are not supported")
    ref = maps[0]
    hc, wc = h - n + 1, w - n + 1
    flat = len(maps) * b * hc * w
    blocks = -(-flat // _FLAT_BLOCK)
    buf = ref.new_empty((blocks + 1) * _FLAT_BLOCK)
    buf[flat:].zero_()  # the slack feeds only discarded outputs, but 0 * NaN would leak
    inter = buf[:flat].view(len(maps), b, hc, w)

    # Pass 1, down the columns: out rows [r, r + size) = tall.T @ input rows [r, r + span).
    tall, _ = _band_matrices(tuple(taps), min(_ROW_BLOCK, hc), ref.dtype, str(ref.device))
    for k, m in enumerate(maps):
        m = m.contiguous()
        for i in range(b):
            start = 0
            while start < hc:
                size = min(tall.shape[1], hc - start)
                count = (hc - start) // size
                mt = tall.T if size == tall.shape[1] else tall[: size + n - 1, :size].T
                span = size + n - 1
                offset = m.storage_offset() + i * h * w + start * w
                src = m.as_strided((count, span, w), (size * w, w, 1), offset)
                dst = inter[k, i, start : start + count * size].view(count, size, w)
                torch.matmul(mt, src, out=dst)
                start += count * size
    if between is not None:
        between(inter)

    # Pass 2, along the rows, over the flat buffer: two products, no copies.
    _, pair = _band_matrices(tuple(taps), _FLAT_BLOCK, ref.dtype, str(ref.device))
    x = buf.view(blocks + 1, _FLAT_BLOCK)
    out = torch.mm(x[:-1], pair[0])
    out.addmm_(x[1:], pair[1])
    return out.view(-1)[:flat].view(len(maps), b, hc, w)[..., :wc]


def filter2_valid(x: Tensor, taps: Sequence[float], stride: int = 1) -> Tensor:
    """Separable 2-D 'valid' filtering of ``(..., H, W)`` with the window ``outer(taps, taps)``
    (symmetric windows only, so correlation and convolution coincide), optionally keeping
    every ``stride``-th row and column. ``(..., H, W) -> (..., H', W')``.

    Windows of 5 to 17 taps without striding go through :func:`filter2_valid_maps`;
    others use shifted slices."""
    if len(taps) < 5 or stride != 1 or len(taps) > _FLAT_BLOCK + 1:
        return correlate_valid(correlate_valid(x, taps, -1, stride), taps, -2, stride)
    lead = x.shape[:-2]
    y = x.reshape(1, -1, *x.shape[-2:])
    out = filter2_valid_maps([y[0]], taps)[0]
    return out.reshape(*lead, *out.shape[-2:])


def entropy_from_counts(counts: Tensor) -> Tensor:
    """Shannon entropy in nats of histograms ``(B, K) -> (B,)`` (empty bins contribute 0)."""
    p = counts / counts.sum(dim=-1, keepdim=True)
    return -torch.special.xlogy(p, p).sum(dim=-1)


def grey_histogram(levels: Tensor, bins: int = 256) -> Tensor:
    """Per-image histogram of integer grey levels ``(B, H, W) -> (B, bins)`` (float64)."""
    b = levels.shape[0]
    offset = torch.arange(b, device=levels.device).view(b, 1) * bins
    flat = (levels.reshape(b, -1) + offset).reshape(-1)
    return torch.bincount(flat, minlength=b * bins).view(b, bins).double()


def joint_histogram(x: Tensor, y: Tensor, bins: int = 256) -> Tensor:
    """Per-image joint histogram of integer grey levels ``(B, H, W) x2 -> (B, bins * bins)``."""
    b = x.shape[0]
    offset = torch.arange(b, device=x.device).view(b, 1) * (bins * bins)
    flat = (x.reshape(b, -1) * bins + y.reshape(b, -1) + offset).reshape(-1)
    return torch.bincount(flat, minlength=b * bins * bins).view(b, bins * bins).double()


def to_levels(x: Tensor) -> Tensor:
    """Integer grey levels (int64) of a float image: rounded half to even, clipped to 0..255,
    as ``np.uint8(np.round(x))`` does for values in range."""
    return torch.round(x).clamp_(0, 255).long()


def entropy_bits(x: Tensor) -> Tensor:
    """EN: entropy in bits of the 256-bin histogram of the grey levels. ``(B, H, W) -> (B,)``."""
    return entropy_from_counts(grey_histogram(to_levels(x))) / LN2


def pearson(x: Tensor, y: Tensor) -> Tensor:
    """Pearson correlation over all pixels of each image (``corr2``). ``(B, H, W) -> (B,)``."""
    xc = x - image_mean(x)[:, None, None]
    yc = y - image_mean(y)[:, None, None]
    num = (xc * yc).sum(dim=(-2, -1))
    return num / torch.sqrt((xc * xc).sum(dim=(-2, -1)) * (yc * yc).sum(dim=(-2, -1)))


def spatial_frequency(x: Tensor) -> Tensor:
    """SF = sqrt(mean(row diff^2) + mean(column diff^2)) in the units of ``x``. ``(B,)``."""
    dy = x[:, 1:, :] - x[:, :-1, :]
    dx = x[:, :, 1:] - x[:, :, :-1]
    return torch.sqrt(image_mean(dy * dy) + image_mean(dx * dx))


def gradient_magnitude_sum(x: Tensor) -> Tensor:
    """Sum over all pixels of sqrt((gx^2 + gy^2) / 2), where gx, gy are MATLAB ``gradient``
    (central differences inside, one-sided differences on the first/last row and column).
    Needs H, W >= 2. ``(B, H, W) -> (B,)``."""
    if x.shape[-1] < 2 or x.shape[-2] < 2:
        raise ValueError(f"AG needs images of at least 2x2 pixels, got {tuple(x.shape[-2:])}")
    gx = torch.empty_like(x)
    gx[:, :, 1:-1] = (x[:, :, 2:] - x[:, :, :-2]) / 2
    gx[:, :, 0] = x[:, :, 1] - x[:, :, 0]
    gx[:, :, -1] = x[:, :, -1] - x[:, :, -2]
    gy = torch.empty_like(x)
    gy[:, 1:-1, :] = (x[:, 2:, :] - x[:, :-2, :]) / 2
    gy[:, 0, :] = x[:, 1, :] - x[:, 0, :]
    gy[:, -1, :] = x[:, -1, :] - x[:, -2, :]
    return torch.sqrt((gx * gx + gy * gy) / 2).sum(dim=(-2, -1))


def mse_pair(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """(mean((F - A)^2) + mean((F - B)^2)) / 2 in the units of the inputs. ``(B,)``."""
    da = f - a
    db = f - b
    return (image_mean(da * da) + image_mean(db * db)) / 2


def scd(f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """Sum of the correlations of differences: corr(F - B, A) + corr(F - A, B). ``(B,)``."""
    return pearson(f - b, a) + pearson(f - a, b)


# Sobel kernels of Xydeas-Petrovic Qabf, indexed [row p][column q] like the MATLAB source.
SOBEL_X = ((-1.0, 0.0, 1.0), (-2.0, 0.0, 2.0), (-1.0, 0.0, 1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))


def conv2_same(x: Tensor, kernel: Sequence[Sequence[float]]) -> Tensor:
    """MATLAB ``conv2(x, kernel, 'same')`` for a 3x3 kernel with zero padding, summed in
    MATLAB's order.

    ``out[i, j] = sum_{p,q} k[p, q] * x[i + 1 - p, j + 1 - q]`` accumulated from 0 with ``p``
    varying fastest (the kernel in column-major order). The order matters for Qabf, whose
    exact-equality branch compares gradients of 0-1 images bit for bit. Zero taps are
    skipped: adding 0 leaves the running sum unchanged. ``(B, H, W) -> (B, H, W)``.
    """
    h, w = x.shape[-2:]
    xp = torch.nn.functional.pad(x, (1, 1, 1, 1))
    acc: Tensor | None = None
    for q in range(3):
        for p in range(3):
            k = kernel[p][q]
            if k == 0.0:
                continue
            term = xp[:, 2 - p : 2 - p + h, 2 - q : 2 - q + w]
            if acc is None:
                acc = term * k
            else:
                # k is +-1 or +-2, so k * x is exact and a fused multiply-add cannot differ.
                acc.add_(term, alpha=k)
    assert acc is not None
    return acc


def sobel_separable(x: Tensor, mode: str = "constant") -> tuple[Tensor, Tensor]:
    """The Sobel responses ``(conv2_same(x, SOBEL_X), conv2_same(x, SOBEL_Y))`` computed
    separably, with zero (``"constant"``) or mirror (``"reflect"``, edge not repeated)
    extension. Bit-identical to :func:`conv2_same` for integer-valued images (every partial
    sum is exact); cheaper. ``(B, H, W) -> 2 x (B, H, W)``."""
    h, w = x.shape[-2:]
    xp = torch.nn.functional.pad(x.unsqueeze(1), (1, 1, 1, 1), mode=mode).squeeze(1)
    # Sx = V[:, j - 1] - V[:, j + 1], V = [1 2 1] down the columns.
    v = xp[:, 1:-1, :] * 2
    v += xp[:, :-2, :]
    v += xp[:, 2:, :]
    sx = v[:, :, :w] - v[:, :, 2:]
    # Sy = S[i + 1, :] - S[i - 1, :], S = [1 2 1] along the rows.
    r = xp[:, :, 1:-1] * 2
    r += xp[:, :, :-2]
    r += xp[:, :, 2:]
    sy = r[:, 2:, :] - r[:, :h, :]
    return sx, sy


def sqrt_rn(x: Tensor) -> Tensor:
    """Correctly rounded float64 square root of non-negative ``x`` on any device.

    PyTorch's vectorised float64 ``sqrt`` is not IEEE-exact: on CPU and on CUDA about 0.6%
    of results are one ulp off, which matters where results are compared for exact
    equality (MATLAB's ``sqrt`` is exact). On CPU numpy's exact ``sqrt`` is used. Elsewhere
    the result r is corrected by one ulp using the exactly computed residual x - r^2
    (Dekker's product): the exact root lies beyond r +- ulp/2 iff |x - r^2| exceeds r * ulp
    (up to a u^2/4 term that never decides here).
    """
    if x.device.type == "cpu":
        return torch.from_numpy(np.sqrt(x.detach().contiguous().numpy()))
    return _corrected_sqrt(x)


def _corrected_sqrt(x: Tensor, r: Tensor | None = None) -> Tensor:
    """The correctly rounded root from an estimate ``r`` within one ulp (default
    ``torch.sqrt(x)``); see :func:`sqrt_rn`."""
    r = torch.sqrt(x) if r is None else r
    c = r * 134217729.0  # 2^27 + 1: splits r into two 26-bit halves
    hi = c - (c - r)
    lo = r - hi
    p = r * r
    err = ((hi * hi - p) + 2 * hi * lo) + lo * lo  # r * r == p + err exactly
    residual = (x - p) - err
    ulp = torch.nextafter(r, torch.full_like(r, math.inf)) - r
    r = torch.where(residual > r * ulp, r + ulp, r)
    down = torch.nextafter(r, torch.zeros_like(r))
    return torch.where(residual < -(r - down) * r, down, r)


def qabf(f: Tensor, a: Tensor, b: Tensor, matlab_order: bool = False) -> Tensor:
    """Xydeas-Petrovic edge-preservation Qabf on images in whatever scale the caller chose.

    Sobel responses Sx, Sy (zero padding), strength g = sqrt(Sx^2 + Sy^2), orientation
    atan(Sy / Sx) (pi/2 where Sx == 0). Relative strength G_XF = min(gX, gF) / max(gX, gF);
    where gX == gF exactly, both reference implementations set G_XF = gF instead of 1 (kept
    on purpose: it is part of both conventions' values). A_XF = 1 - |aX - aF| / (pi/2).
    Q_XF = 0.9994 / (1 + exp(-15 (G - 0.5))) * 0.9879 / (1 + exp(-22 (A - 0.8))), and
    Qabf = sum(Q_AF gA + Q_BF gB) / sum(gA + gB). ``(B, H, W) x3 -> (B,)``.

    ``matlab_order`` reproduces MATLAB bit for bit on 0-1 images, where the equality test
    depends on the last bit: Sobel taps summed in ``conv2`` order and a correctly rounded
    sqrt (another order, e.g. row-major, or torch's sqrt moves Qabf by up to 1e-2
    relative). Otherwise the separable form is used, exact for integer-valued images.
    """

    def edges(x: Tensor) -> tuple[Tensor, Tensor]:
        if matlab_order:
            sx, sy = conv2_same(x, SOBEL_X), conv2_same(x, SOBEL_Y)
            strength = sqrt_rn(sx * sx + sy * sy)  # compared bit for bit below
        else:
            sx, sy = sobel_separable(x)  # integer responses: exactly equal or clearly not
            strength = torch.sqrt(sx * sx + sy * sy)
        angle = torch.atan(sy.div_(sx)).masked_fill_(sx == 0, math.pi / 2)
        return strength, angle

    g_f, a_f = edges(f)
    num = f.new_zeros(f.shape[0])
    den = f.new_zeros(f.shape[0])
    for x in (a, b):
        g_x, a_x = edges(x)
        rel_g = torch.minimum(g_x, g_f).div_(torch.maximum(g_x, g_f))
        rel_g = torch.where(g_x == g_f, g_f, rel_g)
        rel_a = a_x.sub_(a_f).abs_().div_(-math.pi / 2).add_(1)
        q_g = rel_g.sub_(0.5).mul_(-15).exp_().add_(1)
        q_a = rel_a.sub_(0.8).mul_(-22).exp_().add_(1)
        q = q_g.mul_(q_a).reciprocal_().mul_(0.9994 * 0.9879)
        num += (q * g_x).sum(dim=(-2, -1))
        den += g_x.sum(dim=(-2, -1))
    return num / den
