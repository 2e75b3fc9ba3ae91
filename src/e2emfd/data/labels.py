"""Label files in the formats users have: Pascal VOC XML and YOLO txt.

Parsers return boxes in the file's own frame and never touch images; clipping to the
image and dropping degenerate boxes happen in the dataset, where the image size is known.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Annotation:
    """Objects of one image. ``boxes`` is (N, 4) float32: xyxy pixels for VOC, or
    normalised (cx, cy, w, h) when ``normalised`` is True (YOLO)."""

    boxes: np.ndarray
    labels: np.ndarray  # (N,) int64 class indices
    difficult: np.ndarray  # (N,) bool
    normalised: bool = False
    skipped: list[str] = field(default_factory=list)  # class names skipped by option

    def __len__(self) -> int:
        return len(self.labels)


def _empty(normalised: bool = False) -> Annotation:
    return Annotation(
        np.zeros((0, 4), np.float32), np.zeros(0, np.int64), np.zeros(0, bool), normalised
    )


def read_annotation_xml(path: Path, what: str) -> ET.Element:
    """The root ``<annotation>`` element of a label file (VOC and DroneVehicle XML alike);
    an unreadable, malformed or foreign file is an error naming it (``what``: the format,
    for the message)."""
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise ValueError(f"{path}: malformed XML ({exc})") from None
    except OSError as exc:
        raise ValueError(f"{path}: cannot read label file ({exc.strerror})") from None
    if root.tag != "annotation":
        raise ValueError(f"{path}: not {what} annotation (root element <{root.tag}>)")
    return root


def parse_voc_xml(path: str | Path, classes: list[str], unknown_class: str = "error") -> Annotation:
    """Read a Pascal VOC XML file: one ``<object>`` per box with ``<name>`` and ``<bndbox>``.

    Class names are matched exactly first, then case-insensitively (``people`` = ``People``).
    ``unknown_class``: ``"error"`` raises on a name not in ``classes``; ``"skip"`` drops
    the object and records its name in ``Annotation.skipped``.
    """
    path = Path(path)
    root = read_annotation_xml(path, "a Pascal VOC")
    lookup = {name: i for i, name in enumerate(classes)}
    lookup_lower = {name.lower(): i for i, name in enumerate(classes)}
    boxes, labels, difficult, skipped = [], [], [], []
    for obj in root.iter("object"):
        name = (obj.findtext("name") or "").strip()
        index = lookup.get(name, lookup_lower.get(name.lower()))
        if index is None:
            if unknown_class == "skip":
                skipped.append(name)
                continue
            raise ValueError(
                f"{path}: unknown class '{name}' (known: {', '.join(classes)}; "
                "set data.unknown_class=skip to ignore such objects)"
            )
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise ValueError(f"{path}: object '{name}' has no <bndbox>")
        try:
            box = [float(bndbox.findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
        except (TypeError, ValueError):
            raise ValueError(f"{path}: object '{name}' has a missing or non-numeric box") from None
        boxes.append(box)
        labels.append(index)
        difficult.append((obj.findtext("difficult") or "0").strip() == "1")
    if not labels:
        ann = _empty()
        ann.skipped = skipped
        return ann
    return Annotation(
        np.asarray(boxes, np.float32),
        np.asarray(labels, np.int64),
        np.asarray(difficult, bool),
        skipped=skipped,
    )


def parse_yolo_txt(path: str | Path, num_classes: int) -> Annotation:
    """Read a YOLO label file: ``cls cx cy w h`` per line, normalised to [0, 1].

    Any whitespace separates fields (MSRS's fusion labels use double spaces and no final
    newline); blank lines are ignored.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read label file ({exc})") from None
    boxes, labels = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 5:
            raise ValueError(f"{path}:{line_no}: expected 'cls cx cy w h', got {line.strip()!r}")
        try:
            cls_value = float(fields[0])
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{path}:{line_no}: non-numeric field in {line.strip()!r}") from None
        # "1.0" is a class some exporters write; "1.7" is a corrupt line, not class 1.
        if not cls_value.is_integer():
            raise ValueError(
                f"{path}:{line_no}: class index {fields[0]} is not an integer in {line.strip()!r}"
            )
        cls = int(cls_value)
        if not 0 <= cls < num_classes:
            raise ValueError(
                f"{path}:{line_no}: class index {cls} out of range for {num_classes} classes"
            )
        boxes.append(values)
        labels.append(cls)
    if not labels:
        return _empty(normalised=True)
    return Annotation(
        np.asarray(boxes, np.float32),
        np.asarray(labels, np.int64),
        np.zeros(len(labels), bool),
        normalised=True,
    )


def read_class_names(path: str | Path) -> list[str]:
    """Class names from a ``classes.txt``: one per line, optionally ``index name``."""
    names = []
    for line in Path(path).read_text().splitlines():
        fields = line.split()
        if not fields:
            continue
        names.append(
            " ".join(fields[1:]) if fields[0].isdigit() and len(fields) > 1 else line.strip()
        )
    return names


def yolo_to_xyxy(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """(N, 4) normalised cx cy w h -> (N, 4) pixel xyxy."""
    cx, cy, w, h = (boxes[:, i] for i in range(4))
    out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return (out * np.array([width, height, width, height], np.float32)).astype(np.float32)
