"""Batching pairs of different sizes: pad to a common size that is a multiple of 32."""

from __future__ import annotations

import math
from functools import partial

import torch


def pad_to_multiple(images: list[torch.Tensor], divisor: int = 32) -> torch.Tensor:
    """Stack (C, H_i, W_i) tensors into (B, C, H, W) zero-padded at the bottom/right,
    H and W the largest sizes rounded up to ``divisor``."""
    height = max(img.shape[-2] for img in images)
    width = max(img.shape[-1] for img in images)
    height = int(math.ceil(height / divisor) * divisor)
    width = int(math.ceil(width / divisor) * divisor)
    batch = images[0].new_zeros((len(images), images[0].shape[0], height, width))
    for i, img in enumerate(images):
        batch[i, :, : img.shape[-2], : img.shape[-1]].copy_(img)
    return batch


def collate_pairs(samples: list[dict], size_divisor: int = 32) -> dict:
    """Batch sample dicts. Returns ``vis`` (B, 3, H, W), ``ir`` (B, 1, H, W), ``image_sizes``
    (B, 2) [h, w] of each image before padding, ``targets`` (per image ``boxes``,
    ``labels``, ``difficult``, and ``seed`` when the sampler gave one), and per-image
    ``image_ids``, ``orig_sizes`` (B, 2),
    ``scales`` (B, 2) [sx, sy], ``vis_paths``, ``ir_paths``."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    return {
        "vis": pad_to_multiple([s["vis"] for s in samples], size_divisor),
        "ir": pad_to_multiple([s["ir"] for s in samples], size_divisor),
        "image_sizes": torch.tensor([list(s["vis"].shape[-2:]) for s in samples]),
        "targets": [
            {"boxes": s["boxes"], "labels": s["labels"], "difficult": s["difficult"]}
            | ({"seed": s["seed"]} if s.get("seed") is not None else {})
            for s in samples
        ],
        "image_ids": [s["image_id"] for s in samples],
        "orig_sizes": torch.stack([s["orig_size"] for s in samples]),
        "scales": torch.stack([s["scale"] for s in samples]),
        "vis_paths": [s["vis_path"] for s in samples],
        "ir_paths": [s["ir_path"] for s in samples],
    }


def make_collate(size_divisor: int = 32):
    return partial(collate_pairs, size_divisor=size_divisor)
