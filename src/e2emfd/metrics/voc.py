"""VOC-style detection AP: greedy matching at an IoU threshold, 11-point or all-point AP.

The matching code never looks at box columns: IoUs come from a pluggable ``iou_fn`` so the
same code scores axis-aligned boxes (default: :func:`box_iou_xyxy`) and, later,
rotated boxes with a polygon IoU. This module also holds the input normalisation shared with
:mod:`e2emfd.metrics.detection`.

Inputs, one dict per image, in the same order for predictions and ground truths:

* prediction: ``boxes`` (K, D), ``scores`` (K,), ``labels`` (K,) 0-based class index;
* ground truth: ``boxes`` (N, D), ``labels`` (N,), optional ``difficult`` (N,) bool.

Torch tensors (any device), numpy arrays and nested lists are all accepted.

Conventions, and where the usual reference implementations differ:

* **No +1 on widths**: a box ``[x1, x2]`` is ``x2 - x1`` wide (continuous pixel edges, as
  COCO and mmdet/mmrotate by default). The Pascal VOC devkit, its Python port in
  py-faster-rcnn and the DOTA devkit's axis-aligned pre-filter add 1, which raises the IoU
  of small boxes (two 4x4 boxes 2 px apart: 0.33 here, 0.43 with +1).
* **IoU >= threshold matches** (inclusive), as the MATLAB VOC devkit and mmdet/mmrotate's
  ``tpfp_default``. The DOTA devkit and py-faster-rcnn's ``voc_eval`` use ``>``: only an
  IoU exactly at the threshold differs (rare with float boxes, common with integer ones).
* **The 11 recall points are exactly k/10**. The DOTA devkit and py-faster-rcnn iterate
  ``np.arange(0., 1.1, 0.1)`` and mmdet/mmrotate ``np.arange(0, 1 + 1e-3, 0.1)``, whose
  points include 0.30000000000000004, 0.6000000000000001 and 0.7000000000000001: there a
  recall of exactly 3/10 misses the 0.3 point.
* **Tied scores** keep a stable order (image order, then the order within an image); the
  devkits sort with numpy's default quicksort, so their result on ties is unspecified.
* **An undefined IoU** (two zero-area boxes, 0 / 0) is no overlap.
* **A class without non-difficult ground truth** is NaN and left out of the mean (mmdet/
  mmrotate also leave it out; the DOTA devkit divides by the number of all classes).
* A detection whose best ground truth is already taken is a false positive (no fallback
  to the next-best box); one whose best ground truth is difficult is ignored. All three
  references do the same.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

IouFn = Callable[[torch.Tensor, torch.Tensor], Any]

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))


@dataclass(frozen=True)
class ImagePreds:
    """One image's predictions as numpy arrays: boxes (K, D) float64, scores (K,), labels (K,)."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class ImageTargets:
    """One image's ground truth: boxes (N, D) float64, labels (N,) int64, difficult (N,) bool."""

    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray


def as_numpy(x: Any) -> np.ndarray:
    """Return ``x`` (tensor on any device, array or list) as a numpy array, detached."""
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _boxes(x: Any, what: str, box_dim: int | None) -> np.ndarray:
    arr = as_numpy(x).astype(np.float64)
    if arr.size == 0:
        return np.zeros((0, box_dim or 0), dtype=np.float64)
    if arr.ndim != 2 or (box_dim is not None and arr.shape[1] != box_dim):
        want = f"(K, {box_dim})" if box_dim is not None else "(K, D)"
        raise ValueError(f"{what} must have shape {want}, got {tuple(arr.shape)}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} contains non-finite values")
    return arr


def _labels(x: Any, what: str, n: int, num_classes: int) -> np.ndarray:
    arr = as_numpy(x).reshape(-1)
    if arr.shape[0] != n:
        raise ValueError(f"{what} has {arr.shape[0]} entries but there are {n} boxes")
    if arr.size and not np.array_equal(arr, np.round(arr)):
        raise ValueError(f"{what} must hold integer class indices")
    arr = arr.astype(np.int64)
    if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise ValueError(f"{what} must lie in [0, {num_classes}), got {arr.min()}..{arr.max()}")
    return arr


def _get(d: Mapping[str, Any], key: str, what: str) -> Any:
    if not isinstance(d, Mapping):
        raise ValueError(f"{what} must be a dict, got {type(d).__name__}")
    if key not in d:
        raise ValueError(f"{what} is missing key '{key}'")
    return d[key]


def normalize_predictions(
    predictions: Sequence[Mapping[str, Any]], num_classes: int, box_dim: int | None = None
) -> list[ImagePreds]:
    """Validate and convert per-image prediction dicts; ``box_dim=None`` accepts any width."""
    out = []
    for i, p in enumerate(predictions):
        what = f"predictions[{i}]"
        boxes = _boxes(_get(p, "boxes", what), f"{what}['boxes']", box_dim)
        scores = as_numpy(_get(p, "scores", what)).astype(np.float64).reshape(-1)
        if scores.shape[0] != boxes.shape[0]:
            raise ValueError(
                f"{what}['scores'] has {scores.shape[0]} entries for {len(boxes)} boxes"
            )
        if not np.isfinite(scores).all():
            raise ValueError(f"{what}['scores'] contains non-finite values")
        labels = _labels(_get(p, "labels", what), f"{what}['labels']", len(boxes), num_classes)
        out.append(ImagePreds(boxes, scores, labels))
    return out


def normalize_targets(
    ground_truths: Sequence[Mapping[str, Any]], num_classes: int, box_dim: int | None = None
) -> list[ImageTargets]:
    """Validate and convert per-image ground-truth dicts (``difficult`` defaults to False)."""
    out = []
    for i, g in enumerate(ground_truths):
        what = f"ground_truths[{i}]"
        boxes = _boxes(_get(g, "boxes", what), f"{what}['boxes']", box_dim)
        labels = _labels(_get(g, "labels", what), f"{what}['labels']", len(boxes), num_classes)
        if g.get("difficult") is None:
            difficult = np.zeros(len(boxes), dtype=bool)
        else:
            difficult = as_numpy(g["difficult"]).reshape(-1).astype(bool)
            if difficult.shape[0] != len(boxes):
                raise ValueError(f"{what}['difficult'] has {difficult.shape[0]} entries")
        out.append(ImageTargets(boxes, labels, difficult))
    return out


def check_pairing(predictions: Sequence[Any], ground_truths: Sequence[Any]) -> None:
    """Raise if predictions and ground truths do not describe the same list of images."""
    if len(predictions) != len(ground_truths):
        raise ValueError(
            f"got {len(predictions)} prediction dicts for {len(ground_truths)} ground-truth dicts"
        )


def average_precision(recall: np.ndarray, precision: np.ndarray, use_07_metric: bool) -> float:
    """AP from a PR curve: recall, precision (M,) in detection order (recall non-decreasing).

    ``use_07_metric``: mean over recall t in {0, 0.1, ..., 1} of the max precision at
    recall >= t (0 when unreached). Otherwise the all-point area under the monotone
    (right-to-left running max) precision envelope, as in VOC2010+.
    """
    if use_07_metric:
        # i / 10 (not arange(0, 1.1, 0.1)) so that 0.3 is the same double as 3 / 10: a
        # recall of exactly 3/10 must reach the 0.3 point.
        ap = 0.0
        for t in np.arange(11) / 10.0:
            reached = recall >= t
            ap += float(precision[reached].max()) if reached.any() else 0.0
        return ap / 11.0
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * mpre[steps + 1]))


@dataclass(frozen=True)
class _ClassImage:
    """One (class, image) pair: score-sorted detections and their IoU with that class's GT."""

    scores: np.ndarray  # (K,) descending
    ious: np.ndarray  # (K, N)
    difficult: np.ndarray  # (N,)


def box_iou_xyxy(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of xyxy boxes (K, 4) x (N, 4) -> (K, N); 0 where the union is empty.

    :func:`torchvision.ops.box_iou` divides 0 by 0 for two zero-area boxes, and a NaN IoU
    would pass any threshold test written as ``iou < thr``."""
    lt = torch.maximum(pred[:, None, :2], gt[None, :, :2])
    rb = torch.minimum(pred[:, None, 2:], gt[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_p = (pred[:, 2:] - pred[:, :2]).clamp(min=0).prod(-1)
    area_g = (gt[:, 2:] - gt[:, :2]).clamp(min=0).prod(-1)
    union = area_p[:, None] + area_g[None, :] - inter
    return torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))


def _iou_matrix(iou_fn: IouFn, pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    k, n = len(pred), len(gt)
    if k == 0 or n == 0:
        return np.zeros((k, n), dtype=np.float64)
    ious = as_numpy(iou_fn(torch.from_numpy(pred), torch.from_numpy(gt))).astype(np.float64)
    if ious.shape != (k, n):
        raise ValueError(f"iou_fn returned shape {tuple(ious.shape)}, expected ({k}, {n})")
    # an undefined IoU (0 / 0 of two empty boxes) is no overlap
    return np.nan_to_num(ious, nan=0.0)


def _prepare_class(
    preds: list[ImagePreds], gts: list[ImageTargets], cls: int, iou_fn: IouFn
) -> tuple[list[_ClassImage], int]:
    """Per-image sorted detections and IoUs for one class, plus its non-difficult GT count."""
    items, npos = [], 0
    for p, g in zip(preds, gts):
        pm, gm = p.labels == cls, g.labels == cls
        # Stable sort: among tied scores the input order decides, both here and globally.
        order = np.argsort(-p.scores[pm], kind="stable")
        boxes, scores = p.boxes[pm][order], p.scores[pm][order]
        difficult = g.difficult[gm]
        npos += int((~difficult).sum())
        items.append(_ClassImage(scores, _iou_matrix(iou_fn, boxes, g.boxes[gm]), difficult))
    return items, npos


def _class_ap(items: list[_ClassImage], npos: int, thr: float, use_07_metric: bool) -> float:
    """VOC matching at IoU >= thr; a detection whose best GT is difficult is dropped."""
    if npos == 0:
        return float("nan")
    all_scores, all_tp = [], []
    for it in items:
        k, n = it.ious.shape
        tp = np.zeros(k, dtype=bool)
        keep = np.ones(k, dtype=bool)
        if n:
            matched = np.zeros(n, dtype=bool)
            best = it.ious.argmax(axis=1)
            for d in range(k):
                j = best[d]
                if it.ious[d, j] < thr:
                    continue
                if it.difficult[j]:
                    keep[d] = False
                elif not matched[j]:
                    tp[d] = matched[j] = True
                # else: best GT already taken by a higher score -> FP (VOC does not fall back).
        all_scores.append(it.scores[keep])
        all_tp.append(tp[keep])
    scores, tp = np.concatenate(all_scores), np.concatenate(all_tp)
    if scores.size == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    tp = tp[order]
    ctp = np.cumsum(tp)
    cfp = np.cumsum(~tp)
    recall = ctp / npos
    precision = ctp / (ctp + cfp)
    return average_precision(recall, precision, use_07_metric)


def _nanmean(values: Sequence[float]) -> float:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[~np.isnan(arr)]
    return float(arr.mean()) if arr.size else float("nan")


def ap_over_thresholds(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    use_07_metric: bool = False,
    iou_fn: IouFn | None = None,
) -> dict[str, Any]:
    """VOC-style AP averaged over IoU thresholds (default 0.50:0.05:0.95).

    IoUs are computed once per (image, class) and reused for every threshold.

    Returns ``mAP`` (mean over thresholds of the per-threshold mAP), ``per_class``
    {name: AP averaged over thresholds}, ``per_threshold`` {threshold: mAP} and
    ``per_class_per_threshold`` {name: {threshold: AP}}. A class with no non-difficult GT
    gets NaN and is left out of every mean; ``mAP`` is NaN if no class has GT.
    """
    if not class_names:
        raise ValueError("class_names is empty")
    thresholds = [float(t) for t in thresholds]
    if not thresholds or any(not 0.0 <= t <= 1.0 for t in thresholds):
        raise ValueError(f"thresholds must be a non-empty list in [0, 1], got {thresholds}")
    check_pairing(predictions, ground_truths)
    iou_fn = box_iou_xyxy if iou_fn is None else iou_fn
    preds = normalize_predictions(predictions, len(class_names))
    gts = normalize_targets(ground_truths, len(class_names))

    table: dict[str, dict[float, float]] = {}
    for cls, name in enumerate(class_names):
        items, npos = _prepare_class(preds, gts, cls, iou_fn)
        table[name] = {t: _class_ap(items, npos, t, use_07_metric) for t in thresholds}
    per_threshold = {t: _nanmean([table[n][t] for n in class_names]) for t in thresholds}
    return {
        "mAP": _nanmean(list(per_threshold.values())),
        "per_class": {n: _nanmean(list(table[n].values())) for n in class_names},
        "per_threshold": per_threshold,
        "per_class_per_threshold": table,
    }


def voc_evaluate(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = False,
    iou_fn: IouFn | None = None,
) -> dict[str, Any]:
    """PASCAL VOC mAP at one IoU threshold.

    Per class, detections over all images are taken in descending score order; each is
    compared to the GT box of highest IoU in its image. IoU >= ``iou_threshold`` with an
    unmatched GT is a TP (that GT is then taken); with an already-taken GT it is an FP
    (no fallback to the next-best GT, as in the VOC devkit); with a difficult GT it is
    ignored (neither TP nor FP); below the threshold it is an FP. Difficult GT do not count
    towards recall.

    Args:
        predictions / ground_truths: per-image dicts, see the module docstring.
        class_names: C names; labels index into them.
        iou_threshold: match threshold, inclusive.
        use_07_metric: VOC2007 11-point AP instead of the all-point area.
        iou_fn: ``iou_fn(pred_boxes (K, D), gt_boxes (N, D)) -> (K, N)`` on float64
            tensors; default :func:`box_iou_xyxy` (xyxy boxes).

    Returns:
        ``{"mAP": float, "per_class": {name: AP}}``; a class without non-difficult GT gets
        NaN and is left out of ``mAP`` (NaN if no class has GT).
    """
    res = ap_over_thresholds(
        predictions, ground_truths, class_names, [iou_threshold], use_07_metric, iou_fn
    )
    return {"mAP": res["mAP"], "per_class": res["per_class"]}
