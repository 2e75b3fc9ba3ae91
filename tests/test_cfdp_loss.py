"""The set criterion of the CFDP head against float64 formulas written out by hand."""

import math

import pytest
import torch

from e2emfd.boxes import box_codec
from e2emfd.config import DetectionConfig
from e2emfd.losses.detection import SetCriterion

HBB = box_codec("hbb")


class FixedMatcher:
    """Returns preset (proposal_idx, gt_idx) per image, in call order."""

    def __init__(self, pairs):
        self.pairs = list(pairs)
        self.calls = 0

    def __call__(self, logits, boxes, gt_boxes, gt_labels, whwh):
        p, g = self.pairs[self.calls % len(self.pairs)]
        self.calls += 1
        return torch.tensor(p, dtype=torch.long), torch.tensor(g, dtype=torch.long)


def _focal_ref(x, y, alpha=0.25, gamma=2.0):
    p = 1 / (1 + math.exp(-x))
    if y:
        return -alpha * (1 - p) ** gamma * math.log(p)
    return -(1 - alpha) * p**gamma * math.log(1 - p)


def _giou_ref(a, b):
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    hull = (max(a[2], b[2]) - min(a[0], b[0])) * (max(a[3], b[3]) - min(a[1], b[1]))
    return inter / union - (hull - union) / hull


def _batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3)
    boxes = torch.tensor(
        [
            [[10.0, 10, 40, 30], [50, 5, 90, 45], [0, 0, 20, 20], [30, 30, 60, 60]],
            [[5.0, 5, 25, 35], [40, 40, 70, 60], [10, 50, 30, 70], [0, 0, 8, 8]],
        ]
    )
    targets = [
        {
            "boxes": torch.tensor([[12.0, 8, 42, 33], [55, 0, 95, 40]]),
            "labels": torch.tensor([2, 0]),
        },
        {"boxes": torch.tensor([[0.0, 0, 30, 40]]), "labels": torch.tensor([1])},
    ]
    whwh = torch.tensor([[100.0, 80, 100, 80], [64.0, 96, 64, 96]])
    # image 0: proposals 0 -> gt 0, 1 -> gt 1, 3 -> gt 0; image 1: proposal 0 -> gt 0
    pairs = [([0, 1, 3], [0, 1, 0]), ([0], [0])]
    return logits, boxes, targets, whwh, pairs


def _reference(logits, boxes, targets, whwh, pairs, w=(2.0, 5.0, 2.0)):
    num_gt = max(sum(len(t["labels"]) for t in targets), 1)
    cls = l1 = giou = 0.0
    for i, (props, gts) in enumerate(pairs):
        positive = {(p, targets[i]["labels"][g].item()) for p, g in zip(props, gts)}
        for n in range(logits.shape[1]):
            for c in range(logits.shape[2]):
                cls += _focal_ref(logits[i, n, c].item(), (n, c) in positive)
        for p, g in zip(props, gts):
            pb, tb = boxes[i, p].tolist(), targets[i]["boxes"][g].tolist()
            l1 += sum(abs(pb[k] - tb[k]) / whwh[i, k].item() for k in range(4))
            giou += 1 - _giou_ref(pb, tb)
    return {
        "loss_cls": w[0] * cls / num_gt,
        "loss_l1": w[1] * l1 / num_gt,
        "loss_giou": w[2] * giou / num_gt,
    }


def test_stage_loss_matches_hand_formulas():
    logits, boxes, targets, whwh, pairs = _batch()
    crit = SetCriterion(FixedMatcher(pairs), HBB, DetectionConfig())
    got = crit([logits], [boxes], targets, whwh)
    ref = _reference(logits, boxes, targets, whwh, pairs)
    assert set(got) == {"loss_cls", "loss_l1", "loss_giou"}
    for key, value in ref.items():
        assert got[key].item() == pytest.approx(value, rel=1e-5), key


def test_losses_sum_over_stages_each_with_its_own_matching():
    logits, boxes, targets, whwh, pairs = _batch()
    other = [([2], [1]), ([], [])]  # stage 2 matches differently (image 1: nothing)
    crit = SetCriterion(
        FixedMatcher(pairs + other),
        HBB,
        DetectionConfig(loss_class=1.0, loss_l1=3.0, loss_giou=0.5),
    )
    got = crit([logits, logits * 0.5], [boxes, boxes + 1], targets, whwh)
    r1 = _reference(logits, boxes, targets, whwh, pairs, (1.0, 3.0, 0.5))
    r2 = _reference(logits * 0.5, boxes + 1, targets, whwh, other, (1.0, 3.0, 0.5))
    for key in r1:
        assert got[key].item() == pytest.approx(r1[key] + r2[key], rel=1e-5), key


def test_images_without_objects():
    logits, boxes, targets, whwh, _ = _batch()
    empty = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}
    logits.requires_grad_(True)
    boxes.requires_grad_(True)

    # one empty image next to a normal one: only its negative classification term
    pairs = [([0, 1], [0, 1]), ([], [])]
    got = SetCriterion(FixedMatcher(pairs), HBB, DetectionConfig())(
        [logits], [boxes], [targets[0], empty], whwh
    )
    ref = _reference(logits.detach(), boxes.detach(), [targets[0], empty], whwh, pairs)
    for key in ref:
        assert got[key].item() == pytest.approx(ref[key], rel=1e-5), key

    # a batch without any object: negatives only, normalised by 1, gradients still flow
    got = SetCriterion(FixedMatcher([([], [])]), HBB, DetectionConfig())(
        [logits], [boxes], [empty, empty], whwh
    )
    neg = sum(_focal_ref(v, False) for v in logits.detach().flatten().tolist())
    assert got["loss_cls"].item() == pytest.approx(2.0 * neg, rel=1e-5)
    assert got["loss_l1"].item() == 0.0 and got["loss_giou"].item() == 0.0
    sum(got.values()).backward()
    assert torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0
    assert boxes.grad is not None and boxes.grad.abs().sum() == 0


def test_the_matcher_sees_detached_predictions():
    logits, boxes, targets, whwh, pairs = _batch()
    seen, fixed = [], FixedMatcher(pairs)

    def matcher(lg, bx, gb, gl, wh):
        seen.append((lg.requires_grad, bx.requires_grad))
        return fixed(lg, bx, gb, gl, wh)

    SetCriterion(matcher, HBB, DetectionConfig())(
        [logits.requires_grad_()], [boxes.requires_grad_()], targets, whwh
    )
    assert seen == [(False, False), (False, False)]
