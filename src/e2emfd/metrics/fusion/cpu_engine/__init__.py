"""CPU engine of :func:`e2emfd.metrics.fusion.fusion_metrics` (numpy, shared work).

The torch implementation (:mod:`e2emfd.metrics.fusion.torch_engine.python`,
:mod:`e2emfd.metrics.fusion.torch_engine.matlab`) evaluates each metric on its own, in float64, over
whole images, which on a CPU spends most of its time moving full-size temporaries through
memory. This engine computes the same values per image pair, sharing work between
metrics, in cache-sized tiles (:mod:`e2emfd.metrics.fusion.cpu_engine.filters`,
:mod:`e2emfd.metrics.fusion.cpu_engine.edges`), and in float32 where the conventions' tolerances
leave a wide margin (SSIM of the MATLAB convention, Qabf, Nabf: about 1e-7 relative).

It requires integer grey levels (what :func:`load_grey` and :func:`to_grey_levels`
return); :func:`integer_levels` checks that, and the caller falls back to the torch
implementation otherwise. Everything that is exact for integers is computed exactly:

- EN and MI come from the joint histograms of (F, A) and (F, B), whose marginals are the
  grey-level histograms of F, A and B.
- SD, CC, SCD, MSE and PSNR come from the pixel sums of F, A, B, their squares and
  products (integers below 2^53, so float64 sums are exact), combined in exact rational
  arithmetic; the MATLAB SD's uint8 arithmetic is evaluated per grey level.
- SF and AG sum squared integer differences (exact) and square roots.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fractions import Fraction

import numpy as np

from e2emfd.metrics.fusion.cpu_engine import edges as fusion_cpu_edges
from e2emfd.metrics.fusion.cpu_engine import filters as fusion_cpu_filters

LN2 = math.log(2.0)
_LEVELS = np.arange(256, dtype=np.float64)

# Metrics computed from the three groups of shared intermediate results.
_HISTOGRAM = {"EN", "MI"}
_MOMENTS = {"SD", "CC", "SCD", "MSE", "PSNR"}
_GRADIENT = {"SF", "AG"}


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy in nats of a histogram (empty bins contribute 0)."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class _Pair:
    """One image pair (2-D float64 arrays F, A, B) and the intermediate results its metrics
    share. :meth:`first_pass` must succeed before anything else is used."""

    def __init__(self, f: np.ndarray, a: np.ndarray, b: np.ndarray):
        self.f, self.a, self.b = f, a, b
        self.n = f.size
        self.levels = np.empty((3,) + f.shape, np.uint8)  # F, A, B as uint8
        self.sf_sums = (0.0, 0.0)  # sums of squared vertical / horizontal differences
        self.ag_sum = 0.0  # sum of sqrt((gx^2 + gy^2) / 2)
        self.ab = 0.0  # sum of A * B
        self._joints: tuple[np.ndarray, np.ndarray] | None = None
        self._sums: dict[str, Fraction] | None = None

    def first_pass(self, gradients: bool, ab: bool) -> bool:
        """One pass over the images in row tiles: the uint8 levels, a check that the images
        hold integers 0..255 (returns False otherwise), and, as asked, the SF and AG sums
        of F and the sum of A B (all exact in float64 but AG's square roots)."""
        f, a, b = self.f, self.a, self.b
        h, w = f.shape
        rows = max(1, min(h, fusion_cpu_filters.TILE_PIXELS // w))
        same = np.empty((rows, w), bool)
        dv_sum = dh_sum = ag = sab = 0.0
        with np.errstate(invalid="ignore"):  # NaN cast to uint8
            for r0 in range(0, h, rows):
                r1 = min(h, r0 + rows)
                eq = same[: r1 - r0]
                for k, x in enumerate((f, a, b)):
                    tile, u = x[r0:r1], self.levels[k, r0:r1]
                    np.copyto(u, tile, casting="unsafe")
                    np.equal(u, tile, out=eq)
                    if not eq.all():
                        return False
                if ab:
                    sab += float(np.dot(a[r0:r1].ravel(), b[r0:r1].ravel()))
                if gradients:
                    dv, dh, s = _gradient_tile(f, r0, r1)
                    dv_sum += dv
                    dh_sum += dh
                    ag += s
        self.sf_sums = (dv_sum, dh_sum)
        self.ag_sum = ag
        self.ab = sab
        return True

    def joints(self) -> tuple[np.ndarray, np.ndarray]:
        """Joint histograms (256, 256) of (F, A) and (F, B), int64 counts."""
        if self._joints is None:
            shifted = np.left_shift(self.levels[0], 8, dtype=np.intp)
            joints = []
            for k in (1, 2):
                index = np.add(shifted, self.levels[k], dtype=np.intp)
                joints.append(np.bincount(index.ravel(), minlength=65536).reshape(256, 256))
            self._joints = (joints[0], joints[1])
        return self._joints

    def histograms(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Grey-level histograms of F, A and B."""
        jfa, jfb = self.joints()
        return jfa.sum(axis=1), jfa.sum(axis=0), jfb.sum(axis=0)

    def sums(self) -> dict[str, Fraction]:
        """Exact pixel sums: f, a, b, ff, aa, bb, fa, fb, ab."""
        if self._sums is None:
            hf, ha, hb = self.histograms()
            jfa, jfb = self.joints()
            levels = np.arange(256)
            out = {}
            for name, h in (("f", hf), ("a", ha), ("b", hb)):
                out[name] = int(h @ levels)
                out[name * 2] = int(h @ levels**2)
            out["fa"] = int(levels @ jfa @ levels)
            out["fb"] = int(levels @ jfb @ levels)
            out["ab"] = int(self.ab)
            self._sums = {k: Fraction(v) for k, v in out.items()}
        return self._sums

    def centred(self, x: str, y: str) -> Fraction:
        """n^2 cov(x, y), exactly."""
        s = self.sums()
        key = x + y if x + y in s else y + x
        return self.n * s[key] - s[x] * s[y]


def _gradient_tile(f: np.ndarray, r0: int, r1: int) -> tuple[float, float, float]:
    """Rows [r0, r1) of F: the sums of squared differences to the next row and to the next
    column (SF), and the sum of sqrt((gx^2 + gy^2) / 2) with MATLAB's ``gradient`` (AG).
    Differences of integers are exact; 2 gx and 2 gy are integers too (central differences
    inside, twice the one-sided ones on the borders), so (gx^2 + gy^2) / 2 is
    ((2 gx)^2 + (2 gy)^2) / 8, exactly."""
    h, w = f.shape
    x = f[r0:r1]
    dh = x[:, 1:] - x[:, :-1]
    dh_sum = float(np.dot(dh.ravel(), dh.ravel()))
    lo, hi = max(r0 - 1, 0), min(r1 + 1, h)
    dv = f[lo + 1 : hi] - f[lo : hi - 1]  # dv[k] = f[lo + k + 1] - f[lo + k]
    own = dv[r0 - lo : min(r1, h - 1) - lo]  # differences starting at rows r0 .. r1 - 1
    dv_sum = float(np.dot(own.ravel(), own.ravel()))
    if h < 2 or w < 2:
        return dv_sum, dh_sum, math.nan
    gy = np.empty_like(x)  # 2 gy
    inner0, inner1 = max(r0, 1), min(r1, h - 1)
    if inner1 > inner0:  # rows with both neighbours: dv[i - 1] + dv[i]
        np.add(
            dv[inner0 - 1 - lo : inner1 - 1 - lo],
            dv[inner0 - lo : inner1 - lo],
            out=gy[inner0 - r0 : inner1 - r0],
        )
    if r0 == 0:
        np.multiply(dv[0], 2.0, out=gy[0])
    if r1 == h:
        np.multiply(dv[h - 2 - lo], 2.0, out=gy[h - 1 - r0])
    gx = np.empty_like(x)  # 2 gx
    np.add(dh[:, :-1], dh[:, 1:], out=gx[:, 1:-1])
    np.multiply(dh[:, 0], 2.0, out=gx[:, 0])
    np.multiply(dh[:, -1], 2.0, out=gx[:, -1])
    gx *= gx
    gy *= gy
    gx += gy
    gx *= 0.125
    return dv_sum, dh_sum, float(np.sqrt(gx, out=gx).sum())


def _ratio(num: float, den: float) -> float:
    """num / den with IEEE semantics (inf or nan instead of an exception)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def _pearson(cxy: Fraction, cxx: Fraction, cyy: Fraction) -> float:
    """Pearson correlation from exact n^2-scaled (co)variances; NaN (0 / 0) for a constant
    image (float arithmetic on 0-1 values may leave residues of about 1e-16 instead)."""
    return _ratio(float(cxy), math.sqrt(float(cxx) * float(cyy)))


def _histogram_metrics(pair: _Pair, convention: str, names: set[str], out: dict) -> None:
    hf, ha, hb = pair.histograms()
    if "EN" in names:
        out["EN"] = _entropy(hf) / LN2
    if "MI" in names:
        jfa, jfb = pair.joints()
        h_f = _entropy(hf)
        if convention == "python":
            out["MI"] = (h_f + _entropy(ha) - _entropy(jfa)) + (h_f + _entropy(hb) - _entropy(jfb))
        else:
            # MATLAB's joint histogram indexes with uint8(grey) + 1, which saturates: grey
            # levels 254 and 255 share a bin there (and only there).
            total = 0.0
            for hx, joint in ((ha, jfa), (hb, jfb)):
                j = joint.copy()
                j[254] += j[255]
                j[:, 254] += j[:, 255]
                j[255] = 0
                j[:, 255] = 0
                total += (_entropy(hx) + h_f - _entropy(j)) / LN2
            out["MI"] = total


def _moment_metrics(pair: _Pair, convention: str, names: set[str], out: dict) -> None:
    n = pair.n
    s = pair.sums()
    cff = pair.centred("f", "f")
    if "SD" in names:
        if convention == "python":
            out["SD"] = math.sqrt(float(cff / (n * n)))
        else:
            # SD_evaluation on uint8 F: d = F - mean stored as uint8 (rounded half away from
            # zero, clipped to 0..255), d^2 stored as uint8 (at most 255); per grey level.
            hf = pair.histograms()[0]
            mu = float(s["f"] / n)
            d = np.floor(np.abs(_LEVELS - mu) + 0.5) * np.sign(_LEVELS - mu)
            d2 = np.minimum(np.clip(d, 0, 255) ** 2, 255)
            out["SD"] = math.sqrt(float(hf @ d2) / n)
    if "CC" in names:
        out["CC"] = (
            _pearson(pair.centred("f", "a"), cff, pair.centred("a", "a"))
            + _pearson(pair.centred("f", "b"), cff, pair.centred("b", "b"))
        ) / 2
    if "SCD" in names:
        caa, cbb, cab = pair.centred("a", "a"), pair.centred("b", "b"), pair.centred("a", "b")
        cfa, cfb = pair.centred("f", "a"), pair.centred("f", "b")
        # corr(F - B, A) + corr(F - A, B), expanded in exact covariances
        out["SCD"] = _pearson(cfa - cab, cff + cbb - 2 * cfb, caa) + _pearson(
            cfb - cab, cff + caa - 2 * cfa, cbb
        )
    if names & {"MSE", "PSNR"}:
        sq = (s["ff"] - 2 * s["fa"] + s["aa"] + s["ff"] - 2 * s["fb"] + s["bb"]) / (2 * n)
        with np.errstate(divide="ignore", invalid="ignore"):
            if convention == "python":
                mse = float(sq)
                peak = float(np.flatnonzero(pair.histograms()[0])[-1])
                psnr = float(10 * np.log10(_ratio(peak * peak, mse)))
            else:
                mse = float(sq / 65025)
                psnr = float(20 * np.log10(_ratio(255.0, math.sqrt(mse))))
        out["MSE"] = mse
        out["PSNR"] = psnr


def _gradient_metrics(pair: _Pair, convention: str, names: set[str], out: dict) -> None:
    h, w = pair.f.shape
    if "SF" in names:
        dv, dh = pair.sf_sums
        sf = math.sqrt(_ratio(dv, (h - 1) * w) + _ratio(dh, h * (w - 1)))
        out["SF"] = sf / 255 if convention == "matlab" else sf
    if "AG" in names:
        if h < 2 or w < 2:
            raise ValueError(f"AG needs images of at least 2x2 pixels, got {(h, w)}")
        out["AG"] = pair.ag_sum / ((h - 1) * (w - 1) if convention == "matlab" else h * w)


def pair_metrics(
    f: np.ndarray, a: np.ndarray, b: np.ndarray, convention: str, names: Iterable[str]
) -> dict[str, float] | None:
    """All requested metrics of one pair of 2-D float64 arrays, or None if the arrays do not
    hold integer grey levels 0..255 (the caller then uses the torch implementation)."""
    names = set(names)
    out: dict[str, float] = {}
    pair = _Pair(f, a, b)
    if not pair.first_pass(bool(names & _GRADIENT), "SCD" in names):
        return None
    f8, a8, b8 = pair.levels
    h, w = f.shape
    if names & _HISTOGRAM:
        _histogram_metrics(pair, convention, names, out)
    if names & _MOMENTS:
        _moment_metrics(pair, convention, names, out)
    if names & _GRADIENT:
        _gradient_metrics(pair, convention, names, out)
    if "VIF" in names:
        if min(h, w) < 41:
            raise ValueError(f"VIF needs images of at least 41x41, got {h}x{w}")
        terms = fusion_cpu_filters.vifp_pair(f, a, b, convention == "matlab")
        if convention == "python":  # the evaluator replaces a NaN (0 / 0) by 1
            terms = np.nan_to_num(terms, nan=1.0)
        out["VIF"] = float(terms.sum())
    if "SSIM" in names:
        side = 7 if convention == "python" else 11
        if min(h, w) < side:
            raise ValueError(f"SSIM needs images of at least {side}x{side}, got {h}x{w}")
        if convention == "python":
            out["SSIM"] = float(fusion_cpu_filters.ssim_python_pair(f8, a8, b8).sum())
        else:
            out["SSIM"] = float(fusion_cpu_filters.ssim_gauss_pair(f8, a8, b8, 255.0).sum())
    if names & {"Qabf", "Nabf"}:
        if "Nabf" in names and min(h, w) < 2:
            raise ValueError(f"Nabf needs images of at least 2x2, got {(h, w)}")
        qabf = convention if "Qabf" in names else None
        out.update(fusion_cpu_edges.edge_metrics(f8, a8, b8, qabf, "Nabf" in names))
    return out
