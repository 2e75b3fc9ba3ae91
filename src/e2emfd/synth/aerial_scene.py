"""Rendering one aerial infrared-visible scene: vehicles, light, conditions (rules:
:mod:`e2emfd.synth.aerial`)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from e2emfd.synth.aerial_background import (
    Ground,
    Rect,
    Setting,
    local_frame,
    offset_point,
    render_ground,
)
from e2emfd.synth.background import smooth_noise
from e2emfd.synth.palettes import (
    BULB_EMIT,
    BUS_BODY,
    CAR_BODY,
    GLASS,
    HEAD_EMIT,
    TAIL_EMIT,
    TRUCK_CAB,
    TRUCK_CARGO,
)
from e2emfd.synth.street_scene import (
    CONDITION_P,
    CONDITIONS,
    IR_THRESHOLD,
    PARKED_IR,
    VIS_THRESHOLD,
    _glow,
)

# on the road the large classes are as common as in DroneVehicle's minority classes
# together; parking slots hold cars and vans
LANE_CLASS_P = {"car": 0.36, "van": 0.14, "truck": 0.18, "bus": 0.14, "freight_car": 0.18}
GROUND_CLASS_P = {"car": 0.45, "van": 0.15, "truck": 0.2, "bus": 0.1, "freight_car": 0.1}
SIZE_M = {
    "car": (4.6, 1.85),
    "van": (5.2, 2.0),
    "truck": (7.6, 2.45),
    "bus": (11.5, 2.55),
    "freight_car": (13.5, 2.5),
}
PAINT = {"car": CAR_BODY, "van": CAR_BODY, "bus": BUS_BODY, "truck": TRUCK_CAB}
PAINT["freight_car"] = TRUCK_CAB
# (u0, u1, half-width fraction, colour, temperature): bands along the length from the rear
# (-0.5) to the front (+0.5); later parts are drawn over earlier ones
_RIBS = [(float(u), float(u) + 0.012, 1.0, "rib", "cargo") for u in np.arange(-0.46, 0.2, 0.07)]
PARTS = {
    "car": [
        (-0.5, 0.5, 1.0, "paint", "body"),
        (0.2, 0.5, 0.94, "paint", "engine"),
        (0.06, 0.2, 0.86, "glass", "glass"),
        (-0.22, 0.06, 0.82, "roof", "body"),
        (-0.36, -0.22, 0.8, "glass", "glass"),
    ],
    "van": [
        (-0.5, 0.5, 1.0, "paint", "body"),
        (0.36, 0.5, 0.94, "paint", "engine"),
        (0.24, 0.36, 0.88, "glass", "glass"),
        (-0.48, 0.24, 0.9, "roof", "body"),
    ],
    "truck": [
        (-0.5, 0.5, 1.0, "cargo", "cargo"),
        (0.2, 0.5, 1.0, "paint", "engine"),
        (0.4, 0.48, 0.88, "glass", "glass"),
        (0.14, 0.2, 1.0, "dark", "exhaust"),
    ],
    "bus": [
        (-0.5, 0.5, 1.0, "paint", "body"),
        (-0.5, -0.38, 0.9, "paint", "engine"),
        (0.44, 0.5, 0.9, "glass", "glass"),
        (-0.36, 0.4, 0.3, "glass", "glass"),
        (-0.05, 0.1, 0.55, "light", "body"),
        (-0.3, -0.2, 0.55, "light", "body"),
    ],
    "freight_car": [
        (-0.5, 0.5, 1.0, "cargo", "cargo"),
        *_RIBS,
        (0.3, 0.5, 1.0, "paint", "engine"),
        (0.42, 0.49, 0.88, "glass", "glass"),
        (0.24, 0.3, 1.0, "dark", "exhaust"),
    ],
}
GROUND_T = {"day": (0.42, 0.55), "glare": (0.42, 0.55), "fog": (0.38, 0.48), "night": (0.28, 0.4)}


@dataclass
class AerialObject:
    """One vehicle. ``obb``: le90 ``(cx, cy, w, h, angle)`` in pixels of the scene (no
    border); ``polygon``: its corners ``x1 y1 .. x4 y4``. The other fields are those of
    :class:`e2emfd.synth.street_scene.SceneObject`; ``state`` is running or parked."""

    cls: str
    obb: tuple[float, ...]
    polygon: tuple[float, ...]
    vis: bool
    ir: bool
    state: str
    vis_factor: float
    ir_factor: float


@dataclass
class AerialScene:
    """``vis`` (H, W, 3) uint8 RGB, ``ir`` (H, W) uint8, the objects, and ``index`` (H, W)
    uint8: k + 1 where object k is drawn, 0 elsewhere."""

    vis: np.ndarray
    ir: np.ndarray
    objects: list[AerialObject]
    condition: str
    index: np.ndarray


@dataclass
class _Veh(Rect):
    cls: str = ""
    state: str = "parked"
    vis_factor: float = 1.0
    ir_factor: float = 1.0

    def le90(self) -> tuple[float, ...]:
        angle = (self.angle + np.pi / 2) % np.pi - np.pi / 2  # the heading forgets the front
        return (self.cx, self.cy, self.length, self.width, float(angle))


def _pick(rng: np.random.Generator, table: dict[str, float]) -> str:
    return list(table)[int(rng.choice(len(table), p=list(table.values())))]


def _place(st: Setting, rng: np.random.Generator, g: Ground) -> list[_Veh]:
    """Running vehicles on the lanes, parked ones in slots and on open ground (then more
    traffic until there are 3); footprints inside the image, off roofs and trees, at
    least one pixel apart."""
    h, w = st.height, st.width
    occupied = g.blocked.copy()
    out: list[_Veh] = []

    def add(cls: str, x: float, y: float, angle: float, state: str, paved: bool) -> bool:
        length, width = (m * st.ppm * rng.uniform(0.94, 1.06) for m in SIZE_M[cls])
        v = _Veh(float(x), float(y), float(length), float(width), float(angle), cls, state)
        x0, y0, x1, y1 = v.extent()
        if x0 < 1 or y0 < 1 or x1 > w - 1 or y1 > h - 1:
            return False
        mask, (a0, b0, a1, b1) = v.mask((h, w), pad=1.0)
        if (mask & occupied[b0:b1, a0:a1]).any():
            return False
        if not paved and (mask & g.paved[b0:b1, a0:a1]).any():
            return False  # parked on open ground means off the road
        occupied[b0:b1, a0:a1] |= mask
        out.append(v)
        return True

    def drive(lane: tuple[float, float, float, float, float]) -> None:
        px, py, theta, offset, turn = lane
        x, y = offset_point(px, py, theta, rng.uniform(-0.7, 0.7) * max(w, h), offset)
        heading = theta + turn + rng.normal(0, 0.035)
        add(_pick(rng, LANE_CLASS_P), x, y, heading, "running", True)

    for lane in g.lanes:
        for _ in range(int(rng.integers(0, 4))):
            drive(lane)
    fill = rng.uniform(0.1, 0.4)
    for x, y, angle in g.slots:
        if rng.random() < fill:
            turn = np.pi * float(rng.random() < 0.5) + rng.normal(0, 0.06)
            add("car" if rng.random() < 0.75 else "van", x, y, angle + turn, "parked", True)
    for _ in range(int(rng.integers(0, 4))):
        cls = _pick(rng, GROUND_CLASS_P)
        for _attempt in range(5):
            x, y, a = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi)
            if add(cls, x, y, a, "parked", False):
                break
    for _ in range(12):  # top up sparse scenes with traffic
        if len(out) >= 3:
            break
        drive(g.lanes[int(rng.integers(len(g.lanes)))])
    return out


def _night_light(st: Setting, rng, vehicles: list[_Veh], lamps) -> np.ndarray:
    """Illumination (H, W) at night, 1 = daylight: ambient, lamp pools, headlight beams."""
    h, w = st.height, st.width
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
    light = np.full((h, w), rng.uniform(0.04, 0.08), np.float32)
    for lx, ly in lamps:
        r = rng.uniform(0.08, 0.14) * h
        d2 = ((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * r * r)
        light += rng.uniform(0.7, 1.0) * np.exp(-(d2**2))  # sharp-edged pools
    for v in vehicles:
        if v.state == "running":  # a beam on the road ahead, widening with distance
            u, d = local_frame(v.cx, v.cy, v.angle, (h, w))
            ahead = u - v.length / 2
            beam = np.exp(-(((ahead - 1.5 * v.length) / (1.2 * v.length)) ** 2))
            beam *= np.exp(-((d / (0.5 * v.length + 0.5 * np.abs(ahead))) ** 2))
            light += 0.4 * (ahead > 0) * beam
    return np.clip(light, 0, 1.2)


def _draw(st: Setting, rng, v: _Veh, k: int, albedo, ir, emit, index) -> None:
    """Vehicle k's parts into the visible albedo, the infrared and the night emission."""
    mask, (x0, y0, x1, y1) = v.mask((st.height, st.width))
    u, d = local_frame(v.cx, v.cy, v.angle, (st.height, st.width), (x0, y0, x1, y1))
    u, d = u / v.length, np.abs(d) / (v.width / 2)
    palette = PAINT[v.cls]
    paint = np.array(palette[int(rng.integers(len(palette)))]) + rng.uniform(-0.04, 0.04, 3)
    cargo = np.array(TRUCK_CARGO[int(rng.integers(len(TRUCK_CARGO)))])
    colour = {
        "paint": paint,
        "roof": 0.88 * paint,
        "glass": np.array(GLASS),
        "dark": np.full(3, 0.12),
        "light": np.full(3, 0.76),
        "cargo": cargo,
        "rib": 0.75 * cargo,
    }
    if v.state == "running":
        body = rng.uniform(0.06, 0.10)
        temp = {"body": body, "engine": 0.30, "exhaust": 0.42, "glass": body - 0.08}
        temp["cargo"] = rng.uniform(0.02, 0.05)
    else:  # parked: at the temperature of the ground it stands on
        ambient = rng.uniform(-0.02, 0.02)
        temp = dict.fromkeys(("body", "engine", "exhaust", "cargo"), ambient)
        temp["glass"] = ambient - 0.02
    vis_win, ir_win, emit_win = albedo[y0:y1, x0:x1], ir[y0:y1, x0:x1], emit[y0:y1, x0:x1]
    # running: relative to the scene's ground temperature; parked: to the (warmer or
    # colder) surface under it, so that it nearly vanishes in the infrared
    base = ir_win.copy() if v.state == "parked" else np.full_like(ir_win, st.ground_t)
    for u0, u1, half, col, t in PARTS[v.cls]:
        part = mask & (u >= u0) & (u <= u1) & (d <= half)
        vis_win[part] = colour[col]
        ir_win[part] = base[part] + temp[t]
    index[y0:y1, x0:x1][mask] = k + 1
    if v.state == "running":  # head and tail lights: points at the two ends
        ends = mask & (d > 0.45) & (d < 0.85)
        emit_win[ends & (u > 0.46)] = HEAD_EMIT
        emit_win[ends & (u < -0.46)] = TAIL_EMIT


def _finish_visible(st: Setting, rng, albedo, emit, light, fog_t, glare) -> np.ndarray:
    noise = 0.012
    if light is not None:
        vis = albedo * light[..., None] + _glow(emit)
        vis *= rng.uniform(1.3, 1.9)  # auto-exposure gain, which also raises the noise
        noise = rng.uniform(0.03, 0.05)
    elif fog_t is not None:
        air = rng.uniform(0.72, 0.88) + rng.uniform(-0.02, 0.02, 3)
        vis = albedo * fog_t[..., None] + air * (1 - fog_t[..., None])
        noise = 0.01
    else:
        vis = albedo * rng.uniform(0.9, 1.1)
        if glare is not None:
            g = glare[..., None]
            vis = vis * (1 - g) + g * np.array([1.0, 0.98, 0.92]) + 0.06
    vis = cv2.GaussianBlur(vis.astype(np.float32), (0, 0), 0.6)
    vis += noise * rng.standard_normal((st.height, st.width, 3), dtype=np.float32)
    return np.round(np.clip(vis, 0, 1) * 255).astype(np.uint8)


def _finish_ir(st: Setting, rng, ir, fog_t) -> np.ndarray:
    if fog_t is not None:  # long waves pierce fog: t ** 0.15 of the visible transmission
        t_ir = fog_t**0.15
        ir = ir * t_ir + st.ground_t * (1 - t_ir)
    ir = cv2.GaussianBlur(ir.astype(np.float32), (0, 0), 0.8)
    ir += 0.012 * rng.standard_normal((st.height, st.width), dtype=np.float32)
    ir += 0.004 * rng.standard_normal((1, st.width), dtype=np.float32)  # column noise
    return np.round(np.clip(ir, 0, 1) * 255).astype(np.uint8)


def _factors(v: _Veh, shape, light, fog_t, glare) -> None:
    """The contrast a vehicle keeps in each modality (see the module rules)."""
    mask, (x0, y0, x1, y1) = v.mask(shape)

    def mean(field: np.ndarray) -> float:
        return float(field[y0:y1, x0:x1][mask].mean())

    if light is not None:
        v.vis_factor = min(mean(light), 1.0)
    elif fog_t is not None:
        v.vis_factor = mean(fog_t)
    elif glare is not None:
        v.vis_factor = 1.0 - mean(glare)
    v.ir_factor = PARKED_IR if v.state == "parked" else 1.0
    if fog_t is not None:
        v.ir_factor *= mean(fog_t**0.15)


def render_aerial_scene(
    rng: np.random.Generator, width: int = 320, height: int = 256, view_m: float = 40.0
) -> AerialScene:
    """Render one random aerial pair and its vehicles; everything is drawn from ``rng``.
    ``view_m``: the ground height the image spans, in metres (+-15%)."""
    if width < 64 or height < 64:
        raise ValueError(f"synthetic scene size {width}x{height} is too small (min 64x64)")
    if not view_m > 0:
        raise ValueError(f"view_m must be positive, got {view_m}")
    condition = CONDITIONS[int(rng.choice(len(CONDITIONS), p=CONDITION_P))]
    # By default a 40 m field of view (about 6 px per metre at 256 px): a car is about 12 px
    # wide, big enough for a small CPU-trained detector; real DroneVehicle frames see farther.
    ppm = height / view_m * rng.uniform(0.85, 1.15)
    st = Setting(width, height, condition, ppm, rng.uniform(*GROUND_T[condition]))
    shape = (height, width)
    ground = render_ground(st, rng)
    vehicles = _place(st, rng, ground)
    light = fog_t = glare = None
    if condition == "night":
        light = _night_light(st, rng, vehicles, ground.lamps)
    elif condition == "fog":  # patchy: the layer's thickness varies smoothly
        thickness = np.clip(0.75 + 0.6 * smooth_noise(rng, shape, 48), 0.1, 2.0)
        fog_t = np.exp(-rng.uniform(1.0, 2.2) * thickness).astype(np.float32)
    elif condition == "glare":  # sun reflection
        yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
        cx, cy = rng.uniform(0.1, 0.9) * width, rng.uniform(0.1, 0.9) * height
        sigma = rng.uniform(0.12, 0.2) * width
        glare = np.clip(1.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2)), 0, 1)
    for v in vehicles:
        _factors(v, shape, light, fog_t, glare)
    kept = [v for v in vehicles if v.vis_factor >= VIS_THRESHOLD or v.ir_factor >= IR_THRESHOLD]

    albedo, ir = ground.vis, ground.ir
    emit = np.zeros_like(albedo)
    index = np.zeros(shape, np.uint8)
    if condition in ("day", "glare"):  # shadows on the ground, away from the sun
        sun = rng.uniform(0, 2 * np.pi)
        for v in kept:
            x, y = offset_point(v.cx, v.cy, sun, 0.7 * st.ppm, 0.0)
            mask, (x0, y0, x1, y1) = Rect(x, y, v.length, v.width, v.angle).mask(shape)
            albedo[y0:y1, x0:x1][mask] *= 0.55
    for k, v in enumerate(kept):
        _draw(st, rng, v, k, albedo, ir, emit, index)
    if light is not None:
        for lx, ly in ground.lamps:
            cv2.circle(emit, (int(lx), int(ly)), 1, BULB_EMIT, -1)
    vis = _finish_visible(st, rng, albedo, emit, light, fog_t, glare)
    objects = [
        AerialObject(
            cls=v.cls,
            obb=tuple(round(float(x), 4) for x in v.le90()),
            polygon=tuple(round(float(x), 4) for x in v.corners().reshape(-1)),
            vis=v.vis_factor >= VIS_THRESHOLD,
            ir=v.ir_factor >= IR_THRESHOLD,
            state=v.state,
            vis_factor=round(v.vis_factor, 4),
            ir_factor=round(v.ir_factor, 4),
        )
        for v in kept
    ]
    return AerialScene(vis, _finish_ir(st, rng, ir, fog_t), objects, condition, index)
