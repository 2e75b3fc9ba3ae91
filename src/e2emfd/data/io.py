"""Reading images as they come in the wild.

Infrared images arrive as 1- or 3-channel files, 8- or 16-bit, PNG, TIFF or JPEG; visible
images in colour or greyscale. :func:`read_image` turns any of them into a float32 array
in [0, 1] with the channel count the model wants, and reports a broken file in one line
that names it.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# OpenCV's BGR -> grey weights (ITU-R BT.601), the convention of the field's tools.
_GREY_WEIGHTS_BGR = np.array([0.114, 0.587, 0.299], dtype=np.float32)


class ImageReadError(ValueError):
    """An image file exists but cannot be decoded (unreadable, truncated, odd format)."""


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _looks_truncated(path: Path, data: bytes) -> bool:
    """JPEG and PNG carry an end marker; a missing one means the file was cut short.

    OpenCV decodes a truncated JPEG silently (grey bottom rows), so check ourselves.
    """
    suffix = path.suffix.lower()
    tail = data[-64:]
    if suffix in (".jpg", ".jpeg"):
        return b"\xff\xd9" not in tail
    if suffix == ".png":
        return b"IEND" not in tail
    return False


def check_not_truncated(path: str | Path) -> None:
    """Raise :class:`ImageReadError` for a JPEG or PNG file cut short, reading only its
    last bytes: for callers that decode with ``cv2.imread``, which accepts such a file
    with a line on stderr (the fusion metrics, whose readers must match the references)."""
    path = Path(path)
    with open(path, "rb") as fh:
        size = fh.seek(0, 2)
        fh.seek(max(0, size - 64))
        tail = fh.read()
    if size and _looks_truncated(path, tail):
        raise ImageReadError(f"{path}: truncated image (no end-of-image marker)")


def decode_image(path: str | Path) -> np.ndarray:
    """Decode a file as stored: (H, W) or (H, W, C) in BGR(A) order, uint8/uint16/float."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such image file")
    data = path.read_bytes()
    if not data:
        raise ImageReadError(f"{path}: empty file")
    if _looks_truncated(path, data):
        raise ImageReadError(f"{path}: truncated image (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if image is None or image.size == 0:
        raise ImageReadError(f"{path}: cannot decode image (unreadable or unsupported format)")
    return image


def _to_unit_float(image: np.ndarray, path: str | Path) -> np.ndarray:
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        # Raw thermal counts occupy a narrow band of the 16-bit range; stretching each image
        # to [0, 1] is what thermal viewers do and keeps the contrast the model needs.
        lo, hi = float(image.min()), float(image.max())
        return ((image.astype(np.float32) - lo) / max(hi - lo, 1.0)).astype(np.float32)
    if np.issubdtype(image.dtype, np.floating):
        hi = float(np.nanmax(image)) if image.size else 1.0
        scaled = image / 255.0 if hi > 1.0 else image
        return np.clip(np.nan_to_num(scaled), 0.0, 1.0).astype(np.float32)
    raise ImageReadError(f"{path}: unsupported pixel type {image.dtype}")


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """Read an image as float32 in [0, 1], shape (H, W, 3) RGB if ``channels == 3`` or
    (H, W) greyscale if ``channels == 1``, whatever the file stores."""
    path = Path(path)
    return convert_image(decode_image(path), channels, path)


def convert_image(image: np.ndarray, channels: int, source: str | Path) -> np.ndarray:
    """A decoded image (as :func:`decode_image` or a video decoder gives it: BGR(A) or
    grey, any depth) as :func:`read_image` returns it; ``source`` names it in errors."""
    image = _to_unit_float(image, source)
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] != 3:
        raise ImageReadError(f"{source}: unsupported channel count {image.shape[2]}")
    if channels == 1:
        if image.ndim == 3:
            image = image @ _GREY_WEIGHTS_BGR
        return np.ascontiguousarray(image, dtype=np.float32)
    if channels == 3:
        if image.ndim == 2:
            return np.repeat(image[:, :, None], 3, axis=2)
        return np.ascontiguousarray(image[:, :, ::-1])
    raise ValueError(f"channels must be 1 or 3, got {channels}")


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write an (H, W) greyscale or (H, W, 3) RGB image, float [0, 1] or uint8, as 8-bit PNG.

    Written to a temporary name and renamed, so an interrupted run leaves no half file.
    """
    path = Path(path)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(np.asarray(image, dtype=np.float32) * 255.0), 0, 255)
        image = image.astype(np.uint8)
    if image.ndim == 3:
        image = np.ascontiguousarray(image[:, :, ::-1])
    ok, buffer = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise ImageReadError(f"{path}: could not encode PNG")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buffer.tobytes())
    tmp.replace(path)
