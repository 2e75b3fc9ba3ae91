"""CPU engine, windowed metrics: VIF and SSIM of one image pair, tile by tile.

The images are processed in horizontal tiles of a few ten thousand pixels, so that every
intermediate map stays in the processor's cache; the separable 'valid' filters are
matrix products with small banded matrices (:class:`Band`). Arithmetic:

- VIF (both conventions) and the MATLAB-convention SSIM filter in float64: local
  variances E[x^2] - E[x]^2 of 0..255 images cancel too much for float32.
- The python-convention SSIM reproduces scikit-image's float32 uniform filter exactly:
  integer window sums in float32 (exact below 2^24), rounded to float32 means, then the
  second pass over those float32 means in float64 (exact: they are multiples of 2^-26 below
  2^16, so seven of them add up exactly) and rounded to float32 again.

Every function takes 2-D float64 numpy arrays holding integer grey levels 0..255.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from e2emfd.metrics.fusion.torch_engine.core import gaussian_taps

# Output pixels per tile (per map). Smaller tiles fit the cache better but cost more
# Python-level operations; 16-32k is the sweet spot on current x86 CPUs.
TILE_PIXELS = 20_000
_BLOCK = 16  # block length of the pass along the rows (>= taps - 1)
_EPS = 1e-10  # LIVE VIF guard


@functools.lru_cache(maxsize=128)
def _column_matrix(taps: tuple[float, ...], rows: int, stride: int, dtype: torch.dtype) -> Tensor:
    """``(rows, stride * (rows - 1) + n)`` band: output row i = sum_k taps[k] in[stride i + k]."""
    n = len(taps)
    m = torch.zeros(rows, stride * (rows - 1) + n, dtype=torch.float64)
    t = torch.tensor(taps, dtype=torch.float64)
    for i in range(rows):
        m[i, stride * i : stride * i + n] = t
    return m.to(dtype)


@functools.lru_cache(maxsize=64)
def _row_matrices(taps: tuple[float, ...], dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """Blocks of the pass along a flat signal cut into blocks of ``_BLOCK``: output block b
    is ``X_b @ first + X_{b+1}[:, :n - 1] @ second``."""
    n = len(taps)
    full = torch.zeros(2 * _BLOCK, _BLOCK, dtype=torch.float64)
    t = torch.tensor(taps, dtype=torch.float64)
    for j in range(_BLOCK):
        full[j : j + n, j] = t
    return full[:_BLOCK].to(dtype).contiguous(), full[_BLOCK : _BLOCK + n - 1].to(
        dtype
    ).contiguous()


Tensor = torch.Tensor


class Band:
    """Separable 'valid' filtering with the window ``outer(taps, taps)`` of ``maps`` stacked
    maps of one width, one tile of rows at a time, optionally keeping every second output
    row and column.

    Per tile: :meth:`begin` (number of output rows, returns the input rows needed), one
    :meth:`column` call per map (the pass down the columns, a ``(rows, rows_in)`` banded
    matrix times the map's input rows), then :meth:`rows` (the pass along the rows over all
    maps at once: the maps are one flat signal cut into blocks of 16, two matrix products;
    outputs that straddle a row end are computed and dropped). Results differ from direct
    summation by rounding only; with integer taps and integer sums below 2^24 (float32) or
    2^53 (float64) they are exact.
    """

    def __init__(
        self,
        taps: Sequence[float],
        maps: int,
        width: int,
        rows: int,
        dtype: type = np.float64,
        stride: int = 1,
    ):
        self.taps = tuple(float(t) for t in taps)
        self.n = len(self.taps)
        if self.n - 1 > _BLOCK:
            raise ValueError(f"windows of more than {_BLOCK + 1} taps are not supported")
        self.maps, self.width, self.max_rows, self.stride = maps, width, rows, stride
        self.dtype = np.dtype(dtype)
        tdtype = torch.float64 if self.dtype == np.float64 else torch.float32
        self._tall = _column_matrix(self.taps, rows, stride, tdtype)
        self._first, self._second = _row_matrices(self.taps, tdtype)
        size = maps * rows * width
        blocks = -(-size // _BLOCK) + 1
        # Zero slack after the data: it only feeds dropped outputs, but 0 * NaN would leak.
        self._mid = np.zeros(blocks * _BLOCK, self.dtype)
        self._out = np.empty((blocks - 1) * _BLOCK, self.dtype)
        self._mid_t = torch.from_numpy(self._mid)
        self._out_t = torch.from_numpy(self._out)
        self.begin(rows)

    def begin(self, rows: int) -> int:
        """Start a tile of ``rows`` output rows; returns the number of input rows it reads."""
        self.rows_now = rows
        span = self.stride * (rows - 1) + self.n
        self._t = self._tall if rows == self.max_rows else self._tall[:rows, :span]
        used = self.maps * rows * self.width
        self._mid[used : used + 2 * _BLOCK] = 0
        self._mid_v = self._mid_t[:used].view(self.maps, rows, self.width)
        return span

    def scratch(self, size: int) -> np.ndarray:
        """``size`` elements of free memory (the input buffer of the pass along the rows),
        usable between :meth:`rows` and the next :meth:`begin`."""
        return self._mid[:size]

    def column(self, k: int, src: np.ndarray) -> None:
        """Pass down the columns of map ``k`` from its input rows ``src`` (rows_in, width),
        a C-contiguous array of this filter's dtype."""
        torch.mm(self._t, torch.from_numpy(src), out=self._mid_v[k])

    def rows(self, full: bool = False) -> np.ndarray:
        """Pass along the rows; returns ``(maps, rows, width')``, a view valid until the next
        tile (width' = (width - n) // stride + 1). With ``full`` (stride 1 only), whole rows
        ``(maps, rows, width)``, contiguous, whose last n - 1 columns are to be ignored."""
        used = self.maps * self.rows_now * self.width
        blocks = -(-used // _BLOCK)
        x = self._mid_t[: (blocks + 1) * _BLOCK].view(blocks + 1, _BLOCK)
        z = self._out_t[: blocks * _BLOCK].view(blocks, _BLOCK)
        torch.mm(x[:-1], self._first, out=z)
        z.addmm_(x[1:, : self.n - 1], self._second)
        out = self._out[:used].reshape(self.maps, self.rows_now, self.width)
        if full:
            return out
        return out[:, :, : self.width - self.n + 1 : self.stride]


def _tile_rows(width: int, minimum: int = 4) -> int:
    return max(minimum, TILE_PIXELS // width)


def _downsample(images: Sequence[np.ndarray], taps: Sequence[float]) -> list[np.ndarray]:
    """'valid' filtering with ``outer(taps, taps)`` keeping rows/columns 0, 2, 4, ..."""
    h, w = images[0].shape
    n = len(taps)
    ho, wo = (h - n) // 2 + 1, (w - n) // 2 + 1
    out = np.empty((len(images), ho, wo))
    rows = max(2, _tile_rows(w) // 2)
    band = Band(taps, len(images), w, min(rows, ho), stride=2)
    for o0 in range(0, ho, band.max_rows):
        r = min(band.max_rows, ho - o0)
        span = band.begin(r)
        for k, x in enumerate(images):
            band.column(k, x[2 * o0 : 2 * o0 + span])
        out[:, o0 : o0 + r] = band.rows()
    return list(out)


def _vif_scale(
    d: np.ndarray, r1: np.ndarray, r2: np.ndarray, taps: Sequence[float], saturate: bool
) -> tuple[np.ndarray, np.ndarray]:
    """VIF numerator and denominator sums of one scale for the references r1, r2."""
    h, w = d.shape
    n = len(taps)
    ho, wo = h - n + 1, w - n + 1
    rows = min(_tile_rows(w), ho)
    band = Band(taps, 8, w, rows)
    product = np.empty((rows + n - 1, w))
    num = torch.zeros(2, dtype=torch.float64)
    den = torch.zeros(2, dtype=torch.float64)
    for o0 in range(0, ho, rows):
        r = min(rows, ho - o0)
        span = band.begin(r)
        dt, at, bt = d[o0 : o0 + span], r1[o0 : o0 + span], r2[o0 : o0 + span]
        p = product[:span]
        # Maps: D, D^2, R1, R2, R1^2, R2^2, R1 D, R2 D (products clipped at 255 for MATLAB's
        # uint8 arithmetic), each made just before its pass down the columns.
        for k, (x, y) in enumerate(
            ((dt, None), (dt, dt), (at, None), (bt, None), (at, at), (bt, bt), (at, dt), (bt, dt))
        ):
            if y is None:
                band.column(k, x)
                continue
            np.multiply(x, y, out=p)
            if saturate:
                np.minimum(p, 255.0, out=p)
            band.column(k, p)
        z = torch.from_numpy(band.rows(full=True))
        # Whole rows (contiguous); the last n - 1 columns are dropped outputs (finite) and
        # stay out of the sums. Work in place; the pass's input buffer is free scratch.
        mu2, s2, mu1, s1, s12 = z[0], z[1], z[2:4], z[4:6], z[6:8]
        g, t = torch.from_numpy(band.scratch(2 * 2 * r * w)).view(2, 2, r, w).unbind(0)
        s2.addcmul_(mu2, mu2, value=-1.0)
        s1.addcmul_(mu1, mu1, value=-1.0)
        s12.addcmul_(mu1, mu2, value=-1.0)
        # LIVE: g = s12 / (s1 + eps), sv = s2 - g s12, then g = 0 where s1 < eps, s2 < eps
        # or g < 0, s1 = 0 where s1 < eps, sv = eps where sv <= eps. Where s1 < eps both
        # terms vanish once s1 = 0 (g and sv do not matter there).
        torch.add(s1, _EPS, out=g)
        torch.div(s12, g, out=g)
        torch.addcmul(s2, g, s12, value=-1.0, out=t)  # sv
        sv = t.clamp_(min=_EPS).add_(2.0)  # + sigma_n^2
        g.clamp_(min=0.0)
        gn = g.numpy()
        np.multiply(gn, s2.numpy() >= _EPS, out=gn)
        torch.nn.functional.threshold(s1, _EPS, 0.0, inplace=True)
        torch.mul(g, s1, out=s12)
        torch.addcmul(sv, g, s12, out=g)  # sv + g^2 s1
        g.div_(sv).log10_()
        num += g[:, :, :wo].sum(dim=(1, 2))
        s1.mul_(0.5).add_(1.0).log10_()
        den += s1[:, :, :wo].sum(dim=(1, 2))
    return num.numpy(), den.numpy()


def vifp_pair(f: np.ndarray, a: np.ndarray, b: np.ndarray, saturate: bool) -> np.ndarray:
    """``[VIFp(A, F), VIFp(B, F)]`` (LIVE multiscale pixel VIF, see
    :func:`..torch_engine.windowed.vifp`); ``saturate`` clips the scale-1 products at 255
    like MATLAB's uint8 arithmetic."""
    num = np.zeros(2)
    den = np.zeros(2)
    images = [f, a, b]
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        taps = gaussian_taps(n, n / 5.0)
        if scale > 1:
            images = _downsample(images, taps)
        s_num, s_den = _vif_scale(*images, taps, saturate and scale == 1)
        num += s_num
        den += s_den
    with np.errstate(divide="ignore", invalid="ignore"):
        return num / den


# Map order of the SSIM filters: F, F^2, A, B, A^2, B^2, A F, B F (the references stacked).
def _ssim_sources(ft, at, bt, prod):  # noqa: ARG001
    """(x, y) per map: a source rows (y None) or the product x * y written to ``prod``."""
    return ((ft, None), (ft, ft), (at, None), (bt, None), (at, at), (bt, bt), (at, ft), (bt, ft))


def _box7(x: np.ndarray, out: np.ndarray, tmp: np.ndarray) -> None:
    """``out[i] = x[i] + ... + x[i + 6]`` along the first axis (i < len(x) - 6), by
    doubling: (p4[i] + p2[i + 4]) + x[i + 6] with p2, p4 the sums of 2 and 4. Exact where
    the values and all partial sums are exactly representable."""
    n = len(x)
    p2 = tmp[: n - 1]
    np.add(x[: n - 1], x[1:n], out=p2)
    np.add(p2[: n - 3], p2[2 : n - 1], out=out[: n - 3])
    o = out[: n - 6]
    o += p2[4 : n - 2]
    o += x[6:n]


def ssim_python_pair(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[SSIM(F, A), SSIM(F, B)]`` as scikit-image's ``structural_similarity`` computes them
    for float32 images with data_range=2 (see
    :func:`..torch_engine.python.ssim_metric`), bit for bit up to the final mean."""
    h, w = f.shape
    n = 7
    ho, wo = h - n + 1, w - n + 1
    rows = min(_tile_rows(w), ho)
    maps = np.empty((8, rows + n - 1, w), np.float32)
    tmp32 = np.empty((8, rows + n - 1, w), np.float32)
    sums = np.empty((8, rows + n - 1, w), np.float32)
    wide = np.empty(8 * rows * w)
    tmp64 = np.empty(8 * rows * w)
    out64 = np.empty(8 * rows * w)
    means = np.empty((8, rows, w), np.float32)
    sq = np.empty((rows, w), np.float32)
    tmp = np.empty((2, rows, w), np.float32)
    cov_norm = np.float32(49.0 / 48.0)
    c1, c2 = np.float32((0.01 * 2.0) ** 2), np.float32((0.03 * 2.0) ** 2)
    total = np.zeros(2)
    for o0 in range(0, ho, rows):
        r = min(rows, ho - o0)
        span = r + n - 1
        mp = maps[:, :span]
        mp[0] = f[o0 : o0 + span]
        mp[2] = a[o0 : o0 + span]
        mp[3] = b[o0 : o0 + span]
        np.multiply(mp[0], mp[0], out=mp[1])  # exact: products of grey levels < 2^24
        np.multiply(mp[2:4], mp[2:4], out=mp[4:6])
        np.multiply(mp[2:4], mp[0], out=mp[6:8])
        # Pass 1 (down the columns): exact integer window sums, then the mean rounded to
        # float32 (float32 division of an exact sum is that rounding), widened to float64.
        used = 8 * r * w
        s = sums[:, :span]
        for k in range(8):
            _box7(mp[k], s[k], tmp32[k, :span])
        col = s[:, :r]
        col /= np.float32(n)
        x = wide[:used].reshape(8, r, w)
        np.copyto(x, col)
        # Pass 2 (along the rows, flat): exact sums of 7 float32 means, rounded to float32.
        o = out64[:used]
        _box7(wide[:used], o, tmp64[:used])
        o[used - n + 1 :] = 0.0  # dropped outputs at the very end
        o /= float(n)
        m = means[:, :r]
        np.copyto(m, o.reshape(8, r, w), casting="same_kind")
        ux, uxx, uy, uyy, uxy = m[0], m[1], m[2:4], m[4:6], m[6:8]
        # scikit-image's float32 arithmetic, in its order (on whole rows; the last n - 1
        # columns are dropped outputs).
        t1, t2 = sq[:r], tmp[:, :r]
        np.multiply(ux, ux, out=t1)
        np.subtract(uxx, t1, out=uxx)
        uxx *= cov_norm  # vx
        np.multiply(uy, uy, out=t2)
        np.subtract(uyy, t2, out=uyy)
        uyy *= cov_norm  # vy
        np.multiply(uy, ux, out=uy)  # ux uy
        np.subtract(uxy, uy, out=uxy)
        uxy *= cov_norm  # vxy
        uy *= np.float32(2.0)
        uy += c1  # A1 = 2 ux uy + C1
        uxy *= np.float32(2.0)
        uxy += c2  # A2 = 2 vxy + C2
        t2 += t1
        t2 += c1  # B1 = ux^2 + uy^2 + C1
        uyy += uxx
        uyy += c2  # B2 = vx + vy + C2
        t2 *= uyy  # D = B1 B2
        uy *= uxy
        uy /= t2  # S = A1 A2 / D
        total += uy[:, :, :wo].sum(axis=(1, 2), dtype=np.float64)
    return total / (ho * wo)


_GAUSS11 = tuple(gaussian_taps(11, 1.5))


def ssim_gauss_pair(f: np.ndarray, a: np.ndarray, b: np.ndarray, data_range: float) -> np.ndarray:
    """``[SSIM(F, A), SSIM(F, B)]`` in Wang et al.'s standard form (11x11 Gaussian window,
    sigma 1.5, K1 0.01, K2 0.03, population statistics, mean over the 'valid' region), in
    float32 on images shifted by -128 (the variances, which cancel, are shift-free; the
    shift comes back for the luminance term): about 1e-7 relative."""
    h, w = f.shape
    n = len(_GAUSS11)
    ho, wo = h - n + 1, w - n + 1
    rows = min(_tile_rows(w), ho)
    band = Band(_GAUSS11, 8, w, rows, dtype=np.float32)
    src = np.empty((3, rows + n - 1, w), np.float32)
    prod = np.empty((rows + n - 1, w), np.float32)
    sq = np.empty((rows, w), np.float32)
    tmp = np.empty((2, rows, w), np.float32)
    c1, c2 = np.float32((0.01 * data_range) ** 2), np.float32((0.03 * data_range) ** 2)
    shift = np.float32(128.0)
    total = np.zeros(2)
    for o0 in range(0, ho, rows):
        r = min(rows, ho - o0)
        span = band.begin(r)
        for k, x in enumerate((f, a, b)):
            np.subtract(x[o0 : o0 + span], shift, out=src[k, :span])
        ft, at, bt = src[:, :span]
        p = prod[:span]
        for k, (x, y) in enumerate(_ssim_sources(ft, at, bt, p)):
            if y is not None:
                np.multiply(x, y, out=p)
                x = p
            band.column(k, x)
        m = band.rows(full=True)
        mx, xx, my, yy, xy = m[0], m[1], m[2:4], m[4:6], m[6:8]
        t1, t2 = sq[:r], tmp[:, :r]
        np.multiply(mx, mx, out=t1)
        np.subtract(xx, t1, out=xx)  # var x
        np.multiply(my, my, out=t2)
        np.subtract(yy, t2, out=yy)  # var y
        yy += xx
        yy += c2  # var x + var y + C2
        np.multiply(my, mx, out=t2)
        np.subtract(xy, t2, out=xy)  # cov
        xy *= np.float32(2.0)
        xy += c2  # 2 cov + C2
        mx += shift
        my += shift
        np.multiply(mx, mx, out=t1)
        np.multiply(my, my, out=t2)
        t2 += t1
        t2 += c1  # mu_x^2 + mu_y^2 + C1
        t2 *= yy  # denominator
        my *= mx
        my *= np.float32(2.0)
        my += c1
        my *= xy  # numerator
        my /= t2
        total += my[:, :, :wo].sum(axis=(1, 2), dtype=np.float64)
    return total / (ho * wo)
