"""Rotated boxes: conversions, exact polygon IoU and rotated NMS (RoIAlign: ``rotated_roi_align``).

Convention (le90, as mmrotate's ``le90``). A rotated box is ``(cx, cy, w, h, angle)``:

* ``cx, cy``: its centre in pixels of the image frame, x to the right, y *down*, origin at
  the top-left corner of the top-left pixel (pixel edges, as for the xyxy boxes);
* ``w``: the length of the side that points along ``(cos angle, sin angle)``; ``h``: the
  side along ``(-sin angle, cos angle)``. ``angle`` is in radians; since y points down, a
  positive angle turns the ``w`` side clockwise on screen;
* normalised (:func:`normalize_le90`): ``w >= h`` and ``angle`` in ``[-pi/2, pi/2)``, i.e.
  ``angle`` is the direction of the long side. ``(w, h, a)``, ``(h, w, a + pi/2)`` and
  ``(w, h, a + pi)`` are the same rectangle; the normalised form is the one above. A square
  (``w == h``) still has two normalised forms (``a`` and ``a -+ pi/2``); nothing here
  depends on which one it gets.

Corners (:func:`obb_to_poly`) are ``centre + R(angle) @ (dx, dy)`` for ``(dx, dy)`` =
``(-w/2, -h/2), (w/2, -h/2), (w/2, h/2), (-w/2, h/2)``; at angle 0 these are the top-left,
top-right, bottom-right and bottom-left corners, a positively oriented polygon (shoelace
area ``+w*h`` in these axes). Functions accept any leading batch shape unless they say
(N, 5); IoU and polygon clipping run in float64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .rotated_roi_align import (
    rotated_roi_align,
)

__all__ = [
    "clip_convex_polygons",
    "hflip_obb",
    "min_area_rect",
    "normalize_le90",
    "obb_to_hbb",
    "obb_to_poly",
    "paired_rotated_box_iou",
    "paired_rotated_giou",
    "poly_to_obb",
    "polygon_area",
    "hbb_overlap_pairs",
    "rotated_box_iou",
    "rotated_box_mask",
    "rotated_roi_align",
    "scale_obb",
]

HALF_PI = math.pi / 2
PAIR_CHUNK = 1 << 15  # box pairs clipped at once (~1 KB of float64 buffers per pair)
BLOCK_ELEMS = 1 << 20  # entries of an (rows, M) overlap block


def _check_boxes(boxes: Tensor, what: str, dims: int = 5) -> None:
    if boxes.dim() != 2 or boxes.shape[1] != dims:
        raise ValueError(f"{what} must have shape (N, {dims}), got {tuple(boxes.shape)}")


# ----------------------------------------------------------------------------- conversions


def normalize_le90(boxes: Tensor) -> Tensor:
    """(..., 5) rotated boxes -> the same rectangles with ``w >= h``, angle in [-pi/2, pi/2).

    Requires ``w, h >= 0``; differentiable (a swap and a wrap, both piecewise identity).
    """
    cx, cy, w, h, a = boxes.unbind(-1)
    swap = w < h
    w, h = torch.where(swap, h, w), torch.where(swap, w, h)
    a = torch.where(swap, a + HALF_PI, a)
    a = torch.remainder(a + HALF_PI, math.pi) - HALF_PI
    # remainder can round up to exactly pi for tiny negative inputs
    a = torch.where(a >= HALF_PI, a - math.pi, a)
    return torch.stack([cx, cy, w, h, a], dim=-1)


def obb_to_poly(boxes: Tensor) -> Tensor:
    """(..., 5) rotated boxes -> (..., 8) corners ``x1 y1 x2 y2 x3 y3 x4 y4`` (see the module
    docstring for the order)."""
    cx, cy, w, h, a = boxes.unbind(-1)
    c, s = torch.cos(a)[..., None], torch.sin(a)[..., None]
    half_w, half_h = (w / 2)[..., None], (h / 2)[..., None]
    dx = torch.cat([-half_w, half_w, half_w, -half_w], dim=-1)
    dy = torch.cat([-half_h, -half_h, half_h, half_h], dim=-1)
    x = cx[..., None] + dx * c - dy * s
    y = cy[..., None] + dx * s + dy * c
    return torch.stack([x, y], dim=-1).flatten(-2)


def obb_to_hbb(boxes: Tensor) -> Tensor:
    """(..., 5) rotated boxes -> (..., 4) xyxy of their axis-aligned bounding boxes."""
    cx, cy, w, h, a = boxes.unbind(-1)
    c, s = torch.cos(a).abs(), torch.sin(a).abs()
    ex = (w * c + h * s) / 2
    ey = (w * s + h * c) / 2
    return torch.stack([cx - ex, cy - ey, cx + ex, cy + ey], dim=-1)


def min_area_rect(points: Tensor, valid: Tensor | None = None) -> Tensor:
    """Minimum-area enclosing rectangle of point sets, le90-normalised.

    points: (..., P, 2); valid: (..., P) bool (default all). Returns (..., 5) float64.
    The optimal rectangle has a side along an edge of the convex hull (Freeman & Shapira,
    1975), and every hull edge joins two of the points, so the ``P(P-1)/2`` directions
    through pairs of points contain the answer. A set with no two distinct points gives a
    zero-size box at its (first valid) point.
    """
    pts = points.double()
    if valid is None:
        valid = torch.ones(pts.shape[:-1], dtype=torch.bool, device=pts.device)
    p = pts.shape[-2]
    weights = valid.double()
    # relative to the mean point: coordinates of ~1000 px would lose digits in projections
    origin = (pts * weights[..., None]).sum(-2) / weights.sum(-1, keepdim=True).clamp(min=1)
    pts = pts - origin[..., None, :]
    i, j = torch.triu_indices(p, p, 1, device=pts.device)
    d = pts[..., j, :] - pts[..., i, :]  # (..., Q, 2)
    length = d.norm(dim=-1)
    pair_ok = valid[..., i] & valid[..., j] & (length > 1e-12)
    u = d / length.clamp(min=1e-300)[..., None]
    v = torch.stack([-u[..., 1], u[..., 0]], dim=-1)
    pu = torch.einsum("...pc,...qc->...qp", pts, u)  # (..., Q, P)
    pv = torch.einsum("...pc,...qc->...qp", pts, v)
    mask = valid[..., None, :]
    inf = torch.tensor(math.inf, dtype=pts.dtype, device=pts.device)
    lo_u, hi_u = torch.where(mask, pu, inf).amin(-1), torch.where(mask, pu, -inf).amax(-1)
    lo_v, hi_v = torch.where(mask, pv, inf).amin(-1), torch.where(mask, pv, -inf).amax(-1)
    area = torch.where(pair_ok, (hi_u - lo_u) * (hi_v - lo_v), inf)
    best = area.argmin(-1, keepdim=True)

    def pick(t: Tensor) -> Tensor:
        return t.gather(-1, best).squeeze(-1)

    w, h = pick(hi_u - lo_u), pick(hi_v - lo_v)
    mu, mv = pick((hi_u + lo_u) / 2), pick((hi_v + lo_v) / 2)
    ux, uy = pick(u[..., 0]), pick(u[..., 1])
    cx = origin[..., 0] + mu * ux - mv * uy
    cy = origin[..., 1] + mu * uy + mv * ux
    angle = torch.atan2(uy, ux)
    found = pair_ok.any(-1)
    first = pts.gather(-2, valid.long().argmax(-1)[..., None, None].expand(*pts.shape[:-2], 1, 2))
    first = first.squeeze(-2) + origin
    zero = torch.zeros_like(w)
    box = torch.stack(
        [
            torch.where(found, cx, first[..., 0]),
            torch.where(found, cy, first[..., 1]),
            torch.where(found, w, zero),
            torch.where(found, h, zero),
            torch.where(found, angle, zero),
        ],
        dim=-1,
    )
    return normalize_le90(box)


def poly_to_obb(polys: Tensor) -> Tensor:
    """(..., 8) quadrilaterals ``x1 y1 ... x4 y4`` (any vertex order, not necessarily
    rectangles) -> (..., 5) le90 minimum-area rectangles, in the input's float dtype."""
    if polys.shape[-1] != 8:
        raise ValueError(f"polygons must have 8 columns (x1 y1 ... x4 y4), got {polys.shape[-1]}")
    dtype = polys.dtype if polys.is_floating_point() else torch.float32
    return min_area_rect(polys.unflatten(-1, (4, 2))).to(dtype)


def hflip_obb(boxes: Tensor, width: float) -> Tensor:
    """Mirror (..., 5) boxes about the vertical line x = width / 2 (a horizontal image flip)."""
    cx, cy, w, h, a = boxes.unbind(-1)
    return normalize_le90(torch.stack([width - cx, cy, w, h, -a], dim=-1))


def scale_obb(boxes: Tensor, sx: float, sy: float) -> Tensor:
    """Boxes (..., 5) of an image resized by (sx, sy). Exact for ``sx == sy``; otherwise the
    scaled rectangle is a parallelogram and the result is its minimum-area rectangle."""
    if sx == sy:
        return torch.cat([boxes[..., :4] * sx, boxes[..., 4:]], dim=-1)
    poly = obb_to_poly(boxes) * boxes.new_tensor([sx, sy]).repeat(4)
    return poly_to_obb(poly).to(boxes.dtype)


def rotated_box_mask(boxes: Tensor, height: int, width: int) -> Tensor:
    """(H, W) bool mask of the pixels whose centre ``(j + 0.5, i + 0.5)`` lies in any of
    the rotated boxes (N, 5) (edges included), e.g. the object mask of the fusion loss."""
    _check_boxes(boxes, "boxes")
    out = torch.zeros(height, width, dtype=torch.bool, device=boxes.device)
    if boxes.shape[0] == 0:
        return out
    boxes = boxes.double()
    hull = obb_to_hbb(boxes)
    lo = hull[:, :2].floor().clamp(min=0)
    hi = hull[:, 2:].ceil().clamp(max=hull.new_tensor([width, height]))
    for box, (x0, y0), (x1, y1) in zip(boxes, lo.long().tolist(), hi.long().tolist()):
        if x1 <= x0 or y1 <= y0:
            continue
        ys = torch.arange(y0, y1, device=boxes.device, dtype=boxes.dtype)[:, None] + 0.5 - box[1]
        xs = torch.arange(x0, x1, device=boxes.device, dtype=boxes.dtype)[None, :] + 0.5 - box[0]
        c, s = torch.cos(box[4]), torch.sin(box[4])
        inside = ((xs * c + ys * s).abs() <= box[2] / 2) & ((-xs * s + ys * c).abs() <= box[3] / 2)
        out[y0:y1, x0:x1] |= inside
    return out


# -------------------------------------------------------------- polygon clipping and areas


def polygon_area(points: Tensor, count: Tensor) -> Tensor:
    """Signed shoelace area of polygons: points (P, V, 2), the first ``count`` (P,) valid.

    Positive for the orientation of :func:`obb_to_poly`; 0 for fewer than 3 vertices."""
    idx = torch.arange(points.shape[1], device=points.device)
    valid = idx[None] < count[:, None]
    nxt = torch.where(idx[None] + 1 < count[:, None], idx[None] + 1, 0)
    q = points.gather(1, nxt[..., None].expand(-1, -1, 2))
    cross = points[..., 0] * q[..., 1] - points[..., 1] * q[..., 0]
    return 0.5 * (cross * valid).sum(1)


def clip_convex_polygons(subject: Tensor, count: Tensor, clipper: Tensor) -> tuple[Tensor, Tensor]:
    """Sutherland-Hodgman: intersect convex polygons with convex clip polygons, pair by pair.

    subject: (P, V, 2), the first ``count`` (P,) vertices valid, either orientation;
    clipper: (P, E, 2), positively oriented (as :func:`obb_to_poly`). Returns the
    intersections as (P, C, 2) vertices and their counts (P,), C >= V.

    In exact arithmetic a convex polygon clipped by one line gains at most one vertex. In
    floating point, vertices lying on the line (two equal rectangles written in different
    forms share their edges) fall on either side by round-off and a step can add more; the
    buffer therefore grows to whatever a step produces, so no vertex is ever dropped. The
    extra vertices lie on the clip line, so they do not change the area.
    """
    n, cap = subject.shape[:2]
    e_count = clipper.shape[1]
    pts = subject
    idx = torch.arange(cap, device=subject.device)
    for e in range(e_count):
        p = clipper[:, e, None, :]
        edge = clipper[:, (e + 1) % e_count, None, :] - p
        valid = idx[None] < count[:, None]
        nxt_idx = torch.where(idx[None] + 1 < count[:, None], idx[None] + 1, 0)
        nxt = pts.gather(1, nxt_idx[..., None].expand(-1, -1, 2))
        # >= 0: on the left of the directed edge or on it, i.e. inside the clipper
        side = edge[..., 0] * (pts[..., 1] - p[..., 1]) - edge[..., 1] * (pts[..., 0] - p[..., 0])
        side_nxt = side.gather(1, nxt_idx)
        inside, inside_nxt = side >= 0, side_nxt >= 0
        crossing = valid & (inside != inside_nxt)
        # the two sides have opposite signs where it matters, so the denominator is nonzero
        t = side / torch.where(crossing, side - side_nxt, torch.ones_like(side))
        cut = pts + t[..., None] * (nxt - pts)
        candidates = torch.stack([pts, cut], dim=2).reshape(n, 2 * cap, 2)
        keep = torch.stack([valid & inside, crossing], dim=2).reshape(n, 2 * cap)
        count = keep.sum(1)
        cap = max(cap, int(count.max())) if n else cap
        order = torch.argsort((~keep).to(torch.uint8), dim=1, stable=True)[:, :cap]
        pts = candidates.gather(1, order[..., None].expand(-1, -1, 2))
        idx = torch.arange(cap, device=subject.device)
    return pts, count


# ------------------------------------------------------------------------------------ IoU


def _intersection_area(a: Tensor, b: Tensor) -> Tensor:
    """Intersection areas of paired float64 boxes (N, 5), (N, 5) -> (N,)."""
    # in a frame centred on a: small boxes far from the origin keep their digits
    shift = torch.cat([a[:, :2], torch.zeros_like(a[:, 2:])], dim=1)
    pa = obb_to_poly(a - shift).view(-1, 4, 2)
    pb = obb_to_poly(b - shift).view(-1, 4, 2)
    four = torch.full((a.shape[0],), 4, dtype=torch.long, device=a.device)
    pts, count = clip_convex_polygons(pa, four, pb)
    return polygon_area(pts, count).clamp(min=0)


def paired_rotated_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of paired rotated boxes: a (N, 5), b (N, 5) -> (N,), exact up to float64 rounding.

    Differentiable (the clipped polygon's vertices are functions of the box corners). Boxes
    need ``w, h >= 0``; a box of zero area has IoU 0 with every box (itself included).
    """
    _check_boxes(a, "boxes a")
    _check_boxes(b, "boxes b")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired IoU needs as many boxes in a as in b, got {len(a)} and {len(b)}")
    dtype = torch.promote_types(a.dtype, b.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float32
    a64, b64 = a.double(), b.double()
    if a.shape[0] == 0:
        return a64.new_zeros(0).to(dtype)
    inter = torch.cat(
        [
            _intersection_area(a64[i : i + PAIR_CHUNK], b64[i : i + PAIR_CHUNK])
            for i in range(0, a.shape[0], PAIR_CHUNK)
        ]
    )
    area_a, area_b = a64[:, 2] * a64[:, 3], b64[:, 2] * b64[:, 3]
    # the intersection cannot exceed either box: a zero-size clipper has zero-length edges,
    # which leave every point of the subject "inside" it
    inter = torch.minimum(inter, torch.minimum(area_a, area_b))
    union = area_a + area_b - inter
    iou = torch.where(union > 0, inter / union.clamp(min=1e-300), torch.zeros_like(union))
    return iou.clamp(0, 1).to(dtype)


def paired_rotated_giou(a: Tensor, b: Tensor) -> Tensor:
    """Generalised IoU of paired rotated boxes (N, 5), (N, 5) -> (N,), differentiable.

    ``IoU - (area(C) - union) / area(C)`` as for axis-aligned boxes, with ``C`` the
    minimum-area rectangle around both boxes' corners (the rotated counterpart of the
    enclosing box): in [-1, 1], 1 only for equal boxes, and still informative for boxes
    that do not overlap.
    """
    iou = paired_rotated_box_iou(a, b).double()
    a64, b64 = a.double(), b.double()
    areas = a64[:, 2] * a64[:, 3] + b64[:, 2] * b64[:, 3]
    union = areas / (1 + iou)  # from iou = inter / union and union = areas - inter
    # corners in a frame centred on a, as for the IoU: far from the origin, the digits of
    # a small box would go into the coordinates' magnitude
    shift = torch.cat([a64[:, :2], torch.zeros_like(a64[:, 2:])], dim=1)
    corners = torch.cat([obb_to_poly(a64 - shift), obb_to_poly(b64 - shift)], dim=1)
    hull = min_area_rect(corners.view(-1, 8, 2))
    enclosing = (hull[:, 2] * hull[:, 3]).clamp(min=1e-12)
    # the enclosing rectangle covers the union; round-off may put it a hair below
    giou = iou - (enclosing - union).clamp(min=0) / enclosing
    dtype = torch.promote_types(a.dtype, b.dtype)
    return giou.to(dtype if dtype.is_floating_point else torch.float32)


def hbb_overlap_pairs(a: Tensor, b: Tensor, keep: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Index pairs (i, j) whose axis-aligned hulls overlap with positive area: only those can
    have a positive rotated IoU. ``keep(rows, cols)`` may veto pairs; blocks of rows bound
    the memory."""
    ha, hb = obb_to_hbb(a), obb_to_hbb(b)
    rows = max(1, BLOCK_ELEMS // max(1, b.shape[0]))
    out_i, out_j = [], []
    for start in range(0, a.shape[0], rows):
        blk = ha[start : start + rows]
        lt = torch.maximum(blk[:, None, :2], hb[None, :, :2])
        rb = torch.minimum(blk[:, None, 2:], hb[None, :, 2:])
        mask = (rb > lt).all(-1)
        if keep is not None:
            mask &= keep(torch.arange(start, start + blk.shape[0], device=a.device))
        i, j = mask.nonzero(as_tuple=True)
        out_i.append(i + start)
        out_j.append(j)
    if not out_i:
        empty = torch.zeros(0, dtype=torch.long, device=a.device)
        return empty, empty
    return torch.cat(out_i), torch.cat(out_j)


def rotated_box_iou(a: Tensor, b: Tensor) -> Tensor:
    """Pairwise IoU of rotated boxes a (N, 5) and b (M, 5) -> (N, M).

    Polygons are clipped (Sutherland-Hodgman) in float64 only for pairs whose axis-aligned
    hulls overlap; the result has the inputs' floating dtype.
    """
    _check_boxes(a, "boxes a")
    _check_boxes(b, "boxes b")
    dtype = torch.promote_types(a.dtype, b.dtype)
    dtype = dtype if dtype.is_floating_point else torch.float32
    a64, b64 = a.double(), b.double()
    out = a64.new_zeros(a.shape[0], b.shape[0])
    if out.numel() == 0:
        return out.to(dtype)
    i, j = hbb_overlap_pairs(a64, b64)
    if i.numel():
        out = out.index_put((i, j), paired_rotated_box_iou(a64[i], b64[j]))
    return out.to(dtype)
