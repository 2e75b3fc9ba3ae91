"""Augmentations applied identically to both modalities and to the boxes.

Each transform maps a sample dict (see :mod:`e2emfd.data.datasets`) to a new one and
keeps ``scale`` up to date, so predictions can be mapped back to the files' pixels.
Random transforms draw from the ``generator`` they are given (the training sampler seeds
one per sample, so augmentations do not depend on workers, batch layout or resuming), or
from torch's global generator when none is given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from e2emfd.boxes import BoxCodec, box_codec


def _resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) == size:
        return image
    out = F.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False, antialias=True
    )
    return out[0].clamp_(0.0, 1.0)


class Resize:
    """Resize keeping the aspect ratio so the short side is ``short_side`` (0 = keep) and
    the long side at most ``max_size`` (0 = no cap); ``jitter=(lo, hi)`` multiplies the
    factor by a random value in that range (scale jitter, for training). Boxes are of the
    ``codec``'s kind (default axis-aligned)."""

    def __init__(
        self,
        short_side: int = 0,
        max_size: int = 0,
        jitter: Sequence[float] = (),
        codec: BoxCodec | None = None,
    ):
        if jitter and (len(jitter) != 2 or not 0 < jitter[0] <= jitter[1]):
            raise ValueError(f"scale jitter must be [lo, hi] with 0 < lo <= hi, got {list(jitter)}")
        self.short_side, self.max_size, self.jitter = short_side, max_size, tuple(jitter)
        self.codec = codec or box_codec("hbb")

    def factor(self, height: int, width: int, generator: torch.Generator | None = None) -> float:
        factor = self.short_side / min(height, width) if self.short_side else 1.0
        if self.jitter:
            lo, hi = self.jitter
            factor *= lo + (hi - lo) * torch.rand((), generator=generator).item()
        if self.max_size and max(height, width) * factor > self.max_size:
            factor = self.max_size / max(height, width)
        return factor

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        height, width = sample["vis"].shape[-2:]
        factor = self.factor(height, width, generator)
        new_h, new_w = max(1, round(height * factor)), max(1, round(width * factor))
        if (new_h, new_w) == (height, width):
            return sample
        sx, sy = new_w / width, new_h / height
        out = dict(sample)
        out["vis"] = _resize_image(sample["vis"], (new_h, new_w))
        out["ir"] = _resize_image(sample["ir"], (new_h, new_w))
        out["boxes"] = self.codec.rescale(sample["boxes"], sx, sy)
        out["scale"] = sample["scale"] * torch.tensor([sx, sy])
        return out


class RandomHorizontalFlip:
    """Mirror both images and the boxes (of the ``codec``'s kind) with probability ``p``."""

    def __init__(self, p: float = 0.5, codec: BoxCodec | None = None):
        self.p = p
        self.codec = codec or box_codec("hbb")

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        if self.p <= 0 or torch.rand((), generator=generator).item() >= self.p:
            return sample
        width = sample["vis"].shape[-1]
        out = dict(sample)
        out["vis"] = sample["vis"].flip(-1)
        out["ir"] = sample["ir"].flip(-1)
        out["boxes"] = self.codec.hflip(sample["boxes"], width)
        return out


class Compose:
    def __init__(self, transforms: Sequence[Callable[[dict], dict]]):
        self.transforms = list(transforms)

    def __call__(self, sample: dict, generator: torch.Generator | None = None) -> dict:
        for transform in self.transforms:
            sample = transform(sample, generator)
        return sample


def build_transforms(data_cfg, train: bool) -> Compose:
    """The transforms a config asks for; flips and jitter only when training."""
    transforms: list[Callable[[dict], dict]] = []
    codec = box_codec(data_cfg.boxes)
    jitter = data_cfg.scale_jitter if train else ()
    if data_cfg.short_side or data_cfg.max_size or jitter:
        transforms.append(Resize(data_cfg.short_side, data_cfg.max_size, jitter, codec))
    if train and data_cfg.hflip > 0:
        transforms.append(RandomHorizontalFlip(data_cfg.hflip, codec))
    return Compose(transforms)
