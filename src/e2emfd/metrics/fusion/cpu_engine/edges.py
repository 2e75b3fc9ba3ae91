"""CPU engine, edge metrics: Qabf and Nabf of one image pair, tile by tile, in float32.

Both metrics start from the Sobel responses Sx, Sy of F, A and B. For integer grey levels
these are integers below 2^11, and g^2 = Sx^2 + Sy^2 is an integer below 2^22, so float32
holds them exactly: Qabf's exact-equality branch (g_X == g_F, i.e. g_X^2 == g_F^2) and
Nabf's threshold and comparisons are decided exactly. The smooth parts (ratios, angles,
sigmoids) are float32, which moves the metrics by about 1e-7 relative; sums are float64.

Sharing: the orientation difference d = |alpha_X - alpha_F| with alpha = atan(Sy / Sx)
serves both metrics (Nabf's ||alpha'_X - alpha'_F| - pi/2| with alpha' = atan(-Sx / Sy) is
the same number as |d - pi/2|: the two angles differ by pi/2 modulo pi), and so does the
strength ratio min/max of g_X and g_F. Nabf extends the image by mirroring where Qabf pads
with zeros; that only changes the responses on the one-pixel border, whose Nabf terms are
computed apart (:func:`_nabf_border`).

The MATLAB convention computes Qabf on 0-1 images in MATLAB's summation order, where the
equality test and the orientation where Sx = 0 depend on the last bits. Elsewhere the 0-1
responses are the integer ones / 255 up to rounding, and Qabf does not depend on the
scale; the pixels where it matters (Sx of F or of the source is 0, or g_X^2 == g_F^2, with
g_X > 0: about 10% on TNO) are recomputed exactly in float64 (:func:`_matlab_terms`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from e2emfd.metrics.fusion.cpu_engine import filters as fusion_cpu_filters

_F32 = np.float32
_HALF_PI = _F32(math.pi / 2)
_A_SLOPE = _F32(44 / math.pi)  # 22 * 2 / pi: both metrics' orientation sigmoids in d
_QABF_C = 0.9994 * 0.9879


def _sobel(p: np.ndarray, sx: np.ndarray, sy: np.ndarray, v: np.ndarray, hh: np.ndarray) -> None:
    """Sobel responses of the padded maps ``p`` (..., r + 2, c + 2) into ``sx`` and ``sy``
    (..., r, c): Sx[i, j] = V[i, j - 1] - V[i, j + 1], Sy[i, j] = H[i + 1, j] - H[i - 1, j]
    with V, H the [1 2 1] sums down the columns and along the rows, i.e. MATLAB ``conv2``
    with [-1 0 1; -2 0 2; -1 0 1] and [1 2 1; 0 0 0; -1 -2 -1]. Exact for integers."""
    np.add(p[..., :-2, :], p[..., 2:, :], out=v)
    v += p[..., 1:-1, :]
    v += p[..., 1:-1, :]
    np.subtract(v[..., :-2], v[..., 2:], out=sx)
    np.add(p[..., :-2], p[..., 2:], out=hh)
    hh += p[..., 1:-1]
    hh += p[..., 1:-1]
    np.subtract(hh[..., 2:, :], hh[..., :-2, :], out=sy)


def _strength_angle(sx: np.ndarray, sy: np.ndarray, g2: np.ndarray, angle: np.ndarray) -> None:
    """g^2 = Sx^2 + Sy^2 and alpha = atan(Sy / Sx), pi/2 where Sx == 0."""
    np.multiply(sx, sx, out=g2)
    np.multiply(sy, sy, out=angle)
    g2 += angle
    np.divide(sy, sx, out=angle)
    np.arctan(angle, out=angle)
    np.copyto(angle, _HALF_PI, where=sx == 0)  # +-inf or nan there


def _pair_terms(g2: np.ndarray, angle: np.ndarray, d: np.ndarray, ratio: np.ndarray) -> None:
    """d = |alpha_X - alpha_F| and ratio = sqrt(min / max) of g_X^2, g_F^2 for X = A, B
    (0 where both are 0); maps ``[F, A, B]`` -> ``(2, ...)``."""
    np.subtract(angle[1:], angle[0], out=d)
    np.abs(d, out=d)
    np.minimum(g2[1:], g2[0], out=ratio)
    ratio /= np.maximum(g2[1:], np.maximum(g2[0], _F32(1.0)))  # 0, not nan, if both are 0
    np.sqrt(ratio, out=ratio)


def _qabf_sums(g2, d, ratio, skip, eq_scale):
    """Qabf numerator (in units of g) and denominator of the pixels of ``d``/``ratio``
    (2, r, c), leaving out the numerator terms where ``skip`` (or None). Overwrites d."""
    g2f, g2x = g2[0], g2[1:]
    gx = np.sqrt(g2x)
    # G = min/max, but G = g_F (not 1) where g_X == g_F exactly.
    eq = g2x == g2f
    g = ratio.copy()
    if eq.any():
        gf = np.sqrt(g2f)
        if eq_scale != 1.0:
            gf /= _F32(eq_scale)
        np.copyto(g, gf, where=eq)
    g *= _F32(-15.0)
    g += _F32(7.5)
    np.exp(g, out=g)
    g += _F32(1.0)  # 1 / Q_g (without the constant)
    d *= _A_SLOPE
    d -= _F32(4.4)
    np.exp(d, out=d)
    d += _F32(1.0)  # 1 / Q_a
    d *= g
    np.divide(gx, d, out=d)  # g_X Q / c
    if skip is not None:
        d *= ~skip
    return (_total(d[0]) + _total(d[1])) * _QABF_C, _total(gx[0]) + _total(gx[1])


def _total(x: np.ndarray) -> float:
    """Sum of a float32 array (torch's cascade summation: accurate and fast)."""
    return float(torch.from_numpy(x).sum())


def _nabf_sums(g2, d, ratio, edges=False):
    """Nabf numerator and denominator of the pixels (without the first and last column if
    ``edges``; see
    :func:`e2emfd.metrics.fusion.torch_engine.windowed.nabf`). Overwrites d and ratio.

    With Q = sqrt(P), P = c / ((1 + e_g)(1 + e_a)) = c / (s + c) where
    s = e_g + e_a + e_g e_a + (1 - c), the artefact loss 1 - Q is computed as
    s / ((s + c)(1 + Q)): float32 would lose most digits of 1 - Q where Q is near 1."""
    g2f, g2x = g2[0], g2[1:]
    c = 0.9999 * 0.9995
    # e_g = exp(-19 (G - 0.5)), G = ratio
    ratio *= _F32(-19.0)
    ratio += _F32(9.5)
    np.exp(ratio, out=ratio)
    # e_a = exp(-22 (A - 0.5)), A = |d - pi/2| 2 / pi
    d -= _HALF_PI
    np.abs(d, out=d)
    d *= -_A_SLOPE
    d += _F32(11.0)
    np.exp(d, out=d)
    s = ratio * d
    s += ratio
    s += d
    s += _F32(1.0 - c)
    u = ratio
    np.add(s, _F32(c), out=u)
    np.divide(_F32(c), u, out=d)
    np.sqrt(d, out=d)  # Q
    d += _F32(1.0)
    d *= u
    np.divide(s, d, out=d)  # 1 - Q
    # weight g^1.5 where g >= 2, else 0.001; g = sqrt(g2) / 8, so g >= 2 iff g2 >= 256
    w = s
    np.sqrt(g2x, out=w)
    w *= _F32(1 / 8)
    w *= np.sqrt(w)
    w -= _F32(0.001)
    w *= g2x >= 256
    w += _F32(0.001)
    if edges:
        w[..., 0] = 0.0
        w[..., -1] = 0.0
    den = _total(w[0]) + _total(w[1])
    d *= w  # artefact loss
    loss = d[0]
    loss += d[1]
    loss *= (g2f > g2x[0]) & (g2f > g2x[1])  # only where F's edge is the strongest
    return _total(loss), den


def _responses(windows: np.ndarray):
    """g^2 and alpha of padded maps (3, r + 2, c + 2) (small arrays)."""
    shape = windows.shape[:-2] + (windows.shape[-2] - 2, windows.shape[-1] - 2)
    sx, sy, g2, angle = (np.empty(shape, _F32) for _ in range(4))
    v = np.empty(shape[:-1] + (shape[-1] + 2,), _F32)
    hh = np.empty(shape[:-2] + (shape[-2] + 2, shape[-1]), _F32)
    _sobel(windows, sx, sy, v, hh)
    _strength_angle(sx, sy, g2, angle)
    return g2, angle


def _nabf_border(images: list[np.ndarray]) -> tuple[float, float]:
    """Nabf sums of the one-pixel border, with mirror extension (edge not repeated)."""
    h, w = images[0].shape
    strips = []
    for row, inner in ((0, 1), (h - 1, h - 2)):
        if row == 0 or h > 1:
            lines = np.stack([np.stack([x[inner], x[row], x[inner]]) for x in images])
            strips.append(np.pad(lines, ((0, 0), (0, 0), (1, 1)), mode="reflect"))
    if h > 2:
        for col, inner in ((0, 1), (w - 1, w - 2)):
            if col == w - 1 and w == 1:
                continue
            lines = np.stack([np.stack([x[:, inner], x[:, col], x[:, inner]], 1) for x in images])
            strips.append(lines)  # rows 1 .. h - 2 after the 'valid' Sobel
    num = den = 0.0
    for strip in strips:
        g2, angle = _responses(strip.astype(_F32))
        d = np.empty((2,) + g2.shape[1:], _F32)
        ratio = np.empty_like(d)
        _pair_terms(g2, angle, d, ratio)
        n, s = _nabf_sums(g2, d, ratio)
        num += n
        den += s
    return num, den


# Neighbours (di, dj) of pixel (i, j) gathered for MATLAB's Sobel sums, in this order.
_NEIGHBOURS = ((1, 1), (0, 1), (-1, 1), (1, -1), (0, -1), (-1, -1), (1, 0), (-1, 0))


def _matlab_terms(p: np.ndarray, k: int, pixels: np.ndarray, width: int) -> float:
    """Sum of g_X Q_XF on the 0-1 scale over the given pixels (flat indices into the tile),
    exactly as the MATLAB toolbox computes it (:func:`..torch_engine.core.qabf` with
    ``matlab_order``). ``p`` is the zero-padded integer tile of [F, A, B], ``k`` the
    source's index in it.

    MATLAB's ``conv2`` accumulates k[p, s] * X[i + 1 - p, j + 1 - s] from 0 with p fastest
    (see :func:`e2emfd.metrics.fusion.torch_engine.core.conv2_same`); the terms are replayed in that
    order on the gathered neighbours, for F and X at once."""
    stride = width + 2
    base = (pixels // width + 1) * stride + pixels % width + 1
    index = base + np.array([di * stride + dj for di, dj in _NEIGHBOURS])[:, None]
    flat = p.reshape(3, -1)
    v = np.stack([np.take(flat[0], index), np.take(flat[k], index)], 1).astype(np.float64)
    v /= 255.0  # MATLAB's double(x) / 255
    sx = -v[0]
    sx -= 2 * v[1]
    sx -= v[2]
    sx += v[3]
    sx += 2 * v[4]
    sx += v[5]
    sy = v[0] - v[2]
    sy += 2 * v[6]
    sy -= 2 * v[7]
    sy += v[3]
    sy -= v[5]
    g = np.sqrt(sx * sx + sy * sy)  # numpy's sqrt is correctly rounded, like MATLAB's
    angle = np.arctan(sy / sx)
    angle[sx == 0] = math.pi / 2
    (g_f, g_x), (a_f, a_x) = g, angle
    rel_g = np.minimum(g_x, g_f) / np.maximum(g_x, g_f)
    rel_g[g_x == g_f] = g_f[g_x == g_f]
    rel_a = np.abs(a_x - a_f) / (-math.pi / 2) + 1
    q_g = np.exp((rel_g - 0.5) * -15) + 1
    q_a = np.exp((rel_a - 0.8) * -22) + 1
    return float(np.sum(g_x * (_QABF_C / (q_g * q_a))))


def edge_metrics(
    f: np.ndarray, a: np.ndarray, b: np.ndarray, qabf: str | None, nabf: bool
) -> dict[str, float]:
    """Qabf (``qabf`` = ``"python"``: 0-255 images, or ``"matlab"``: 0-1 images in MATLAB's
    order; None: not computed) and Nabf of one pair of 2-D float64 integer images."""
    images = (f, a, b)
    h, w = f.shape
    rows = max(1, min(h, fusion_cpu_filters.TILE_PIXELS // w))
    pad = np.zeros((3, rows + 2, w + 2), _F32)
    sx, sy, g2_buf, angle_buf = (np.empty((3, rows, w), _F32) for _ in range(4))
    v = np.empty((3, rows, w + 2), _F32)
    hh = np.empty((3, rows + 2, w), _F32)
    d_buf, ratio_buf = (np.empty((2, rows, w), _F32) for _ in range(2))
    q_num = q_den = n_num = n_den = 0.0
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for r0 in range(0, h, rows):
            r = min(rows, h - r0)
            p = pad[:, : r + 2]
            lo, hi = max(r0 - 1, 0), min(r0 + r + 1, h)
            top = lo - (r0 - 1)
            for k, x in enumerate(images):
                p[k, top : top + hi - lo, 1:-1] = x[lo:hi]
            if top:
                p[:, 0] = 0.0
            if r0 + r + 1 > h:
                p[:, r + 1] = 0.0
            g2, angle, d, ratio = g2_buf[:, :r], angle_buf[:, :r], d_buf[:, :r], ratio_buf[:, :r]
            _sobel(p, sx[:, :r], sy[:, :r], v[:, :r], hh[:, : r + 2])
            _strength_angle(sx[:, :r], sy[:, :r], g2, angle)
            _pair_terms(g2, angle, d, ratio)
            if nabf:
                # interior pixels only (the border is evaluated with mirroring apart)
                i0, i1 = (1 if r0 == 0 else 0), r - (1 if r0 + r == h else 0)
                if i1 > i0:
                    nd, nr = d[:, i0:i1], ratio[:, i0:i1]
                    if qabf is not None:
                        nd, nr = nd.copy(), nr.copy()
                    n, s = _nabf_sums(g2[:, i0:i1], nd, nr, edges=True)
                    n_num += n
                    n_den += s
            if qabf is None:
                continue
            skip = None
            if qabf == "matlab":
                # Pixels whose MATLAB values depend on last bits: Sx == 0 (orientation) or
                # g_X^2 == g_F^2 (equality branch), where g_X > 0 (else no weight).
                sx0 = sx[:, :r] == 0
                skip = (g2[1:] > 0) & (sx0[1:] | sx0[0] | (g2[1:] == g2[0]))
                for k in (0, 1):
                    pixels = np.flatnonzero(skip[k])
                    if len(pixels):
                        q_num += 255.0 * _matlab_terms(p, k + 1, pixels, w)
            n, s = _qabf_sums(g2, d, ratio, skip, 255.0 if qabf == "matlab" else 1.0)
            q_num += n
            q_den += s
    out = {}
    if qabf is not None:
        # Both references divide 0 by 0 where neither source has an edge (two all-black
        # sources under zero padding): NaN, as numpy and MATLAB give, not an exception.
        out["Qabf"] = math.nan if q_den == 0 else q_num / q_den
    if nabf:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            n, s = _nabf_border(list(images))
        out["Nabf"] = (n_num + n) / (n_den + s)
    return out
