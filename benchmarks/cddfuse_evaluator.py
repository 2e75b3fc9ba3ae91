"""The CDDFuse evaluator, re-implemented for timing: the yardstick of the speed claims.

``e2emfd eval-fusion --convention python`` reproduces the ``Evaluator`` class of
Zhaozixiang1228/MMIF-CDDFuse (``utils/Evaluator.py``), the evaluator the field (and the
public E2E-MFD code) runs. To say how much faster the command is, the evaluator has to run
on the same machine in the same benchmark, so this module computes its 12 metrics the way
it does: per pair, in numpy float32 on ``cv2.imread`` + ``BGR2GRAY`` + ``np.round``
images, with its libraries - ``scipy.signal.convolve2d`` (VIF's Gaussian windows and
Qabf's Sobel kernels), ``sklearn.metrics.mutual_info_score`` (MI) and
``skimage.metrics.structural_similarity`` (SSIM, ``data_range=2``). Written from the
evaluator's description (shared/data/tno42/README.md), not copied; it reproduces
``python_reference_metrics.csv`` (checked by ``--check``), so what is timed is the
evaluator's work.

Needs scikit-image and scikit-learn besides the project's dependencies
(``pip install scikit-image scikit-learn``).

    python benchmarks/cddfuse_evaluator.py --ir IR --vi VI --fused FUSED [--check CSV]
        [--out values.json]

prints the seconds it took (imports and reading included); ``--check`` adds the largest
relative difference from the reference values, ``--out`` writes the values per image.
"""

from __future__ import annotations

import time

_START = time.perf_counter()

import argparse  # noqa: E402  (the imports are part of what is timed)
import csv  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from scipy.signal import convolve2d  # noqa: E402
from skimage.metrics import structural_similarity  # noqa: E402
from sklearn.metrics import mutual_info_score  # noqa: E402

METRICS = ("EN", "SD", "SF", "AG", "MI", "SCD", "VIF", "Qabf", "SSIM", "CC", "PSNR", "MSE")


def read_grey(path: Path) -> np.ndarray:
    image = cv2.imread(str(path)).astype("float32")
    return np.round(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))


def _corr(x: np.ndarray, y: np.ndarray) -> float:
    dx, dy = x - x.mean(), y - y.mean()
    return np.sum(dx * dy) / np.sqrt(np.sum(dx**2) * np.sum(dy**2))


def _entropy_bits(f: np.ndarray) -> float:
    levels = np.uint8(np.round(f)).ravel()
    p = np.bincount(levels) / levels.shape[0]
    return -np.sum(p * np.log2(p + (p == 0)))


def _average_gradient(f: np.ndarray) -> float:
    gy, gx = np.gradient(f)
    return np.sum(np.sqrt((gx**2 + gy**2) / 2)) / f.size


def _gaussian_window(side: int) -> np.ndarray:
    """MATLAB's fspecial('gaussian', side, side / 5), rotated for convolve2d."""
    half = (side - 1) / 2
    y, x = np.ogrid[-half : half + 1, -half : half + 1]
    window = np.exp(-(x * x + y * y) / (2 * (side / 5) ** 2))
    window[window < np.finfo(window.dtype).eps * window.max()] = 0
    return np.rot90(window / window.sum(), 2)


def _vifp(ref: np.ndarray, dist: np.ndarray) -> float:
    """Multiscale pixel-domain VIF of LIVE (4 scales, sigma_n^2 = 2)."""
    eps, noise = 1e-10, 2.0
    num = den = 0.0
    for scale in range(1, 5):
        window = _gaussian_window(2 ** (5 - scale) + 1)
        if scale > 1:
            ref = convolve2d(ref, window, mode="valid")[::2, ::2]
            dist = convolve2d(dist, window, mode="valid")[::2, ::2]
        mu1 = convolve2d(ref, window, mode="valid")
        mu2 = convolve2d(dist, window, mode="valid")
        s1 = convolve2d(ref * ref, window, mode="valid") - mu1 * mu1
        s2 = convolve2d(dist * dist, window, mode="valid") - mu2 * mu2
        s12 = convolve2d(ref * dist, window, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + eps)
        sv = s2 - g * s12
        flat = s1 < eps
        g[flat] = 0
        sv[flat] = s2[flat]
        s1[flat] = 0
        flat = s2 < eps
        g[flat] = 0
        sv[flat] = 0
        negative = g < 0
        sv[negative] = s2[negative]
        g[negative] = 0
        sv[sv <= eps] = eps
        num += np.sum(np.log10(1 + g * g * s1 / (sv + noise)))
        den += np.sum(np.log10(1 + s1 / noise))
    value = num / den
    return 1.0 if np.isnan(value) else value


_SOBEL_Y = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], dtype=np.float32)
_SOBEL_X = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], dtype=np.float32)


def _edges(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    sx = convolve2d(x, _SOBEL_X, mode="same")
    sy = convolve2d(x, _SOBEL_Y, mode="same")
    strength = np.sqrt(sx * sx + sy * sy)
    angle = np.zeros_like(x)
    vertical = sx == 0
    angle[vertical] = math.pi / 2
    angle[~vertical] = np.arctan(sy[~vertical] / sx[~vertical])
    return strength, angle


def _edge_preservation(ga, aa, gf, af) -> np.ndarray:
    relative = np.zeros_like(aa)
    above, equal, below = ga > gf, ga == gf, ga < gf
    relative[above] = gf[above] / ga[above]
    relative[equal] = gf[equal]  # the evaluator's quirk: g_F, not 1
    relative[below] = ga[below] / gf[below]
    orientation = 1 - np.abs(aa - af) / (math.pi / 2)
    qg = 0.9994 / (1 + np.exp(-15 * (relative - 0.5)))
    qa = 0.9879 / (1 + np.exp(-22 * (orientation - 0.8)))
    return qg * qa


def _qabf(f, a, b) -> float:
    ga, aa = _edges(a)
    gb, ab = _edges(b)
    gf, af = _edges(f)
    qaf = _edge_preservation(ga, aa, gf, af)
    qbf = _edge_preservation(gb, ab, gf, af)
    return np.sum(qaf * ga + qbf * gb) / np.sum(ga + gb)


def evaluate_pair(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    """The evaluator's 12 metrics of fused ``f`` against IR ``a`` and visible ``b``."""
    mse = (np.mean((a - f) ** 2) + np.mean((b - f) ** 2)) / 2
    values = {
        "EN": _entropy_bits(f),
        "SD": np.std(f),
        "SF": np.sqrt(np.mean((f[:, 1:] - f[:, :-1]) ** 2) + np.mean((f[1:] - f[:-1]) ** 2)),
        "AG": _average_gradient(f),
        "MI": mutual_info_score(f.ravel(), a.ravel()) + mutual_info_score(f.ravel(), b.ravel()),
        "SCD": _corr(a, f - b) + _corr(b, f - a),
        "VIF": _vifp(a, f) + _vifp(b, f),
        "Qabf": _qabf(f, a, b),
        "SSIM": structural_similarity(f, a, data_range=2)
        + structural_similarity(f, b, data_range=2),
        "CC": (_corr(a, f) + _corr(b, f)) / 2,
        "PSNR": 10 * np.log10(np.max(f) ** 2 / mse),
        "MSE": mse,
    }
    return {name: float(v) for name, v in values.items()}


def evaluate_folders(ir: Path, vi: Path, fused: Path) -> dict[str, dict[str, float]]:
    """Metrics of every fused PNG, read pair by pair as the evaluator's script does."""
    return {
        path.name: evaluate_pair(
            read_grey(path), read_grey(ir / path.name), read_grey(vi / path.name)
        )
        for path in sorted(fused.glob("*.png"))
    }


def largest_difference(results: dict[str, dict[str, float]], reference: Path, method: str):
    """(largest relative difference, its metric and image) against the golden CSV."""
    worst = (0.0, "", "")
    with open(reference, newline="") as fh:
        for row in csv.DictReader(fh):
            if row["method"] != method or row["image"] not in results:
                continue
            ours, theirs = results[row["image"]][row["metric"]], float(row["value"])
            rel = abs(ours - theirs) / max(abs(theirs), 1e-12)
            worst = max(worst, (rel, row["metric"], row["image"]))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ir", type=Path, required=True)
    parser.add_argument("--vi", type=Path, required=True)
    parser.add_argument("--fused", type=Path, required=True)
    parser.add_argument("--check", type=Path, help="python_reference_metrics.csv to compare")
    parser.add_argument("--out", type=Path, help="write {image: {metric: value}} as JSON")
    args = parser.parse_args()
    results = evaluate_folders(args.ir, args.vi, args.fused)
    print(f"evaluator: {len(results)} pairs in {time.perf_counter() - _START:.3f} s")
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))
    if args.check:
        rel, metric, image = largest_difference(results, args.check, args.fused.name)
        print(f"largest relative difference from {args.check.name}: {rel:.2e} ({metric}, {image})")


if __name__ == "__main__":
    main()
