"""Detection AP for rotated boxes: the VOC matching of :mod:`e2emfd.metrics.voc` with the
exact polygon IoU of :func:`e2emfd.ops.rotated.rotated_box_iou`.

Boxes are (K, 5) ``(cx, cy, w, h, angle)`` in pixels (le90 or any equivalent form: the IoU
only sees the rectangles). DroneVehicle papers report mAP at IoU 0.5 with VOC2007's
11-point AP (as mmrotate's ``eval_rbbox_map`` does by default).

The matching conventions are :mod:`e2emfd.metrics.voc`'s (inclusive IoU threshold, recall
points at exactly k/10, stable order on tied scores). The IoU itself is the exact polygon
overlap in float64 (checked against exact rational arithmetic); mmrotate computes it with
mmcv's ``box_iou_rotated`` in float32, and the DOTA devkit with its own polygon clipper
(``polyiou``) after an axis-aligned pre-filter with +1 widths, keeping pairs with IoU
``> threshold`` only.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from e2emfd.metrics.voc import (
    DEFAULT_THRESHOLDS,
    ap_over_thresholds,
    normalize_predictions,
    normalize_targets,
)
from e2emfd.ops.rotated import rotated_box_iou

__all__ = ["evaluate_rotated", "rotated_ap_over_thresholds", "rotated_iou", "rotated_voc_evaluate"]


def rotated_iou(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """The ``iou_fn`` for :mod:`e2emfd.metrics.voc`: (K, 5), (N, 5) -> (K, N) float64."""
    return rotated_box_iou(pred.double(), gt.double())


def _check(predictions, ground_truths, class_names) -> None:
    # voc.py accepts any box width; insist on five columns so that (K, 4) or (K, 8) inputs
    # fail with a clear message instead of a wrong IoU
    normalize_predictions(predictions, len(class_names), box_dim=5)
    normalize_targets(ground_truths, len(class_names), box_dim=5)


def rotated_voc_evaluate(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    iou_threshold: float = 0.5,
    use_07_metric: bool = True,
) -> dict[str, Any]:
    """Rotated mAP at one IoU threshold (default: mAP50 with the VOC07 11-point AP).

    Inputs as in :func:`e2emfd.metrics.voc.voc_evaluate` with (K, 5) boxes. Returns
    ``{"mAP": float, "per_class": {name: AP}}``; classes without ground truth are NaN and
    left out of the mean.
    """
    _check(predictions, ground_truths, class_names)
    res = ap_over_thresholds(
        predictions, ground_truths, class_names, [iou_threshold], use_07_metric, rotated_iou
    )
    return {"mAP": res["mAP"], "per_class": res["per_class"]}


def rotated_ap_over_thresholds(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_THRESHOLDS,
    use_07_metric: bool = False,
) -> dict[str, Any]:
    """Rotated AP averaged over IoU thresholds (default 0.50:0.05:0.95, all-point AP); the
    result has the keys of :func:`e2emfd.metrics.voc.ap_over_thresholds`."""
    _check(predictions, ground_truths, class_names)
    return ap_over_thresholds(
        predictions, ground_truths, class_names, thresholds, use_07_metric, rotated_iou
    )


def evaluate_rotated(
    predictions: Sequence[Mapping[str, Any]],
    ground_truths: Sequence[Mapping[str, Any]],
    class_names: Sequence[str],
) -> dict[str, Any]:
    """The DroneVehicle report:

    * ``mAP50_07``: mAP at IoU 0.5, VOC07 11-point (the number papers quote);
    * ``mAP50``: mAP at IoU 0.5, all-point;
    * ``mAP50_95``: all-point AP averaged over IoU 0.50:0.05:0.95;
    * ``per_class_07`` / ``per_class_AP50``: {name: AP50} in each AP convention;
    * ``per_class``: {name: all-point AP averaged over IoU 0.50:0.05:0.95} (the key
      :func:`e2emfd.metrics.detection.coco_evaluate` uses for the same quantity).
    """
    _check(predictions, ground_truths, class_names)
    all_point = ap_over_thresholds(
        predictions, ground_truths, class_names, DEFAULT_THRESHOLDS, False, rotated_iou
    )
    voc07 = ap_over_thresholds(predictions, ground_truths, class_names, [0.5], True, rotated_iou)
    table = all_point["per_class_per_threshold"]
    return {
        "mAP50_07": voc07["mAP"],
        "mAP50": all_point["per_threshold"][0.5],
        "mAP50_95": all_point["mAP"],
        "per_class_07": voc07["per_class"],
        "per_class_AP50": {name: table[name][0.5] for name in class_names},
        "per_class": all_point["per_class"],
    }
