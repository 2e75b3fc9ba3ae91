"""Dynamic-k (SimOTA) matcher of the CFDP head, on hand-made cases."""

import math

import pytest
import torch

from e2emfd.boxes import box_codec
from e2emfd.boxes.axis_aligned import centre_prior
from e2emfd.config import DetectionConfig
from e2emfd.models.detection.matcher import (
    DynamicKMatcher,
    dynamic_k_assign,
    focal_class_cost,
)

HBB = box_codec("hbb")

WHWH = torch.tensor([200.0, 100.0, 200.0, 100.0])


def _logits(probs):
    p = torch.tensor(probs, dtype=torch.float64)
    return torch.log(p / (1 - p)).float()


def _giou_ref(a, b):
    """GIoU of two xyxy boxes, from plain Python arithmetic."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def test_centre_prior_hand_case():
    gt = torch.tensor([[10.0, 10.0, 30.0, 30.0]])  # centre (20, 20), region +- 50
    boxes = torch.tensor(
        [
            [20.0, 20.0, 30.0, 30.0],  # centre (25, 25): in box and region
            [40.0, 40.0, 60.0, 60.0],  # centre (50, 50): region only
            [100.0, 100.0, 120.0, 120.0],  # centre (110, 110): neither
        ]
    )
    in_box, in_centre = centre_prior(boxes, gt, radius=2.5)
    assert in_box[:, 0].tolist() == [True, False, False]
    assert in_centre[:, 0].tolist() == [True, True, False]


def test_cost_matches_hand_computation_and_prefers_the_right_proposal():
    gt = torch.tensor([[40.0, 20.0, 80.0, 60.0]])
    labels = torch.tensor([1])
    boxes = torch.tensor(
        [
            [40.0, 20.0, 80.0, 60.0],  # exact, right class
            [48.0, 26.0, 88.0, 66.0],  # shifted, right class
            [40.0, 20.0, 80.0, 60.0],  # exact, wrong class
            [150.0, 70.0, 190.0, 95.0],  # far: centre outside box and centre region
        ]
    )
    probs = [[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.8, 0.05, 0.1], [0.1, 0.8, 0.1]]
    matcher = DynamicKMatcher(
        HBB, DetectionConfig(loss_class=2.0, loss_l1=5.0, loss_giou=2.0, ota_k=5)
    )
    cost, iou = matcher.cost_matrix(_logits(probs), boxes, gt, labels, WHWH)

    a, g = 0.25, 2.0
    expected_costs = []
    for n in range(4):
        p = probs[n][1]
        c_cls = a * (1 - p) ** g * -math.log(p) - (1 - a) * p**g * -math.log(1 - p)
        b = boxes[n].tolist()
        l1 = sum(abs(b[i] - gt[0, i].item()) / WHWH[i].item() for i in range(4))
        inside = n < 3
        expected = 2 * c_cls + 5 * l1 - 2 * _giou_ref(b, gt[0].tolist())
        expected += 0.0 if inside else 100.0 + 10000.0
        assert cost[n, 0].item() == pytest.approx(expected, rel=1e-4, abs=1e-4)
        expected_costs.append(expected)
    assert cost[0, 0] < cost[1, 0]
    assert cost[0, 0] < cost[2, 0]
    assert cost[3, 0] > 10000
    assert iou[0, 0].item() == pytest.approx(1.0)
    # IoUs 1, 32*34/2112, 1, 0: k = floor(2.52) = 2, given to the two cheapest proposals
    # (the exact right-class one and the shifted one, not the wrong-class one)
    k = int(1 + 32 * 34 / (2 * 1600 - 32 * 34) + 1)
    assert k == 2
    p_idx, g_idx = matcher(_logits(probs), boxes, gt, labels, WHWH)
    cheapest = sorted(range(4), key=lambda i: expected_costs[i])[:k]
    assert sorted(p_idx.tolist()) == sorted(cheapest) == [0, 1]
    assert g_idx.tolist() == [0, 0]


def test_focal_class_cost_sign():
    prob = torch.tensor([[0.9, 0.1], [0.1, 0.9]])
    cost = focal_class_cost(prob, torch.tensor([0]), alpha=0.25, gamma=2.0)
    assert cost[0, 0] < 0 < cost[1, 0]  # confident right class is cheap, wrong is dear


def test_dynamic_k_grows_with_iou_mass():
    gt = torch.tensor([[50.0, 20.0, 100.0, 70.0], [120.0, 20.0, 170.0, 70.0]])
    labels = torch.tensor([0, 0])
    # GT 0: six near-copies (IoU ~0.85-0.9); GT 1: one loose proposal (IoU ~0.4)
    near = [[50.0 + d, 20.0 + d, 100.0 + d, 70.0 + d] for d in (0.5, 1, 1.5, 2, 2.5, 3)]
    loose = [[120.0, 20.0, 145.0, 60.0]]
    boxes = torch.tensor(near + loose)
    logits = torch.zeros(len(boxes), 2)
    matcher = DynamicKMatcher(HBB, DetectionConfig(ota_k=5))
    _, iou = matcher.cost_matrix(logits, boxes, gt, labels, WHWH)
    p_idx, g_idx = matcher(logits, boxes, gt, labels, WHWH)

    top5 = sorted(iou[:, 0].tolist(), reverse=True)[:5]
    expected_k0 = max(1, int(sum(top5)))
    assert expected_k0 >= 4
    assert (g_idx == 0).sum().item() == expected_k0
    assert (g_idx == 1).sum().item() == 1
    assert set(p_idx[g_idx == 0].tolist()) <= set(range(6))
    assert p_idx[g_idx == 1].tolist() == [6]


def test_dynamic_k_assign_hand_matrix_conflict_and_refill():
    # both GTs want proposal 0 (k = 1 each); it is cheaper for GT 1, so GT 0 must fall
    # back to the cheapest free proposal (2, not the taken 0)
    cost = torch.tensor([[1.0, 0.5], [9.0, 9.0], [3.0, 8.0], [4.0, 7.0]])
    iou = torch.tensor([[0.6, 0.6], [0.0, 0.0], [0.1, 0.0], [0.1, 0.0]])
    m = dynamic_k_assign(cost, iou, ota_k=5)
    assert m.tolist() == [[False, True], [False, False], [True, False], [False, False]]


def test_each_gt_gets_a_proposal_and_no_proposal_twice():
    gen = torch.Generator().manual_seed(0)
    matcher = DynamicKMatcher(HBB, DetectionConfig(ota_k=5))
    for g, n in [(1, 5), (3, 4), (5, 20), (8, 8), (12, 50)]:
        for _ in range(5):
            xy = torch.rand(g, 2, generator=gen) * 150
            gt = torch.cat([xy, xy + 5 + torch.rand(g, 2, generator=gen) * 40], 1)
            pxy = torch.rand(n, 2, generator=gen) * 150
            boxes = torch.cat([pxy, pxy + 5 + torch.rand(n, 2, generator=gen) * 40], 1)
            labels = torch.randint(0, 3, (g,), generator=gen)
            logits = torch.randn(n, 3, generator=gen)
            p_idx, g_idx = matcher(logits, boxes, gt, labels, WHWH)
            assert len(set(p_idx.tolist())) == len(p_idx)  # no proposal twice
            assert set(g_idx.tolist()) == set(range(g))  # every GT at least once


def test_more_gt_than_proposals_does_not_hang():
    gt = torch.tensor([[10.0 * i, 10.0, 10.0 * i + 8, 18.0] for i in range(6)])
    boxes = gt[:3] + 1.0
    p_idx, g_idx = DynamicKMatcher(HBB, DetectionConfig())(
        torch.zeros(3, 2), boxes, gt, torch.zeros(6, dtype=torch.long), WHWH
    )
    assert len(set(p_idx.tolist())) == len(p_idx) == 3
    assert len(set(g_idx.tolist())) == 3


def test_no_gt_image():
    p_idx, g_idx = DynamicKMatcher(HBB, DetectionConfig())(
        torch.randn(7, 3),
        torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(7, 1),
        torch.zeros(0, 4),
        torch.zeros(0, dtype=torch.long),
        WHWH,
    )
    assert p_idx.numel() == 0 and g_idx.numel() == 0
    assert p_idx.dtype == g_idx.dtype == torch.long


def test_dynamic_k_assign_steals_from_a_box_with_several_when_none_is_free():
    # GT 0 takes both proposals (k = 2); GT 1 (k = 1) loses proposal 0 in the conflict and
    # no proposal is free, so it takes its cheapest one from GT 0
    cost = torch.tensor([[1.0, 5.0], [1.0, 6.0]])
    iou = torch.tensor([[1.0, 0.3], [1.0, 0.0]])
    m = dynamic_k_assign(cost, iou, ota_k=5)
    assert m.tolist() == [[False, True], [True, False]]
