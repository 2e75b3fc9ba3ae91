"""Detection metrics: COCO (pycocotools) and VOC-style AP against hand-computed values."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from e2emfd.metrics.detection import (
    ap_over_thresholds,
    coco_evaluate,
    to_coco_dataset,
    to_coco_results,
    voc_evaluate,
)

CLASSES = ["person", "car", "bus"]


def _t(x, dtype=torch.float32):
    return torch.as_tensor(x, dtype=dtype)


def _pred(boxes, scores, labels):
    return {
        "boxes": _t(boxes).reshape(-1, 4),
        "scores": _t(scores),
        "labels": _t(labels, torch.int64),
    }


def _gt(boxes, labels, difficult=None, h=640, w=640):
    d = {"boxes": _t(boxes).reshape(-1, 4), "labels": _t(labels, torch.int64)}
    d.update(height=h, width=w)
    if difficult is not None:
        d["difficult"] = torch.tensor(difficult, dtype=torch.bool)
    return d


def _interp101(recall: list[float], precision: list[float]) -> float:
    """COCO's 101-point AP, spelled out: mean over r in {0, .01, ..., 1} of the highest
    precision at any operating point with recall >= r (0 if none)."""
    total = 0.0
    for i in range(101):
        r = i / 100
        reached = [p for rc, p in zip(recall, precision) if rc >= r]
        total += max(reached) if reached else 0.0
    return total / 101


# ---------------------------------------------------------------- hand case shared by COCO/VOC
# 1 class, 3 GT in one image, 4 detections:
#   0.9 on A (IoU 1)       -> TP at every threshold
#   0.8 nowhere            -> FP
#   0.7 on B with IoU 0.72 -> TP for IoU thresholds 0.50..0.70, FP for 0.75..0.95
#   0.6 on C with IoU 0.25 -> FP
HAND_GT = [_gt([[0, 0, 100, 100], [200, 0, 300, 100], [400, 0, 500, 100]], [0, 0, 0])]
HAND_PRED = [
    _pred(
        [[0, 0, 100, 100], [0, 300, 100, 400], [200, 0, 300, 72], [400, 0, 450, 50]],
        [0.9, 0.8, 0.7, 0.6],
        [0, 0, 0, 0],
    )
]


def test_hand_case_ious_are_as_designed():
    ious = box_iou(HAND_PRED[0]["boxes"], HAND_GT[0]["boxes"]).max(dim=1).values
    assert ious.tolist() == pytest.approx([1.0, 0.0, 0.72, 0.25])


def test_coco_hand_case_101_point():
    res = coco_evaluate(HAND_PRED, HAND_GT, ["person"])
    # Order TP FP TP FP: recall 1/3 1/3 2/3 2/3, precision 1 1/2 2/3 1/2.
    ap_loose = _interp101([1 / 3, 1 / 3, 2 / 3, 2 / 3], [1, 1 / 2, 2 / 3, 1 / 2])
    # r = 0..0.33 -> 1 (34 points), r = 0.34..0.66 -> 2/3 (33 points), rest -> 0.
    assert ap_loose == pytest.approx(56 / 101)
    # Order TP FP FP FP: recall stays 1/3, best precision 1 -> 34 points of 1.
    ap_strict = _interp101([1 / 3] * 4, [1, 1 / 2, 1 / 3, 1 / 4])
    assert ap_strict == pytest.approx(34 / 101)
    assert res["AP50"] == pytest.approx(56 / 101, abs=1e-9)
    assert res["AP75"] == pytest.approx(34 / 101, abs=1e-9)
    # 5 thresholds (0.50..0.70) loose, 5 (0.75..0.95) strict.
    assert res["AP"] == pytest.approx(45 / 101, abs=1e-9)
    assert res["per_class"]["person"] == pytest.approx(45 / 101, abs=1e-9)
    assert res["per_class_AP50"]["person"] == pytest.approx(56 / 101, abs=1e-9)
    # Only large GT (100x100 > 96^2): small/medium have no GT -> NaN, not 0 or -1.
    assert math.isnan(res["APs"]) and math.isnan(res["APm"])
    assert res["APl"] == pytest.approx(res["AP"])
    # AR100: recall 2/3 at five thresholds, 1/3 at five -> 1/2.
    assert res["AR100"] == pytest.approx(0.5, abs=1e-9)


def test_voc_and_ap_over_thresholds_hand_case():
    # All-point at IoU 0.5: 1/3 * 1 + 1/3 * 2/3 = 5/9 ; strict ordering: 1/3 * 1.
    assert voc_evaluate(HAND_PRED, HAND_GT, ["person"])["mAP"] == pytest.approx(5 / 9)
    strict = voc_evaluate(HAND_PRED, HAND_GT, ["person"], iou_threshold=0.75)
    assert strict["per_class"]["person"] == pytest.approx(1 / 3)
    res = ap_over_thresholds(HAND_PRED, HAND_GT, ["person"])
    assert res["mAP"] == pytest.approx((5 * 5 / 9 + 5 * 1 / 3) / 10)
    assert res["per_threshold"][0.7] == pytest.approx(5 / 9)
    assert res["per_threshold"][0.75] == pytest.approx(1 / 3)
    assert len(res["per_threshold"]) == 10


# ---------------------------------------------------------------- COCO
def _perfect_dataset():
    # Sizes: small (< 32^2), medium (32^2..96^2), large (> 96^2), spread over classes/images.
    gts = [
        _gt([[10, 10, 30, 30], [100, 100, 150, 160], [200, 200, 400, 380]], [0, 1, 2]),
        _gt([[5, 5, 25, 20], [300, 50, 360, 100]], [2, 0]),
        _gt([[0, 0, 120, 130], [50, 400, 70, 420], [500, 500, 560, 570]], [1, 1, 2]),
    ]
    preds = [
        _pred(g["boxes"], torch.linspace(0.9, 0.5, len(g["labels"])), g["labels"]) for g in gts
    ]
    return preds, gts


def test_coco_perfect_detections_score_one():
    preds, gts = _perfect_dataset()
    res = coco_evaluate(preds, gts, CLASSES)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert res[key] == pytest.approx(1.0), key
    assert set(res["per_class"]) == set(CLASSES) == set(res["per_class_AP50"])
    assert all(v == pytest.approx(1.0) for v in res["per_class"].values())


def test_coco_numpy_torch_and_custom_image_ids_agree():
    preds, gts = HAND_PRED, HAND_GT
    np_preds = [{k: v.numpy() for k, v in p.items()} for p in preds]
    np_gts = [{k: (v.numpy() if torch.is_tensor(v) else v) for k, v in g.items()} for g in gts]
    a = coco_evaluate(preds, gts, ["person"])
    b = coco_evaluate(np_preds, np_gts, ["person"], image_ids=[42])
    assert a["AP"] == pytest.approx(b["AP"]) and a["AP50"] == pytest.approx(b["AP50"])


def test_coco_difficult_is_ignored():
    # One normal GT, one difficult GT.
    gts = [_gt([[0, 0, 100, 100], [200, 200, 300, 300]], [0, 0], difficult=[False, True])]
    # Difficult GT missed: not a miss.
    only_normal = [_pred([[0, 0, 100, 100]], [0.5], [0])]
    assert coco_evaluate(only_normal, gts, ["p"])["AP"] == pytest.approx(1.0)
    # A higher-scoring detection on the difficult box: not an FP either.
    both = [_pred([[0, 0, 100, 100], [200, 200, 300, 300]], [0.5, 0.9], [0, 0])]
    assert coco_evaluate(both, gts, ["p"])["AP"] == pytest.approx(1.0)
    # Control: the same missed box counted as normal GT halves recall.
    gts_plain = [_gt(gts[0]["boxes"], [0, 0])]
    assert coco_evaluate(only_normal, gts_plain, ["p"])["AP50"] < 0.6


def test_coco_empty_predictions():
    _, gts = _perfect_dataset()
    empty = [_pred(np.zeros((0, 4)), [], []) for _ in gts]
    res = coco_evaluate(empty, gts, CLASSES)
    for key in ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR100"):
        assert res[key] == 0.0, key
    assert all(v == 0.0 for v in res["per_class"].values())


def test_coco_images_without_gt_and_class_without_gt():
    # Image 1: one GT found at score 0.5. Image 2: no GT, one detection at 0.9 -> FP first.
    # Image 3: no GT, no predictions. Order FP TP -> precision 1/2 at recall 1 -> AP 1/2.
    gts = [_gt([[0, 0, 50, 50]], [0]), _gt(np.zeros((0, 4)), []), _gt(np.zeros((0, 4)), [])]
    preds = [
        _pred([[0, 0, 50, 50]], [0.5], [0]),
        _pred([[0, 0, 50, 50]], [0.9], [0]),
        _pred(np.zeros((0, 4)), [], []),
    ]
    res = coco_evaluate(preds, gts, ["person", "car"])
    assert res["AP50"] == pytest.approx(0.5)
    assert res["per_class_AP50"]["person"] == pytest.approx(0.5)
    # "car" has no GT: undefined -> NaN, and the mean over classes ignores it.
    assert math.isnan(res["per_class"]["car"]) and math.isnan(res["per_class_AP50"]["car"])
    assert voc_evaluate(preds, gts, ["person", "car"])["mAP"] == pytest.approx(0.5)


def test_coco_no_gt_at_all_is_nan():
    gts = [_gt(np.zeros((0, 4)), [])]
    res = coco_evaluate([_pred([[0, 0, 5, 5]], [0.3], [0])], gts, ["person"])
    assert math.isnan(res["AP"]) and math.isnan(res["per_class"]["person"])


def test_coco_silent(capsys):
    coco_evaluate(HAND_PRED, HAND_GT, ["person"])
    assert capsys.readouterr().out == ""


def test_to_coco_results_and_dataset():
    preds = [_pred([[10, 20, 30, 60]], [0.75], [2])]
    res = to_coco_results(preds, [7], CLASSES)
    assert res == [
        {"image_id": 7, "category_id": 3, "bbox": [10.0, 20.0, 20.0, 40.0], "score": 0.75}
    ]
    json.dumps(res)
    gts = [_gt([[0, 0, 10, 20], [5, 5, 9, 9]], [0, 1], difficult=[False, True], h=480, w=640)]
    ds = to_coco_dataset(gts, [7], CLASSES, file_names=["a.png"])
    json.dumps(ds)
    assert ds["images"] == [{"id": 7, "height": 480, "width": 640, "file_name": "a.png"}]
    assert [c["name"] for c in ds["categories"]] == CLASSES
    a0, a1 = ds["annotations"]
    assert a0["bbox"] == [0.0, 0.0, 10.0, 20.0] and a0["area"] == 200.0 and a0["iscrowd"] == 0
    assert a1["iscrowd"] == 1 and a1["category_id"] == 2 and a0["id"] >= 1 and a1["id"] != a0["id"]


@pytest.mark.parametrize(
    "preds, gts, msg",
    [
        ([_pred([[0, 0, 1, 1]], [1.0], [0])], [], "prediction dicts"),
        ([_pred([[0, 0, 1, 1]], [1.0], [5])], [_gt([[0, 0, 1, 1]], [0])], "labels"),
        ([_pred([[5, 0, 1, 1]], [1.0], [0])], [_gt([[0, 0, 1, 1]], [0])], "x2 >= x1"),
        ([{"boxes": np.zeros((1, 3)), "scores": [1.0], "labels": [0]}], [_gt([], [])], "shape"),
        ([{"boxes": np.zeros((1, 4)), "labels": [0]}], [_gt([], [])], "scores"),
    ],
)
def test_bad_input_raises(preds, gts, msg):
    with pytest.raises(ValueError, match=msg):
        coco_evaluate(preds, gts, CLASSES)


# ---------------------------------------------------------------- VOC
def _voc_hand():
    # 4 GT over 2 images (g4 never found). Sorted detections:
    #   0.9 img0 on g1 TP | 0.8 img1 nowhere FP | 0.7 img1 on g3 TP | 0.6 img0 on g2 TP |
    #   0.5 img0 duplicate on g1 FP (g1 already taken)
    gts = [
        _gt([[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0]),
        _gt([[0, 0, 10, 10], [50, 50, 60, 60]], [0, 0]),
    ]
    preds = [
        _pred([[0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 9]], [0.9, 0.6, 0.5], [0, 0, 0]),
        _pred([[100, 100, 110, 110], [0, 0, 10, 10]], [0.8, 0.7], [0, 0]),
    ]
    return preds, gts


# recall 1/4 1/4 2/4 3/4 3/4, precision 1 1/2 2/3 3/4 3/5.
# All-point: envelope 1 on (0, 1/4], 3/4 on (1/4, 3/4] -> 1/4 + 2/4 * 3/4 = 0.625.
# 11-point: t in {0, .1, .2} -> 1 ; t in {.3 .. .7} -> 3/4 ; t in {.8, .9, 1} -> 0.
VOC_ALL_POINT = 0.625
VOC_11_POINT = (3 * 1 + 5 * 0.75) / 11


def test_voc_all_point_and_11_point():
    preds, gts = _voc_hand()
    assert voc_evaluate(preds, gts, ["p"])["mAP"] == pytest.approx(VOC_ALL_POINT)
    res07 = voc_evaluate(preds, gts, ["p"], use_07_metric=True)
    assert res07["mAP"] == pytest.approx(VOC_11_POINT)
    assert res07["per_class"] == {"p": pytest.approx(VOC_11_POINT)}


def test_voc_difficult_neither_tp_nor_fp():
    preds, gts = _voc_hand()
    # A difficult GT in image 1 with a high-scoring detection on it: result unchanged.
    gts[1] = _gt(
        [[0, 0, 10, 10], [50, 50, 60, 60], [200, 200, 210, 210]],
        [0, 0, 0],
        difficult=[False, False, True],
    )
    p1 = preds[1]
    preds[1] = _pred(
        torch.cat([p1["boxes"], _t([[200, 200, 210, 210]])]),
        torch.cat([p1["scores"], _t([0.95])]),
        [0, 0, 0],
    )
    assert voc_evaluate(preds, gts, ["p"])["mAP"] == pytest.approx(VOC_ALL_POINT)
    # Control: as a normal GT it is a TP and raises AP.
    gts[1]["difficult"] = torch.zeros(3, dtype=torch.bool)
    assert voc_evaluate(preds, gts, ["p"])["mAP"] > VOC_ALL_POINT + 0.05


def test_voc_numpy_and_lists_match_torch():
    preds, gts = _voc_hand()
    as_np = [{k: v.numpy() for k, v in p.items()} for p in preds]
    as_list = [{k: (v.tolist() if torch.is_tensor(v) else v) for k, v in g.items()} for g in gts]
    assert voc_evaluate(as_np, as_list, ["p"])["mAP"] == pytest.approx(VOC_ALL_POINT)


def test_voc_empty_predictions_and_class_without_gt():
    _, gts = _voc_hand()
    empty = [_pred(np.zeros((0, 4)), [], []) for _ in gts]
    res = voc_evaluate(empty, gts, ["p", "q"])
    assert res["mAP"] == 0.0 and res["per_class"]["p"] == 0.0
    assert math.isnan(res["per_class"]["q"])


def test_voc_custom_iou_fn_is_used_on_non_xyxy_boxes():
    # 5-column "rotated" boxes: the generic code must not assume 4 columns.
    preds, gts = _voc_hand()
    angle = lambda b: torch.cat([b, torch.zeros(len(b), 1)], dim=1)  # noqa: E731
    preds5 = [{**p, "boxes": angle(p["boxes"])} for p in preds]
    gts5 = [{**g, "boxes": angle(g["boxes"])} for g in gts]
    calls = []

    def iou_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        calls.append((a.shape[1], b.shape[1]))
        return box_iou(a[:, :4], b[:, :4])

    assert voc_evaluate(preds5, gts5, ["p"], iou_fn=iou_fn)["mAP"] == pytest.approx(VOC_ALL_POINT)
    assert calls and all(c == (5, 5) for c in calls)
    # An IoU of zero everywhere makes everything an FP: proves the result comes from iou_fn.
    zero = lambda a, b: torch.zeros(len(a), len(b))  # noqa: E731
    assert voc_evaluate(preds, gts, ["p"], iou_fn=zero)["mAP"] == 0.0
    bad = lambda a, b: torch.zeros(len(a), len(b) + 1)  # noqa: E731
    with pytest.raises(ValueError, match="iou_fn"):
        voc_evaluate(preds, gts, ["p"], iou_fn=bad)


def test_voc_11_point_recall_boundaries():
    # 10 GT, exactly 3 found: recall reaches exactly 0.3 at precision 1 -> points t = 0, .1,
    # .2, .3 score 1 -> 4/11 (a float 0.30000000000000004 threshold would give 3/11).
    boxes = [[20 * i, 0, 20 * i + 10, 10] for i in range(10)]
    gts = [_gt(boxes, [0] * 10)]
    preds = [_pred(boxes[:3], [0.9, 0.8, 0.7], [0, 0, 0])]
    assert voc_evaluate(preds, gts, ["p"], use_07_metric=True)["mAP"] == pytest.approx(4 / 11)
    # Full recall at precision 1 must reach the t = 1.0 point too.
    full = [_pred(boxes, np.linspace(0.9, 0.1, 10), [0] * 10)]
    assert voc_evaluate(full, gts, ["p"], use_07_metric=True)["mAP"] == pytest.approx(1.0)
