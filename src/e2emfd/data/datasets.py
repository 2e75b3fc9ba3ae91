"""Registered infrared-visible pairs with their labels, as a PyTorch dataset.

One sample is a dict:

- ``vis``: (3, H, W) float32 in [0, 1], RGB;
- ``ir``: (1, H, W) float32 in [0, 1];
- ``boxes``: (N, 4) float32 xyxy pixels; ``labels``: (N,) int64; ``difficult``: (N,) bool;
- ``image_id``: the file stem; ``vis_path``, ``ir_path``, ``label_path`` (str or None);
- ``orig_size``: (2,) int64 [h, w] of the files; ``scale``: (2,) float32 [sx, sy] from the
  files to the tensors (transforms update it, so predictions can be mapped back).

Pairs are indexed (and their labels parsed) when the dataset is built, so a missing
partner, a malformed label file or an unknown class is reported before training starts,
in one line that names the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from e2emfd.data.io import is_image_file, read_image
from e2emfd.data.labels import (
    Annotation,
    parse_voc_xml,
    parse_yolo_txt,
    read_class_names,
    yolo_to_xyxy,
)

VIS_DIR_NAMES = ("vis", "vi", "visible", "rgb", "vis_images", "visible_images")
IR_DIR_NAMES = ("ir", "infrared", "lwir", "thermal", "ir_images", "infrared_images")
LABEL_DIR_NAMES = ("annotations", "labels", "annotation", "label")
LABEL_MODALITY_NAMES = {
    "visible": ("visible", "vis", "vi", "rgb"),
    "infrared": ("infrared", "ir", "lwir"),
    "fusion": ("fusion", "fused"),
}
LABEL_SUFFIX = {"voc": ".xml", "yolo": ".txt"}


@dataclass
class PairRecord:
    image_id: str
    vis_path: Path
    ir_path: Path
    label_path: Path | None = None
    annotation: Annotation | None = None


def find_subdir(root: Path, names: Iterable[str], what: str, given: str = "") -> Path:
    """``root/given`` if given, else the first child of ``root`` whose name matches one of
    ``names`` case-insensitively (``Vis``, ``vi``, ``VISIBLE`` ...)."""
    if given:
        path = Path(given) if Path(given).is_absolute() else root / given
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: {what} folder not found")
        return path
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    children = {p.name.lower(): p for p in sorted(root.iterdir()) if p.is_dir()}
    for name in names:
        if name in children:
            return children[name]
    raise FileNotFoundError(
        f"{root}: no {what} folder (looked for {', '.join(names)}; set it explicitly)"
    )


def list_images(folder: Path) -> dict[str, Path]:
    """Stem -> path for every image file in ``folder`` (any case of extension)."""
    images: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if not path.is_file() or not is_image_file(path):
            continue
        if path.stem in images:
            raise ValueError(f"{path}: two images share the stem '{path.stem}' in {folder}")
        images[path.stem] = path
    return images


def pair_images(vis_dir: Path, ir_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Pair images by stem; an image without its partner is an error naming it."""
    vis, ir = list_images(vis_dir), list_images(ir_dir)
    for stem, path in vis.items():
        if stem not in ir:
            raise ValueError(f"{path}: no infrared partner '{stem}.*' in {ir_dir}")
    for stem, path in ir.items():
        if stem not in vis:
            raise ValueError(f"{path}: no visible partner '{stem}.*' in {vis_dir}")
    if not vis:
        raise ValueError(f"{vis_dir}: no images found")
    return {stem: (vis[stem], ir[stem]) for stem in vis}


def find_split_file(root: Path, split: str) -> Path | None:
    """The file listing a split's ids: ``""`` = no file (all pairs); a name =
    ``ImageSets/Main/<name>.txt``; or a path to a txt file with one id per line."""
    if not split:
        return None
    candidates = [Path(split), root / "ImageSets" / "Main" / f"{split}.txt", root / f"{split}.txt"]
    for path in candidates:
        if path.suffix == ".txt" and path.is_file():
            return path
    raise FileNotFoundError(
        f"{candidates[1]}: split file for '{split}' not found (use data.*_split='' for all pairs)"
    )


def make_sample(
    vis: np.ndarray,
    ir: np.ndarray,
    image_id: str,
    vis_path: str | Path,
    ir_path: str | Path,
    targets: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
    label_path: str | Path | None = None,
) -> dict:
    """A sample dict (see the module docstring) from a pair as :func:`read_image` returns
    it, (H, W, 3) and (H, W); ``targets`` = (boxes, labels, difficult), default none."""
    if targets is None:
        targets = (np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool))
    boxes, labels, difficult = targets
    height, width = vis.shape[:2]
    return {
        "vis": torch.from_numpy(np.ascontiguousarray(vis.transpose(2, 0, 1))),
        "ir": torch.from_numpy(ir[None].copy()),
        "boxes": torch.from_numpy(boxes),
        "labels": torch.from_numpy(labels),
        "difficult": torch.from_numpy(difficult),
        "image_id": image_id,
        "vis_path": str(vis_path),
        "ir_path": str(ir_path),
        "label_path": str(label_path) if label_path else None,
        "orig_size": torch.tensor([height, width]),
        "scale": torch.ones(2),
        "seed": None,
    }


class PairDataset(Dataset):
    """Registered pairs, with or without labels. Build it with :func:`build_dataset` or the
    ``from_*`` constructors; ``transform`` maps a sample dict to a sample dict."""

    def __init__(
        self,
        records: list[PairRecord],
        classes: list[str],
        transform: Callable[[dict], dict] | None = None,
        size_mismatch: str = "error",
    ) -> None:
        if size_mismatch not in ("error", "resize"):
            raise ValueError(f"size_mismatch must be 'error' or 'resize', got {size_mismatch!r}")
        self.records = records
        self.classes = list(classes)
        self.transform = transform
        self.size_mismatch = size_mismatch
        self._warned: set[str] = set()

    def __len__(self) -> int:
        return len(self.records)

    @property
    def num_boxes(self) -> int:
        return sum(len(r.annotation) for r in self.records if r.annotation is not None)

    def class_counts(self) -> dict[str, int]:
        counts = dict.fromkeys(self.classes, 0)
        for r in self.records:
            if r.annotation is not None:
                for label in r.annotation.labels:
                    counts[self.classes[label]] += 1
        return counts

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def load_pair(self, record: PairRecord) -> tuple[np.ndarray, np.ndarray]:
        vis = read_image(record.vis_path, channels=3)
        ir = read_image(record.ir_path, channels=1)
        if vis.shape[:2] != ir.shape[:2]:
            if self.size_mismatch == "error":
                raise ValueError(
                    f"{record.ir_path}: size {ir.shape[1]}x{ir.shape[0]} differs from its visible"
                    f" partner {record.vis_path} ({vis.shape[1]}x{vis.shape[0]}); "
                    "set data.size_mismatch=resize to resize the infrared image"
                )
            import cv2

            ir = cv2.resize(ir, (vis.shape[1], vis.shape[0]), interpolation=cv2.INTER_LINEAR)
        return vis, ir

    def load_boxes(self, record: PairRecord, height: int, width: int):
        ann = record.annotation
        if ann is None or len(ann) == 0:
            return np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        boxes = yolo_to_xyxy(ann.boxes, width, height) if ann.normalised else ann.boxes.copy()
        outside = (boxes < 0).any(1) | (boxes[:, 2] > width) | (boxes[:, 3] > height)
        if outside.any():
            self._warn_once(
                f"clip:{record.label_path}",
                f"{record.label_path}: {int(outside.sum())} box(es) extend outside the "
                f"{width}x{height} image; clipped",
            )
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not keep.all():
            self._warn_once(
                f"degenerate:{record.label_path}",
                f"{record.label_path}: dropped {int((~keep).sum())} degenerate box(es) "
                "(zero or negative size)",
            )
        return boxes[keep], ann.labels[keep], ann.difficult[keep]

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """``index``, or ``(index, seed)``: the seed drives this sample's random
        augmentations and is passed on as ``sample["seed"]`` (e.g. for the detection head's
        box noise), so a sample is the same whichever worker, batch or rank loads it."""
        seed = None
        if isinstance(index, tuple):
            index, seed = index
        record = self.records[index]
        vis, ir = self.load_pair(record)
        height, width = vis.shape[:2]
        boxes, labels, difficult = self.load_boxes(record, height, width)
        sample = make_sample(
            vis,
            ir,
            record.image_id,
            record.vis_path,
            record.ir_path,
            (boxes, labels, difficult),
            record.label_path,
        )
        sample["seed"] = seed
        if self.transform is None:
            return sample
        generator = torch.Generator().manual_seed(seed) if seed is not None else None
        return self.transform(sample, generator)

    # ---------------------------------------------------------------- constructors

    @classmethod
    def from_folders(
        cls,
        root: str | Path = "",
        vis_dir: str = "",
        ir_dir: str = "",
        split: str = "",
        **kwargs,
    ) -> PairDataset:
        """Unlabelled pairs (TNO, RoadScene, or any ``vi/`` + ``ir/`` folders)."""
        root = Path(root)
        vis = find_subdir(root, VIS_DIR_NAMES, "visible", vis_dir)
        ir = find_subdir(root, IR_DIR_NAMES, "infrared", ir_dir)
        pairs = _select(pair_images(vis, ir), root, split)
        records = [PairRecord(stem, v, i) for stem, (v, i) in pairs.items()]
        return cls(records, kwargs.pop("classes", []), **kwargs)

    @classmethod
    def from_labelled(
        cls,
        root: str | Path,
        fmt: str,
        classes: list[str],
        split: str = "",
        vis_dir: str = "",
        ir_dir: str = "",
        label_dir: str = "",
        label_modality: str = "visible",
        unknown_class: str = "error",
        unlabelled: str = "skip",
        **kwargs,
    ) -> PairDataset:
        """Pairs with VOC XML (``fmt="voc"``: M3FD, LLVIP) or YOLO txt (``fmt="yolo"``:
        MSRS) labels. ``unlabelled``: what to do with a pair that has no label file
        (``skip`` with a warning, ``empty`` = no objects, ``error``)."""
        if fmt not in LABEL_SUFFIX:
            raise ValueError(f"unknown label format '{fmt}' (expected voc or yolo)")
        if unlabelled not in ("skip", "empty", "error"):
            raise ValueError(f"unlabelled must be skip, empty or error, got {unlabelled!r}")
        root = Path(root)
        vis = find_subdir(root, VIS_DIR_NAMES, "visible", vis_dir)
        ir = find_subdir(root, IR_DIR_NAMES, "infrared", ir_dir)
        labels_root = find_subdir(root, LABEL_DIR_NAMES, "label", label_dir)
        labels_dir = _modality_subdir(labels_root, label_modality)
        if fmt == "yolo":
            classes = _yolo_class_names(labels_dir, labels_root, classes)
        pairs = pair_images(vis, ir)
        suffix = LABEL_SUFFIX[fmt]
        label_files = {
            p.stem: p
            for p in sorted(labels_dir.iterdir())
            if p.is_file() and p.suffix.lower() == suffix and p.name.lower() != "classes.txt"
        }
        for stem, path in label_files.items():
            if stem not in pairs:
                raise ValueError(f"{path}: label file for a missing image (no {stem}.* in {vis})")
        pairs = _select(pairs, root, split)
        records, missing = [], []
        for stem, (v, i) in pairs.items():
            label_path = label_files.get(stem)
            if label_path is None:
                if unlabelled == "error":
                    raise ValueError(f"{v}: no label file {stem}{suffix} in {labels_dir}")
                if unlabelled == "skip":
                    missing.append(stem)
                    continue
                records.append(PairRecord(stem, v, i, None, None))
                continue
            if fmt == "voc":
                ann = parse_voc_xml(label_path, classes, unknown_class)
            else:
                ann = parse_yolo_txt(label_path, len(classes))
            records.append(PairRecord(stem, v, i, label_path, ann))
        check_records(records, missing, labels_dir, f"{root}: no labelled pairs found")
        return cls(records, classes, **kwargs)


def check_records(
    records: list[PairRecord], missing: list[str], label_dir: Path, none_found: str
) -> None:
    """Warn about pairs skipped for lack of a label file (naming the folder and one of
    them), and refuse a dataset left with no pair (``none_found``: the message)."""
    if missing:
        warnings.warn(
            f"{label_dir}: {len(missing)} pair(s) without a label file skipped "
            f"(e.g. {missing[0]}); set data.unlabelled=empty to keep them",
            stacklevel=3,
        )
    if not records:
        raise ValueError(none_found)


def _select(pairs: dict, root: Path, split: str) -> dict:
    path = find_split_file(root, split)
    if path is None:
        return pairs
    ids = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    missing = [i for i in ids if i not in pairs]
    if missing:
        raise ValueError(
            f"{path}: {len(missing)} id(s) of split '{split}' have no image pair, e.g. {missing[0]}"
        )
    return {i: pairs[i] for i in ids}


def _modality_subdir(labels_root: Path, modality: str) -> Path:
    """MSRS keeps one label folder per modality (``labels/visible``, ``labels/infrared``);
    other datasets have a single folder shared by both modalities."""
    if modality not in LABEL_MODALITY_NAMES:
        raise ValueError(f"label_modality must be one of {list(LABEL_MODALITY_NAMES)}")
    children = {p.name.lower(): p for p in labels_root.iterdir() if p.is_dir()}
    for name in LABEL_MODALITY_NAMES[modality]:
        if name in children:
            return children[name]
    return labels_root


def _yolo_class_names(labels_dir: Path, labels_root: Path, fallback: list[str]) -> list[str]:
    for folder in (labels_dir, labels_root, labels_root.parent):
        path = folder / "classes.txt"
        if path.is_file():
            return read_class_names(path)
    if not fallback:
        raise ValueError(f"{labels_root}: no classes.txt and no data.classes given")
    return fallback
