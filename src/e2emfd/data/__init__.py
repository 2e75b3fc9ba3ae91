"""Data: reading infrared-visible pairs and their labels, augmenting, batching.

The names below load their module on first use: ``e2emfd.data.io`` alone (the image
readers the fusion metrics share) must not pull in the augmentations, and with them
torchvision and torch's compiler stack, which cost a fresh process about a second.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "build_dataset": "build",
    "collate_pairs": "collate",
    "make_collate": "collate",
    "pad_to_multiple": "collate",
    "PairDataset": "datasets",
    "PairRecord": "datasets",
    "ImageReadError": "io",
    "read_image": "io",
    "write_png": "io",
    "Compose": "transforms",
    "RandomHorizontalFlip": "transforms",
    "Resize": "transforms",
    "build_transforms": "transforms",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
