"""Data: reading infrared-visible pairs and their labels, augmenting, batching."""

from e2emfd.data.build import build_dataset
from e2emfd.data.collate import collate_pairs, make_collate, pad_to_multiple
from e2emfd.data.datasets import PairDataset, PairRecord
from e2emfd.data.io import ImageReadError, read_image, write_png
from e2emfd.data.transforms import Compose, RandomHorizontalFlip, Resize, build_transforms

__all__ = [
    "Compose",
    "ImageReadError",
    "PairDataset",
    "PairRecord",
    "RandomHorizontalFlip",
    "Resize",
    "build_dataset",
    "build_transforms",
    "collate_pairs",
    "make_collate",
    "pad_to_multiple",
    "read_image",
    "write_png",
]
