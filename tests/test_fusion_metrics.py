"""Fusion metrics: API behaviour, properties, and the simple metrics against independent
numpy/scipy formulas (the windowed metrics are in test_fusion_metrics_windowed.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from e2emfd.metrics.fusion import (
    METRIC_NAMES,
    fusion_metrics,
    metric_definition,
    resolve_metric_names,
)

CONVENTIONS = ("python", "matlab")


def images(seed: int, shape=(2, 48, 53), levels=256) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    a = torch.randint(0, levels, shape, generator=g).double()
    b = torch.randint(0, levels, shape, generator=g).double()
    noise = torch.randint(-20, 21, shape, generator=g).double()
    f = ((a + b) / 2 + noise).round().clamp(0, 255)
    return f, a, b


def test_all_metrics_in_order_and_per_image_shape():
    f, a, b = images(0)
    for convention in CONVENTIONS:
        out = fusion_metrics(f, a, b, convention=convention)
        assert list(out) == list(METRIC_NAMES)
        for name, value in out.items():
            assert value.shape == (2,) and value.dtype == torch.float64, name
            assert torch.isfinite(value).all(), name


def test_unbatched_input_gives_scalars_equal_to_batched():
    f, a, b = images(1)
    for convention in CONVENTIONS:
        batched = fusion_metrics(f, a, b, convention=convention)
        single = fusion_metrics(f[1], a[1], b[1], convention=convention)
        for name in METRIC_NAMES:
            assert single[name].dim() == 0
            torch.testing.assert_close(single[name], batched[name][1], rtol=1e-12, atol=0)


def test_input_dtype_does_not_matter():
    f, a, b = images(2)
    for convention in CONVENTIONS:
        ref = fusion_metrics(f, a, b, convention=convention)
        for dtype in (torch.float32, torch.uint8, torch.int64):
            got = fusion_metrics(f.to(dtype), a.to(dtype), b.to(dtype), convention=convention)
            for name in METRIC_NAMES:
                torch.testing.assert_close(got[name], ref[name], rtol=0, atol=0)


def test_metric_selection_is_case_insensitive_and_ordered():
    assert resolve_metric_names("mi, en,qabf") == ["MI", "EN", "Qabf"]
    assert resolve_metric_names(["VIF", "vif"]) == ["VIF"]
    f, a, b = images(3)
    out = fusion_metrics(f, a, b, metrics=["ssim", "EN"])
    assert list(out) == ["SSIM", "EN"]
    assert "bits" in metric_definition("MI", "matlab")
    assert "nats" in metric_definition("MI", "python")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"convention": "octave"}, "unknown convention"),
        ({"metrics": ["EN", "FMI"]}, "unknown metric 'FMI'"),
        ({"metrics": []}, "no metric"),
    ],
)
def test_bad_arguments_raise_one_line_errors(kwargs, message):
    f, a, b = images(4)
    with pytest.raises(ValueError, match=message):
        fusion_metrics(f, a, b, **kwargs)


def test_bad_images_raise_one_line_errors():
    f, a, b = images(5)
    with pytest.raises(ValueError, match="same shape"):
        fusion_metrics(f, a[:, :-1], b)
    with pytest.raises(ValueError, match="0..255"):
        fusion_metrics(f * 2, a, b)
    with pytest.raises(ValueError, match="0..255"):
        fusion_metrics(f.clone().fill_(float("nan")), a, b)
    with pytest.raises(ValueError, match=r"\(H, W\) or \(B, H, W\)"):
        fusion_metrics(f[None], a[None], b[None])
    small = torch.zeros(30, 30)
    with pytest.raises(ValueError, match="VIF needs images of at least 41x41"):
        fusion_metrics(small, small, small, metrics=["VIF"])
    # Metrics without a window work on small images.
    assert fusion_metrics(small, small, small, metrics=["EN"])["EN"].item() == 0.0


# Metrics the CPU engine evaluates partly in float32 (about 1e-7 relative).
FLOAT32 = {("python", "Qabf"), ("python", "Nabf"), ("matlab", "Qabf"), ("matlab", "Nabf")}
FLOAT32 |= {("matlab", "SSIM")}


@pytest.mark.parametrize("convention", CONVENTIONS)
def test_all_metrics_symmetric_in_the_sources(convention):
    f, a, b = images(6)
    ab = fusion_metrics(f, a, b, convention=convention)
    ba = fusion_metrics(f, b, a, convention=convention)
    for name in METRIC_NAMES:
        rtol = 1e-6 if (convention, name) in FLOAT32 else 1e-12
        torch.testing.assert_close(ab[name], ba[name], rtol=rtol, atol=1e-15)


def test_entropy_matches_scipy_and_constant_image_has_none():
    f, a, b = images(7, shape=(1, 40, 50))
    counts = np.bincount(f[0].numpy().astype(np.int64).ravel(), minlength=256)
    expected = stats.entropy(counts, base=2)
    for convention in CONVENTIONS:
        en = fusion_metrics(f, a, b, convention=convention, metrics=["EN"])["EN"].item()
        assert en == pytest.approx(expected, rel=1e-13)
        const = torch.full((40, 50), 77.0)
        assert fusion_metrics(const, a[0], b[0], convention, ["EN"])["EN"].item() == 0.0
    # Two equally frequent grey levels: exactly one bit.
    half = torch.cat([torch.zeros(20, 50), torch.full((20, 50), 255.0)])
    assert fusion_metrics(half, half, half, metrics=["EN"])["EN"].item() == pytest.approx(1.0)


def _mutual_information(x: np.ndarray, y: np.ndarray) -> float:
    """sum p(x,y) ln(p(x,y) / (p(x) p(y))) over the non-empty cells, in nats."""
    joint, _, _ = np.histogram2d(x.ravel(), y.ravel(), bins=256, range=[[0, 256], [0, 256]])
    p = joint / joint.sum()
    px, py = p.sum(axis=1, keepdims=True), p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log(p[nz] / (px @ py)[nz])).sum())


def _entropy(x: np.ndarray, base: float) -> float:
    return float(stats.entropy(np.bincount(x.astype(np.int64).ravel(), minlength=256), base=base))


def test_python_mi_is_exact_contingency_mi_in_nats():
    f, a, b = images(8, shape=(1, 40, 45))
    fn, an, bn = (t[0].numpy() for t in (f, a, b))
    expected = _mutual_information(fn, an) + _mutual_information(fn, bn)
    got = fusion_metrics(f, a, b, "python", ["MI"])["MI"].item()
    assert got == pytest.approx(expected, rel=1e-12)
    # F = A: MI(A, A) + MI(A, B) = H(A) + MI(A, B).
    same = fusion_metrics(a, a, b, "python", ["MI"])["MI"].item()
    assert same == pytest.approx(_entropy(an, math.e) + _mutual_information(an, bn), rel=1e-12)


def test_matlab_mi_is_bits_with_254_255_sharing_a_joint_bin():
    g = torch.Generator().manual_seed(9)
    # Many 254s and 255s, so the saturated joint histogram matters.
    a = torch.randint(250, 256, (1, 30, 40), generator=g).double()
    b = torch.randint(0, 256, (1, 30, 40), generator=g).double()
    f = torch.randint(252, 256, (1, 30, 40), generator=g).double()
    fn, an, bn = (t[0].numpy() for t in (f, a, b))

    def mi_bits(x, y):
        joint_entropy = stats.entropy(
            np.histogram2d(
                np.minimum(y, 254).ravel(),
                np.minimum(x, 254).ravel(),
                bins=256,
                range=[[0, 256], [0, 256]],
            )[0].ravel(),
            base=2,
        )
        return _entropy(x, 2) + _entropy(y, 2) - joint_entropy

    got = fusion_metrics(f, a, b, "matlab", ["MI"])["MI"].item()
    assert got == pytest.approx(mi_bits(an, fn) + mi_bits(bn, fn), rel=1e-12)
    textbook = (_mutual_information(fn, an) + _mutual_information(fn, bn)) / math.log(2)
    assert got > textbook + 0.01  # the quirk inflates MI when 255 occurs
    # Without 255 in the images the quirk vanishes: MI(bits) = MI(nats) / ln 2.
    f2, a2, b2 = (t.clamp(max=254) for t in (f, a, b))
    bits = fusion_metrics(f2, a2, b2, "matlab", ["MI"])["MI"].item()
    nats = fusion_metrics(f2, a2, b2, "python", ["MI"])["MI"].item()
    assert bits == pytest.approx(nats / math.log(2), rel=1e-12)


def test_matlab_sd_reproduces_uint8_arithmetic_by_hand():
    # mu = 15: d = F - mu as uint8 -> [0, 0, 5, 15]; d^2 -> [0, 0, 25, 225].
    f = torch.tensor([[0.0, 10.0], [20.0, 30.0]])
    sd = fusion_metrics(f, f, f, "matlab", ["SD"])["SD"].item()
    assert sd == pytest.approx(math.sqrt(250 / 4))
    # mu = 50: d = [0, 50], d^2 saturates at 255.
    f = torch.tensor([[0.0, 100.0]])
    assert fusion_metrics(f, f, f, "matlab", ["SD"])["SD"].item() == pytest.approx(
        math.sqrt(255 / 2)
    )
    # Rounding half away from zero: mu = 0.5, d = 0.5 -> 1.
    f = torch.tensor([[0.0, 1.0]])
    assert fusion_metrics(f, f, f, "matlab", ["SD"])["SD"].item() == pytest.approx(math.sqrt(1 / 2))
    # The python convention is the ordinary population SD.
    f, a, b = images(10)
    sd = fusion_metrics(f, a, b, "python", ["SD"])["SD"]
    expected = [np.std(x.numpy()) for x in f]
    torch.testing.assert_close(sd, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_sf_ag_against_numpy():
    f, a, b = images(11, shape=(1, 37, 52))
    x = f[0].numpy()
    sf = math.sqrt(np.mean(np.diff(x, axis=0) ** 2) + np.mean(np.diff(x, axis=1) ** 2))
    gy, gx = np.gradient(x)  # central differences inside, one-sided at the borders
    ag_sum = np.sqrt((gx**2 + gy**2) / 2).sum()
    py = fusion_metrics(f, a, b, "python", ["SF", "AG"])
    mat = fusion_metrics(f, a, b, "matlab", ["SF", "AG"])
    assert py["SF"].item() == pytest.approx(sf, rel=1e-12)
    assert mat["SF"].item() == pytest.approx(sf / 255, rel=1e-12)
    assert py["AG"].item() == pytest.approx(ag_sum / x.size, rel=1e-12)
    assert mat["AG"].item() == pytest.approx(ag_sum / (36 * 51), rel=1e-12)


def test_cc_scd_mse_psnr_against_numpy():
    f, a, b = images(12, shape=(1, 33, 41))
    fn, an, bn = (t[0].numpy().ravel() for t in (f, a, b))

    def r(x, y):
        return np.corrcoef(x, y)[0, 1]

    cc = (r(an, fn) + r(bn, fn)) / 2
    scd = r(fn - bn, an) + r(fn - an, bn)
    mse = (np.mean((fn - an) ** 2) + np.mean((fn - bn) ** 2)) / 2
    for convention, mse_scale in (("python", 1.0), ("matlab", 255.0**-2)):
        out = fusion_metrics(f, a, b, convention, ["CC", "SCD", "MSE", "PSNR"])
        assert out["CC"].item() == pytest.approx(cc, rel=1e-12)
        assert out["SCD"].item() == pytest.approx(scd, rel=1e-12)
        assert out["MSE"].item() == pytest.approx(mse * mse_scale, rel=1e-12)
    psnr_py = 10 * math.log10(fn.max() ** 2 / mse)
    psnr_mat = 20 * math.log10(255 / math.sqrt(mse / 255**2))
    assert fusion_metrics(f, a, b, "python", ["PSNR"])["PSNR"].item() == pytest.approx(psnr_py)
    assert fusion_metrics(f, a, b, "matlab", ["PSNR"])["PSNR"].item() == pytest.approx(psnr_mat)
    # The MATLAB PSNR is the ordinary 255-peak PSNR plus 20 log10(255).
    ordinary = 10 * math.log10(255**2 / mse)
    assert psnr_mat - ordinary == pytest.approx(20 * math.log10(255))


def test_fused_equal_to_a_source():
    f, a, b = images(13)
    for convention in CONVENTIONS:
        out = fusion_metrics(a, a, b, convention, ["CC", "SSIM", "Nabf"])
        ca = fusion_metrics(a, a, a, convention, ["SSIM", "MSE"])
        assert (out["Nabf"] == 0).all()  # nothing stronger than both sources
        torch.testing.assert_close(ca["SSIM"], torch.full((2,), 2.0, dtype=torch.float64))
        assert (ca["MSE"] == 0).all()
        assert (out["CC"] > 0.5).all()
