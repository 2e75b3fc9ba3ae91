"""Rendering one synthetic infrared-visible scene (rules: :mod:`e2emfd.synth.street`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from e2emfd.synth.background import (
    FAR_DEPTH,
    Setting,
    glare_map,
    night_light,
    render_background,
)
from e2emfd.synth.shapes import BASE_SIZE, Part, build_parts, rasterise

CONDITIONS = ("day", "night", "fog", "glare")
CONDITION_P = (0.4, 0.3, 0.2, 0.1)
CLASS_P = {
    "People": 0.30,
    "Car": 0.26,
    "Bus": 0.115,
    "Lamp": 0.10,
    "Motorcycle": 0.11,
    "Truck": 0.115,
}
PARKED_P = {"day": 0.35, "glare": 0.35, "fog": 0.15, "night": 0.1}
VEHICLES = ("Car", "Bus", "Truck")

MIN_SCALE = 0.28  # farthest objects: long side ~12 px or more at 320x256
MIN_VISIBLE = 0.4  # an object less than 40% unoccluded is not placed
MAX_IOU = 0.45  # keep two boxes apart enough for NMS at 0.5 to see both
VIS_THRESHOLD = 0.2  # visible contrast left (fraction of daylight) to count as seen
IR_THRESHOLD = 0.4  # remaining thermal contrast (fraction of nominal) to count as seen
PARKED_IR = 0.1  # thermal contrast of a parked vehicle (ambient temperature)
# Thermal crossover: under the sun the ground warms to about body temperature, so a person's
# contrast by day is scaled by a factor drawn from this range (negative: colder than the
# ground); about half of them fall below IR_THRESHOLD.
SUNLIT_PEOPLE_IR = (-0.2, 1.0)


@dataclass
class SceneObject:
    """One annotated object.

    ``box``: (x0, y0, x1, y1) integer pixel edges, 0 <= x0 < x1 <= width (the object covers
    columns x0 .. x1 - 1). ``vis``/``ir``: detectable in that modality. ``state``:
    ``"walking"`` (people), ``"running"``/``"parked"`` (vehicles, motorcycles) or
    ``"lit"``/``"unlit"`` (lamps). ``vis_factor``/``ir_factor``: the contrast left in each
    modality (1 = clear daylight / nominal thermal contrast) that the flags threshold.
    """

    cls: str
    box: tuple[int, int, int, int]
    vis: bool
    ir: bool
    state: str
    vis_factor: float
    ir_factor: float
    unoccluded: float


@dataclass
class Scene:
    """A rendered pair: ``vis`` (H, W, 3) uint8 RGB, ``ir`` (H, W) uint8, its objects."""

    vis: np.ndarray
    ir: np.ndarray
    objects: list[SceneObject]
    condition: str


@dataclass
class _Obj:
    cls: str
    parts: list[Part]
    pmap: np.ndarray  # part index + 1 per pixel, 0 = not this object
    ox: int  # image column/row of pmap[0, 0]
    oy: int
    foot_y: float
    scale: float
    state: str
    vis_factor: float = 1.0
    ir_factor: float = 1.0
    unoccluded: float = 1.0
    thermal: float = 1.0  # scale of the parts' thermal contrast (thermal crossover)
    mask: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.mask = self.pmap > 0

    @property
    def box(self) -> tuple[int, int, int, int]:
        h, w = self.pmap.shape
        return (self.ox, self.oy, self.ox + w, self.oy + h)


def _iou(a: tuple[int, ...], b: tuple[int, ...]) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def _unoccluded(objs: list[_Obj]) -> list[float]:
    """Fraction of each object's pixels not hidden by nearer objects (nearer = lower foot)."""
    out = []
    for o in objs:
        x0, y0, x1, y1 = o.box
        hidden = np.zeros_like(o.mask)
        for p in objs:
            if p is o or p.foot_y <= o.foot_y:
                continue
            px0, py0, px1, py1 = p.box
            ix0, iy0, ix1, iy1 = max(x0, px0), max(y0, py0), min(x1, px1), min(y1, py1)
            if ix0 >= ix1 or iy0 >= iy1:
                continue
            hidden[iy0 - y0 : iy1 - y0, ix0 - x0 : ix1 - x0] |= p.mask[
                iy0 - py0 : iy1 - py0, ix0 - px0 : ix1 - px0
            ]
        total = int(o.mask.sum())
        out.append(float((o.mask & ~hidden).sum()) / max(total, 1))
    return out


def _propose(rng: np.random.Generator, cls: str, st: Setting) -> _Obj | None:
    """Draw one object's geometry and state; None if it would not fit the image."""
    h_img, w_img = st.height, st.width
    s = rng.uniform(MIN_SCALE, 1.0)
    jit = rng.uniform(0.88, 1.12)
    bw, bh = BASE_SIZE[cls]
    w = min(bw * h_img * s * jit * rng.uniform(0.92, 1.08), w_img - 2.0)
    h = bh * h_img * s * jit
    foot = st.horizon + s * (h_img - st.horizon)
    if foot - h < 0 or w < 3 or h < 3:
        return None
    facing_left = bool(rng.random() < 0.5)
    if cls == "Lamp":
        # Lamps line the roadside, arm reaching over the road.
        side = 1.0 if rng.random() < 0.5 else -1.0
        xc = st.vp_x + side * rng.uniform(0.45, 0.8) * s * h_img
        facing_left = side > 0
    else:
        xc = rng.uniform(w / 2, w_img - w / 2)
    xc = float(np.clip(xc, w / 2 + 0.5, w_img - w / 2 - 0.5))
    if cls in VEHICLES:
        state = "parked" if rng.random() < PARKED_P[st.condition] else "running"
    elif cls == "Motorcycle":
        state = "running"
    elif cls == "Lamp":
        state = "lit" if st.condition == "night" else "unlit"
    else:
        state = "walking"
    parts = build_parts(rng, cls, w, h, state == "running", facing_left)
    x0, y0 = xc - w / 2, foot - h
    ox, oy = int(np.floor(x0)), int(np.floor(y0))
    pmap = rasterise(parts, x0 - ox, y0 - oy, (int(np.ceil(h)) + 3, int(np.ceil(w)) + 3))
    # Keep the part of the map inside the image, then trim it to the drawn pixels so the
    # box is the object's exact extent.
    cx0, cy0 = max(0, -ox), max(0, -oy)
    pmap = pmap[cy0 : h_img - oy, cx0 : w_img - ox]
    ox, oy = ox + cx0, oy + cy0
    rows, cols = np.flatnonzero(pmap.any(1)), np.flatnonzero(pmap.any(0))
    if rows.size == 0:
        return None
    pmap = pmap[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    obj = _Obj(cls, parts, pmap, ox + int(cols[0]), oy + int(rows[0]), foot, s, state)
    if cls == "People" and st.condition in ("day", "glare"):
        obj.thermal = float(rng.uniform(*SUNLIT_PEOPLE_IR))
    return obj


def _factors(o: _Obj, st: Setting, light: np.ndarray | None, glare: np.ndarray | None) -> None:
    """How much visible and thermal contrast the object keeps (see the module rules)."""
    depth = 1.0 / o.scale
    vis = 1.0
    if st.condition == "fog":
        vis = float(np.exp(-st.fog_beta * (depth - 0.6)))
    elif st.condition == "glare" and glare is not None:
        x0, y0, x1, y1 = o.box
        vis = 1.0 - float(glare[y0:y1, x0:x1][o.mask].mean())
    elif st.condition == "night" and light is not None:
        fx = int(np.clip((o.box[0] + o.box[2]) // 2, 0, st.width - 1))
        fy = int(np.clip(o.foot_y - 1, 0, st.height - 1))
        vis = float(light[fy, fx])
        if o.state == "lit":
            vis = 1.0
        elif o.state == "running":
            vis = max(vis, 0.5)  # its own lights show it
    if o.cls == "Lamp":
        ir = 0.0
    elif o.state == "parked":
        ir = PARKED_IR
    else:
        ir = abs(o.thermal)
    if st.condition == "fog":
        ir *= float(np.exp(-0.15 * st.fog_beta * (depth - 0.6)))  # long waves pierce fog
    o.vis_factor, o.ir_factor = min(vis, 1.0), min(ir, 1.0)


def _acceptable(objs: list[_Obj], new: _Obj) -> bool:
    if any(_iou(new.box, o.box) > MAX_IOU for o in objs):
        return False
    if new.vis_factor < VIS_THRESHOLD and new.ir_factor < IR_THRESHOLD:
        return False  # seen in neither modality: nobody could annotate it
    trial = [*objs, new]
    fractions = _unoccluded(trial)
    if min(fractions) < MIN_VISIBLE:
        return False
    for o, f in zip(trial, fractions):
        o.unoccluded = f
    return True


def _setting(rng: np.random.Generator, width: int, height: int) -> Setting:
    condition = CONDITIONS[int(rng.choice(len(CONDITIONS), p=CONDITION_P))]
    ground_t = {
        "day": rng.uniform(0.42, 0.55),
        "glare": rng.uniform(0.42, 0.55),
        "fog": rng.uniform(0.38, 0.48),
        "night": rng.uniform(0.28, 0.40),
    }[condition]
    sky_t = ground_t - (rng.uniform(0.06, 0.12) if condition == "fog" else rng.uniform(0.2, 0.3))
    return Setting(
        width=width,
        height=height,
        condition=condition,
        horizon=height * rng.uniform(0.32, 0.42),
        vp_x=width * rng.uniform(0.35, 0.65),
        ground_t=ground_t,
        sky_t=sky_t,
        fog_beta=rng.uniform(1.0, 1.5) if condition == "fog" else 0.0,
    )


def _place(
    rng: np.random.Generator, st: Setting
) -> tuple[list[_Obj], np.ndarray | None, np.ndarray | None]:
    """Choose and place the objects; returns them with the night light and glare maps."""
    n = int(rng.integers(3, 11))
    names = list(CLASS_P)
    classes = [names[i] for i in rng.choice(len(names), n, p=list(CLASS_P.values()))]
    lamps = [c for c in classes if c == "Lamp"][:2]
    others = [c for c in classes if c != "Lamp"]
    glare = glare_map(st, rng) if st.condition == "glare" else None
    objs: list[_Obj] = []

    def attempt(cls: str, light: np.ndarray | None) -> None:
        for _ in range(6):
            cand = _propose(rng, cls, st)
            if cand is None:
                continue
            _factors(cand, st, light, glare)
            if _acceptable(objs, cand):
                objs.append(cand)
                return

    # Lamps first: at night their pools of light decide who else can be seen.
    for cls in lamps:
        attempt(cls, None)
    light = None
    if st.condition == "night":
        feet = [((o.box[0] + o.box[2]) / 2, o.foot_y) for o in objs]
        light = night_light(st, rng, feet)
    for cls in others:
        attempt(cls, light)
    extra = 0
    while len(objs) < 3 and extra < 12:
        attempt(names[int(rng.choice(len(names), p=list(CLASS_P.values())))], light)
        extra += 1
    objs.sort(key=lambda o: o.foot_y)  # far to near: the drawing order
    return objs, light, glare


def _composite(st: Setting, objs: list[_Obj], albedo: np.ndarray, ir_bg: np.ndarray):
    """Draw the objects (far to near) over the backgrounds. Returns albedo, infrared,
    night emission and the object-index map (0 = background, k + 1 = objs[k])."""
    ir = ir_bg.copy()
    emit = np.zeros_like(albedo)
    index = np.zeros((st.height, st.width), np.uint8)
    for k, o in enumerate(objs):
        x0, y0, x1, y1 = o.box
        m, idx = o.mask, o.pmap[o.mask]
        rgb = np.array([(0, 0, 0)] + [p.rgb for p in o.parts], np.float32)
        rel = np.array([False] + [p.ir_rel for p in o.parts])
        temp = np.array([0.0] + [p.ir for p in o.parts], np.float32)
        temp = np.where(rel, temp, temp * o.thermal)
        light = np.array([(0, 0, 0)] + [p.emit or (0, 0, 0) for p in o.parts], np.float32)
        albedo[y0:y1, x0:x1][m] = rgb[idx]
        base = np.where(rel[idx], ir_bg[y0:y1, x0:x1][m], st.ground_t)
        ir[y0:y1, x0:x1][m] = base + temp[idx]
        if o.state in ("running", "lit"):
            emit[y0:y1, x0:x1][m] = light[idx]
        index[y0:y1, x0:x1][m] = k + 1
    return albedo, ir, emit, index


def _glow(emit: np.ndarray) -> np.ndarray:
    """Lights plus the halo of the bright ones (optics scatter bright points into a wide
    soft glow; dim extended sources such as lit windows get none)."""
    point = np.where(emit.max(axis=2, keepdims=True) > 1.0, emit, 0.0).astype(np.float32)
    if not point.any():
        return emit
    return (
        emit
        + 2.5 * cv2.GaussianBlur(point, (0, 0), 2.0)
        + 5.0 * cv2.GaussianBlur(point, (0, 0), 6.0)
    )


def _finish_visible(st, rng, objs, albedo, emit, index, light, glare, windows) -> np.ndarray:
    h, w = st.height, st.width
    if st.condition == "night":
        # A lit lamp shows by its own light; everything else by the light falling on it.
        lum_obj = [0.6 if o.state == "lit" else o.vis_factor for o in objs]
        per_obj = np.array([0.0, *lum_obj], np.float32)
        lum = np.where(index > 0, per_obj[index], light)
        vis = albedo * lum[..., None] + _glow(emit)
        vis[windows & (index == 0)] += (0.45, 0.38, 0.20)
        vis *= rng.uniform(1.3, 1.9)  # auto-exposure gain, which also raises the noise
        noise = rng.uniform(0.03, 0.05)
    elif st.condition == "fog":
        _, z, ground = st.ground_coords()
        depth = np.where(ground, z, FAR_DEPTH)
        per_obj = np.array([0.0] + [1.0 / o.scale for o in objs], np.float32)
        depth = np.where(index > 0, per_obj[index], depth)
        t = np.exp(-st.fog_beta * np.maximum(depth - 0.6, 0.0))[..., None]
        air = rng.uniform(0.72, 0.88) + rng.uniform(-0.02, 0.02, 3)
        vis = albedo * t + air * (1 - t)
        noise = 0.01
    else:
        vis = albedo * rng.uniform(0.9, 1.1)
        noise = 0.012
        if glare is not None:
            g = glare[..., None]
            vis = vis * (1 - g) + g * np.array([1.0, 0.98, 0.92]) + 0.06
    vis = cv2.GaussianBlur(vis.astype(np.float32), (0, 0), 0.6)
    vis += noise * rng.standard_normal((h, w, 3), dtype=np.float32)
    return np.round(np.clip(vis, 0, 1) * 255).astype(np.uint8)


def _finish_ir(st, rng, objs, ir, index) -> np.ndarray:
    h, w = st.height, st.width
    if st.condition == "fog":
        _, z, ground = st.ground_coords()
        per_obj = np.array([0.0] + [1.0 / o.scale for o in objs], np.float32)
        depth = np.where(index > 0, per_obj[index], np.where(ground, z, FAR_DEPTH))
        t = np.exp(-0.15 * st.fog_beta * np.maximum(depth - 0.6, 0.0))
        ir = ir * t + st.ground_t * (1 - t)
    ir = cv2.GaussianBlur(ir.astype(np.float32), (0, 0), 0.8)
    ir += 0.012 * rng.standard_normal((h, w), dtype=np.float32)
    ir += 0.004 * rng.standard_normal((1, w), dtype=np.float32)  # column fixed-pattern noise
    return np.round(np.clip(ir, 0, 1) * 255).astype(np.uint8)


def render_scene(rng: np.random.Generator, width: int = 320, height: int = 256) -> Scene:
    """Render one random scene: a registered visible/infrared pair and its objects.

    Everything is drawn from ``rng``, so the same generator state gives the same scene."""
    if width < 64 or height < 64:
        raise ValueError(f"synthetic scene size {width}x{height} is too small (min 64x64)")
    st = _setting(rng, width, height)
    albedo, ir_bg, lit_windows = render_background(st, rng)
    objs, light, glare = _place(rng, st)
    albedo, ir, emit, index = _composite(st, objs, albedo, ir_bg)
    vis = _finish_visible(st, rng, objs, albedo, emit, index, light, glare, lit_windows)
    ir8 = _finish_ir(st, rng, objs, ir, index)
    objects = [
        SceneObject(
            cls=o.cls,
            box=o.box,
            vis=o.vis_factor >= VIS_THRESHOLD,
            ir=o.ir_factor >= IR_THRESHOLD,
            state=o.state,
            vis_factor=round(o.vis_factor, 4),
            ir_factor=round(o.ir_factor, 4),
            unoccluded=round(o.unoccluded, 4),
        )
        for o in objs
    ]
    return Scene(vis=vis, ir=ir8, objects=objects, condition=st.condition)
