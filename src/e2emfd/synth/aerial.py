"""Synthetic aerial infrared-visible scenes with oriented vehicle boxes, in the DroneVehicle
layout (the rotated counterpart of :mod:`e2emfd.synth.street`, whose rules it follows).

Scene rules
-----------
Geometry. A drone looks straight down on flat ground at ``px_per_m`` = H / view_m x U(0.85,
1.15) pixels per metre, ``view_m`` = 40 by default (a car is ~29 x 12 px at 320x256;
``view_m`` = 20 doubles every vehicle's size and shows a quarter of the ground). A straight
four-lane road crosses the image at a random angle (a second one in 30% of scenes); beside
it, in half the scenes, a parking lot with two rows of slots; elsewhere grass, soil or
paving, with building roofs and trees. Vehicles (length x width in m, +-6%): car 4.6x1.85,
van 5.2x2.0, truck 7.6x2.45, bus 11.5x2.55, freight_car 13.5x2.5. Running vehicles drive
along the lanes (lane direction +-2 degrees; classes 36/14/18/14/18% in that order), parked
ones stand in 10-40% of the lot slots (cars and vans) and anywhere on open ground at any
angle (0-3 per scene). Footprints never touch and lie inside the image. A vehicle is the
rectangle of its footprint: a pixel is drawn when its centre is inside it, so the box is
the object's full extent. Rendering: :mod:`.aerial_scene` and
:mod:`.aerial_background`.

Shapes, seen from above with the front at +u: car: bonnet, windscreen, roof, rear window;
van: short bonnet, windscreen, long roof; truck: cab with windscreen, chassis gap, cargo
box; bus: long roof with a strip of roof windows and two AC units, engine at the rear;
freight car: tractor, coupling, long trailer with ribs. Colours are the street scenes'
palettes (:mod:`e2emfd.synth.shapes`).

Conditions (day 40%, night 30%, fog 20%, glare 10%), visible image. Day: sunlit albedo,
texture, vehicle shadows. Night: 4-8% ambient light, pools of light under 1-3 street lamps per road
and the headlight beams of running vehicles on the road ahead of them; from above, a
vehicle's own lights are points at its ends that do not show its outline. Fog: patchy
(thickness from smooth noise), ``I = albedo * t + A * (1 - t)``. Glare: a sun reflection
that washes out a region.

Thermal physics, infrared image (relative to the ground temperature, as the street
scenes): running vehicles warm (engine +0.3 at the front, at the rear for buses, exhaust
+0.42, body +0.06..0.10, glass 0.08 colder than the body, cargo +0.02..0.05); parked
vehicles at the temperature of the surface under them (+-0.02). Background smooth: a
warmer road by day, cooler grass and trees, roofs of varied temperature and a few warm
patches. Blur, noise and column noise. The infrared keeps ``t ** 0.15`` of the fog's
visible transmission ``t``.

Detectability, recorded per object as in the street scenes: ``vis_factor`` is 1 by day,
the mean fog transmission or ``1 - mean glare`` over the footprint, at night the mean
light falling on it; ``ir_factor`` is 1 for running vehicles (times the infrared fog
transmission), 0.1 for parked ones. ``vis = vis_factor >= 0.2``, ``ir = ir_factor >= 0.4``.
A vehicle seen in neither is not placed. So parked vehicles by day are visible-only,
running vehicles in the dark infrared-only: over 200 scenes (seed 0), 54% of the vehicles
are seen in both, 34% only in the visible and 12% only in the infrared.

Files (:func:`generate_aerial_dataset`): ``{train,test}/{rgb,ir}/images/<id>.png`` and
``{train,test}/{rgb,ir}/labels/<id>.xml`` with one ``<object>`` per vehicle: ``<name>``,
``<difficult>0``, an 8-point ``<polygon>`` (corners of the le90 box, 2 decimals).
``labels="union"`` (default) puts every vehicle in both label folders (the target of a
fused detector); ``"modality"`` lists in each folder only what that modality shows, as
DroneVehicle's annotators did. ``border`` pads both images with that many white pixels (as
the release does; read back with ``crop_border``). ``meta.json`` records every object.
Image ``i`` depends only on ``(seed, i)``; PNGs are byte-identical across runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from e2emfd.data.dronevehicle import DRONEVEHICLE_CLASSES
from e2emfd.synth.aerial_scene import (
    CONDITIONS,
    IR_THRESHOLD,
    VIS_THRESHOLD,
    AerialObject,
    AerialScene,
    render_aerial_scene,
)
from e2emfd.synth.output import check_request, image_ids, numbered, prepare_out, write_meta
from e2emfd.synth.street import _png, is_test_index

__all__ = [
    "CLASSES",
    "AerialObject",
    "AerialScene",
    "aerial_scene_for_index",
    "generate_aerial_dataset",
    "label_xml",
    "render_aerial_scene",
]

GENERATOR = "e2emfd.synth_aerial"
FORMAT_VERSION = 1
LAYOUT = ("train", "test", "meta.json")
CLASSES = DRONEVEHICLE_CLASSES


def aerial_scene_for_index(
    seed: int, index: int, size: tuple[int, int] = (320, 256), view_m: float = 40.0
) -> AerialScene:
    """The scene of image ``index`` of a dataset generated with ``seed`` (``size`` = W, H;
    ``view_m`` as :func:`render_aerial_scene`)."""
    return render_aerial_scene(np.random.default_rng([seed, index]), size[0], size[1], view_m)


def label_xml(
    image_id: str, width: int, height: int, objects: list[AerialObject], shift: int = 0
) -> str:
    """DroneVehicle-style XML: per object ``<name>``, ``<difficult>`` and an 8-point
    ``<polygon>`` (corners moved by ``shift`` pixels, for a border)."""
    lines = [
        "<annotation>",
        f"\t<filename>{image_id}.png</filename>",
        f"\t<size><width>{width}</width><height>{height}</height><depth>3</depth></size>",
    ]
    for o in objects:
        keys = [f"{axis}{i // 2 + 1}" for i, axis in enumerate("xy" * 4)]
        pts = "".join(f"<{k}>{p + shift:.2f}</{k}>" for k, p in zip(keys, o.polygon))
        lines += [
            "\t<object>",
            f"\t\t<name>{o.cls}</name>",
            "\t\t<difficult>0</difficult>",
            f"\t\t<polygon>{pts}</polygon>",
            "\t</object>",
        ]
    return "\n".join([*lines, "</annotation>"]) + "\n"


def _written_files(out: Path, meta: dict) -> list[Path]:
    """The files :func:`generate_aerial_dataset` wrote for the dataset ``meta`` describes
    (an image is looked for under both splits); other files are not among them."""
    files = [out / "meta.json"]
    for image_id in image_ids(meta):
        for split in ("train", "test"):
            for mod in ("rgb", "ir"):
                files.append(out / split / mod / "images" / f"{image_id}.png")
                files.append(out / split / mod / "labels" / f"{image_id}.xml")
    return files


def _object_meta(o: AerialObject) -> dict:
    return {
        "class": o.cls,
        "obb": list(o.obb),
        "polygon": list(o.polygon),
        "vis": o.vis,
        "ir": o.ir,
        "state": o.state,
        "vis_factor": o.vis_factor,
        "ir_factor": o.ir_factor,
    }


def generate_aerial_dataset(
    out: str | Path,
    num: int = 200,
    size: tuple[int, int] = (320, 256),
    seed: int = 0,
    test_fraction: float = 0.2,
    border: int = 0,
    labels: str = "union",
    overwrite: bool = False,
    progress: bool = True,
    view_m: float = 40.0,
) -> Path:
    """Write ``num`` aerial pairs of ``size`` = (width, height) (plus ``border`` white
    pixels on every side) to ``out`` in the DroneVehicle layout and return ``out``; see the
    module docstring. ``out`` must be new or empty, or hold an earlier dataset of this
    function and ``overwrite``."""
    out = Path(out)
    width, height = size
    check_request(num, test_fraction, width, height)
    if border < 0:
        raise ValueError(f"border must be >= 0, got {border}")
    if labels not in ("union", "modality"):
        raise ValueError(f"labels must be 'union' or 'modality', got {labels!r}")
    prepare_out(out, overwrite, GENERATOR, LAYOUT, _written_files)
    for split in ("train", "test"):
        for folder in ("rgb/images", "rgb/labels", "ir/images", "ir/labels"):
            (out / split / folder).mkdir(parents=True, exist_ok=True)
    pad = ((border, border), (border, border))
    images = []
    for index, image_id in numbered(num, progress):
        scene = aerial_scene_for_index(seed, index, (width, height), view_m)
        split = "test" if is_test_index(index, test_fraction) else "train"
        vis = np.pad(scene.vis, (*pad, (0, 0)), constant_values=255)
        ir = np.pad(scene.ir, pad, constant_values=255)
        for mod, image, seen in (("rgb", vis, "vis"), ("ir", ir, "ir")):
            (out / split / mod / "images" / f"{image_id}.png").write_bytes(_png(image))
            objs = [o for o in scene.objects if labels == "union" or getattr(o, seen)]
            xml = label_xml(image_id, width + 2 * border, height + 2 * border, objs, border)
            (out / split / mod / "labels" / f"{image_id}.xml").write_text(xml, encoding="utf-8")
        images.append(
            {
                "id": image_id,
                "split": split,
                "condition": scene.condition,
                "objects": [_object_meta(o) for o in scene.objects],
            }
        )
    write_meta(
        out,
        GENERATOR,
        FORMAT_VERSION,
        seed=seed,
        num=num,
        size=(width, height),
        test_fraction=test_fraction,
        images=images,
        border=border,
        view_m=view_m,
        labels=labels,
        classes=list(CLASSES),
        conditions=list(CONDITIONS),
        box_format="le90 (cx, cy, w, h, angle) and corners, pixels without the border",
        vis_threshold=VIS_THRESHOLD,
        ir_threshold=IR_THRESHOLD,
    )
    return out
