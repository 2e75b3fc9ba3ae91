"""Backgrounds and lighting for the synthetic scenes (see :mod:`e2emfd.synth.street`).

The visible background is a street: sky, a skyline of buildings and trees on the horizon,
a textured road with dashed lanes between grass or pavement. The infrared background is
the same layout as smooth temperatures only (sky cold, ground warm, buildings and trees
near ground temperature), blurred to low frequencies: the visible texture has no thermal
counterpart. Ground coordinates follow a flat-ground pinhole camera: a ground pixel at row
``y`` has perspective scale ``s = (y - horizon) / (H - horizon)`` and depth ``1 / s``.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

FAR_DEPTH = 25.0  # depth given to the sky and the skyline: beyond any object


@dataclass
class Setting:
    """Scene-wide quantities drawn once per image."""

    width: int
    height: int
    condition: str
    horizon: float  # row of the horizon (float pixels)
    vp_x: float  # column of the vanishing point
    ground_t: float  # infrared value of the ground
    sky_t: float  # infrared value of the sky at the top of the image
    fog_beta: float = 0.0  # extinction per unit depth (fog only)

    def scale_at(self, y: float) -> float:
        """Perspective scale of a ground point at row ``y`` (1 at the bottom edge)."""
        return (y - self.horizon) / (self.height - self.horizon)

    def ground_coords(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per-pixel (lateral X, depth Z, is-ground) of the ground plane, (H, W) each."""
        h, w = self.height, self.width
        s = (np.arange(h, dtype=np.float32)[:, None] + 0.5 - self.horizon) / (h - self.horizon)
        ground = np.broadcast_to(s > 0.02, (h, w))
        s = np.maximum(s, 0.02)
        x = (np.arange(w, dtype=np.float32)[None, :] + 0.5 - self.vp_x) / (s * h)
        z = np.broadcast_to(1.0 / s, (h, w))
        return x, z, ground


def smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Zero-mean, unit-ish, spatially smooth noise with features about ``cell`` pixels wide."""
    h, w = shape
    coarse = rng.standard_normal((h // cell + 2, w // cell + 2), dtype=np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


def _sky(st: Setting, rng: np.random.Generator, out: np.ndarray) -> None:
    yh = int(np.ceil(st.horizon))
    top = np.array([0.35, 0.55, 0.85]) + rng.uniform(-0.08, 0.08, 3)
    hor = np.array([0.80, 0.85, 0.90]) + rng.uniform(-0.05, 0.05, 3)
    t = (np.arange(yh, dtype=np.float32) / max(yh, 1))[:, None, None]
    out[:yh] = top * (1 - t) + hor * t
    clouds = np.clip(smooth_noise(rng, (yh, st.width), 24) - 0.3, 0, None)[..., None]
    out[:yh] += 0.25 * clouds * (1 - out[:yh])


def _road(st: Setting, rng: np.random.Generator, vis: np.ndarray, ir: np.ndarray) -> None:
    h, w = st.height, st.width
    yh = int(np.ceil(st.horizon))
    asphalt = rng.uniform(0.30, 0.42) + rng.uniform(-0.02, 0.02, 3)
    if rng.random() < 0.5:
        side = np.array([0.30, 0.45, 0.18]) + rng.uniform(-0.05, 0.05, 3)  # grass
    else:
        side = np.array([0.62, 0.60, 0.56]) + rng.uniform(-0.05, 0.05, 3)  # pavement
    vis[yh:] = side
    half = rng.uniform(0.55, 0.95) * w
    road = np.array([[st.vp_x, st.horizon], [st.vp_x - half, h], [st.vp_x + half, h]])
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(road).astype(np.int32)], 1)
    mask[:yh] = 0
    road_px = mask.astype(bool)
    vis[road_px] = asphalt
    # Sun-warmed asphalt reads a little warmer than the verge in the infrared.
    ir[road_px] += rng.uniform(0.0, 0.05) if st.condition != "night" else 0.01
    # Dashed lane lines converging on the vanishing point.
    s = np.clip((np.arange(h, dtype=np.float32) + 0.5 - st.horizon) / (h - st.horizon), 1e-3, 1)
    dash = (np.floor(2.2 / s) % 2 == 0) & (np.arange(h) > st.horizon + 2)
    cols = np.arange(w, dtype=np.float32)[None, :]
    for frac in (-1 / 3, 1 / 3):
        xc = st.vp_x + frac * half * s[:, None]
        line = (np.abs(cols - xc) < np.maximum(0.6, 0.01 * w * s[:, None])) & dash[:, None]
        vis[line] = (0.90, 0.90, 0.85)


def _skyline(st: Setting, rng: np.random.Generator, vis: np.ndarray, ir: np.ndarray):
    """Buildings and trees standing on the horizon. Returns the building-window mask and
    which windows are lit at night."""
    h, w = st.height, st.width
    base = int(round(st.horizon)) + 1
    windows = np.zeros((h, w), bool)
    lit = np.zeros((h, w), bool)
    for _ in range(int(rng.integers(3, 9))):
        bw = int(rng.uniform(0.06, 0.22) * w)
        bh = int(rng.uniform(0.05, 0.22) * h)
        x0 = int(rng.integers(-bw // 2, w - bw // 2))
        y0 = max(0, base - bh)
        xs, ys = slice(max(0, x0), min(w, x0 + bw)), slice(y0, base)
        colour = np.array([0.55, 0.50, 0.45]) + rng.uniform(-0.2, 0.2, 3)
        vis[ys, xs] = colour
        ir[ys, xs] = st.ground_t + rng.uniform(-0.04, 0.05)
        px, py = int(rng.integers(4, 8)), int(rng.integers(4, 8))
        yy, xx = np.mgrid[ys, xs]
        win = ((xx - x0) % px >= 2) & ((yy - y0) % py >= 2) & ((yy - y0) % py < py - 1)
        cells = rng.random((bh // py + 2, bw // px + 2)) < rng.uniform(0.1, 0.5)
        on = cells[(yy - y0) // py, (xx - x0) // px] & win
        vis[ys, xs][win] = colour * 0.45
        windows[ys, xs] |= win
        lit[ys, xs] |= on
    for _ in range(int(rng.integers(0, 5))):
        r = int(rng.uniform(0.02, 0.05) * h) + 1
        cx, cy = int(rng.integers(0, w)), base - int(rng.uniform(1.2, 2.5) * r)
        trunk = (cx - max(1, r // 5), cy, cx + max(1, r // 5), base)
        cv2.rectangle(vis, trunk[:2], trunk[2:], (0.30, 0.20, 0.10), -1)
        colour = tuple(float(c) for c in np.array([0.15, 0.35, 0.12]) + rng.uniform(-0.05, 0.05, 3))
        cv2.ellipse(vis, (cx, cy), (r, int(r * 1.3)), 0, 0, 360, colour, -1)
        cv2.ellipse(ir, (cx, cy), (r, int(r * 1.3)), 0, 0, 360, st.ground_t - 0.06, -1)
    return windows, lit


def render_background(
    st: Setting, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Daylight albedo (H, W, 3), infrared background (H, W) and lit-window mask (H, W)."""
    h, w = st.height, st.width
    vis = np.zeros((h, w, 3), np.float32)
    ir = np.full((h, w), st.ground_t, np.float32)
    yh = int(np.ceil(st.horizon))
    ramp = np.arange(yh, dtype=np.float32)[:, None] / max(yh, 1)
    ir[:yh] = st.sky_t + (st.ground_t - 0.05 - st.sky_t) * ramp**2
    _sky(st, rng, vis)
    _road(st, rng, vis, ir)
    _, lit = _skyline(st, rng, vis, ir)
    # Visible texture at two scales (stains, wear, grain); the infrared gets none of it.
    texture = 0.10 * smooth_noise(rng, (h, w), 12) + 0.04 * smooth_noise(rng, (h, w), 3)
    vis *= 1.0 + texture[..., None]
    vis += 0.02 * rng.standard_normal((h, w, 1), dtype=np.float32)
    # Infrared: gentle low-frequency temperature variation and a few warm patches on the
    # ground (manholes, sun-warmed spots) so that "warm" alone does not mean "object".
    ir[yh:] += 0.02 * smooth_noise(rng, (h - yh, w), 40)
    for _ in range(int(rng.integers(0, 3))):
        cy = rng.uniform(st.horizon + 0.2 * (h - st.horizon), h)
        r = max(2, int(0.03 * h * st.scale_at(cy) * rng.uniform(0.8, 2.0)))
        cx = int(rng.uniform(0, w))
        cv2.ellipse(ir, (cx, int(cy)), (2 * r, r), 0, 0, 360, st.ground_t + 0.12, -1)
    ir = cv2.GaussianBlur(ir, (0, 0), 2.0)
    return np.clip(vis, 0, 1), ir, lit


def night_light(st: Setting, rng: np.random.Generator, lamps: list[tuple[float, float]]):
    """Illumination (H, W) at night, 1 = daylight: a dim ambient level, the ego vehicle's
    headlight beam along the road ahead and a pool of light under each street lamp.

    ``lamps``: (foot x, foot y) of each lamp in pixels."""
    x, z, ground = st.ground_coords()
    ambient = rng.uniform(0.04, 0.08)
    # Super-Gaussian profiles: lit areas have fairly sharp edges, as under real lamps, so
    # most objects are clearly lit or clearly dark rather than in between.
    beam = rng.uniform(0.8, 1.1) * np.exp(-((x / rng.uniform(0.25, 0.4)) ** 4))
    beam *= np.exp(-(((z - 1.0) / rng.uniform(0.5, 1.0)) ** 2))
    light = ambient + np.where(ground, beam, 0.0)
    for fx, fy in lamps:
        s = max(st.scale_at(fy), 0.05)
        lx, lz = (fx - st.vp_x) / (s * st.height), 1.0 / s
        d2 = ((x - lx) ** 2 + (0.5 * (z - lz)) ** 2) / (2 * 0.3**2)
        light += np.where(ground, rng.uniform(0.7, 1.0) * np.exp(-(d2**2)), 0.0)
    return np.clip(light, 0.0, 1.2).astype(np.float32)


def glare_map(st: Setting, rng: np.random.Generator) -> np.ndarray:
    """Fraction (H, W) of each visible pixel washed out by a low sun or oncoming light:
    saturated (1) in the core, fading outwards."""
    h, w = st.height, st.width
    cx = rng.uniform(0.15, 0.85) * w
    cy = rng.uniform(st.horizon, st.horizon + 0.5 * (h - st.horizon))
    sigma = rng.uniform(0.12, 0.20) * w
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    g = 1.6 * np.exp(-((xx - cx) ** 2 + ((yy - cy) * 1.3) ** 2) / (2 * sigma**2))
    return np.clip(g, 0.0, 1.0)
