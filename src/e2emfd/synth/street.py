"""Synthetic infrared-visible street scenes with M3FD classes, written in the M3FD layout.

An embedded dataset: every part of the project runs on a fresh machine with no download,
and fusion matters on it the way it does on real data, because some objects can be seen in
only one modality. Rendering is in :mod:`.street_scene` (placement, conditions),
:mod:`.background` (street, light) and :mod:`.shapes` (objects).

Scene rules
-----------
Geometry. A flat street seen by a forward camera: horizon at 32-42% of the height, a road
converging on a vanishing point, buildings and trees on the horizon. An object standing on
the ground at row ``y`` has perspective scale ``s = (y - horizon) / (H - horizon)``, drawn
in [0.28, 1]; its box is ``BASE_SIZE[class] * H * s`` (+-12%), so lower objects are larger
(at 320x256, ~12 to ~100 px along the long side). 3-10 objects per scene with class
frequencies People 30%, Car 26%, Bus 11.5%, Truck 11.5%, Motorcycle 11%, Lamp 10%. Objects
are drawn far to near and may occlude each other; the box is always the object's full
extent (tight around its drawn pixels), an object less than 40% unoccluded is not placed,
and two boxes never overlap with IoU > 0.45.

Shapes (class-specific, random colours from class palettes, facing left or right).
People: upright and narrow, legs with a stride, torso, arms, round head. Car: low wide body,
cabin with a window, two wheels, head/tail lights. Bus: long tall box, a row of windows,
windscreen, door, two wheels. Truck: tall cargo box behind a lower cab with a windscreen,
three wheels. Motorcycle: small, two wheels, frame, engine, a rider with a helmet. Lamp:
pole with an arm and a lamp head with a bulb, on the roadside (arm and head at least 2 px
thick: the box spans them).

Conditions (day 40%, night 30%, fog 20%, glare 10%), visible image.
Day: sunlit albedo, textured background, mild noise. Night: everything lit by a dim ambient
level (4-8% of daylight), the ego vehicle's headlight beam on the road ahead and pools of
light under street lamps; lamp bulbs, vehicle head/tail lights and bus cabins glow, some
building windows are lit; strong sensor noise. Fog: Koschmieder haze
``I = albedo * t + A * (1 - t)``, ``t = exp(-beta * (depth - 0.6))``, ``beta`` in [1, 1.5]:
far objects fade into the airlight. Glare: a day scene with a saturated bright region
(low sun, oncoming light) that washes out what lies under it.

Thermal physics, infrared image. Values are relative to the scene's ground temperature:
people hot (skin +0.36, clothes +0.22..0.26) after dark and in fog, but by day (day and
glare scenes) the sun warms the ground to about body temperature (thermal crossover): a
person's contrast is scaled by a factor drawn from [-0.2, 1] (negative: colder than the
ground), so about half of the people by day are faint or invisible in the infrared;
running vehicles warm (engine hot spot +0.3, exhaust +0.45, tyres +0.2, body +0.05..0.10,
glass colder than body); parked vehicles (35% by day, 15% in fog, 10% at night) at ambient
(within +-0.02: weak in the infrared, clear in daylight); lamps take the temperature of
the background behind them (cold metal, LED heads); motorcycles are always ridden (warm
engine, rider). The background is smooth and low-frequency: cold sky, ground, buildings
and trees near ground temperature, a warmer road by day and a few warm patches (so warmth
alone does not mean "object"), no visible texture. Mild blur, noise and column noise.
Long waves pierce fog: the infrared loses only 15% of the visible extinction.

Detectability, recorded per object. ``vis_factor`` is the visible contrast left relative
to daylight: 1 by day; ``t`` in fog; ``1 - mean glare`` under glare; at night the light
falling on the object (at least 0.5 for running vehicles, which show by their own lights;
1 for lit lamps). ``ir_factor`` is the thermal contrast left: 1 for running vehicles and
for people after dark (times the infrared fog transmission), the absolute crossover factor
for people by day, 0.1 for parked vehicles, 0 for lamps.
``vis = vis_factor >= 0.2``, ``ir = ir_factor >= 0.4``. An object seen in neither is not
placed. Over 200 scenes (seed 0) 60% of objects are seen in both, 26% only in the visible
(lamps, parked vehicles, people by day at thermal crossover) and 14% only in the infrared
(people in the dark, far objects in fog, objects in the glare).

Files (``generate_dataset``): ``Vis/<id>.png`` RGB, ``Ir/<id>.png`` 1-channel, both
8-bit; ``Annotations/<id>.xml`` Pascal VOC as in M3FD; ``ImageSets/Main/{train,test}.txt``;
``meta.json``. Box coordinates are pixel edges, ``0 <= xmin < xmax <= width``: the
project's VOC reader takes them as they are, so it recovers each box exactly. Image ``i``
depends only on ``(seed, i)`` (``np.random.default_rng([seed, i])``), and so does its split
(every ``1 / test_fraction``-th image is a test image), so a larger ``num`` only adds
images. PNGs are written with a fixed compression level and no metadata: two runs give
byte-identical files.
"""

from __future__ import annotations

from pathlib import Path
from xml.sax.saxutils import escape

import cv2
import numpy as np

from e2emfd.synth.output import check_request, image_ids, numbered, prepare_out, write_meta
from e2emfd.synth.shapes import CLASSES
from e2emfd.synth.street_scene import (
    CONDITIONS,
    IR_THRESHOLD,
    VIS_THRESHOLD,
    Scene,
    SceneObject,
    render_scene,
)

__all__ = [
    "CLASSES",
    "CONDITIONS",
    "Scene",
    "SceneObject",
    "generate_dataset",
    "is_test_index",
    "render_scene",
    "scene_for_index",
]

GENERATOR = "e2emfd.synth"
FORMAT_VERSION = 1
PNG_COMPRESSION = 3
LAYOUT = ("Vis", "Ir", "Annotations", "ImageSets", "meta.json")


def scene_for_index(seed: int, index: int, size: tuple[int, int] = (320, 256)) -> Scene:
    """The scene of image ``index`` of a dataset generated with ``seed`` (``size`` = W, H)."""
    return render_scene(np.random.default_rng([seed, index]), size[0], size[1])


def is_test_index(index: int, test_fraction: float) -> bool:
    """Whether image ``index`` is in the test split: exactly ``floor(n * test_fraction)`` of
    the first ``n`` images are, spread evenly, whatever ``n`` is."""
    k = round(test_fraction * 1_000_000)
    return (index + 1) * k // 1_000_000 > index * k // 1_000_000


def _png(image: np.ndarray) -> bytes:
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", image, [cv2.IMWRITE_PNG_COMPRESSION, PNG_COMPRESSION])
    if not ok:  # pragma: no cover - encoding a uint8 array does not fail
        raise ValueError("cannot encode a synthetic image as PNG")
    return buf.tobytes()


def voc_xml(image_id: str, width: int, height: int, objects: list[SceneObject]) -> str:
    """Pascal VOC annotation text in M3FD's element layout."""
    lines = [
        "<annotation>",
        "\t<folder>synth</folder>",
        f"\t<filename>{escape(image_id)}.png</filename>",
        "\t<source>",
        "\t\t<database>e2emfd synthetic</database>",
        "\t</source>",
        "\t<size>",
        f"\t\t<width>{width}</width>",
        f"\t\t<height>{height}</height>",
        "\t\t<depth>3</depth>",
        "\t</size>",
        "\t<segmented>0</segmented>",
    ]
    for o in objects:
        x0, y0, x1, y1 = o.box
        lines += [
            "\t<object>",
            f"\t\t<name>{o.cls}</name>",
            "\t\t<pose>Unspecified</pose>",
            "\t\t<truncated>0</truncated>",
            "\t\t<difficult>0</difficult>",
            "\t\t<bndbox>",
            f"\t\t\t<xmin>{x0}</xmin>",
            f"\t\t\t<ymin>{y0}</ymin>",
            f"\t\t\t<xmax>{x1}</xmax>",
            f"\t\t\t<ymax>{y1}</ymax>",
            "\t\t</bndbox>",
            "\t</object>",
        ]
    lines.append("</annotation>")
    return "\n".join(lines) + "\n"


def _object_meta(o: SceneObject) -> dict:
    return {
        "class": o.cls,
        "box": list(o.box),
        "vis": o.vis,
        "ir": o.ir,
        "state": o.state,
        "vis_factor": o.vis_factor,
        "ir_factor": o.ir_factor,
        "unoccluded": o.unoccluded,
    }


def _written_files(out: Path, meta: dict) -> list[Path]:
    """The files :func:`generate_dataset` wrote for the dataset ``meta`` describes; other
    files in its folders (notes, the split files of ``e2emfd split``) are not among them."""
    files = [out / "meta.json"]
    files += [out / "ImageSets" / "Main" / f"{split}.txt" for split in ("train", "test")]
    for image_id in image_ids(meta):
        files += [
            out / "Vis" / f"{image_id}.png",
            out / "Ir" / f"{image_id}.png",
            out / "Annotations" / f"{image_id}.xml",
        ]
    return files


def generate_dataset(
    out: str | Path,
    num: int = 200,
    size: tuple[int, int] = (320, 256),
    seed: int = 0,
    test_fraction: float = 0.2,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write ``num`` synthetic pairs of ``size`` = (width, height) to ``out`` in the M3FD
    layout (see the module docstring) and return ``out``.

    ``out`` must be new or empty; with ``overwrite`` it may also hold a dataset written
    earlier by this function, which is replaced."""
    out = Path(out)
    width, height = size
    check_request(num, test_fraction, width, height)
    prepare_out(out, overwrite, GENERATOR, LAYOUT, _written_files)
    dirs = {name: out / name for name in ("Vis", "Ir", "Annotations")}
    for d in [*dirs.values(), out / "ImageSets" / "Main"]:
        d.mkdir(parents=True, exist_ok=True)
    images, splits = [], {"train": [], "test": []}
    for index, image_id in numbered(num, progress):
        scene = scene_for_index(seed, index, (width, height))
        (dirs["Vis"] / f"{image_id}.png").write_bytes(_png(scene.vis))
        (dirs["Ir"] / f"{image_id}.png").write_bytes(_png(scene.ir))
        xml = voc_xml(image_id, width, height, scene.objects)
        (dirs["Annotations"] / f"{image_id}.xml").write_text(xml, encoding="utf-8")
        split = "test" if is_test_index(index, test_fraction) else "train"
        splits[split].append(image_id)
        images.append(
            {
                "id": image_id,
                "split": split,
                "condition": scene.condition,
                "objects": [_object_meta(o) for o in scene.objects],
            }
        )
    for name, ids in splits.items():
        text = "".join(f"{i}\n" for i in ids)
        (out / "ImageSets" / "Main" / f"{name}.txt").write_text(text, encoding="utf-8")
    write_meta(
        out,
        GENERATOR,
        FORMAT_VERSION,
        seed=seed,
        num=num,
        size=(width, height),
        test_fraction=test_fraction,
        images=images,
        classes=list(CLASSES),
        conditions=list(CONDITIONS),
        box_format="xyxy pixel edges, 0 <= x0 < x1 <= width",
        vis_threshold=VIS_THRESHOLD,
        ir_threshold=IR_THRESHOLD,
    )
    return out
