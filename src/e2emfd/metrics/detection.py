"""COCO-style detection metrics through pycocotools, built in memory.

Inputs, one dict per image, in the same order for predictions and ground truths:

* prediction: ``boxes`` (K, 4) xyxy pixels, ``scores`` (K,), ``labels`` (K,) 0-based;
* ground truth: ``boxes`` (N, 4) xyxy, ``labels`` (N,), optional ``difficult`` (N,) bool,
  optional ``height`` / ``width`` (ints).

Box convention: pycocotools wants xywh; we pass ``w = x2 - x1`` and ``h = y2 - y1`` (no +1,
i.e. continuous pixel coordinates), so COCO's IoU equals :func:`torchvision.ops.box_iou`.

Difficult GT become ``iscrowd=1`` regions, which pycocotools ignores: they never count as
misses, and a detection matched to one is neither TP nor FP. Note pycocotools scores a
detection against a crowd region by intersection over the *detection's* area, not IoU.

Class ids: COCO category id = class index + 1; image ids default to 1..n. VOC-style mAP
lives in :mod:`e2emfd.metrics.voc` and is re-exported here.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from e2emfd.metrics.voc import (
    ap_over_thresholds,
    check_pairing,
    normalize_predictions,
    normalize_targets,
    voc_evaluate,
)

__all__ = [
    "ap_over_thresholds",
    "coco_evaluate",
    "to_coco_dataset",
    "to_coco_results",
    "voc_evaluate",
]

# Index into COCOeval.stats (see COCOeval.summarize) for each reported key.
_STATS_KEYS = {"AP": 0, "AP50": 1, "AP75": 2, "APs": 3, "APm": 4, "APl": 5, "AR100": 8}


def _image_ids(image_ids: Sequence[int] | None, n: int) -> list[int]:
    if image_ids is None:
        return list(range(1, n + 1))
    ids = [int(i) for i in image_ids]
    if len(ids) != n:
        raise ValueError(f"got {len(ids)} image_ids for {n} images")
    if len(set(ids)) != n:
        raise ValueError("image_ids must be unique")
    return ids


def _check_xyxy(boxes: np.ndarray, what: str) -> None:
    if boxes.size and ((boxes[:, 2] < boxes[:, 0]).any() or (boxes[:, 3] < boxes[:, 1]).any()):
        raise ValueError(f"{what} must be xyxy with x2 >= x1 and y2 >= y1")


def _xywh(box: np.ndarray) -> list[float]:
    x1, y1, x2, y2 = (float(v) for v in box)
    return [x1, y1, x2 - x1, y2 - y1]


def _categories(class_names: Sequence[str]) -> list[dict[str, Any]]:
    if not class_names:
        raise ValueError("class_names is empty")
    return [{"id": i + 1, "name": str(n)} for i, n in enumerate(class_names)]


def to_coco_results(
    predictions: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int] | None,
    class_names: Sequence[str],
) -> list[dict[str, Any]]:
    """COCO result list, JSON-serialisable: one ``{image_id, category_id, bbox, score}``
    per detection, ``bbox`` xywh with ``w = x2 - x1``; ``image_ids=None`` means 1..n."""
    ids = _image_ids(image_ids, len(predictions))
    _categories(class_names)
    preds = normalize_predictions(predictions, len(class_names), box_dim=4)
    results = []
    for i, (img_id, p) in enumerate(zip(ids, preds)):
        _check_xyxy(p.boxes, f"predictions[{i}]['boxes']")
        for box, score, label in zip(p.boxes, p.scores, p.labels):
            results.append(
                {
                    "image_id": img_id,
                    "category_id": int(label) + 1,
                    "bbox": _xywh(box),
                    "score": float(score),
                }
            )
    return results


def to_coco_dataset(
    ground_truths: Sequence[Mapping[str, Any]],
    image_ids: Sequence[int] | None,
    class_names: Sequence[str],
    file_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """COCO ground-truth dataset dict (``images``, ``annotations``, ``categories``).

    ``area`` is the box area ``w * h`` (used for the small/medium/large split); difficult
    boxes get ``iscrowd=1``; annotation ids start at 1 (pycocotools treats id 0 as
    "unmatched"). ``height``/``width``/``file_name`` are written when known.
    """
    ids = _image_ids(image_ids, len(ground_truths))
    if file_names is not None and len(file_names) != len(ids):
        raise ValueError(f"got {len(file_names)} file_names for {len(ids)} images")
    categories = _categories(class_names)
    gts = normalize_targets(ground_truths, len(class_names), box_dim=4)
    images, annotations = [], []
    for i, (img_id, raw, g) in enumerate(zip(ids, ground_truths, gts)):
        _check_xyxy(g.boxes, f"ground_truths[{i}]['boxes']")
        image: dict[str, Any] = {"id": img_id}
        for key in ("height", "width"):
            if raw.get(key) is not None:
                image[key] = int(raw[key])
        if file_names is not None:
            image["file_name"] = str(file_names[i])
        images.append(image)
        for box, label, difficult in zip(g.boxes, g.labels, g.difficult):
            bbox = _xywh(box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": img_id,
                    "category_id": int(label) + 1,
                    "bbox": bbox,
                    "area": bbox[2] * bbox[3],
                    "iscrowd": int(difficult),
                }
            )
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_from_dict(dataset: dict[str, Any]) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _nan_if_missing(value: float) -> float:
    # pycocotools marks "no GT to score against" with -1.
    return float("nan") if value < 0 else float(value)


def coco_evaluate(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    image_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """COCO box metrics via pycocotools (``maxDets`` 1/10/100, standard area ranges).

    Args:
        predictions / ground_truths: per-image dicts (see module docstring), same order.
        class_names: C names; labels index into them.
        image_ids: optional ids for the images (default 1..n).

    Returns:
        ``AP`` (IoU 0.50:0.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl``, ``AR100``,
        ``per_class`` {name: AP 0.50:0.95} and ``per_class_AP50`` {name: AP50}; floats in
        [0, 1]. A class (or size range) with no non-difficult GT has no defined AP: it gets
        NaN and is left out of the means, as pycocotools does; all metrics are NaN when
        there is no GT at all. With GT but no predictions every AP is 0.
    """
    check_pairing(predictions, ground_truths)
    ids = _image_ids(image_ids, len(ground_truths))
    dataset = to_coco_dataset(ground_truths, ids, class_names)
    results = to_coco_results(predictions, ids, class_names)

    # pycocotools prints progress and the summary table; keep library output quiet.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_from_dict(dataset)
        if results:
            coco_dt = coco_gt.loadRes(results)
        else:
            # loadRes indexes results[0]; an empty result set is an empty annotation list.
            coco_dt = _coco_from_dict(
                {"images": list(dataset["images"]), "annotations": [], "categories": []}
            )
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        evaluator.params.imgIds = ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()

    out: dict[str, Any] = {k: _nan_if_missing(evaluator.stats[i]) for k, i in _STATS_KEYS.items()}
    # precision: (T iou, R recall points, K classes, A area ranges, M maxDets); area "all" is
    # index 0 and maxDets=100 is the last.
    precision = evaluator.eval["precision"][:, :, :, 0, -1]
    iou_50 = int(np.argmin(np.abs(evaluator.params.iouThrs - 0.5)))
    out["per_class"], out["per_class_AP50"] = {}, {}
    for k, name in enumerate(class_names):
        p_all, p_50 = precision[:, :, k], precision[iou_50, :, k]
        out["per_class"][name] = float(p_all.mean()) if (p_all > -1).all() else float("nan")
        out["per_class_AP50"][name] = float(p_50.mean()) if (p_50 > -1).all() else float("nan")
    return out
