"""VIF, SSIM, Qabf and Nabf against independent float64 references written with numpy and
scipy (2-D windows, boolean-mask guards in the published order, scalar loops for the
MATLAB summation order), plus the separable-filter building blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage, signal

from e2emfd.metrics.fusion import _fusion_metrics, fusion_metrics
from e2emfd.metrics.fusion.torch_engine import core as fusion_core

ENGINES = ("torch", "cpu")
# The CPU engine computes Qabf, Nabf and the MATLAB-convention SSIM partly in float32.
FLOAT32_RTOL = 1e-6


def engine_metrics(engine, f, a, b, convention, names):
    return _fusion_metrics(f, a, b, convention, names, engine=engine)


def images(seed: int, shape=(1, 64, 70)) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, 256, shape, generator=g).double()
    # Smooth-ish B and F so the local statistics are not all noise.
    b = torch.from_numpy(ndimage.uniform_filter(a.numpy() * 0.5 + 60, size=(1, 3, 3))).round()
    noise = torch.randint(-8, 9, shape, generator=g).double()
    f = ((a + b) / 2 + noise).round().clamp(0, 255)
    return f, a, b


def gaussian_window(size: int, sigma: float) -> np.ndarray:
    half = (size - 1) / 2
    y, x = np.mgrid[-half : half + 1, -half : half + 1]
    h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
    h[h < np.finfo(float).eps * h.max()] = 0
    return h / h.sum()


def vifp_reference(ref: np.ndarray, dist: np.ndarray, saturate: bool) -> float:
    """LIVE multiscale pixel VIF, following the algorithm description step by step."""
    num = den = 0.0
    for scale in range(1, 5):
        n = 2 ** (5 - scale) + 1
        win = gaussian_window(n, n / 5)
        if scale > 1:
            ref = signal.correlate2d(ref, win, mode="valid")[::2, ::2]
            dist = signal.correlate2d(dist, win, mode="valid")[::2, ::2]
        sat = (lambda p: np.minimum(p, 255)) if saturate and scale == 1 else (lambda p: p)
        mu1 = signal.correlate2d(ref, win, mode="valid")
        mu2 = signal.correlate2d(dist, win, mode="valid")
        s1 = signal.correlate2d(sat(ref * ref), win, mode="valid") - mu1 * mu1
        s2 = signal.correlate2d(sat(dist * dist), win, mode="valid") - mu2 * mu2
        s12 = signal.correlate2d(sat(ref * dist), win, mode="valid") - mu1 * mu2
        s1[s1 < 0] = 0
        s2[s2 < 0] = 0
        g = s12 / (s1 + 1e-10)
        sv = s2 - g * s12
        m = s1 < 1e-10
        g[m], sv[m], s1[m] = 0, s2[m], 0
        m = s2 < 1e-10
        g[m], sv[m] = 0, 0
        m = g < 0
        sv[m], g[m] = s2[m], 0
        sv[sv <= 1e-10] = 1e-10
        num += np.log10(1 + g * g * s1 / (sv + 2)).sum()
        den += np.log10(1 + s1 / 2).sum()
    return num / den


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("convention, saturate", [("python", False), ("matlab", True)])
def test_vif_matches_2d_window_reference(convention, saturate, engine):
    f, a, b = images(0, shape=(2, 64, 70))
    got = engine_metrics(engine, f, a, b, convention, ["VIF"])["VIF"]
    for i in range(2):
        fn, an, bn = (t[i].numpy() for t in (f, a, b))
        expected = vifp_reference(an, fn, saturate) + vifp_reference(bn, fn, saturate)
        assert got[i].item() == pytest.approx(expected, rel=1e-10)


def test_vif_saturation_changes_the_value_and_identity_gives_two():
    f, a, b = images(1)
    py = fusion_metrics(f, a, b, "python", ["VIF"])["VIF"].item()
    mat = fusion_metrics(f, a, b, "matlab", ["VIF"])["VIF"].item()
    assert abs(py - mat) > 0.05
    same = fusion_metrics(a, a, a, "python", ["VIF"])["VIF"].item()
    assert same == pytest.approx(2.0, rel=1e-9)  # VIFp(A, A) = 1 for each source


def ssim_python_reference(x: np.ndarray, y: np.ndarray) -> float:
    """scikit-image structural_similarity(x, y, data_range=2) on float32 images, written
    out with scipy.ndimage.uniform_filter as scikit-image does (float32 arithmetic)."""
    x, y = x.astype(np.float32), y.astype(np.float32)
    ux, uy = ndimage.uniform_filter(x, 7), ndimage.uniform_filter(y, 7)
    uxx, uyy = ndimage.uniform_filter(x * x, 7), ndimage.uniform_filter(y * y, 7)
    uxy = ndimage.uniform_filter(x * y, 7)
    cov = np.float32(49 / 48)
    vx, vy, vxy = cov * (uxx - ux * ux), cov * (uyy - uy * uy), cov * (uxy - ux * uy)
    c1, c2 = np.float32(0.02**2), np.float32(0.06**2)
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    return float(s[3:-3, 3:-3].mean(dtype=np.float64))


def ssim_wang_reference(x: np.ndarray, y: np.ndarray) -> float:
    win = gaussian_window(11, 1.5)
    mx, my = signal.correlate2d(x, win, "valid"), signal.correlate2d(y, win, "valid")
    vx = signal.correlate2d(x * x, win, "valid") - mx * mx
    vy = signal.correlate2d(y * y, win, "valid") - my * my
    cxy = signal.correlate2d(x * y, win, "valid") - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    return float(
        (((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))).mean()
    )


@pytest.mark.parametrize("engine", ENGINES)
def test_ssim_python_matches_float32_scikit_image_recipe(engine):
    f, a, b = images(2, shape=(2, 40, 57))
    got = engine_metrics(engine, f, a, b, "python", ["SSIM"])["SSIM"]
    for i in range(2):
        fn, an, bn = (t[i].numpy() for t in (f, a, b))
        expected = ssim_python_reference(fn, an) + ssim_python_reference(fn, bn)
        assert got[i].item() == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("engine", ENGINES)
def test_ssim_matlab_is_standard_wang_ssim(engine):
    f, a, b = images(3, shape=(2, 40, 57))
    got = engine_metrics(engine, f, a, b, "matlab", ["SSIM"])["SSIM"]
    rel = FLOAT32_RTOL if engine == "cpu" else 1e-12
    for i in range(2):
        fn, an, bn = (t[i].numpy() for t in (f, a, b))
        expected = ssim_wang_reference(fn, an) + ssim_wang_reference(fn, bn)
        assert got[i].item() == pytest.approx(expected, rel=rel)


def qabf_python_reference(f: np.ndarray, a: np.ndarray, b: np.ndarray, branch=True) -> float:
    h1 = np.array([[1, 2, 1], [0, 0, 0], [-1, -2, -1]], float)
    h3 = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]], float)

    def edges(x):
        sx, sy = signal.convolve2d(x, h3, mode="same"), signal.convolve2d(x, h1, mode="same")
        g = np.sqrt(sx * sx + sy * sy)
        ang = np.full_like(x, math.pi / 2)
        nz = sx != 0
        ang[nz] = np.arctan(sy[nz] / sx[nz])
        return g, ang

    gf, af = edges(f)
    num = den = 0.0
    for x in (a, b):
        g, ang = edges(x)
        rel = np.zeros_like(g)
        gt, eq, lt = g > gf, g == gf, g < gf
        rel[gt], rel[eq], rel[lt] = gf[gt] / g[gt], gf[eq] if branch else 1.0, g[lt] / gf[lt]
        rel_a = 1 - np.abs(ang - af) / (math.pi / 2)
        q = 0.9994 / (1 + np.exp(-15 * (rel - 0.5))) * 0.9879 / (1 + np.exp(-22 * (rel_a - 0.8)))
        num += (q * g).sum()
        den += g.sum()
    return num / den


@pytest.mark.parametrize("engine", ENGINES)
def test_qabf_python_matches_scipy_reference_including_equal_gradients(engine):
    f, a, b = images(4, shape=(1, 50, 61))
    f = f.clone()
    f[0, 10:30, 5:40] = (a[0, 10:30, 5:40] + 3).clamp(max=255)  # equal gradients inside
    fn, an, bn = (t[0].numpy() for t in (f, a, b))
    expected = qabf_python_reference(fn, an, bn)
    got = engine_metrics(engine, f, a, b, "python", ["Qabf"])["Qabf"].item()
    assert got == pytest.approx(expected, rel=FLOAT32_RTOL if engine == "cpu" else 1e-12)
    # Without the G = gF branch the value differs by far more than that.
    assert abs(got - qabf_python_reference(fn, an, bn, branch=False)) > 50 * FLOAT32_RTOL


def test_conv2_same_uses_matlab_summation_order_bit_for_bit():
    g = torch.Generator().manual_seed(5)
    x = torch.randint(0, 256, (1, 9, 11), generator=g).double() / 255
    h, w = x.shape[-2:]
    for kernel in (fusion_core.SOBEL_X, fusion_core.SOBEL_Y):
        expected = torch.zeros(h, w, dtype=torch.float64)
        for i in range(h):
            for j in range(w):
                acc = 0.0
                for q in range(3):  # kernel column-major: p varies fastest
                    for p in range(3):
                        r, c = i + 1 - p, j + 1 - q
                        value = x[0, r, c].item() if 0 <= r < h and 0 <= c < w else 0.0
                        acc = acc + kernel[p][q] * value
                expected[i, j] = acc
        assert torch.equal(fusion_core.conv2_same(x, kernel)[0], expected)


def test_sqrt_rn_is_correctly_rounded():
    # torch.sqrt on large float64 tensors may be an ulp off; numpy's is IEEE-exact.
    g = torch.Generator().manual_seed(11)
    x = torch.cat(
        [
            torch.rand(200_000, generator=g, dtype=torch.float64) * 7,
            (torch.randint(0, 2041, (200_000,), generator=g).double() / 255) ** 2,
            torch.tensor([0.0, 1.0, 2.0, 1e-300, 1e300], dtype=torch.float64),
        ]
    )
    expected = torch.from_numpy(np.sqrt(x.numpy()))
    assert torch.equal(fusion_core.sqrt_rn(x), expected)
    # The correction used on CUDA, run here: from torch.sqrt and from roots an ulp off.
    assert torch.equal(fusion_core._corrected_sqrt(x), expected)
    positive = x > 1e-300
    for direction in (0.0, math.inf):
        off = torch.nextafter(expected, torch.full_like(expected, direction))[positive]
        got = fusion_core._corrected_sqrt(x[positive], off)
        assert torch.equal(got, expected[positive])


def test_separable_sobel_equals_conv2_for_integer_images():
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 256, (2, 13, 17), generator=g).double()
    sx, sy = fusion_core.sobel_separable(x)
    assert torch.equal(sx, fusion_core.conv2_same(x, fusion_core.SOBEL_X))
    assert torch.equal(sy, fusion_core.conv2_same(x, fusion_core.SOBEL_Y))


def test_qabf_matlab_equality_branch_is_taken():
    # F = A + const on a block: on the 0-1 scale some gradients still compare equal, and
    # there Qabf uses G = gF (tiny) instead of 1, lowering the score against a version
    # without the branch.
    f, a, b = images(7, shape=(1, 50, 61))
    f = f.clone()
    f[0, 5:45, 5:55] = (a[0, 5:45, 5:55] + 2).clamp(max=255)
    fu, au, bu = f / 255, a / 255, b / 255
    with_branch = fusion_core.qabf(fu, au, bu, matlab_order=True).item()
    equal = torch.stack([fusion_core.conv2_same(x, fusion_core.SOBEL_X) for x in (fu, au)])
    assert (equal[0] == equal[1]).sum() > 100
    assert engine_metrics("torch", f, a, b, "matlab", ["Qabf"])["Qabf"].item() == with_branch
    # The CPU engine recomputes the bit-dependent pixels exactly; float32 elsewhere.
    cpu = engine_metrics("cpu", f, a, b, "matlab", ["Qabf"])["Qabf"].item()
    assert cpu == pytest.approx(with_branch, rel=FLOAT32_RTOL)
    assert 0 < with_branch < fusion_metrics(f, a, b, "python", ["Qabf"])["Qabf"].item()


def nabf_reference(f: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """Kumar's modified N_abf written per pixel (small images only)."""
    kv = np.array([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]]) / 8
    kh = np.array([[-1, -2, -1], [0, 0, 0], [1, 2, 1]]) / 8

    def edges(x):
        xp = np.pad(x, 1, mode="reflect")
        gv, gh = np.zeros_like(x), np.zeros_like(x)
        for i in range(x.shape[0]):
            for j in range(x.shape[1]):
                win = xp[i : i + 3, j : j + 3]
                gv[i, j], gh[i, j] = (win * kv).sum(), (win * kh).sum()
        g = np.sqrt(gh**2 + gv**2)
        with np.errstate(divide="ignore", invalid="ignore"):
            alpha = np.where((gv == 0) & (gh == 0), 0.0, np.arctan(gv / gh))
        return g, alpha

    gf, af = edges(f)
    terms, weights, gs = [], [], []
    for x in (a, b):
        g, al = edges(x)
        rel = np.zeros_like(g)
        ok = (g != 0) & (gf != 0)
        rel[ok] = np.minimum(g, gf)[ok] / np.maximum(g, gf)[ok]
        rel_a = np.abs(np.abs(al - af) - math.pi / 2) * 2 / math.pi
        qg = 0.9999 / (1 + np.exp(-19 * (rel - 0.5)))
        qa = 0.9995 / (1 + np.exp(-22 * (rel_a - 0.5)))
        w = np.where(g >= 2, g**1.5, 0.001)
        terms.append((1 - np.sqrt(qg * qa)) * w)
        weights.append(w)
        gs.append(g)
    na = (gf > gs[0]) & (gf > gs[1])
    return float((na * (terms[0] + terms[1])).sum() / (weights[0] + weights[1]).sum())


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("convention", ["python", "matlab"])
def test_nabf_matches_per_pixel_reference_and_is_bounded(convention, engine):
    f, a, b = images(8, shape=(1, 23, 29))
    fn, an, bn = (t[0].numpy() for t in (f, a, b))
    got = engine_metrics(engine, f, a, b, convention, ["Nabf"])["Nabf"].item()
    rel = FLOAT32_RTOL if engine == "cpu" else 1e-12
    assert got == pytest.approx(nabf_reference(fn, an, bn), rel=rel)
    assert 0 < got < 1
    # Adding artefacts (strong noise) increases Nabf; a source itself has none.
    g = torch.Generator().manual_seed(9)
    noisy = (f + torch.randint(-60, 61, f.shape, generator=g)).clamp(0, 255)
    assert fusion_metrics(noisy, a, b, convention, ["Nabf"])["Nabf"].item() > got
    assert fusion_metrics(b, a, b, convention, ["Nabf"])["Nabf"].item() == 0.0


@pytest.mark.parametrize("taps", [fusion_core.gaussian_taps(17, 3.4), [1.0] * 7, [0.25, 0.5, 0.25]])
def test_separable_filters_match_scipy_2d_correlation(taps):
    g = torch.Generator().manual_seed(10)
    maps = [torch.rand(2, 45, 38, generator=g, dtype=torch.float64) * 255 for _ in range(3)]
    win = np.outer(taps, taps)
    out = fusion_core.filter2_valid_maps(maps, taps) if len(taps) >= 5 else None
    for k, m in enumerate(maps):
        for i in range(2):
            expected = signal.correlate2d(m[i].numpy(), win, mode="valid")
            direct = fusion_core.filter2_valid(m[i : i + 1], taps)[0].numpy()
            np.testing.assert_allclose(direct, expected, rtol=1e-12, atol=1e-9)
            if out is not None:
                np.testing.assert_allclose(out[k, i].numpy(), expected, rtol=1e-12, atol=1e-9)
    strided = fusion_core.filter2_valid(maps[0], taps, stride=2)[1].numpy()
    np.testing.assert_allclose(
        strided,
        signal.correlate2d(maps[0][1].numpy(), win, mode="valid")[::2, ::2],
        rtol=1e-12,
        atol=1e-9,
    )
