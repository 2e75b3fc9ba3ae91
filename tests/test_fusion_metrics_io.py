"""Greyscale loading in both conventions, from files and from model outputs."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from torchvision.utils import save_image

from e2emfd.metrics.fusion import load_grey, to_grey_levels

MATLAB_RGB = (0.298936021293775, 0.587043074451121, 0.114020904255103)


def rgb_image(seed: int, h=31, w=45) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_matlab_loading_uses_rgb2gray_rounding(tmp_path):
    rgb = rgb_image(0)
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])  # OpenCV writes BGR
    expected = np.floor(rgb.astype(float) @ np.array(MATLAB_RGB) + 0.5)
    got = load_grey(path, "matlab")
    assert got.dtype == torch.float64 and got.shape == (31, 45)
    np.testing.assert_array_equal(got.numpy(), expected)


def test_python_loading_is_rounded_opencv_gray(tmp_path):
    rgb = rgb_image(1)
    path = tmp_path / "c.png"
    cv2.imwrite(str(path), rgb[:, :, ::-1])
    got = load_grey(path, "python").numpy()
    exact = rgb.astype(float) @ np.array([0.299, 0.587, 0.114])
    # float32 arithmetic and half-to-even rounding: within one level of the exact value.
    assert np.abs(got - exact).max() <= 0.5 + 1e-4
    assert np.array_equal(got, np.round(got))


def test_grey_files_load_identically_in_both_conventions(tmp_path):
    grey = rgb_image(2)[:, :, 0]
    for name, data in (("g.png", grey), ("rgb_equal.png", np.dstack([grey] * 3))):
        cv2.imwrite(str(tmp_path / name), data)
        for convention in ("python", "matlab"):
            np.testing.assert_array_equal(load_grey(tmp_path / name, convention).numpy(), grey)


def test_sixteen_bit_files(tmp_path):
    x = np.arange(0, 65536, 16, dtype=np.uint16).reshape(64, 64)
    path = tmp_path / "deep.png"
    cv2.imwrite(str(path), x)
    np.testing.assert_array_equal(load_grey(path, "matlab").numpy(), np.round(x / 257.0))
    np.testing.assert_array_equal(load_grey(path, "python").numpy(), x >> 8)  # cv2.imread


def test_unreadable_files_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_grey(tmp_path / "nope.png", "python")
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not an image")
    for convention in ("python", "matlab"):
        with pytest.raises(ValueError, match="broken.png"):
            load_grey(bad, convention)
    with pytest.raises(ValueError, match="unknown convention"):
        load_grey(bad, "octave")


@pytest.mark.parametrize("convention", ["python", "matlab"])
def test_to_grey_levels_matches_saving_and_reloading(tmp_path, convention):
    g = torch.Generator().manual_seed(3)
    grey = torch.rand(2, 1, 24, 40, generator=g)
    colour = torch.rand(2, 3, 24, 40, generator=g)
    for name, batch in (("grey", grey), ("colour", colour)):
        got = to_grey_levels(batch, convention)
        assert got.shape == (2, 24, 40) and got.dtype == torch.float64
        for i in range(2):
            path = tmp_path / f"{name}{i}.png"
            save_image(batch[i], path)
            expected = load_grey(path, convention)
            diff = (got[i] - expected).abs()
            if name == "colour" and convention == "python":
                # OpenCV's scalar tail sums in another order: rare one-level differences.
                assert diff.max() <= 1 and (diff > 0).float().mean() < 1e-2
            else:
                assert torch.equal(got[i], expected)


def test_to_grey_levels_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\) or \(B, 3, H, W\)"):
        to_grey_levels(torch.rand(1, 2, 8, 8), "python")
    with pytest.raises(ValueError, match="float"):
        to_grey_levels(torch.zeros(1, 1, 8, 8, dtype=torch.uint8), "matlab")
    # Out-of-range values are clipped like an 8-bit PNG writer would.
    levels = to_grey_levels(torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.5]).view(1, 1, 1, 5), "python")
    assert levels.flatten().tolist() == [0.0, 0.0, 128.0, 255.0, 255.0]
