"""CPU engine of :func:`e2emfd.metrics.fusion.fusion_metrics` (numpy, shared work).

The torch implementation (:mod:`e2emfd.metrics.fusion_python`,
:mod:`e2emfd.metrics.fusion_matlab`) evaluates each metric on its own, in float64, over
whole images, which on a CPU spends most of its time moving full-size temporaries through
memory. This engine computes the same values per image pair, sharing work between
metrics, in cache-sized tiles (:mod:`e2emfd.metrics.fusion_cpu_filters`,
:mod:`e2emfd.metrics.fusion_cpu_edges`), and in float32 where the conventions' tolerances
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

from e2emfd.metrics import fusion_cpu_edges, fusion_cpu_filters

LN2 = math.log(2.0)
_LEVELS = np.arange(256, dtype=np.float64)

# Metrics computed from the three groups of shared intermediate results.
_HISTOGRAM = {"EN", "MI"}
_MOMENTS = {"SD", "CC", "SCD", "MSE", "PSNR"}
_GRADIENT = {"SF", "AG"}


def integer_levels(x: np.ndarray) -> bool:
    """Whether ``x`` holds only integers 0..255 (NaN and infinities fail)."""
    with np.errstate(invalid="ignore"):
        return bool(np.array_equal(x.astype(np.uint8), x))


def _entropy(counts: np.ndarray) -> float:
    """Shannon entropy in nats of a histogram (empty bins contribute 0)."""
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def _mean_by_columns(x: np.ndarray) -> float:
    """MATLAB ``mean(mean(x))``: the mean of the column means."""
    return float(x.mean(axis=0).mean())


class _Pair:
    """Shared intermediate results of one image pair (2-D float64 integer images)."""

    def __init__(self, f: np.ndarray, a: np.ndarray, b: np.ndarray):
        self.f, self.a, self.b = f, a, b
        self.n = f.size
        self._joints: tuple[np.ndarray, np.ndarray] | None = None
        self._sums: dict[str, Fraction] | None = None

    def joints(self) -> tuple[np.ndarray, np.ndarray]:
        """Joint histograms (256, 256) of (F, A) and (F, B), int64 counts."""
        if self._joints is None:
            lf = self.f.astype(np.intp).ravel()
            lf <<= 8
            self._joints = tuple(
                np.bincount(lf + x.astype(np.intp).ravel(), minlength=65536).reshape(256, 256)
                for x in (self.a, self.b)
            )
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
            out = {}
            for name, h in (("f", hf), ("a", ha), ("b", hb)):
                out[name] = int(h @ np.arange(256))
                out[name * 2] = int(h @ np.arange(256) ** 2)
            levels = np.arange(256)
            out["fa"] = int(levels @ jfa @ levels)
            out["fb"] = int(levels @ jfb @ levels)
            # Integers below 2^53, so the float64 dot product is exact.
            out["ab"] = int(np.dot(self.a.ravel(), self.b.ravel()))
            self._sums = {k: Fraction(v) for k, v in out.items()}
        return self._sums

    def centred(self, x: str, y: str) -> Fraction:
        """n^2 * cov(x, y) (exact)."""
        s = self.sums()
        key = x + y if x + y in s else y + x
        return self.n * s[key] - s[x] * s[y]


def _ratio(num: float, den: float) -> float:
    """num / den with IEEE semantics (inf or nan instead of an exception)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.float64(num) / np.float64(den))


def _pearson(cxy: Fraction, cxx: Fraction, cyy: Fraction) -> float:
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
            mu = _mean_by_columns(pair.f)
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


def _gradient_metrics(f: np.ndarray, convention: str, names: set[str], out: dict) -> None:
    h, w = f.shape
    if "SF" in names:
        dv = np.diff(f, axis=0).ravel()
        dh = np.diff(f, axis=1).ravel()
        # Sums of squared integer differences are exact in float64.
        rf = _ratio(float(dv @ dv), dv.size)
        cf = _ratio(float(dh @ dh), dh.size)
        sf = math.sqrt(rf + cf) if rf + cf >= 0 else math.nan
        out["SF"] = sf / 255 if convention == "matlab" else sf
    if "AG" in names:
        if h < 2 or w < 2:
            raise ValueError(f"AG needs images of at least 2x2 pixels, got {(h, w)}")
        # MATLAB gradient, doubled (exact): central differences inside, twice the
        # one-sided ones on the first/last row and column; sqrt((gx^2 + gy^2) / 2) is then
        # sqrt((dx^2 + dy^2) / 8).
        dx = np.empty_like(f)
        np.subtract(f[:, 2:], f[:, :-2], out=dx[:, 1:-1])
        dx[:, 0] = 2 * (f[:, 1] - f[:, 0])
        dx[:, -1] = 2 * (f[:, -1] - f[:, -2])
        dy = np.empty_like(f)
        np.subtract(f[2:], f[:-2], out=dy[1:-1])
        dy[0] = 2 * (f[1] - f[0])
        dy[-1] = 2 * (f[-1] - f[-2])
        dx *= dx
        dy *= dy
        dx += dy
        dx /= 8.0
        total = float(np.sqrt(dx, out=dx).sum())
        out["AG"] = total / ((h - 1) * (w - 1) if convention == "matlab" else h * w)


def pair_metrics(
    f: np.ndarray, a: np.ndarray, b: np.ndarray, convention: str, names: Iterable[str]
) -> dict[str, float]:
    """All requested metrics of one pair of 2-D float64 arrays of integer grey levels."""
    names = set(names)
    out: dict[str, float] = {}
    pair = _Pair(f, a, b)
    if names & _HISTOGRAM:
        _histogram_metrics(pair, convention, names, out)
    if names & _MOMENTS:
        _moment_metrics(pair, convention, names, out)
    if names & _GRADIENT:
        _gradient_metrics(f, convention, names, out)
    if "VIF" in names:
        h, w = f.shape
        if min(h, w) < 41:
            raise ValueError(f"VIF needs images of at least 41x41, got {h}x{w}")
        out["VIF"] = float(fusion_cpu_filters.vifp_pair(f, a, b, convention == "matlab").sum())
    if "SSIM" in names:
        side = 7 if convention == "python" else 11
        if min(f.shape) < side:
            h, w = f.shape
            raise ValueError(f"SSIM needs images of at least {side}x{side}, got {h}x{w}")
        if convention == "python":
            out["SSIM"] = float(fusion_cpu_filters.ssim_python_pair(f, a, b).sum())
        else:
            out["SSIM"] = float(fusion_cpu_filters.ssim_gauss_pair(f, a, b, 255.0).sum())
    if names & {"Qabf", "Nabf"}:
        if "Nabf" in names and min(f.shape) < 2:
            raise ValueError(f"Nabf needs images of at least 2x2, got {f.shape}")
        out.update(
            fusion_cpu_edges.edge_metrics(
                f, a, b, convention if "Qabf" in names else None, "Nabf" in names
            )
        )
    return out
