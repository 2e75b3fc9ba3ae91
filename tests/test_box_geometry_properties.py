"""Box geometry and detection metrics against independent references.

* Rotated IoU against shapely on 100,000 random pairs (every equivalent form of the same
  rectangle, thin, zero-size, touching and nested boxes, coordinates up to 2e4 px); where
  shapely and our IoU disagree, exact rational arithmetic on the same corners decides
  (shapely itself sometimes returns 0 for a rectangle against its equivalent form).
* VOC AP against a small reference written from the Pascal VOC devkit's algorithm
  (``VOCevaldet``: greedy matching in score order, inclusive IoU threshold, difficult boxes
  ignored, no fallback to the next-best ground truth), on random cases with empty images,
  classes without predictions or ground truth, difficult boxes and tied scores.
* The four minimal cases that once gave wrong answers.
"""

from __future__ import annotations

import math
import random
from fractions import Fraction

import numpy as np
import pytest
import shapely
import torch

from e2emfd.engine.evaluate import rotated_scores
from e2emfd.metrics.rotated import rotated_voc_evaluate
from e2emfd.metrics.voc import voc_evaluate
from e2emfd.ops.rotated import (
    paired_rotated_box_iou,
    paired_rotated_giou,
    rotated_box_iou,
)
from e2emfd.ops.rotated_nms import rotated_batched_nms

# ----------------------------------------------------------------------- the four cases


def test_voc_two_zero_area_boxes_are_not_a_match():
    preds = [{"boxes": [[100, 100, 100, 120]], "scores": [0.9], "labels": [0]}]
    gts = [{"boxes": [[5, 5, 5, 15]], "labels": [0]}]
    for use_07 in (True, False):
        assert voc_evaluate(preds, gts, ["a"], use_07_metric=use_07)["mAP"] == 0.0


def test_rotated_iou_of_a_rectangle_and_its_other_form_is_one():
    a = torch.tensor([[0, 0, 6, 5, -0.4]], dtype=torch.float64)
    b = torch.tensor([[0, 0, 5, 6, -0.4 + math.pi / 2]], dtype=torch.float64)
    assert rotated_box_iou(a, b).item() == pytest.approx(1.0, abs=1e-9)
    assert rotated_box_iou(b, a).item() == pytest.approx(1.0, abs=1e-9)
    preds = [{"boxes": [[100, 100, 6, 5, -0.4]], "scores": [0.9], "labels": [0]}]
    gts = [{"boxes": [[100, 100, 5, 6, -0.4 + math.pi / 2]], "labels": [0]}]
    assert rotated_voc_evaluate(preds, gts, ["a"])["mAP"] == pytest.approx(1.0)
    # every user of the clipper: GIoU loss, NMS
    assert paired_rotated_giou(a, b).item() == pytest.approx(1.0, abs=1e-9)
    keep = rotated_batched_nms(torch.cat([a, b]), torch.tensor([0.9, 0.8]), torch.zeros(2), 0.99)
    assert keep.tolist() == [0]


def test_paired_rotated_iou_with_a_zero_size_box_is_zero():
    a = torch.tensor([[0, 0, 1, 1, 0.2]])
    b = torch.tensor([[100.0, 0, 0, 0, 0]])
    assert paired_rotated_box_iou(a, b).item() == 0.0
    assert paired_rotated_box_iou(b, a).item() == 0.0
    # and where it used to be 1.0 by a rounding residue: many random boxes
    gen = torch.Generator().manual_seed(0)
    n = 2000
    a = torch.cat(
        [
            torch.rand(n, 2, generator=gen) * 100,
            torch.rand(n, 2, generator=gen) * 20 + 0.1,
            torch.rand(n, 1, generator=gen) * 3 - 1.5,
        ],
        1,
    ).double()
    b = torch.cat(
        [
            torch.rand(n, 2, generator=gen) * 100,
            torch.zeros(n, 2),
            torch.rand(n, 1, generator=gen) * 3,
        ],
        1,
    ).double()
    assert paired_rotated_box_iou(a, b).abs().max().item() == 0.0


def test_rotated_evaluation_reports_ap50_95_under_per_class():
    # one prediction with IoU 0.8 against its ground truth: AP50 = 1, AP50:95 = 0.7
    gts = [{"boxes": torch.tensor([[50.0, 50, 20, 10, 0.3]]), "labels": torch.tensor([0])}]
    preds = [
        {
            "boxes": torch.tensor([[50.0, 50, 16, 10, 0.3]]),
            "scores": torch.tensor([0.9]),
            "labels": torch.tensor([0]),
        }
    ]
    res = rotated_scores(preds, gts, ["car"])
    assert res["per_class_AP50"]["car"] == pytest.approx(1.0)
    assert res["per_class"]["car"] == pytest.approx(0.7)  # thresholds 0.50 .. 0.80
    assert res["AP"] == pytest.approx(0.7)


# --------------------------------------------------------- rotated IoU: exact reference


def _corners(boxes: np.ndarray) -> np.ndarray:
    """(N, 5) cx cy w h angle -> (N, 4, 2) float64 corners, counter-clockwise in y-down
    axes (the orientation does not matter to the references below)."""
    cx, cy, w, h, a = boxes.T
    c, s = np.cos(a), np.sin(a)
    dx = np.stack([-w, w, w, -w], 1) / 2
    dy = np.stack([-h, -h, h, h], 1) / 2
    return np.stack(
        [
            cx[:, None] + dx * c[:, None] - dy * s[:, None],
            cy[:, None] + dx * s[:, None] + dy * c[:, None],
        ],
        -1,
    )


def _exact_area(poly: list[tuple[Fraction, Fraction]]) -> Fraction:
    return abs(sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1])))


def _exact_iou(pa: np.ndarray, pb: np.ndarray) -> float:
    """IoU of two convex quadrilaterals whose float corners are taken as exact rationals:
    Sutherland-Hodgman in rational arithmetic, no rounding anywhere."""
    a = [(Fraction(float(x)), Fraction(float(y))) for x, y in pa]
    b = [(Fraction(float(x)), Fraction(float(y))) for x, y in pb]
    area_a, area_b = _exact_area(a), _exact_area(b)
    if area_a == 0 or area_b == 0:
        return 0.0
    # orient the clipper so that "inside" is the left side of each edge
    signed = sum(x0 * y1 - x1 * y0 for (x0, y0), (x1, y1) in zip(b, b[1:] + b[:1]))
    if signed < 0:
        b = b[::-1]
    out = a
    for (px, py), (qx, qy) in zip(b, b[1:] + b[:1]):
        if not out:
            break
        src, out = out, []
        side = [(qx - px) * (y - py) - (qy - py) * (x - px) for x, y in src]
        for i, (x, y) in enumerate(src):
            j = (i + 1) % len(src)
            if side[i] >= 0:
                out.append((x, y))
            if (side[i] >= 0) != (side[j] >= 0):
                t = side[i] / (side[i] - side[j])
                out.append((x + t * (src[j][0] - x), y + t * (src[j][1] - y)))
    inter = _exact_area(out) if len(out) >= 3 else Fraction(0)
    return float(inter / (area_a + area_b - inter))


def _equivalent_form(boxes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The same rectangles written as (h, w, a +- pi/2) or (w, h, a +- pi), at random."""
    out = boxes.copy()
    kind = rng.integers(0, 4, len(boxes))
    swap = kind < 2
    out[swap, 2], out[swap, 3] = boxes[swap, 3], boxes[swap, 2]
    out[:, 4] += np.choose(kind, [np.pi / 2, -np.pi / 2, np.pi, -np.pi])
    return out


def _random_pairs(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping, thin, zero-size, touching, nested and identical pairs, centres up to
    2e4 px, in equal shares."""

    def boxes(m, lo=0.05, hi=400.0):
        centre = rng.uniform(0, 2e4, (m, 2))
        size = np.exp(rng.uniform(math.log(lo), math.log(hi), (m, 2)))
        return np.concatenate([centre, size, rng.uniform(-4, 4, (m, 1))], 1)

    share = n // 6
    parts = []
    # random overlapping pairs: b's centre within a's reach
    a = boxes(share)
    b = boxes(share)
    b[:, :2] = a[:, :2] + rng.normal(0, 1, (share, 2)) * a[:, 2:4].max(1, keepdims=True) / 2
    parts.append((a, b))
    # the same rectangle, another form (and the identical form for a fifth of them)
    a = boxes(share)
    b = _equivalent_form(a, rng)
    b[: share // 5] = a[: share // 5]
    parts.append((a, b))
    # near-degenerate thin boxes against a box around them or their own other form
    a = boxes(share)
    a[:, 3] = a[:, 2] * np.exp(rng.uniform(math.log(1e-7), math.log(1e-3), share))
    b = np.where(rng.random((share, 1)) < 0.5, _equivalent_form(a, rng), boxes(share))
    b[:, :2] = np.where(rng.random((share, 1)) < 0.5, a[:, :2], b[:, :2])
    parts.append((a, b))
    # zero-size boxes (width, height or both zero) against boxes around them
    a = boxes(share)
    zero = rng.integers(0, 3, share)
    a[zero != 1, 2] = 0.0
    a[zero != 0, 3] = 0.0
    b = boxes(share)
    b[:, :2] = a[:, :2]
    if rng.random() < 2:  # both orders
        a[::2], b[::2] = b[::2].copy(), a[::2].copy()
    parts.append((a, b))
    # touching: b is a's neighbour along one of its sides (same angle, shared edge line)
    a = boxes(share)
    b = boxes(share)
    b[:, 4] = a[:, 4]
    along = rng.integers(0, 2, share)
    offset = np.where(along == 0, (a[:, 2] + b[:, 2]) / 2, (a[:, 3] + b[:, 3]) / 2)
    direction = np.where(along == 0, a[:, 4], a[:, 4] + np.pi / 2)
    b[:, 0] = a[:, 0] + offset * np.cos(direction)
    b[:, 1] = a[:, 1] + offset * np.sin(direction)
    parts.append((a, b))
    # nested: b inside a (shrunk, shifted and turned so that its corners stay inside)
    rest = n - 5 * share
    a = boxes(rest)
    b = a.copy()
    f = rng.uniform(0.05, 0.5, (rest, 1))
    b[:, 2:4] = a[:, 2:4] * f
    b[:, 4] = a[:, 4] + rng.uniform(-0.3, 0.3, rest)
    c, s = np.cos(a[:, 4]), np.sin(a[:, 4])
    u = rng.uniform(-0.2, 0.2, rest) * a[:, 2]
    v = rng.uniform(-0.2, 0.2, rest) * a[:, 3]
    b[:, 0] += u * c - v * s
    b[:, 1] += u * s + v * c
    parts.append((a, b))
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _shapely_iou(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    ga, gb = shapely.polygons(pa), shapely.polygons(pb)
    inter = shapely.area(shapely.intersection(ga, gb))
    area_a, area_b = shapely.area(ga), shapely.area(gb)
    union = area_a + area_b - inter
    ok = (area_a > 0) & (area_b > 0) & (union > 0)
    return np.where(ok, inter / np.where(ok, union, 1.0), 0.0)


def test_rotated_iou_matches_an_exact_reference_on_100k_pairs():
    rng = np.random.default_rng(17)
    a, b = _random_pairs(rng, 100_000)
    ours = paired_rotated_box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    ours_swapped = paired_rotated_box_iou(torch.from_numpy(b), torch.from_numpy(a)).numpy()
    pa, pb = _corners(a), _corners(b)
    with np.errstate(all="ignore"):
        ref = _shapely_iou(pa, pb)
    # shapely is not exact either: decide every disagreement in rational arithmetic
    tol = 1e-6
    doubt = np.nonzero((np.abs(ours - ref) > tol) | (np.abs(ours_swapped - ref) > tol))[0]
    assert len(doubt) < 500, f"{len(doubt)} disagreements with shapely"
    for i in doubt:
        ref[i] = _exact_iou(pa[i], pb[i])
    err = np.maximum(np.abs(ours - ref), np.abs(ours_swapped - ref))
    worst = int(err.argmax())
    assert err[worst] <= tol, (a[worst].tolist(), b[worst].tolist(), ours[worst], ref[worst])
    # the same rectangle in any form has IoU 1 with itself, zero-size boxes 0 with anything
    share = 100_000 // 6
    assert np.abs(ours[share : 2 * share] - 1).max() < 1e-9
    assert ours[3 * share : 4 * share].max() == 0.0
    # the pairwise matrix and the rotated metric see the same IoU
    idx = rng.choice(len(a), 300, replace=False)
    matrix = rotated_box_iou(torch.from_numpy(a[idx]), torch.from_numpy(b[idx])).numpy()
    assert np.abs(np.diag(matrix) - ref[idx]).max() <= tol


def test_rotated_giou_is_one_for_every_equivalent_form():
    rng = np.random.default_rng(3)
    a, _ = _random_pairs(rng, 6000)
    a = a[a[:, 2] * a[:, 3] > 0]
    b = _equivalent_form(a, rng)
    giou = paired_rotated_giou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    assert np.abs(giou - 1).max() < 1e-6


def test_exact_reference_agrees_with_hand_values():
    unit = _corners(np.array([[0.5, 0.5, 1.0, 1.0, 0.0]]))[0]
    half = _corners(np.array([[1.0, 0.5, 1.0, 1.0, 0.0]]))[0]
    assert _exact_iou(unit, half) == pytest.approx(1 / 3)
    assert _exact_iou(unit, unit) == 1.0
    far = _corners(np.array([[5.0, 5.0, 1.0, 1.0, 0.3]]))[0]
    assert _exact_iou(unit, far) == 0.0


# --------------------------------------------------------------- VOC: devkit reference


def _iou(p, g) -> float:
    iw = min(p[2], g[2]) - max(p[0], g[0])
    ih = min(p[3], g[3]) - max(p[1], g[1])
    inter = max(iw, 0.0) * max(ih, 0.0)
    union = (p[2] - p[0]) * (p[3] - p[1]) + (g[2] - g[0]) * (g[3] - g[1]) - inter
    return inter / union if union > 0 else 0.0


def _devkit_class_ap(preds, gts, cls, thr, use_07):
    """One class's AP as the VOC devkit computes it (VOCevaldet), written from its steps;
    conventions: no +1 on widths, IoU >= thr, recall points at exactly k/10."""
    truth = {}
    npos = 0
    for img, g in enumerate(gts):
        rows = [
            (box, bool(d))
            for box, lab, d in zip(g["boxes"], g["labels"], g["difficult"])
            if lab == cls
        ]
        truth[img] = {"rows": rows, "taken": [False] * len(rows)}
        npos += sum(not d for _, d in rows)
    dets = [
        (img, s, box)
        for img, p in enumerate(preds)
        for box, s, lab in zip(p["boxes"], p["scores"], p["labels"])
        if lab == cls
    ]
    dets.sort(key=lambda d: -d[1])  # stable: ties keep image order, then input order
    if npos == 0:
        return float("nan")
    tp, fp = [], []
    for img, _, box in dets:
        rows = truth[img]["rows"]
        best, jmax = -math.inf, -1
        for j, (g, _) in enumerate(rows):
            o = _iou(box, g)
            if o > best:
                best, jmax = o, j
        if jmax >= 0 and best >= thr:
            if rows[jmax][1]:
                continue  # difficult: neither true nor false positive
            if not truth[img]["taken"][jmax]:
                truth[img]["taken"][jmax] = True
                tp.append(1), fp.append(0)
            else:
                tp.append(0), fp.append(1)
        else:
            tp.append(0), fp.append(1)
    ctp, cfp = np.cumsum(tp, dtype=float), np.cumsum(fp, dtype=float)
    rec = ctp / npos
    prec = ctp / np.maximum(ctp + cfp, np.finfo(np.float64).eps)
    if use_07:
        ap = 0.0
        for k in range(11):
            reached = prec[rec >= k / 10]
            ap += (reached.max() if reached.size else 0.0) / 11
        return ap
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    change = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[change + 1] - mrec[change]) * mpre[change + 1]))


def _random_voc_case(r: random.Random, num_classes: int):
    def box():
        x, y = r.randint(0, 40), r.randint(0, 40)
        # integer corners and some zero-area boxes: tied and undefined IoUs happen
        return [x, y, x + r.choice([0, 4, 8, 10, 12, 20]), y + r.choice([0, 5, 8, 10, 16])]

    preds, gts = [], []
    for _ in range(r.randint(0, 6)):
        ng = r.choice([0, 0, 1, 2, 4])
        boxes = [box() for _ in range(ng)]
        gts.append(
            {
                "boxes": boxes,
                "labels": [r.randrange(num_classes) for _ in boxes],
                "difficult": [r.random() < 0.2 for _ in boxes],
            }
        )
        npred = r.choice([0, 1, 3, 6])
        # near-copies of the ground truth and strays; scores from a small set: ties
        pb = [
            (
                [v + r.choice([0, 0, 1, -2]) for v in r.choice(boxes)]
                if boxes and r.random() < 0.7
                else box()
            )
            for _ in range(npred)
        ]
        pb = [[b[0], b[1], max(b[2], b[0]), max(b[3], b[1])] for b in pb]
        preds.append(
            {
                "boxes": pb,
                "scores": [r.choice([0.3, 0.5, 0.5, 0.9]) for _ in pb],
                "labels": [r.randrange(num_classes) for _ in pb],
            }
        )
    return preds, gts


def test_voc_ap_matches_the_devkit_reference_on_random_cases():
    r = random.Random(0)
    classes = ["a", "b", "c"]
    checked = 0
    for _ in range(400):
        preds, gts = _random_voc_case(r, len(classes))
        for thr in (0.5, 0.75):
            for use_07 in (True, False):
                res = voc_evaluate(preds, gts, classes, iou_threshold=thr, use_07_metric=use_07)
                want = {
                    c: _devkit_class_ap(preds, gts, i, thr, use_07) for i, c in enumerate(classes)
                }
                for c in classes:
                    got = res["per_class"][c]
                    if math.isnan(want[c]):
                        assert math.isnan(got)
                    else:
                        assert got == pytest.approx(want[c], abs=1e-12), (preds, gts, c)
                        checked += 1
                defined = [v for v in want.values() if not math.isnan(v)]
                if defined:
                    assert res["mAP"] == pytest.approx(sum(defined) / len(defined), abs=1e-12)
                else:
                    assert math.isnan(res["mAP"])
    assert checked > 500
