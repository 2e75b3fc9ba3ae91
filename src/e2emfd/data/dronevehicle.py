"""DroneVehicle: aerial visible-infrared pairs with oriented vehicle boxes (Sun et al., 2022).

Layouts (``split`` is ``train``, ``val`` or ``test``):

* the original release: ``root/<split>/<split>img`` (RGB), ``<split>imgr`` (infrared),
  ``<split>label`` (XML labels of the RGB image) and ``<split>labelr`` (XML labels of the
  infrared image); the four folders may also sit one level deeper (``train/raw/trainimg``)
  or directly in ``root``. Label folders named ``<split>label[r]txt`` / ``_txt`` (DOTA txt
  conversions) are accepted too;
* the converted layout of mmrotate-based code (E2E-MFD's): ``root/<split>/{rgb,ir}/images``
  and ``root/<split>/{rgb,ir}/labels``.

Label files, chosen per file by extension:

* XML: one ``<object>`` per vehicle with ``<name>`` and an 8-value ``<polygon>``
  (``<x1> <y1> ... <x4> <y4>``), or, for a few objects, a 4-value ``<bndbox>`` (its four
  corners are used); ``<difficult>`` optional;
* DOTA txt: ``x1 y1 x2 y2 x3 y3 x4 y4 class [difficult]`` per line, optional
  ``imagesource:``/``gsd:`` header lines; a class name may contain a space.

Classes: ``car, truck, bus, van, freight_car``. Names are matched ignoring case, spaces,
``_`` and ``-``, after mapping the data's misspellings (``feright_car``, ``feright car``,
``feright`` -> freight_car, ``truvk`` -> truck). Any other name (the data also has ``*``)
is an error naming the file and the class, or, with ``unknown_class="skip"``, dropped and
recorded in ``Annotation.skipped``.

Samples are the project's sample dicts (:mod:`e2emfd.data.datasets`) with ``boxes`` (N, 5)
float32 le90 rotated boxes in pixels (:mod:`e2emfd.ops.rotated`): each quadrilateral
becomes its minimum-area rectangle. ``crop_border`` cuts that many pixels from every side
of both images (the release pads 640x512 images with a 100-px white border) and shifts
the boxes; ``orig_size`` is then the cropped size. A box reaching outside the image is
cut to it: the rectangle is clipped to the image and replaced by the minimum-area
rectangle of its visible part, or dropped when less than ``min_visible`` of its area is
inside (a warning names the file once).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from e2emfd.data.datasets import PairDataset, PairRecord, check_records, pair_images
from e2emfd.data.labels import Annotation, read_annotation_xml
from e2emfd.ops.rotated import (
    clip_convex_polygons,
    min_area_rect,
    obb_to_hbb,
    obb_to_poly,
    poly_to_obb,
    polygon_area,
)

DRONEVEHICLE_CLASSES = ("car", "truck", "bus", "van", "freight_car")
# misspellings in the released labels -> the class they mean (keys in _key() form)
CLASS_ALIASES = {"feright car": "freight car", "feright": "freight car", "truvk": "truck"}
MODALITIES = {"visible": "visible", "vis": "visible", "rgb": "visible", "infrared": "infrared"}
MODALITIES |= {"ir": "infrared", "lwir": "infrared"}
POLYGON_KEYS = ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")
BNDBOX_KEYS = ("xmin", "ymin", "xmax", "ymax")
LABEL_SUFFIXES = (".xml", ".txt")


def _key(name: str) -> str:
    return " ".join(re.sub(r"[_\-]", " ", name).lower().split())


class _ClassLookup:
    """Class name -> index, tolerant of case, separators and the known misspellings."""

    def __init__(self, classes: Sequence[str], unknown_class: str) -> None:
        if unknown_class not in ("error", "skip"):
            raise ValueError(f"unknown_class must be 'error' or 'skip', got {unknown_class!r}")
        self.classes = list(classes)
        self.index = {_key(c): i for i, c in enumerate(classes)}
        self.unknown_class = unknown_class

    def __call__(self, name: str, path: Path, where: str) -> int | None:
        key = _key(name)
        index = self.index.get(CLASS_ALIASES.get(key, key))
        if index is None and self.unknown_class == "error":
            raise ValueError(
                f"{path}{where}: unknown class '{name}' (known: {', '.join(self.classes)}; "
                "set data.unknown_class=skip to ignore such objects)"
            )
        return index


def _annotation(polys: list, labels: list, difficult: list, skipped: list) -> Annotation:
    return Annotation(
        np.asarray(polys, np.float32).reshape(-1, 8),
        np.asarray(labels, np.int64),
        np.asarray(difficult, bool),
        skipped=skipped,
    )


def _numbers(node: ET.Element, keys: Sequence[str], path: Path, what: str) -> list[float]:
    try:
        return [float(node.findtext(k)) for k in keys]  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{path}: {what} has a missing or non-numeric coordinate") from None


def parse_dronevehicle_xml(
    path: str | Path,
    classes: Sequence[str] = DRONEVEHICLE_CLASSES,
    unknown_class: str = "error",
) -> Annotation:
    """Read a DroneVehicle XML file. Returns an :class:`Annotation` whose ``boxes`` are
    (N, 8) float32 quadrilaterals ``x1 y1 ... x4 y4`` in the file's pixels."""
    path = Path(path)
    lookup = _ClassLookup(classes, unknown_class)
    root = read_annotation_xml(path, "a DroneVehicle")
    polys, labels, difficult, skipped = [], [], [], []
    for n, obj in enumerate(root.iter("object"), start=1):
        name = (obj.findtext("name") or "").strip()
        what = f"object {n} ('{name}')"
        index = lookup(name, path, f" ({what})")
        if index is None:
            skipped.append(name)
            continue
        polygon, bndbox = obj.find("polygon"), obj.find("bndbox")
        if polygon is not None:
            polys.append(_numbers(polygon, POLYGON_KEYS, path, f"{what} <polygon>"))
        elif bndbox is not None:
            x0, y0, x1, y1 = _numbers(bndbox, BNDBOX_KEYS, path, f"{what} <bndbox>")
            polys.append([x0, y0, x1, y0, x1, y1, x0, y1])
        else:
            raise ValueError(f"{path}: {what} has neither <polygon> nor <bndbox>")
        labels.append(index)
        difficult.append((obj.findtext("difficult") or "0").strip() not in ("", "0"))
    return _annotation(polys, labels, difficult, skipped)


def parse_dota_txt(
    path: str | Path,
    classes: Sequence[str] = DRONEVEHICLE_CLASSES,
    unknown_class: str = "error",
) -> Annotation:
    """Read a DOTA-style label file: ``x1 y1 ... x4 y4 class [difficult]`` per line
    (``imagesource:``/``gsd:`` header lines and blank lines are skipped). ``boxes`` are
    (N, 8) float32 quadrilaterals; ``difficult`` is true for a nonzero flag."""
    path = Path(path)
    lookup = _ClassLookup(classes, unknown_class)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot read label file ({exc})") from None
    polys, labels, difficult, skipped = [], [], [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields or re.match(r"^(imagesource|gsd)\s*:", line.strip(), re.IGNORECASE):
            continue
        if len(fields) < 9:
            raise ValueError(
                f"{path}:{line_no}: expected 'x1 y1 ... x4 y4 class [difficult]', "
                f"got {line.strip()!r}"
            )
        try:
            coords = [float(v) for v in fields[:8]]
        except ValueError:
            raise ValueError(
                f"{path}:{line_no}: non-numeric coordinate in {line.strip()!r}"
            ) from None
        rest = fields[8:]
        flag = 0
        if len(rest) > 1 and re.fullmatch(r"\d+", rest[-1]):
            flag, rest = int(rest[-1]), rest[:-1]
        name = " ".join(rest)
        index = lookup(name, path, f":{line_no}")
        if index is None:
            skipped.append(name)
            continue
        polys.append(coords)
        labels.append(index)
        difficult.append(flag != 0)
    return _annotation(polys, labels, difficult, skipped)


def parse_label_file(
    path: str | Path, classes: Sequence[str] = DRONEVEHICLE_CLASSES, unknown_class: str = "error"
) -> Annotation:
    """:func:`parse_dronevehicle_xml` for ``.xml``, :func:`parse_dota_txt` for ``.txt``."""
    path = Path(path)
    if path.suffix.lower() == ".xml":
        return parse_dronevehicle_xml(path, classes, unknown_class)
    if path.suffix.lower() == ".txt":
        return parse_dota_txt(path, classes, unknown_class)
    raise ValueError(f"{path}: unknown label format (expected .xml or .txt)")


def clip_obb_to_image(
    boxes: torch.Tensor, width: float, height: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut rotated boxes (N, 5) to the image ``[0, width] x [0, height]``.

    Returns the minimum-area rectangles of the visible parts (N, 5) float64 (boxes fully
    inside are returned unchanged) and the visible fraction of each box's area (N,) (0 for
    an empty box).
    """
    boxes = boxes.double()
    n = boxes.shape[0]
    frame = boxes.new_tensor([[0, 0], [width, 0], [width, height], [0, height]])
    four = torch.full((n,), 4, dtype=torch.long, device=boxes.device)
    pts, count = clip_convex_polygons(obb_to_poly(boxes).view(n, 4, 2), four, frame.expand(n, 4, 2))
    area = boxes[:, 2] * boxes[:, 3]
    fraction = torch.where(area > 0, polygon_area(pts, count) / area.clamp(min=1e-300), 0.0)
    fraction = fraction.clamp(0, 1)
    hull = obb_to_hbb(boxes)
    inside = (hull[:, :2] >= 0).all(1) & (hull[:, 2] <= width) & (hull[:, 3] <= height)
    valid = torch.arange(pts.shape[1], device=boxes.device)[None] < count[:, None]
    clipped = torch.where(inside[:, None], boxes, min_area_rect(pts, valid))
    return clipped, fraction


class DroneVehicleDataset(PairDataset):
    """Pairs with rotated boxes. Build it with :meth:`from_root`.

    ``boxes="obb"`` gives (N, 5) le90 boxes; ``"hbb"`` their axis-aligned hulls (N, 4) xyxy
    (to train the horizontal head on this data). See the module docstring for
    ``crop_border`` and ``min_visible``.
    """

    def __init__(
        self,
        records: list[PairRecord],
        classes: Sequence[str] = DRONEVEHICLE_CLASSES,
        transform: Callable | None = None,
        size_mismatch: str = "error",
        crop_border: int = 0,
        min_visible: float = 0.5,
        boxes: str = "obb",
    ) -> None:
        super().__init__(records, list(classes), transform, size_mismatch)
        if crop_border < 0:
            raise ValueError(f"crop_border must be >= 0, got {crop_border}")
        if not 0.0 <= min_visible <= 1.0:
            raise ValueError(f"min_visible must be in [0, 1], got {min_visible}")
        if boxes not in ("obb", "hbb"):
            raise ValueError(f"boxes must be 'obb' or 'hbb', got {boxes!r}")
        self.crop_border = crop_border
        self.min_visible = min_visible
        self.boxes = boxes

    def load_pair(self, record: PairRecord) -> tuple[np.ndarray, np.ndarray]:
        vis, ir = super().load_pair(record)
        b = self.crop_border
        if b == 0:
            return vis, ir
        height, width = vis.shape[:2]
        if height <= 2 * b or width <= 2 * b:
            raise ValueError(
                f"{record.vis_path}: image {width}x{height} is too small to crop a {b}-px border"
            )
        return vis[b:-b, b:-b], ir[b:-b, b:-b]

    def load_boxes(self, record: PairRecord, height: int, width: int):
        """(N, 5) float32 le90 boxes (or (N, 4) xyxy), labels (N,), difficult (N,) in the
        frame of the (cropped) image of ``height`` x ``width``."""
        ann = record.annotation
        dim = 5 if self.boxes == "obb" else 4
        if ann is None or len(ann) == 0:
            return np.zeros((0, dim), np.float32), np.zeros(0, np.int64), np.zeros(0, bool)
        polys = torch.from_numpy(ann.boxes.astype(np.float64)) - self.crop_border
        boxes, fraction = clip_obb_to_image(poly_to_obb(polys), width, height)
        keep = (fraction >= self.min_visible) & (boxes[:, 2] > 0) & (boxes[:, 3] > 0)
        cut = int(((fraction < 1 - 1e-9) & keep).sum())
        if cut or not bool(keep.all()):
            self._warn_once(
                f"clip:{record.label_path}",
                f"{record.label_path}: {cut} box(es) cut to the {width}x{height} image, "
                f"{int((~keep).sum())} dropped (less than {self.min_visible:.0%} inside, or empty)",
            )
        boxes = boxes[keep]
        if self.boxes == "hbb":
            boxes = obb_to_hbb(boxes)
        keep_np = keep.numpy()
        return boxes.float().numpy(), ann.labels[keep_np], ann.difficult[keep_np]

    @classmethod
    def from_root(
        cls,
        root: str | Path,
        split: str = "train",
        label_modality: str = "visible",
        classes: Sequence[str] = DRONEVEHICLE_CLASSES,
        unknown_class: str = "error",
        unlabelled: str = "skip",
        **kwargs,
    ) -> DroneVehicleDataset:
        """The pairs of ``split`` under ``root`` (either layout) with the labels of
        ``label_modality`` (``visible``/``rgb`` or ``infrared``/``ir``). ``unlabelled``:
        a pair without a label file is skipped with a warning (``skip``), kept without
        objects (``empty``) or an error (``error``). Other keyword arguments go to the
        constructor (``transform``, ``size_mismatch``, ``crop_border``, ``min_visible``,
        ``boxes``)."""
        if unlabelled not in ("skip", "empty", "error"):
            raise ValueError(f"unlabelled must be skip, empty or error, got {unlabelled!r}")
        vis_dir, ir_dir, label_dir = find_dronevehicle_folders(root, split, label_modality)
        pairs = pair_images(vis_dir, ir_dir)
        label_files: dict[str, Path] = {}
        for path in sorted(label_dir.iterdir()):
            if not path.is_file() or path.suffix.lower() not in LABEL_SUFFIXES:
                continue
            if path.stem in label_files:
                raise ValueError(f"{path}: two label files for '{path.stem}' in {label_dir}")
            if path.stem not in pairs:
                raise ValueError(
                    f"{path}: label file for a missing image (no {path.stem}.* in {vis_dir})"
                )
            label_files[path.stem] = path
        parse_kw = dict(classes=classes, unknown_class=unknown_class)
        records, missing = [], []
        for stem, (vis, ir) in pairs.items():
            label_path = label_files.get(stem)
            if label_path is None:
                if unlabelled == "error":
                    raise ValueError(
                        f"{vis}: no label file {stem}.xml or {stem}.txt in {label_dir}"
                    )
                if unlabelled == "skip":
                    missing.append(stem)
                else:
                    records.append(PairRecord(stem, vis, ir, None, None))
                continue
            ann = parse_label_file(label_path, **parse_kw)
            records.append(PairRecord(stem, vis, ir, label_path, ann))
        check_records(
            records, missing, label_dir, f"{root}: no labelled pairs found for split '{split}'"
        )
        return cls(records, classes, **kwargs)


def _child(folder: Path, names: Sequence[str]) -> Path | None:
    if not folder.is_dir():
        return None
    children = {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_dir()}
    for name in names:
        if name.lower() in children:
            return children[name.lower()]
    return None


def find_dronevehicle_folders(
    root: str | Path, split: str, label_modality: str = "visible"
) -> tuple[Path, Path, Path]:
    """(visible images, infrared images, labels of ``label_modality``) of ``split``."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset folder not found")
    if label_modality.lower() not in MODALITIES:
        raise ValueError(f"label_modality must be visible or infrared, got {label_modality!r}")
    infrared = MODALITIES[label_modality.lower()] == "infrared"
    split_dir = _child(root, [split]) or root
    # converted layout: <split>/{rgb,ir}/{images,labels}
    rgb, ir = _child(split_dir, ["rgb", "visible", "vis"]), _child(split_dir, ["ir", "infrared"])
    if rgb and ir and _child(rgb, ["images"]) and _child(ir, ["images"]):
        labels = _child(ir if infrared else rgb, ["labels", "labeltxt", "annotations"])
        if labels is None:
            raise FileNotFoundError(f"{ir if infrared else rgb}/labels: label folder not found")
        return _child(rgb, ["images"]), _child(ir, ["images"]), labels  # type: ignore[return-value]
    # original layout: <split>img, <split>imgr, <split>label[r] in <split>/ or one level
    # deeper (the modalities are sometimes unpacked side by side: raw/, rays/)
    homes = [split_dir, *sorted(p for p in split_dir.iterdir() if p.is_dir())]

    def find(names: list[str]) -> Path | None:
        return next((d for d in (_child(h, names) for h in homes) if d is not None), None)

    vis_dir = find([f"{split}img"])
    if vis_dir is None:
        raise FileNotFoundError(
            f"{root}: no DroneVehicle layout for split '{split}' (looked for {split}/rgb/images"
            f" + {split}/ir/images, or {split}/{split}img + {split}/{split}imgr)"
        )
    ir_dir = find([f"{split}imgr"])
    if ir_dir is None:
        raise FileNotFoundError(f"{split_dir / (split + 'imgr')}: infrared folder not found")
    r = "r" if infrared else ""
    labels = find([f"{split}label{r}", f"{split}label{r}txt", f"{split}label{r}_txt"])
    if labels is None:
        raise FileNotFoundError(f"{split_dir / (split + 'label' + r)}: label folder not found")
    return vis_dir, ir_dir, labels
