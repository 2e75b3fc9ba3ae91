"""Rotated-box ops against independent references: shapely polygons, torchvision's
axis-aligned RoIAlign and NMS, scipy's bilinear sampling and hand computations."""

import math

import numpy as np
import pytest
import torch
from scipy import ndimage
from shapely.geometry import MultiPoint, Polygon
from torchvision.ops import batched_nms, box_iou, roi_align

from e2emfd.boxes import box_codec
from e2emfd.models.detection.pooler import MultiLevelRoIAlign, assign_levels, flatten_pyramid
from e2emfd.ops.rotated import (
    hflip_obb,
    min_area_rect,
    normalize_le90,
    obb_to_hbb,
    obb_to_poly,
    paired_rotated_box_iou,
    paired_rotated_giou,
    poly_to_obb,
    rotated_box_iou,
    rotated_box_mask,
    rotated_roi_align,
    scale_obb,
)
from e2emfd.ops.rotated_nms import rotated_batched_nms, rotated_nms


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _random_boxes(n: int, gen: torch.Generator, spread: float = 30.0) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=gen, dtype=torch.float64) * spread
    size = torch.rand(n, 2, generator=gen, dtype=torch.float64) * 20 + 0.5
    angle = (torch.rand(n, 1, generator=gen, dtype=torch.float64) - 0.5) * 4 * math.pi
    return torch.cat([centre, size, angle], dim=1)


def _shapely_rect(box) -> Polygon:
    """The rectangle built independently: rotate the four corners with numpy."""
    cx, cy, w, h, a = (float(v) for v in box)
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    local = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return Polygon(local @ rot.T + [cx, cy])


def _shapely_iou(a, b) -> float:
    pa, pb = _shapely_rect(a), _shapely_rect(b)
    union = pa.union(pb).area
    return pa.intersection(pb).area / union if union > 0 else 0.0


def _angle_diff(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Distance between two orientations of a rectangle side (period pi)."""
    d = torch.remainder(a - b, math.pi)
    return torch.minimum(d, math.pi - d)


# ------------------------------------------------------------------------- conversions


def test_normalize_le90_by_hand():
    boxes = torch.tensor(
        [
            [0, 0, 4, 2, 0.0],
            [0, 0, 2, 4, 0.0],  # w < h: swap, angle + pi/2 -> pi/2 wraps to -pi/2
            [0, 0, 4, 2, math.pi],  # a + pi: same rectangle
            [0, 0, 4, 2, math.pi / 2],  # exactly pi/2 wraps to -pi/2
            [0, 0, 4, 2, -math.pi / 2],  # already in range
            [0, 0, 4, 2, 3 * math.pi / 4],
            [0, 0, 2, 4, -0.3],
        ],
        dtype=torch.float64,
    )
    expected = torch.tensor(
        [
            [0, 0, 4, 2, 0.0],
            [0, 0, 4, 2, -math.pi / 2],
            [0, 0, 4, 2, 0.0],
            [0, 0, 4, 2, -math.pi / 2],
            [0, 0, 4, 2, -math.pi / 2],
            [0, 0, 4, 2, -math.pi / 4],
            [0, 0, 4, 2, math.pi / 2 - 0.3],
        ],
        dtype=torch.float64,
    )
    out = normalize_le90(boxes)
    torch.testing.assert_close(out, expected, atol=1e-12, rtol=0)
    assert (out[:, 4] >= -math.pi / 2).all() and (out[:, 4] < math.pi / 2).all()


def test_normalize_le90_tiny_negative_angle_stays_in_range():
    out = normalize_le90(torch.tensor([[0, 0, 4, 2, -1e-17], [0, 0, 4, 2, -math.pi / 2 - 1e-17]]))
    assert (out[:, 4] >= -math.pi / 2).all() and (out[:, 4] < math.pi / 2).all()


def test_obb_to_poly_corners_by_hand():
    # 4 x 2 box at (10, 20) turned by 90 degrees: the w side points down (+y)
    poly = obb_to_poly(torch.tensor([[10.0, 20.0, 4.0, 2.0, math.pi / 2]], dtype=torch.float64))
    expected = torch.tensor([[11, 18, 11, 22, 9, 22, 9, 18]], dtype=torch.float64)
    torch.testing.assert_close(poly, expected, atol=1e-12, rtol=0)


@pytest.mark.parametrize("degrees", list(range(-270, 271, 15)) + [89.999, -90.001, 0.001])
def test_poly_obb_round_trip_all_angles(degrees):
    a = math.radians(degrees)
    boxes = torch.tensor(
        [[50, 40, 30, 10, a], [5, 7, 6, 18, a], [0.5, 900.25, 1.5, 0.25, a]], dtype=torch.float64
    )
    out = poly_to_obb(obb_to_poly(boxes))
    ref = normalize_le90(boxes)
    # the same rectangle: w >= h, angle in range, centre, sizes and orientation preserved
    assert (out[:, 2] >= out[:, 3]).all()
    assert (out[:, 4] >= -math.pi / 2).all() and (out[:, 4] < math.pi / 2).all()
    torch.testing.assert_close(out[:, :4], ref[:, :4], atol=1e-9, rtol=0)
    assert _angle_diff(out[:, 4], ref[:, 4]).max() < 1e-9
    # and its corners are the input corners (as a set)
    back = obb_to_poly(out).view(-1, 4, 2)
    orig = obb_to_poly(boxes).view(-1, 4, 2)
    d = torch.cdist(back, orig).amin(-1).amax()
    assert d < 1e-9


def test_poly_to_obb_any_vertex_order_and_int_input():
    box = torch.tensor([[20.0, 10.0, 12.0, 4.0, 0.4]], dtype=torch.float64)
    poly = obb_to_poly(box).view(4, 2)
    for perm in ([0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]):
        out = poly_to_obb(poly[perm].reshape(1, 8))
        torch.testing.assert_close(out, box, atol=1e-9, rtol=0)
    # integer quadrilateral: float32 output
    out = poly_to_obb(torch.tensor([[0, 0, 4, 0, 4, 2, 0, 2]]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, torch.tensor([[2.0, 1.0, 4.0, 2.0, 0.0]]))


def test_poly_to_obb_is_the_minimum_area_rectangle_of_any_quadrilateral():
    gen = torch.Generator().manual_seed(3)
    pts = torch.rand(40, 4, 2, generator=gen, dtype=torch.float64) * 50
    out = poly_to_obb(pts.reshape(40, 8))
    for quad, box in zip(pts, out):
        ref = MultiPoint(quad.numpy().tolist()).minimum_rotated_rectangle
        assert float(box[2] * box[3]) == pytest.approx(ref.area, rel=1e-9, abs=1e-9)
        # the rectangle encloses every point
        assert _shapely_rect(box).buffer(1e-7).contains(MultiPoint(quad.numpy().tolist()))


def test_min_area_rect_degenerate_and_masked_points():
    pts = torch.tensor(
        [
            [[3.0, 4.0], [3.0, 4.0], [3.0, 4.0], [3.0, 4.0]],  # one point
            [[0.0, 0.0], [10.0, 0.0], [5.0, 0.0], [0.0, 0.0]],  # a segment
            [[0.0, 0.0], [4.0, 0.0], [4.0, 2.0], [99.0, 99.0]],  # last point masked
        ]
    )
    valid = torch.tensor([[True] * 4, [True] * 4, [True, True, True, False]])
    out = min_area_rect(pts, valid)
    torch.testing.assert_close(out[0], torch.tensor([3.0, 4.0, 0, 0, 0], dtype=torch.float64))
    torch.testing.assert_close(out[1], torch.tensor([5.0, 0, 10, 0, 0], dtype=torch.float64))
    # a right triangle with legs 4 and 2: its best rectangle is 4 x 2 (the masked point
    # would make it huge)
    torch.testing.assert_close(out[2, 2] * out[2, 3], torch.tensor(8.0, dtype=torch.float64))


def test_obb_to_hbb_matches_polygon_bounds():
    boxes = _random_boxes(50, torch.Generator().manual_seed(1))
    poly = obb_to_poly(boxes).view(-1, 4, 2)
    expected = torch.cat([poly.amin(1), poly.amax(1)], dim=1)
    torch.testing.assert_close(obb_to_hbb(boxes), expected, atol=1e-9, rtol=0)


def test_hflip_and_scale_obb():
    boxes = _random_boxes(20, torch.Generator().manual_seed(2))
    flipped = hflip_obb(boxes, 100.0)
    poly = obb_to_poly(boxes).view(-1, 4, 2)
    mirrored = poly * torch.tensor([-1.0, 1.0], dtype=torch.float64) + torch.tensor([100.0, 0])
    back = obb_to_poly(flipped).view(-1, 4, 2)
    assert torch.cdist(back, mirrored).amin(-1).amax() < 1e-9
    torch.testing.assert_close(hflip_obb(flipped, 100.0), normalize_le90(boxes))
    # uniform scaling is exact
    torch.testing.assert_close(
        scale_obb(boxes, 2.0, 2.0)[:, :4], boxes[:, :4] * 2, atol=1e-12, rtol=0
    )
    # anisotropic: the minimum-area rectangle of the scaled corners (shapely reference)
    scaled = scale_obb(boxes, 2.0, 0.5)
    for box, quad in zip(scaled, poly * torch.tensor([2.0, 0.5], dtype=torch.float64)):
        ref = MultiPoint(quad.numpy().tolist()).minimum_rotated_rectangle
        assert float(box[2] * box[3]) == pytest.approx(ref.area, rel=1e-9)


# ---------------------------------------------------------------------------------- IoU


def test_rotated_iou_matches_shapely_on_random_pairs():
    gen = torch.Generator().manual_seed(0)
    a, b = _random_boxes(40, gen), _random_boxes(30, gen)
    iou = rotated_box_iou(a, b)
    ref = torch.tensor([[_shapely_iou(x, y) for y in b] for x in a], dtype=torch.float64)
    assert (ref > 0).sum() > 100  # the test must see many overlapping pairs
    torch.testing.assert_close(iou, ref, atol=1e-5, rtol=0)
    paired = paired_rotated_box_iou(a[:30], b)
    torch.testing.assert_close(paired, ref[:30].diagonal(), atol=1e-5, rtol=0)


def test_rotated_iou_special_cases():
    base = [10.0, 10.0, 8.0, 4.0, 0.6]
    cases = [
        (base, base, 1.0),  # identical
        (base, [10.0, 10.0, 4.0, 8.0, 0.6 + math.pi / 2], 1.0),  # same rectangle, other form
        (base, [10.0, 10.0, 8.0, 4.0, 0.6 - math.pi], 1.0),
        (base, [60.0, 10.0, 8.0, 4.0, 0.6], 0.0),  # disjoint
        ([0, 0, 10, 10, 0.3], [0, 0, 2, 2, 1.0], 4.0 / 100.0),  # contained
        ([0, 0, 4, 4, 0.0], [4, 0, 4, 4, 0.0], 0.0),  # touching along an edge
        ([0, 0, 4, 4, 0.0], [4, 4, 4, 4, 0.0], 0.0),  # touching at a corner
        ([0, 0, 4, 2, 0.0], [2, 0, 4, 2, 0.0], 1.0 / 3.0),  # half-overlap by hand
        ([0, 0, 2, 2, 0.0], [0, 0, 2, 2, math.pi / 4], None),  # square vs diamond: shapely
        ([0, 0, 0, 0, 0.0], [0, 0, 0, 0, 0.0], 0.0),  # empty boxes
    ]
    a = torch.tensor([c[0] for c in cases], dtype=torch.float64)
    b = torch.tensor([c[1] for c in cases], dtype=torch.float64)
    got = paired_rotated_box_iou(a, b)
    for value, (x, y, expected) in zip(got.tolist(), cases):
        ref = _shapely_iou(x, y) if expected is None else expected
        assert value == pytest.approx(ref, abs=1e-9), (x, y)


def test_rotated_iou_far_from_origin_and_float32():
    a = torch.tensor([[5000.5, 4000.25, 3.0, 1.0, 0.2]])
    b = torch.tensor([[5000.75, 4000.25, 3.0, 1.0, 0.25]])
    got = rotated_box_iou(a, b)
    assert got.dtype == torch.float32
    assert float(got) == pytest.approx(_shapely_iou(a[0].double(), b[0].double()), abs=1e-6)


def test_rotated_iou_equals_box_iou_at_angle_zero():
    gen = torch.Generator().manual_seed(5)
    a, b = _random_boxes(25, gen), _random_boxes(20, gen)
    a[:, 4] = 0
    b[:, 4] = 0
    torch.testing.assert_close(rotated_box_iou(a, b), box_iou(obb_to_hbb(a), obb_to_hbb(b)))


def test_rotated_iou_empty_inputs_and_bad_shapes():
    assert rotated_box_iou(torch.zeros(0, 5), torch.zeros(3, 5)).shape == (0, 3)
    assert rotated_box_iou(torch.zeros(2, 5), torch.zeros(0, 5)).shape == (2, 0)
    assert paired_rotated_box_iou(torch.zeros(0, 5), torch.zeros(0, 5)).shape == (0,)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        rotated_box_iou(torch.zeros(2, 4), torch.zeros(2, 5))
    with pytest.raises(ValueError, match="as many boxes"):
        paired_rotated_box_iou(torch.zeros(2, 5), torch.zeros(3, 5))


def test_paired_giou_matches_shapely():
    gen = torch.Generator().manual_seed(4)
    a, b = _random_boxes(40, gen), _random_boxes(40, gen)
    b[:5] = a[:5]  # identical pairs: GIoU 1
    b[5, :2] = a[5, :2] + 200  # far apart: GIoU near -1
    got = paired_rotated_giou(a, b)
    for x, y, g in zip(a, b, got.tolist()):
        pa, pb = _shapely_rect(x), _shapely_rect(y)
        union = pa.union(pb).area
        hull = MultiPoint(list(pa.exterior.coords) + list(pb.exterior.coords))
        enclosing = hull.minimum_rotated_rectangle.area
        ref = pa.intersection(pb).area / union - (enclosing - union) / enclosing
        assert g == pytest.approx(ref, abs=1e-6)
    assert torch.allclose(got[:5], torch.ones(5, dtype=torch.float64))
    assert got[5] < -0.9
    assert paired_rotated_giou(a[:1].float(), b[:1].float()).dtype == torch.float32


def test_paired_giou_gradient_matches_finite_differences():
    a = torch.tensor([[10.0, 10.0, 8.0, 4.0, 0.3]], dtype=torch.float64, requires_grad=True)
    for b in ([[11.0, 9.5, 6.0, 5.0, -0.2]], [[30.0, 12.0, 6.0, 5.0, -0.2]]):  # overlapping, apart
        b = torch.tensor(b, dtype=torch.float64)
        torch.autograd.gradcheck(lambda x, b=b: paired_rotated_giou(x, b), (a,))


def test_paired_iou_gradient_matches_finite_differences():
    a = torch.tensor([[10.0, 10.0, 8.0, 4.0, 0.3]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[11.0, 9.5, 6.0, 5.0, -0.2]], dtype=torch.float64)
    torch.autograd.gradcheck(lambda x: paired_rotated_box_iou(x, b), (a,))


# ---------------------------------------------------------------------------------- NMS


def _greedy_nms_reference(boxes, scores, groups, thr):
    order = sorted(range(len(boxes)), key=lambda i: -float(scores[i]))
    kept = []
    for i in order:
        if all(
            int(groups[k]) != int(groups[i]) or _shapely_iou(boxes[k], boxes[i]) <= thr
            for k in kept
        ):
            kept.append(i)
    return kept


def test_rotated_nms_matches_greedy_shapely_reference():
    gen = torch.Generator().manual_seed(7)
    boxes = _random_boxes(80, gen, spread=25.0)
    scores = torch.rand(80, generator=gen, dtype=torch.float64)
    groups = torch.randint(0, 3, (80,), generator=gen)
    for thr in (0.1, 0.3, 0.5):
        keep = rotated_batched_nms(boxes, scores, groups, thr)
        assert keep.tolist() == _greedy_nms_reference(boxes, scores, groups, thr)
    keep = rotated_nms(boxes, scores, 0.3)
    assert keep.tolist() == _greedy_nms_reference(boxes, scores, torch.zeros(80), 0.3)


def test_rotated_nms_chain_needs_several_rounds():
    # box k overlaps k+1 only: greedy keeps 0, 2, 4 (1 and 3 removed, so 2 and 4 survive)
    boxes = torch.tensor([[i * 3.0, 0, 4, 2, 0] for i in range(5)], dtype=torch.float64)
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    assert rotated_nms(boxes, scores, 0.1).tolist() == [0, 2, 4]


def test_rotated_nms_equals_torchvision_at_angle_zero():
    gen = torch.Generator().manual_seed(8)
    boxes = _random_boxes(60, gen, spread=20.0).float()
    boxes[:, 4] = 0
    scores = torch.rand(60, generator=gen)
    groups = torch.randint(0, 2, (60,), generator=gen)
    ours = rotated_batched_nms(boxes, scores, groups, 0.4)
    ref = batched_nms(obb_to_hbb(boxes), scores, groups, 0.4)
    assert ours.tolist() == ref.tolist()


def test_rotated_nms_empty():
    assert rotated_nms(torch.zeros(0, 5), torch.zeros(0), 0.5).shape == (0,)


# ----------------------------------------------------------------------------- RoIAlign


def _features(b=2, c=3, h=13, w=17, seed=0):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def test_roi_align_equals_torchvision_at_angle_zero_including_borders():
    feats = _features()
    rois = torch.tensor(
        [
            [0, 10.0, 8.0, 12.0, 6.0, 0.0],
            [1, 3.0, 4.0, 5.0, 9.0, 0.0],
            # (coordinates off the dyadic grid: no sample lands exactly on the cut-off one
            # pixel outside the map, where rounding decides in either implementation)
            [1, -3.3, 25.3, 14.2, 8.2, 0.0],  # crosses the left and bottom borders
            [0, 33.1, 1.3, 9.2, 7.2, 0.0],  # crosses the right and top borders
            [0, 60.0, 60.0, 4.0, 4.0, 0.0],  # entirely outside
            [1, 8.0, 8.0, 0.5, 0.25, 0.0],  # smaller than a feature pixel
        ]
    )
    for scale, size in ((0.5, 7), (1.0, (3, 5)), (0.25, 2)):
        ours = rotated_roi_align(feats, rois, size, scale, sampling_ratio=2)
        xyxy = torch.cat([rois[:, :1], obb_to_hbb(rois[:, 1:])], dim=1)
        ref = roi_align(feats, xyxy, size, scale, sampling_ratio=2, aligned=True)
        torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5)
    ours3 = rotated_roi_align(feats, rois, 4, 0.5, sampling_ratio=3)
    ref3 = roi_align(feats, xyxy, 4, 0.5, sampling_ratio=3, aligned=True)
    torch.testing.assert_close(ours3, ref3, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, -1, 2])
def test_roi_align_quarter_turns_match_rotated_feature_maps(k):
    # map G = rot90(F, k) (dims H, W); a box (gx, gy, gw, gh) axis-aligned in G is the box
    # turned by k * 90 degrees in F. Point maps (pixel-edge coordinates, H x W map F):
    #   k=1:  (xG, yG) -> (W - yG, xG)      k=-1: (xG, yG) -> (yG, H - xG)
    #   k=2:  (xG, yG) -> (W - xG, H - yG)
    feats = _features(b=1, h=12, w=16, seed=4).double()
    height, width = feats.shape[-2:]
    g = torch.rot90(feats, k, dims=(2, 3))
    gx, gy, gw, gh = 7.0, 6.5, 9.0, 5.0
    ref = roi_align(
        g,
        torch.tensor([[0, gx - gw / 2, gy - gh / 2, gx + gw / 2, gy + gh / 2]]).double(),
        (3, 5),
        1.0,
        2,
        aligned=True,
    )
    if k == 1:
        centre = (width - gy, gx)
    elif k == -1:
        centre = (gy, height - gx)
    else:
        centre = (width - gx, height - gy)
    rois = torch.tensor([[0, *centre, gw, gh, k * math.pi / 2]], dtype=torch.float64)
    ours = rotated_roi_align(feats, rois, (3, 5), 1.0, 2)
    torch.testing.assert_close(ours, ref, atol=1e-9, rtol=0)


def test_roi_align_any_angle_matches_scipy_bilinear_reference():
    feats = _features(b=1, c=2, h=20, w=24, seed=6).double()
    cx, cy, w, h, a, scale, s, r = 22.0, 18.0, 14.0, 6.0, 0.7, 0.5, 4, 2
    rois = torch.tensor([[0, cx, cy, w, h, a]], dtype=torch.float64)
    ours = rotated_roi_align(feats, rois, s, scale, r)
    # the same sample points written as offsets from the box corner, sampled by scipy
    ref = np.zeros((2, s, s))
    ca, sa = math.cos(a), math.sin(a)
    for i in range(s):
        for j in range(s):
            for p in range(r):
                for q in range(r):
                    u = -w / 2 + (j + (q + 0.5) / r) * w / s
                    v = -h / 2 + (i + (p + 0.5) / r) * h / s
                    x, y = cx + u * ca - v * sa, cy + u * sa + v * ca
                    coords = np.array([[y * scale - 0.5], [x * scale - 0.5]])
                    for c in range(2):
                        ref[c, i, j] += ndimage.map_coordinates(
                            feats[0, c].numpy(), coords, order=1
                        )[0] / (r * r)
    torch.testing.assert_close(ours[0], torch.from_numpy(ref), atol=1e-9, rtol=0)


def test_roi_align_gradient_reaches_features_and_batch_routing():
    feats = _features().requires_grad_()
    rois = torch.tensor([[1, 8.0, 6.0, 6.0, 4.0, 0.5]])
    out = rotated_roi_align(feats, rois, 2, 1.0)
    out.sum().backward()
    assert feats.grad[0].abs().sum() == 0 and feats.grad[1].abs().sum() > 0
    with pytest.raises(ValueError, match="sampling_ratio"):
        rotated_roi_align(feats, rois, 2, 1.0, sampling_ratio=0)
    with pytest.raises(ValueError, match=r"\(K, 6\)"):
        rotated_roi_align(feats, rois[:, :5], 2, 1.0)


def test_level_assignment_matches_axis_aligned_rule():
    strides = (4, 8, 16, 32)
    sides = torch.tensor([8.0, 50.0, 111.0, 113.0, 224.0, 447.0, 449.0, 1000.0])
    obb = torch.stack([sides * 0, sides * 0, sides, sides, sides * 0 + 0.7], dim=1)
    xyxy = torch.stack([sides * 0, sides * 0, sides, sides], dim=1)
    obb_levels = assign_levels(box_codec("obb").area(obb), strides)
    assert torch.equal(obb_levels, assign_levels(box_codec("hbb").area(xyxy), strides))


def test_multilevel_pooling_uses_the_selected_level():
    strides = (4, 8)
    feats = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8)]
    rois = torch.tensor([[0, 30.0, 30.0, 10.0, 8.0, 0.3], [1, 32.0, 30.0, 200.0, 150.0, -0.2]])
    codec = box_codec("obb")
    levels = assign_levels(codec.area(rois[:, 1:]), strides)
    assert levels.tolist() == [0, 1]
    module = MultiLevelRoIAlign(codec, strides, output_size=5)
    boxes = torch.stack([rois[:1, 1:], rois[1:, 1:]])  # (B=2, N=1, 5)
    out = module(feats, boxes)
    for k, lvl in enumerate(levels.tolist()):
        ref = rotated_roi_align(feats[lvl], rois[k : k + 1], 5, 1.0 / strides[lvl])
        torch.testing.assert_close(out[k : k + 1], ref)
    # the fixed-shape gather of CUDA inference gives the same
    gathered = module.pool_gather(flatten_pyramid(feats), rois[:, 1:], levels, 1)
    torch.testing.assert_close(gathered, out, atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------------- masks


def test_rotated_box_mask_matches_shapely_and_the_axis_aligned_mask():
    from shapely.geometry import Point

    from e2emfd.losses.fusion import box_mask

    boxes = torch.tensor(
        # (no pixel centre exactly on an edge, where the two masks differ by convention)
        [[10.3, 8.2, 12.5, 4.2, 0.6], [25.1, 14.7, 9.4, 3.3, -1.3], [-2.2, 1.1, 6.4, 4.4, 0.2]],
        dtype=torch.float64,
    )
    mask = rotated_box_mask(boxes, 20, 30)
    rects = [_shapely_rect(b) for b in boxes]
    ref = torch.tensor(
        [
            [any(r.contains(Point(j + 0.5, i + 0.5)) for r in rects) for j in range(30)]
            for i in range(20)
        ]
    )
    assert mask.sum() > 50 and torch.equal(mask, ref)
    flat = boxes.clone()
    flat[:, 4] = 0
    ref = box_mask([obb_to_hbb(flat).float()], 20, 30, box_codec("hbb"))[0, 0].bool()
    assert torch.equal(rotated_box_mask(flat, 20, 30), ref)
    assert not rotated_box_mask(torch.zeros(0, 5), 4, 4).any()
