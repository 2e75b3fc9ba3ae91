"""Rotated mAP: perfect detections, hand-computed PR curves, IoU thresholds that only a
rotated IoU gets right, and input checks."""

import math

import pytest
import torch

from e2emfd.metrics.rotated import (
    evaluate_rotated,
    rotated_ap_over_thresholds,
    rotated_voc_evaluate,
)

CLASSES = ["car", "truck"]


def _gt(boxes, labels, difficult=None):
    out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5), "labels": labels}
    if difficult is not None:
        out["difficult"] = difficult
    return out


def _pred(boxes, scores, labels):
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 5),
        "scores": scores,
        "labels": labels,
    }


def test_perfect_detections_score_one_in_every_convention():
    gts = [
        _gt([[20, 20, 16, 6, 0.3], [60, 30, 30, 10, -1.2]], [0, 1]),
        _gt([[40, 40, 12, 5, 1.5]], [0]),
        _gt([], []),
    ]
    preds = [_pred(g["boxes"].tolist(), [0.9] * len(g["labels"]), g["labels"]) for g in gts]
    res = evaluate_rotated(preds, gts, CLASSES)
    assert res["mAP50_07"] == pytest.approx(1.0)
    assert res["mAP50"] == pytest.approx(1.0)
    assert res["mAP50_95"] == pytest.approx(1.0)
    assert res["per_class"] == {"car": pytest.approx(1.0), "truck": pytest.approx(1.0)}


def test_same_rectangle_in_another_parameterisation_is_a_perfect_match():
    gts = [_gt([[20, 20, 16, 6, 0.3]], [0])]
    preds = [_pred([[20, 20, 6, 16, 0.3 + math.pi / 2]], [0.8], [0])]
    assert rotated_voc_evaluate(preds, gts, CLASSES)["mAP"] == pytest.approx(1.0)


def test_hand_computed_precision_recall_curve():
    # class car: 3 ground-truth boxes over two images. Detections by score:
    #   d1 exact on gt A (TP), d2 on gt B but turned 90 degrees (IoU 2*2/(16+16-4) = 1/7: FP),
    #   d3 exact on gt C (TP); gt B is missed.
    # precision 1, 1/2, 2/3 at recall 1/3, 1/3, 2/3.
    # all-point AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    # VOC07: t = 0..0.3 -> 1 (4 points), t = 0.4..0.6 -> 2/3 (3 points), else 0 -> 6/11
    gts = [
        _gt([[10, 10, 8, 2, 0.0], [50, 50, 8, 2, 0.4]], [0, 0]),
        _gt([[30, 30, 8, 2, -0.7]], [0]),
    ]
    preds = [
        _pred([[10, 10, 8, 2, 0.0], [50, 50, 8, 2, 0.4 + math.pi / 2]], [0.9, 0.8], [0, 0]),
        _pred([[30, 30, 8, 2, -0.7]], [0.7], [0]),
    ]
    all_point = rotated_voc_evaluate(preds, gts, CLASSES, use_07_metric=False)
    voc07 = rotated_voc_evaluate(preds, gts, CLASSES, use_07_metric=True)
    assert all_point["per_class"]["car"] == pytest.approx(5 / 9)
    assert voc07["per_class"]["car"] == pytest.approx(6 / 11)
    assert math.isnan(voc07["per_class"]["truck"])  # no ground truth: left out of the mean
    assert voc07["mAP"] == pytest.approx(6 / 11)


def test_iou_thresholds_use_the_rotated_overlap():
    # a 4 x 4 square and the same square turned 45 degrees: the overlap is a regular
    # octagon, IoU = 1 / sqrt(2) = 0.7071: a match at 0.50..0.70, a miss at 0.75..0.95
    gts = [_gt([[20, 20, 4, 4, 0.0]], [1])]
    preds = [_pred([[20, 20, 4, 4, math.pi / 4]], [0.5], [1])]
    res = rotated_ap_over_thresholds(preds, gts, CLASSES)
    per_t = res["per_threshold"]
    assert all(per_t[t] == pytest.approx(1.0) for t in (0.5, 0.55, 0.6, 0.65, 0.7))
    assert all(per_t[t] == 0.0 for t in (0.75, 0.8, 0.85, 0.9, 0.95))
    assert res["mAP"] == pytest.approx(0.5)
    assert evaluate_rotated(preds, gts, CLASSES)["mAP50_95"] == pytest.approx(0.5)


def test_difficult_ground_truth_is_ignored():
    gts = [_gt([[10, 10, 8, 2, 0.0], [40, 40, 8, 2, 0.0]], [0, 0], difficult=[False, True])]
    preds = [_pred([[10, 10, 8, 2, 0.0], [40, 40, 8, 2, 0.0]], [0.9, 0.95], [0, 0])]
    assert rotated_voc_evaluate(preds, gts, CLASSES)["mAP"] == pytest.approx(1.0)


def test_wrong_box_width_is_a_clear_error():
    gts = [_gt([[10, 10, 8, 2, 0.0]], [0])]
    bad = [{"boxes": torch.zeros(1, 4), "scores": [0.5], "labels": [0]}]
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        rotated_voc_evaluate(bad, gts, CLASSES)
    with pytest.raises(ValueError, match=r"\(K, 5\)"):
        evaluate_rotated(
            [_pred([], [], [])], [{"boxes": torch.zeros(1, 8), "labels": [0]}], CLASSES
        )
