"""``build_dataset``: the dataset a config's data section describes, whatever its format
(the one place that knows every reader)."""

from __future__ import annotations

from collections.abc import Callable

from e2emfd.data.datasets import LABEL_SUFFIX, PairDataset
from e2emfd.data.dronevehicle import DroneVehicleDataset


def build_dataset(data_cfg, split: str, transform: Callable[[dict], dict] | None = None):
    """Build the dataset a config describes, for ``split`` (a name or a txt path)."""
    if data_cfg.format == "dronevehicle":
        return DroneVehicleDataset.from_root(
            data_cfg.root,
            split=split,
            label_modality=data_cfg.label_modality,
            classes=data_cfg.classes,
            unknown_class=data_cfg.unknown_class,
            unlabelled=data_cfg.unlabelled,
            transform=transform,
            size_mismatch=data_cfg.size_mismatch,
            crop_border=data_cfg.crop_border,
            boxes=data_cfg.boxes,
        )
    vis_dir, ir_dir = data_cfg.vis_dir, data_cfg.ir_dir
    if "{split}" in vis_dir or "{split}" in ir_dir:
        # Datasets that keep each split in its own folders (LLVIP: visible/train,
        # visible/test): the split names the folder, and no id list is read.
        vis_dir, ir_dir = vis_dir.format(split=split), ir_dir.format(split=split)
        split = ""
    common = dict(
        split=split,
        vis_dir=vis_dir,
        ir_dir=ir_dir,
        transform=transform,
        size_mismatch=data_cfg.size_mismatch,
    )
    if data_cfg.format == "paired":
        return PairDataset.from_folders(data_cfg.root, classes=data_cfg.classes, **common)
    if data_cfg.format in LABEL_SUFFIX:
        return PairDataset.from_labelled(
            data_cfg.root,
            data_cfg.format,
            data_cfg.classes,
            label_dir=data_cfg.label_dir,
            label_modality=data_cfg.label_modality,
            unknown_class=data_cfg.unknown_class,
            unlabelled=data_cfg.unlabelled,
            **common,
        )
    raise ValueError(
        f"data.format '{data_cfg.format}' is not one of paired, voc, yolo, dronevehicle"
    )
