"""The CPU engine (numpy, tiled, shared work) against the torch implementation, which the
other tests check against independent references: same values on images with flat
regions, saturated grey levels, odd sizes and many small tiles; fallback and errors."""

from __future__ import annotations

import pytest
import torch

from e2emfd.metrics.fusion import METRIC_NAMES, _fusion_metrics
from e2emfd.metrics.fusion.cpu_engine import filters as fusion_cpu_filters

# Relative tolerance per metric: float64 metrics agree to rounding (VIF: rounding can flip
# a LIVE guard on a pixel, about 1e-10); float32 ones to about 1e-7, the MATLAB SSIM to
# 1e-6 (up to 1e-5 on large flat areas, where float32 variances are off by about 1e-3).
RTOL = {name: 1e-11 for name in METRIC_NAMES} | {"VIF": 1e-8, "Qabf": 1e-6, "Nabf": 1e-6}


def rtol(convention: str, name: str) -> float:
    return 2e-5 if (convention, name) == ("matlab", "SSIM") else RTOL[name]


def scene(seed: int, shape: tuple[int, int, int]) -> tuple[torch.Tensor, ...]:
    """Sources with texture, a flat block and saturated pixels; the fused image mixes them,
    copies a block of A with an offset (equal gradients) and adds noise."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    a = torch.randint(0, 256, shape, generator=g).double()
    b = (torch.rand(shape, generator=g) * 80 + torch.linspace(0, 170, w)).round()
    a[:, : h // 3, : w // 3] = 37.0  # flat
    b[:, h // 2 :, : w // 4] = 255.0  # saturated
    f = ((a + b) / 2 + torch.randint(-9, 10, shape, generator=g)).round().clamp(0, 255)
    f[:, h // 2 : h // 2 + 9, w // 2 : w // 2 + 11] = (
        a[:, h // 2 : h // 2 + 9, w // 2 : w // 2 + 11] + 3
    ).clamp(max=255)
    f[:, -5:, -7:] = 255.0
    return f, a, b


def compare(f, a, b, convention, names=None):
    ref = _fusion_metrics(f, a, b, convention, names, engine="torch")
    got = _fusion_metrics(f, a, b, convention, names, engine="cpu")
    assert list(got) == list(ref)
    for name, value in got.items():
        assert value.dtype == torch.float64 and value.shape == ref[name].shape
        torch.testing.assert_close(
            value, ref[name], rtol=rtol(convention, name), atol=1e-14, equal_nan=True
        )
    return got


@pytest.mark.parametrize("convention", ["python", "matlab"])
@pytest.mark.parametrize("shape", [(2, 57, 64), (1, 41, 45), (1, 70, 43)])
def test_cpu_engine_matches_torch_implementation(convention, shape):
    compare(*scene(1, shape), convention)


@pytest.mark.parametrize("convention", ["python", "matlab"])
def test_many_small_tiles_give_the_same_values(convention, monkeypatch):
    f, a, b = scene(2, (1, 61, 67))
    whole = _fusion_metrics(f, a, b, convention, None, engine="cpu")
    monkeypatch.setattr(fusion_cpu_filters, "TILE_PIXELS", 150)  # 2-4 rows per tile
    tiled = compare(f, a, b, convention)
    for name in METRIC_NAMES:
        torch.testing.assert_close(tiled[name], whole[name], rtol=rtol(convention, name), atol=0)


@pytest.mark.parametrize("convention", ["python", "matlab"])
def test_small_images_without_windowed_metrics(convention):
    f, a, b = scene(3, (2, 5, 6))
    names = ["EN", "SD", "SF", "AG", "MI", "SCD", "CC", "Qabf", "Nabf", "PSNR", "MSE"]
    compare(f, a, b, convention, names)
    compare(f[:, :2, :2], a[:, :2, :2], b[:, :2, :2], convention, names)


def test_degenerate_images_give_the_same_values():
    flat = torch.full((1, 45, 48), 200.0)
    f, a, b = scene(4, (1, 45, 48))
    for images in ((f, flat, flat), (flat, a, b)):  # constant sources / constant F
        compare(*images, "python")
        # Correlations with a constant image are 0 / 0: NaN in exact arithmetic; the torch
        # implementation's MATLAB convention may leave residues of about 1e-16 of 0-1
        # values instead.
        names = [n for n in METRIC_NAMES if n not in ("CC", "SCD")]
        compare(*images, "matlab", names)
        cpu = _fusion_metrics(*images, "matlab", ["CC", "SCD"], engine="cpu")
        ref = _fusion_metrics(*images, "matlab", ["CC", "SCD"], engine="torch")
        for name in ("CC", "SCD"):
            same = torch.isclose(cpu[name], ref[name], rtol=1e-11, atol=0, equal_nan=True)
            assert (same | (cpu[name].isnan() & (ref[name].abs() < 1e-12))).all()


def test_non_integer_images_use_the_torch_implementation():
    f, a, b = scene(5, (1, 48, 50))
    f = f * 0.999  # in range, not integers
    auto = _fusion_metrics(f, a, b, "python", None, engine="auto")
    ref = _fusion_metrics(f, a, b, "python", None, engine="torch")
    for name in METRIC_NAMES:
        assert torch.equal(auto[name], ref[name])
    with pytest.raises(ValueError, match="integer grey levels"):
        _fusion_metrics(f, a, b, "python", ["EN"], engine="cpu")


def test_window_size_errors_match():
    f, a, b = scene(6, (1, 30, 40))
    for engine in ("torch", "cpu"):
        with pytest.raises(ValueError, match="VIF needs images of at least 41x41"):
            _fusion_metrics(f, a, b, "python", ["VIF"], engine=engine)
        with pytest.raises(ValueError, match="SSIM needs images of at least 7x7"):
            _fusion_metrics(f[:, :6], a[:, :6], b[:, :6], "python", ["SSIM"], engine=engine)
