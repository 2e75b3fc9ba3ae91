"""Class-specific object shapes for the synthetic scenes (see :mod:`e2emfd.synth.street`).

Each object is a list of :class:`Part` s in coordinates local to its box (origin at the
box's top-left corner, floats in pixels). A part carries everything every modality needs:
its visible albedo, its thermal value and, for lights, what it emits at night. The scene
renderer rasterises the parts once into a small "part map" per object and composites the
modalities from it, so the visible, infrared and occlusion masks can never disagree.
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np

from e2emfd.synth.palettes import (
    BULB_EMIT,
    BUS_BODY,
    CABIN_EMIT,
    CAR_BODY,
    GLASS,
    HEAD_EMIT,
    HEADLIGHT,
    HELMET,
    HUB,
    JACKET,
    MOTO_BODY,
    POLE,
    RGB,
    SHIRTS,
    SKIN,
    TAIL_EMIT,
    TAILLIGHT,
    TROUSERS,
    TRUCK_CAB,
    TRUCK_CARGO,
    TYRE,
)

CLASSES = ("People", "Car", "Bus", "Lamp", "Motorcycle", "Truck")

# Box size (width, height) as a fraction of the image height for an object standing at
# the bottom edge (perspective scale 1). Chosen so that at 320x256 the nearest objects are
# ~100 px and the farthest ones (scale ~0.3) still 12 px or more along their long side.
BASE_SIZE = {
    "People": (0.105, 0.30),
    "Car": (0.36, 0.15),
    "Bus": (0.40, 0.22),
    "Lamp": (0.11, 0.36),
    "Motorcycle": (0.16, 0.16),
    "Truck": (0.38, 0.23),
}


class Part(NamedTuple):
    """One filled primitive of an object.

    ``kind``/``geom``: ``"poly"`` ((k, 2) array), ``"circle"`` (cx, cy, r), ``"ellipse"``
    (cx, cy, ax, ay) or ``"line"`` (x1, y1, x2, y2, thickness), local float pixels.
    ``ir``: thermal value relative to the scene's ground temperature (absolute), or relative
    to the infrared background under the part when ``ir_rel`` (cold metal that takes the
    temperature of its surroundings). ``emit``: RGB light emitted at night, or None.
    """

    kind: str
    geom: tuple
    rgb: RGB
    ir: float
    ir_rel: bool = False
    emit: RGB | None = None


# Thermal values (relative to the ground temperature). People: skin ~+0.35, clothed
# torso/legs ~+0.25. Running vehicles: engine, exhaust and tyres hot, body slightly
# warm, glass cold (it reflects the sky). Parked vehicles sit at ambient temperature.
SKIN_T, TORSO_T, LEG_T = 0.36, 0.26, 0.22


def _pick(rng: np.random.Generator, palette: list[RGB]) -> RGB:
    return palette[int(rng.integers(len(palette)))]


def _jitter(rng: np.random.Generator, rgb: RGB, amount: float = 0.05) -> RGB:
    noise = rng.uniform(-amount, amount, 3)
    return tuple(float(np.clip(c + n, 0.0, 1.0)) for c, n in zip(rgb, noise))  # type: ignore[return-value]


def _rect(x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
    return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float64)


def _mirror(parts: list[Part], w: float) -> list[Part]:
    """Mirror parts about the box's vertical centre line (the object faces the other way)."""
    out = []
    for p in parts:
        g = p.geom
        if p.kind == "poly":
            arr = np.array(g[0], np.float64)
            arr[:, 0] = w - arr[:, 0]
            geom: tuple = (arr,)
        elif p.kind == "line":
            geom = (w - g[0], g[1], w - g[2], g[3], g[4])
        else:
            geom = (w - g[0], *g[1:])
        out.append(p._replace(geom=geom))
    return out


def _poly(pts: np.ndarray, rgb: RGB, ir: float, **kw) -> Part:
    return Part("poly", (pts,), rgb, ir, **kw)


def _wheel(cx: float, cy: float, r: float, ir: float) -> list[Part]:
    return [
        Part("circle", (cx, cy, r), TYRE, ir),
        Part("circle", (cx, cy, r * 0.45), HUB, ir * 0.7),
    ]


def people(rng: np.random.Generator, w: float, h: float) -> list[Part]:
    """Upright, narrow: legs, torso, arms and a round head on top."""
    skin, shirt = _pick(rng, SKIN), _jitter(rng, _pick(rng, SHIRTS))
    trousers = _jitter(rng, _pick(rng, TROUSERS), 0.03)
    cx = w / 2
    stride = rng.uniform(0.0, 0.32) * w
    leg_t = max(1.5, 0.22 * w)
    hip = 0.54 * h
    parts = [
        Part("line", (cx - 0.08 * w, hip, cx - stride - 0.05 * w, h - 1, leg_t), trousers, LEG_T),
        Part("line", (cx + 0.08 * w, hip, cx + stride + 0.05 * w, h - 1, leg_t), trousers, LEG_T),
        _poly(_rect(cx - 0.30 * w, 0.17 * h, cx + 0.30 * w, 0.57 * h), shirt, TORSO_T),
    ]
    arm_t = max(1.0, 0.14 * w)
    swing = rng.uniform(-0.08, 0.08) * w
    parts += [
        Part("line", (cx - 0.36 * w, 0.2 * h, cx - 0.42 * w + swing, 0.52 * h, arm_t), shirt, 0.24),
        Part("line", (cx + 0.36 * w, 0.2 * h, cx + 0.42 * w - swing, 0.52 * h, arm_t), shirt, 0.24),
        Part("circle", (cx, 0.085 * h, max(1.5, 0.085 * h)), skin, SKIN_T),
    ]
    return parts


def car(rng: np.random.Generator, w: float, h: float, running: bool) -> list[Part]:
    """Low and wide: body, a cabin with two windows, two wheels; faces right."""
    body = _jitter(rng, _pick(rng, CAR_BODY), 0.03)
    warm = 1.0 if running else 0.0
    r = 0.18 * h
    cab0, cab1 = rng.uniform(0.18, 0.28) * w, rng.uniform(0.70, 0.80) * w
    parts = [
        _poly(
            np.array(
                [[0, 0.45 * h], [0.05 * w, 0.38 * h], [w, 0.42 * h], [w, 0.80 * h], [0, 0.80 * h]]
            ),
            body,
            0.09 * warm + 0.01,
        ),
        _poly(
            np.array(
                [[cab0, 0.40 * h], [cab0 + 0.08 * w, 0], [cab1 - 0.1 * w, 0], [cab1, 0.4 * h]]
            ),
            body,
            0.05 * warm,
        ),
        _poly(
            np.array(
                [
                    [cab0 + 0.04 * w, 0.38 * h],
                    [cab0 + 0.10 * w, 0.08 * h],
                    [cab1 - 0.12 * w, 0.08 * h],
                    [cab1 - 0.04 * w, 0.38 * h],
                ]
            ),
            GLASS,
            -0.05 * warm - 0.02,
            emit=None,
        ),
        Part("line", ((cab0 + cab1) / 2, 0.06 * h, (cab0 + cab1) / 2, 0.40 * h, 0.03 * w), body, 0),
    ]
    # Engine at the front, exhaust at the rear bottom: the thermal signature of motion.
    if running:
        parts.append(Part("ellipse", (0.86 * w, 0.58 * h, 0.12 * w, 0.14 * h), body, 0.28))
        parts.append(Part("circle", (0.03 * w, 0.78 * h, max(1.0, 0.05 * h)), TYRE, 0.45))
    for cx in (0.2 * w, 0.8 * w):
        parts += _wheel(cx, h - r, r, 0.20 * warm + 0.01)
    parts.append(_lights(w, h, 0.5 * h, running))
    parts.append(_lights(w, h, 0.5 * h, running, front=False))
    return parts


def _lights(w: float, h: float, y: float, on: bool, front: bool = True) -> Part:
    """A head- or tail-light at the front (right) or rear (left) end of a vehicle."""
    lw, lh = max(1.5, 0.05 * w), max(1.5, 0.06 * h)
    x0 = w - lw if front else 0.0
    emit = (HEAD_EMIT if front else TAIL_EMIT) if on else None
    rgb = HEADLIGHT if front else TAILLIGHT
    return _poly(_rect(x0, y, x0 + lw, y + lh), rgb, 0.05 if on else 0.0, emit=emit)


def bus(rng: np.random.Generator, w: float, h: float, running: bool) -> list[Part]:
    """Long and tall: a box with a row of windows, a door and two wheels; faces right."""
    body = _jitter(rng, _pick(rng, BUS_BODY), 0.03)
    warm = 1.0 if running else 0.0
    r = 0.13 * h
    parts = [
        _poly(_rect(0, 0.02 * h, w, h - 0.9 * r), body, 0.07 * warm + 0.01),
        _poly(_rect(0, 0.50 * h, w, 0.56 * h), _jitter(rng, (0.2, 0.2, 0.2), 0.1), 0.0),
    ]
    n = int(rng.integers(5, 8))
    span = 0.80 * w
    pitch = span / n
    for i in range(n):
        x0 = 0.04 * w + i * pitch
        parts.append(
            _poly(
                _rect(x0, 0.13 * h, x0 + 0.8 * pitch, 0.43 * h),
                GLASS,
                0.04 * warm - 0.01,
                emit=CABIN_EMIT if running else None,
            )
        )
    parts.append(_poly(_rect(0.88 * w, 0.10 * h, w - 1, 0.50 * h), GLASS, -0.03))
    parts.append(_poly(_rect(0.80 * w, 0.48 * h, 0.86 * w, h - r), GLASS, 0.0))
    if running:  # rear engine and exhaust
        parts.append(Part("ellipse", (0.07 * w, 0.72 * h, 0.07 * w, 0.12 * h), body, 0.28))
        parts.append(Part("circle", (0.02 * w, h - 1.2 * r, max(1.0, 0.05 * h)), TYRE, 0.45))
    for cx in (0.17 * w, 0.78 * w):
        parts += _wheel(cx, h - r, r, 0.20 * warm + 0.01)
    parts.append(_lights(w, h, 0.68 * h, running))
    parts.append(_lights(w, h, 0.68 * h, running, front=False))
    return parts


def truck(rng: np.random.Generator, w: float, h: float, running: bool) -> list[Part]:
    """A tall cargo box behind a lower cab with a windscreen; three wheels; faces right."""
    cab, cargo = _jitter(rng, _pick(rng, TRUCK_CAB)), _jitter(rng, _pick(rng, TRUCK_CARGO))
    warm = 1.0 if running else 0.0
    r = 0.14 * h
    split = rng.uniform(0.68, 0.75) * w
    parts = [
        _poly(_rect(0, 0, split - 0.02 * w, 0.78 * h), cargo, 0.05 * warm),
        _poly(_rect(0, 0.74 * h, w, 0.84 * h), (0.15, 0.15, 0.15), 0.04 * warm),
        _poly(
            np.array(
                [
                    [split, 0.84 * h],
                    [split, 0.28 * h],
                    [0.92 * w, 0.28 * h],
                    [w, 0.5 * h],
                    [w, 0.84 * h],
                ]
            ),
            cab,
            0.10 * warm,
        ),
        _poly(
            np.array(
                [
                    [split + 0.04 * w, 0.33 * h],
                    [0.91 * w, 0.33 * h],
                    [0.97 * w, 0.5 * h],
                    [split + 0.04 * w, 0.5 * h],
                ]
            ),
            GLASS,
            -0.04 * warm - 0.01,
        ),
    ]
    if running:  # engine under the cab, exhaust stack behind it
        parts.append(Part("ellipse", (0.88 * w, 0.68 * h, 0.08 * w, 0.12 * h), cab, 0.30))
        stack = max(1.5, 0.02 * w)
        parts.append(
            Part("line", (split - 0.01 * w, 0.2 * h, split - 0.01 * w, 0.7 * h, stack), HUB, 0.42)
        )
    for cx in (0.12 * w, 0.28 * w, 0.86 * w):
        parts += _wheel(cx, h - r, r, 0.22 * warm + 0.01)
    parts.append(_lights(w, h, 0.62 * h, running))
    parts.append(_lights(w, h, 0.62 * h, running, front=False))
    return parts


def motorcycle(rng: np.random.Generator, w: float, h: float) -> list[Part]:
    """Small: two wheels, a frame and a rider with a helmet; always ridden (warm)."""
    body, jacket = _pick(rng, MOTO_BODY), _pick(rng, JACKET)
    helmet = _pick(rng, HELMET)
    r = 0.20 * h
    tyre_t = max(1.0, 0.08 * w)
    yw = h - r - 0.5
    parts = []
    for cx in (r + 0.5, w - r - 0.5):
        parts.append(Part("circle", (cx, yw, r), TYRE, 0.18))
        parts.append(Part("circle", (cx, yw, max(0.5, r - tyre_t)), HUB, 0.10))
    parts += [
        _poly(
            np.array(
                [[r, yw], [0.35 * w, 0.50 * h], [0.75 * w, 0.48 * h], [w - r, yw], [0.55 * w, yw]]
            ),
            body,
            0.15,
        ),
        Part("ellipse", (0.50 * w, 0.70 * h, 0.12 * w, 0.09 * h), HUB, 0.38),  # engine
        Part("line", (0.15 * w, 0.76 * h, 0.0, 0.8 * h, max(1.0, 0.05 * h)), HUB, 0.45),
        Part("line", (0.42 * w, 0.48 * h, 0.52 * w, 0.18 * h, max(1.5, 0.16 * w)), jacket, 0.22),
        Part("line", (0.52 * w, 0.22 * h, 0.78 * w, 0.36 * h, max(1.0, 0.07 * w)), jacket, 0.24),
        Part("line", (0.42 * w, 0.50 * h, 0.55 * w, 0.72 * h, max(1.0, 0.08 * w)), jacket, 0.20),
        Part("line", (0.72 * w, 0.30 * h, 0.78 * w, 0.50 * h, max(1.0, 0.03 * w)), HUB, 0.05),
        Part("circle", (0.55 * w, 0.10 * h, max(1.5, 0.10 * h)), helmet, 0.08),
        _poly(_rect(w - 0.08 * w, 0.42 * h, w, 0.50 * h), HEADLIGHT, 0.05, emit=HEAD_EMIT),
    ]
    return parts


def lamp(rng: np.random.Generator, w: float, h: float) -> list[Part]:
    """A pole with an arm and a lamp head; the arm reaches right.

    The box spans the arm and the head, so both are drawn at least 2 px thick, and the
    head as a housing taller than the arm: the box of a far lamp ends on something seen.
    Metal poles reflect their surroundings and LED heads run cold, so every part takes the
    temperature of the infrared background behind it (``ir_rel``)."""
    pole = _pick(rng, POLE)
    t = max(2.0, 0.045 * h)
    px = 0.12 * w + t / 2
    head_h = max(2.0, 0.04 * h)
    parts = [
        _poly(_rect(px - t, 0.9 * h, px + t, h), pole, -0.01, ir_rel=True),
        Part("line", (px, 0.03 * h, px, h - 1, t), pole, -0.01, ir_rel=True),
        Part(
            "line", (px, 0.05 * h, 0.7 * w, 0.03 * h, max(2.0, 0.8 * t)), pole, -0.01, ir_rel=True
        ),
        Part("ellipse", (0.72 * w, 0.04 * h, 0.28 * w, head_h), pole, -0.01, ir_rel=True),
        Part(
            "ellipse",
            (0.72 * w, 0.04 * h + 0.6 * head_h, 0.18 * w, max(1.0, 0.5 * head_h)),
            (0.95, 0.92, 0.75),
            -0.01,
            ir_rel=True,
            emit=BULB_EMIT,
        ),
    ]
    return parts


def build_parts(
    rng: np.random.Generator, cls: str, w: float, h: float, running: bool, facing_left: bool
) -> list[Part]:
    """Parts of one object of class ``cls`` filling a ``w`` x ``h`` box (local pixels)."""
    if cls == "People":
        parts = people(rng, w, h)
    elif cls == "Car":
        parts = car(rng, w, h, running)
    elif cls == "Bus":
        parts = bus(rng, w, h, running)
    elif cls == "Truck":
        parts = truck(rng, w, h, running)
    elif cls == "Motorcycle":
        parts = motorcycle(rng, w, h)
    elif cls == "Lamp":
        parts = lamp(rng, w, h)
    else:
        raise ValueError(f"unknown synthetic class '{cls}' (known: {', '.join(CLASSES)})")
    return _mirror(parts, w) if facing_left else parts


def rasterise(parts: list[Part], dx: float, dy: float, shape: tuple[int, int]) -> np.ndarray:
    """Draw parts into a uint8 map of ``shape`` (part index + 1, later parts on top),
    shifting local coordinates by (dx, dy)."""
    out = np.zeros(shape, np.uint8)
    for i, p in enumerate(parts, start=1):
        g = p.geom
        if p.kind == "poly":
            pts = np.round(np.asarray(g[0]) + (dx, dy)).astype(np.int32)
            cv2.fillPoly(out, [pts], i)
        elif p.kind == "circle":
            center = (round(g[0] + dx), round(g[1] + dy))
            cv2.circle(out, center, max(1, round(g[2])), i, -1)
        elif p.kind == "ellipse":
            center = (round(g[0] + dx), round(g[1] + dy))
            axes = (max(1, round(g[2])), max(1, round(g[3])))
            cv2.ellipse(out, center, axes, 0, 0, 360, i, -1)
        elif p.kind == "line":
            p1 = (round(g[0] + dx), round(g[1] + dy))
            p2 = (round(g[2] + dx), round(g[3] + dy))
            cv2.line(out, p1, p2, i, max(1, round(g[4])))
        else:  # pragma: no cover - builders only make the kinds above
            raise ValueError(f"unknown part kind '{p.kind}'")
    return out
