"""Greyscale loading for the two fusion-metric conventions, from disk or from model outputs.

Both conventions turn an image into integer grey levels 0..255, but differently:

- ``"python"`` (CDDFuse evaluator): ``cv2.imread`` (always 3-channel BGR, 8-bit) ->
  float32 -> ``cv2.cvtColor(BGR2GRAY)`` (0.299 R + 0.587 G + 0.114 B in float32) ->
  ``np.round`` (half to even).
- ``"matlab"`` (Linfeng-Tang toolbox): ``imread``; a 3-channel image goes through MATLAB
  ``rgb2gray`` (0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B in double,
  stored as uint8, i.e. rounded half away from zero); a 1-channel image is used as is.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from e2emfd.data.io import check_not_truncated

CONVENTIONS = ("python", "matlab")

# MATLAB rgb2gray weights: the first row of inv([1 .956 .621; 1 -.272 -.647; 1 -1.106 1.703]).
_MATLAB_RGB = (0.298936021293775, 0.587043074451121, 0.114020904255103)
# OpenCV's float32 BGR2GRAY weights (R, G, B).
_CV_RGB = (0.299, 0.587, 0.114)


def check_convention(convention: str) -> str:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; expected one of {CONVENTIONS}")
    return convention


def _matlab_rgb2gray(r: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """MATLAB ``rgb2gray`` of uint8 channels given as float64 tensors: weighted sum in
    double, rounded half away from zero (all values are >= 0) and clipped to 0..255."""
    wr, wg, wb = _MATLAB_RGB
    return torch.floor(wr * r + wg * g + wb * b + 0.5).clamp_(0, 255)


def _opencv_rgb2gray(r: Tensor, g: Tensor, b: Tensor) -> Tensor:
    """OpenCV float32 ``cvtColor(BGR2GRAY)`` followed by ``np.round`` (half to even).

    OpenCV's vector path computes fma(r, wr, fma(b, wb, g * wg)) in float32; each step is
    emulated in float64 (products of float32 values are exact there) and rounded to
    float32. This matched OpenCV 5.0 on all 2^24 colours of a contiguous image; OpenCV's
    scalar tail uses another order, so a few pixels at row ends of strided images can differ
    by one grey level after rounding.
    """
    wr, wg, wb = (torch.tensor(w, dtype=torch.float32).item() for w in _CV_RGB)

    def f32(x: Tensor) -> Tensor:
        return x.float().double()

    y = f32(g * wg)
    y = f32(b * wb + y)
    y = f32(r * wr + y)
    return torch.round(y)


def _imread(path: Path, flags: int) -> np.ndarray:
    import cv2

    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    check_not_truncated(path)
    img = cv2.imread(str(path), flags)
    if img is None:
        raise ValueError(f"{path}: cannot be read as an image")
    return img


def load_grey(path: str | Path, convention: str) -> Tensor:
    """Load an image as the convention's greyscale grey levels.

    Args:
        path: image file (any format OpenCV reads).
        convention: ``"python"`` or ``"matlab"`` (see the module docstring).
    Returns:
        ``(H, W)`` float64 tensor of integer grey levels 0..255 (CPU).

    16-bit files: ``"python"`` takes what ``cv2.imread`` returns, which scales them to 8
    bits. ``"matlab"`` converts them like MATLAB ``im2uint8`` (round(x / 257)); the toolbox
    itself cannot evaluate 16-bit images (its joint histogram has 256 bins). An alpha
    channel is ignored in both conventions.
    """
    import cv2

    path = Path(path)
    check_convention(convention)
    if convention == "python":
        bgr = _imread(path, cv2.IMREAD_COLOR).astype(np.float32)
        grey = np.round(cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY))
        return torch.from_numpy(grey.astype(np.float64))

    img = _imread(path, cv2.IMREAD_UNCHANGED)
    if img.dtype == np.uint16:
        img = np.floor(img.astype(np.float64) / 257.0 + 0.5)
    elif img.dtype == np.uint8:
        img = img.astype(np.float64)
    else:
        raise ValueError(f"{path}: unsupported pixel type {img.dtype} (expected 8 or 16 bit)")
    if img.ndim == 3 and img.shape[2] in (3, 4):
        b, g, r = (torch.from_numpy(np.ascontiguousarray(img[:, :, i])) for i in range(3))
        return _matlab_rgb2gray(r, g, b)
    if img.ndim == 3:
        img = img[:, :, 0]  # 1 channel, or grey + alpha
    return torch.from_numpy(np.ascontiguousarray(img))


def to_grey_levels(img01: Tensor, convention: str) -> Tensor:
    """Convert model outputs in [0, 1] to the convention's grey levels without the disk.

    The image is quantised the way saving an 8-bit PNG with ``torchvision.utils.save_image``
    does (x * 255 + 0.5, clamped to 0..255, truncated, in float32); a 1-channel image then
    is its own grey level, and an RGB image is converted as :func:`load_grey` would after
    reading that PNG back.

    Args:
        img01: ``(B, 1, H, W)`` greyscale or ``(B, 3, H, W)`` RGB, float, any device.
        convention: ``"python"`` or ``"matlab"``.
    Returns:
        ``(B, H, W)`` float64 integer grey levels 0..255 on the input's device.
    """
    check_convention(convention)
    if img01.dim() != 4 or img01.shape[1] not in (1, 3):
        raise ValueError(f"expected (B, 1, H, W) or (B, 3, H, W), got {tuple(img01.shape)}")
    if not img01.is_floating_point():
        raise ValueError(f"expected a float tensor in [0, 1], got {img01.dtype}")
    q = (img01.float() * 255 + 0.5).clamp_(0, 255).floor_().double()
    if q.shape[1] == 1:
        return q[:, 0]
    r, g, b = q[:, 0], q[:, 1], q[:, 2]
    if convention == "python":
        return _opencv_rgb2gray(r, g, b)
    return _matlab_rgb2gray(r, g, b)
