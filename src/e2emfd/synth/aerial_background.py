"""Ground, roads, parking lots, roofs and trees of the aerial scenes, and the rectangle
geometry they share with the vehicles (rules: :mod:`e2emfd.synth.aerial`)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from e2emfd.synth.background import smooth_noise

GROUND = {"grass": (0.30, 0.45, 0.18), "soil": (0.50, 0.40, 0.28), "paving": (0.62, 0.60, 0.56)}
GROUND_IR = {"grass": -0.03, "soil": 0.02, "paving": 0.03}  # by day; a third of it at night
LANE_M = 3.5  # lane width
SLOT_M = (5.5, 2.6)  # parking slot depth and width
AISLE_M = 6.0


@dataclass
class Rect:
    """A rotated rectangle in pixels: centre, ``length`` along ``angle``, ``width`` across."""

    cx: float
    cy: float
    length: float
    width: float
    angle: float

    def corners(self) -> np.ndarray:
        """(4, 2) corners in the order of :func:`e2emfd.ops.rotated.obb_to_poly`."""
        c, s = np.cos(self.angle), np.sin(self.angle)
        du = np.array([-1, 1, 1, -1]) * self.length / 2
        dv = np.array([-1, -1, 1, 1]) * self.width / 2
        return np.stack([self.cx + du * c - dv * s, self.cy + du * s + dv * c], axis=1)

    def extent(self, pad: float = 0.0) -> tuple[int, int, int, int]:
        """Integer pixel range (x0, y0, x1, y1) covering the rectangle grown by ``pad``."""
        pts = self.corners()
        lo, hi = np.floor(pts.min(0) - pad), np.ceil(pts.max(0) + pad)
        return int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1])

    def mask(self, shape: tuple[int, int], pad: float = 0.0):
        """Pixels of an (H, W) image whose centre lies in the rectangle grown by ``pad``:
        a bool mask over the returned (x0, y0, x1, y1) window."""
        x0, y0, x1, y1 = self.extent(pad + 1)
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, shape[1]), min(y1, shape[0])
        u, v = local_frame(self.cx, self.cy, self.angle, shape, (x0, y0, x1, y1))
        inside = (np.abs(u) <= self.length / 2 + pad) & (np.abs(v) <= self.width / 2 + pad)
        return inside, (x0, y0, x1, y1)


def local_frame(cx: float, cy: float, angle: float, shape: tuple[int, int], box=None):
    """Coordinates (u along ``angle``, v across) of pixel centres relative to (cx, cy),
    over ``box`` = (x0, y0, x1, y1) or the whole (H, W) image."""
    x0, y0, x1, y1 = box or (0, 0, shape[1], shape[0])
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32) + 0.5
    c, s = np.cos(angle), np.sin(angle)
    return (xx - cx) * c + (yy - cy) * s, -(xx - cx) * s + (yy - cy) * c


def offset_point(x: float, y: float, angle: float, along: float, across: float):
    """The point ``along`` / ``across`` pixels from (x, y) in the frame of ``angle``."""
    c, s = np.cos(angle), np.sin(angle)
    return x + along * c - across * s, y + along * s + across * c


@dataclass
class Setting:
    """Scene-wide quantities drawn once per image."""

    width: int
    height: int
    condition: str
    ppm: float  # pixels per metre
    ground_t: float  # infrared value of the ground


@dataclass
class Ground:
    """The rendered background and where vehicles may go.

    ``lanes``: (x, y, angle, offset, turn) per lane: a point on the road axis, its
    direction, the lane's signed offset from the axis and the heading turn of its traffic;
    ``slots``: (x, y, angle) of each parking slot; ``lamps``: (x, y) of street lamps.
    """

    vis: np.ndarray  # (H, W, 3) daylight albedo
    ir: np.ndarray  # (H, W) infrared
    blocked: np.ndarray  # roofs and trees
    paved: np.ndarray  # roads and lots
    lanes: list[tuple[float, float, float, float, float]]
    slots: list[tuple[float, float, float]]
    lamps: list[tuple[float, float]]


def _road(st: Setting, rng, g: Ground, theta: float) -> None:
    h, w, ppm = st.height, st.width, st.ppm
    lane = LANE_M * ppm
    px, py = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    s, d = local_frame(px, py, theta, (h, w))
    road = np.abs(d) < 2 * lane
    g.vis[road] = rng.uniform(0.30, 0.40) + rng.uniform(-0.02, 0.02, 3)
    g.ir[road] += rng.uniform(0.03, 0.07) if st.condition != "night" else 0.02
    dashed = (np.abs(np.abs(d) - lane) < 0.5) & (np.floor(s / (3 * ppm)) % 2 == 0)
    solid = (np.abs(d) < 0.6) | (np.abs(np.abs(d) - 1.85 * lane) < 0.5)
    g.vis[road & (dashed | solid)] = (0.88, 0.88, 0.84)
    g.paved |= road
    for off in (-1.5, -0.5, 0.5, 1.5):  # right-hand traffic: the heading depends on the side
        g.lanes.append((px, py, theta, off * lane, 0.0 if off > 0 else np.pi))
    for _ in range(int(rng.integers(1, 4))):
        along = rng.uniform(-0.6, 0.6) * max(w, h)
        g.lamps.append(offset_point(px, py, theta, along, rng.choice([-1, 1]) * 2.3 * lane))


def _parking(st: Setting, rng, g: Ground) -> None:
    """A lot beside the first road: two rows of slots facing a central aisle."""
    h, w, ppm = st.height, st.width, st.ppm
    px, py, theta = g.lanes[0][:3]
    depth, n_slots = (2 * SLOT_M[0] + AISLE_M) * ppm, int(rng.integers(5, 13))
    side = rng.choice([-1, 1]) * (2 * LANE_M * ppm + 1.5 * ppm + depth / 2)
    lx, ly = offset_point(px, py, theta, rng.uniform(-0.3, 0.3) * max(w, h), side)
    u, d = local_frame(lx, ly, theta, (h, w))
    length, row = n_slots * SLOT_M[1] * ppm, (AISLE_M + SLOT_M[0]) / 2 * ppm
    lot = (np.abs(u) < length / 2) & (np.abs(d) < depth / 2)
    g.vis[lot] = rng.uniform(0.40, 0.50) + rng.uniform(-0.02, 0.02, 3)
    g.ir[lot] += rng.uniform(0.02, 0.06) if st.condition != "night" else 0.015
    rows = (np.abs(np.abs(d) - row) < SLOT_M[0] / 2 * ppm) & lot
    lines = np.abs(np.remainder(u + length / 2 + 0.5, SLOT_M[1] * ppm) - 0.5) < 0.5
    g.vis[rows & lines] = (0.9, 0.9, 0.88)
    g.paved |= lot
    for k in range(n_slots):
        for sign in (-1, 1):
            along = (k + 0.5) * SLOT_M[1] * ppm - length / 2
            g.slots.append((*offset_point(lx, ly, theta, along, sign * row), theta + np.pi / 2))


def render_ground(st: Setting, rng: np.random.Generator) -> Ground:
    """Ground texture, roads, an optional parking lot, roofs, trees and warm patches."""
    h, w, ppm, day = st.height, st.width, st.ppm, st.condition != "night"
    kind = tuple(GROUND)[int(rng.integers(len(GROUND)))]
    vis = np.empty((h, w, 3), np.float32)
    vis[:] = np.array(GROUND[kind]) + rng.uniform(-0.05, 0.05, 3)
    ir = np.full((h, w), st.ground_t + GROUND_IR[kind] * (1.0 if day else 0.33), np.float32)
    g = Ground(vis, ir, np.zeros((h, w), bool), np.zeros((h, w), bool), [], [], [])
    theta = rng.uniform(0, np.pi)
    _road(st, rng, g, theta)
    if rng.random() < 0.3:  # a crossing road
        _road(st, rng, g, theta + rng.uniform(0.35, 1.0) * np.pi / 2)
    if rng.random() < 0.5:
        _parking(st, rng, g)
    for _ in range(int(rng.integers(0, 4))):  # building roofs, off the paving
        roof = Rect(
            rng.uniform(0, w),
            rng.uniform(0, h),
            rng.uniform(8, 20) * ppm,
            rng.uniform(8, 16) * ppm,
            rng.uniform(0, np.pi),
        )
        mask, (x0, y0, x1, y1) = roof.mask((h, w))
        if (mask & g.paved[y0:y1, x0:x1]).any():
            continue
        g.vis[y0:y1, x0:x1][mask] = np.array([0.55, 0.5, 0.48]) + rng.uniform(-0.2, 0.2, 3)
        g.ir[y0:y1, x0:x1][mask] = st.ground_t + rng.uniform(-0.08, 0.12)
        g.blocked[y0:y1, x0:x1] |= mask
    yy, xx = np.mgrid[0:h, 0:w] + 0.5
    for _ in range(int(rng.integers(0, 7))):  # trees, cooler than the ground
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(1.5, 3.5) * ppm
        tree = (xx - cx) ** 2 + (yy - cy) ** 2 < r * r
        if (tree & g.paved).any():
            continue
        g.vis[tree] = np.array([0.13, 0.30, 0.11]) + rng.uniform(-0.04, 0.04, 3)
        g.ir[tree] = st.ground_t - 0.05
        g.blocked |= tree
    for _ in range(int(rng.integers(0, 3))):  # warm patches: warmth alone is not a vehicle
        centre = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        cv2.circle(g.ir, centre, max(2, int(1.2 * ppm)), st.ground_t + 0.12, -1)
    texture = 0.10 * smooth_noise(rng, (h, w), 12) + 0.04 * smooth_noise(rng, (h, w), 3)
    g.vis = np.clip(g.vis * (1.0 + texture[..., None]), 0, 1)
    g.ir = cv2.GaussianBlur(g.ir + 0.02 * smooth_noise(rng, (h, w), 40), (0, 0), 2.0)
    return g
