"""Drawing detections and assembling image grids (for ``e2emfd detect`` and the report)."""

from __future__ import annotations

import cv2
import numpy as np

# A fixed palette (RGB), one colour per class index, readable on dark and bright images.
PALETTE = [
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
]


def to_uint8_rgb(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) or (H, W, 3) float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image)


def draw_boxes(
    image: np.ndarray,
    boxes: np.ndarray,
    labels: np.ndarray,
    class_names: list[str],
    scores: np.ndarray | None = None,
    thickness: int = 1,
) -> np.ndarray:
    """Draw boxes (xyxy, or rotated (cx, cy, w, h, angle) as polygons) with ``class score``
    captions on a copy of an RGB image."""
    out = to_uint8_rgb(image).copy()
    scale = max(0.3, min(out.shape[:2]) / 700)
    for i, (box, label) in enumerate(zip(np.asarray(boxes), np.asarray(labels))):
        color = PALETTE[int(label) % len(PALETTE)]
        if len(box) == 5:  # rotated (cx, cy, w, h, angle): draw the polygon
            import torch

            from e2emfd.ops.rotated import obb_to_poly

            poly = obb_to_poly(torch.as_tensor(np.asarray(box, np.float64))[None])[0].view(4, 2)
            points = np.rint(poly.numpy()).astype(np.int32)
            cv2.polylines(out, [points], True, color, thickness)
            x1, y1 = int(points[:, 0].min()), int(points[:, 1].min())
        else:
            x1, y1, x2, y2 = (int(round(float(v))) for v in box)
            cv2.rectangle(out, (x1, y1), (x2, y2), color, thickness)
        name = class_names[int(label)] if int(label) < len(class_names) else str(int(label))
        text = name if scores is None else f"{name} {float(scores[i]):.2f}"
        (tw, th), base = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        top = max(y1 - th - base - 1, 0)
        cv2.rectangle(out, (x1, top), (x1 + tw + 2, top + th + base + 1), color, -1)
        cv2.putText(
            out,
            text,
            (x1 + 1, top + th),
            cv2.FONT_HERSHEY_SIMPLEX,
            scale,
            (0, 0, 0),
            1,
            cv2.LINE_AA,
        )
    return out


def hstack_with_gap(images: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Side-by-side RGB uint8 images of one height, separated by white gaps."""
    height = max(img.shape[0] for img in images)
    parts = []
    for i, img in enumerate(images):
        img = to_uint8_rgb(img)
        if img.shape[0] < height:
            img = np.pad(img, ((0, height - img.shape[0]), (0, 0), (0, 0)), constant_values=255)
        parts.append(img)
        if i < len(images) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)
