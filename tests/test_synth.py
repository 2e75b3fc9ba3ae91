"""Synthetic infrared-visible scenes: determinism, file layout, and the physics that makes
fusion matter (each statistic below fails if the corresponding rendering rule breaks)."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest

from e2emfd.cli.main import main
from e2emfd.synth.street import (
    CLASSES,
    CONDITIONS,
    generate_dataset,
    is_test_index,
    render_scene,
    scene_for_index,
)

W, H = 320, 256
N_SCENES = 60


@pytest.fixture(scope="module")
def scenes():
    return [scene_for_index(0, i) for i in range(N_SCENES)]


def _objects(scenes, **where):
    return [
        (s, o)
        for s in scenes
        for o in s.objects
        if all(
            getattr(o, k) == v if k != "condition" else s.condition == v for k, v in where.items()
        )
    ]


def _flank_contrast(img: np.ndarray, box) -> float | None:
    """Mean inside the box minus the mean of strips of the same rows either side of it
    (same rows, so the vertical sky/ground gradient cancels)."""
    x0, y0, x1, y1 = box
    w = max(3, (x1 - x0) // 2)
    left = img[y0:y1, max(0, x0 - w) : max(0, x0 - 1)]
    right = img[y0:y1, min(img.shape[1], x1 + 1) : min(img.shape[1], x1 + w)]
    flank = np.concatenate([left.reshape(-1), right.reshape(-1)])
    if flank.size < 20:
        return None
    return float(img[y0:y1, x0:x1].mean() - flank.mean())


def _median_contrast(pairs, modality: str) -> float:
    values = []
    for s, o in pairs:
        img = s.ir if modality == "ir" else cv2.cvtColor(s.vis, cv2.COLOR_RGB2GRAY)
        c = _flank_contrast(img.astype(np.float32), o.box)
        if c is not None:
            values.append(c)
    assert len(values) >= 5, "too few objects to measure"
    return float(np.median(values))


def _grey(scene) -> np.ndarray:
    return cv2.cvtColor(scene.vis, cv2.COLOR_RGB2GRAY).astype(np.float32)


# --- one scene ---------------------------------------------------------------------------


def test_render_scene_types_and_sizes():
    s = render_scene(np.random.default_rng([1, 2]), 200, 128)
    assert s.vis.shape == (128, 200, 3) and s.vis.dtype == np.uint8
    assert s.ir.shape == (128, 200) and s.ir.dtype == np.uint8
    assert s.condition in CONDITIONS
    assert s.objects, "a scene has objects"
    with pytest.raises(ValueError, match="too small"):
        render_scene(np.random.default_rng(0), 32, 32)


def test_render_scene_is_deterministic():
    a = render_scene(np.random.default_rng([5, 9]))
    b = render_scene(np.random.default_rng([5, 9]))
    c = render_scene(np.random.default_rng([5, 10]))
    assert np.array_equal(a.vis, b.vis) and np.array_equal(a.ir, b.ir)
    assert a.objects == b.objects and a.condition == b.condition
    assert not np.array_equal(a.vis, c.vis)


# --- statistics over many scenes -----------------------------------------------------------


def test_boxes_inside_image_with_positive_size(scenes):
    for s in scenes:
        for o in s.objects:
            x0, y0, x1, y1 = o.box
            assert all(isinstance(v, int) for v in o.box)
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, o
            assert o.unoccluded >= 0.4


def test_object_sizes_suit_a_small_detector(scenes):
    long_side = np.array(
        [max(o.box[2] - o.box[0], o.box[3] - o.box[1]) for _, o in _objects(scenes)]
    )
    assert np.percentile(long_side, 5) >= 12
    assert long_side.max() <= 120
    counts = [len(s.objects) for s in scenes]
    assert min(counts) >= 2 and max(counts) <= 10 and np.mean(counts) >= 4


def test_all_classes_and_conditions_appear(scenes):
    assert {o.cls for _, o in _objects(scenes)} == set(CLASSES)
    assert {s.condition for s in scenes} == set(CONDITIONS)


def test_some_objects_are_seen_in_one_modality_only(scenes):
    pairs = _objects(scenes)
    vis_only = sum(o.vis and not o.ir for _, o in pairs) / len(pairs)
    ir_only = sum(o.ir and not o.vis for _, o in pairs) / len(pairs)
    assert not any(not o.vis and not o.ir for _, o in pairs), "objects seen in neither"
    assert 0.15 <= vis_only <= 0.35 and 0.07 <= ir_only <= 0.25
    assert 0.28 <= vis_only + ir_only <= 0.5
    # The rules that produce them: lamps never show in the infrared, parked vehicles only
    # weakly, people always do after dark and in fog.
    assert all(not o.ir for _, o in _objects(scenes, cls="Lamp"))
    assert all(not o.ir for _, o in _objects(scenes, state="parked"))
    assert all(
        o.ir for c in ("night", "fog") for _, o in _objects(scenes, cls="People", condition=c)
    )
    assert any(not o.vis for _, o in _objects(scenes, cls="People", condition="night"))


def test_people_are_hot_in_the_infrared_after_dark(scenes):
    night = _objects(scenes, cls="People", condition="night")
    assert _median_contrast(night, "ir") > 20  # of 255 grey levels


def test_thermal_crossover_hides_some_people_by_day(scenes):
    day = _objects(scenes, cls="People", condition="day")
    hidden = [(s, o) for s, o in day if not o.ir]
    assert 0.3 <= len(hidden) / len(day) <= 0.7
    # the flag follows the rendered image: those people are faint in the infrared...
    contrast = [abs(_flank_contrast(s.ir.astype(np.float32), o.box) or 0) for s, o in hidden]
    night = _objects(scenes, cls="People", condition="night")
    assert np.median(contrast) < 0.5 * _median_contrast(night, "ir")
    # ...and plain in the visible image
    assert all(o.vis for _, o in hidden)


def test_lamps_are_at_background_temperature(scenes):
    lamps = _median_contrast(_objects(scenes, cls="Lamp"), "ir")
    assert abs(lamps) < 3
    # ...while clearly present in the visible image.
    vis = [abs(_flank_contrast(_grey(s), o.box) or 0) for s, o in _objects(scenes, cls="Lamp")]
    assert np.median(vis) > 4 * max(abs(lamps), 0.5)


@pytest.mark.parametrize("height", [H * 0.36 * 0.28, H * 0.36 * 0.6, H * 0.36])
def test_every_column_of_a_lamp_box_has_a_visible_stroke(height):
    # The box spans the arm and the head: a column of 1 px would vanish under the blur and
    # noise of a far lamp, leaving a box edge no pixel defines. (The outermost columns are
    # the rounded tips of the base and the head.)
    from e2emfd.synth.shapes import BASE_SIZE, build_parts, rasterise

    width = height * BASE_SIZE["Lamp"][0] / BASE_SIZE["Lamp"][1]
    for seed in range(5):
        parts = build_parts(np.random.default_rng(seed), "Lamp", width, height, False, False)
        pmap = rasterise(parts, 1.0, 1.0, (int(height) + 4, int(width) + 4)) > 0
        columns = pmap[:, pmap.any(0)].sum(0)
        assert columns[1:-1].min() >= 2, (height, columns)


def test_running_vehicles_are_warm_parked_ones_are_not(scenes):
    running = [(s, o) for s, o in _objects(scenes, state="running") if o.cls != "Motorcycle"]
    parked = _objects(scenes, state="parked")
    assert _median_contrast(running, "ir") > 6
    assert abs(_median_contrast(parked, "ir")) < 3


def test_night_visible_is_dark_and_noisy(scenes):
    day = [s for s in scenes if s.condition == "day"]
    night = [s for s in scenes if s.condition == "night"]
    assert np.mean([_grey(s).mean() for s in night]) < 0.4 * np.mean([_grey(s).mean() for s in day])

    def noise(s):  # residual after a small median filter: sensor noise, not structure
        g = _grey(s)
        return float(np.abs(g - cv2.medianBlur(g.astype(np.uint8), 3)).mean())

    assert np.mean([noise(s) for s in night]) > np.mean([noise(s) for s in day])


def test_night_flags_follow_the_light(scenes):
    """Walking people flagged invisible at night are darker than those flagged visible."""
    seen = [
        _grey(s)[o.box[1] : o.box[3], o.box[0] : o.box[2]].mean()
        for s, o in _objects(scenes, cls="People", condition="night", vis=True)
    ]
    unseen = [
        _grey(s)[o.box[1] : o.box[3], o.box[0] : o.box[2]].mean()
        for s, o in _objects(scenes, cls="People", condition="night", vis=False)
    ]
    assert seen and unseen
    assert np.median(unseen) < 0.5 * np.median(seen)


def _local_contrast(g: np.ndarray) -> float:
    g = cv2.GaussianBlur(g, (0, 0), 1.5)
    return float(np.hypot(cv2.Sobel(g, cv2.CV_32F, 1, 0), cv2.Sobel(g, cv2.CV_32F, 0, 1)).mean())


def test_fog_lowers_visible_contrast_not_infrared(scenes):
    day = [s for s in scenes if s.condition == "day"]
    fog = [s for s in scenes if s.condition == "fog"]
    vis_ratio = np.mean([_local_contrast(_grey(s)) for s in fog]) / np.mean(
        [_local_contrast(_grey(s)) for s in day]
    )
    assert vis_ratio < 0.6
    # People in fog stay warm in the infrared; far ones vanish from the visible.
    assert _median_contrast(_objects(scenes, cls="People", condition="fog"), "ir") > 15
    fog_vis = {v for _, o in _objects(scenes, condition="fog") for v in [o.vis]}
    assert fog_vis == {True, False}


def test_glare_saturates_part_of_the_visible(scenes):
    def saturated(s):
        return float((s.vis.min(axis=2) >= 250).mean())

    glare = [saturated(s) for s in scenes if s.condition == "glare"]
    day = [saturated(s) for s in scenes if s.condition == "day"]
    assert glare and min(glare) > 0.02 and np.mean(glare) > 5 * np.mean(day)


def test_infrared_background_has_no_visible_texture(scenes):
    """Away from objects the infrared is smooth: far less fine structure than the visible."""
    ratios = []
    for s in (s for s in scenes if s.condition == "day"):
        free = np.ones((H, W), bool)
        for o in s.objects:
            free[o.box[1] : o.box[3], o.box[0] : o.box[2]] = False
        ir = cv2.GaussianBlur(s.ir.astype(np.float32), (0, 0), 1.0)
        vis = cv2.GaussianBlur(_grey(s), (0, 0), 1.0)
        lap_ir = np.abs(cv2.Laplacian(ir, cv2.CV_32F))[free].mean()
        lap_vis = np.abs(cv2.Laplacian(vis, cv2.CV_32F))[free].mean()
        ratios.append(lap_ir / lap_vis)
    assert np.median(ratios) < 0.5


# --- dataset files -------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "ds"
    generate_dataset(out, num=5, size=(160, 128), seed=3, test_fraction=0.4, progress=False)
    return out


def test_two_runs_are_byte_identical(small_dataset, tmp_path):
    again = generate_dataset(tmp_path / "again", 5, (160, 128), 3, 0.4, progress=False)
    assert _tree(small_dataset) == _tree(again)


def test_more_images_only_adds_images(small_dataset, tmp_path):
    fewer = _tree(generate_dataset(tmp_path / "three", 3, (160, 128), 3, 0.4, progress=False))
    more = _tree(small_dataset)
    for name, data in fewer.items():
        if name.startswith(("Vis", "Ir", "Annotations")):
            assert more[name] == data, name
    meta3 = json.loads(fewer["meta.json"])["images"]
    meta5 = json.loads(more["meta.json"])["images"]
    assert meta5[:3] == meta3


def test_layout_and_voc_xml(small_dataset):
    ids = [f"{i:05d}" for i in range(5)]
    for name in ids:
        vis = cv2.imread(str(small_dataset / "Vis" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        ir = cv2.imread(str(small_dataset / "Ir" / f"{name}.png"), cv2.IMREAD_UNCHANGED)
        assert vis.shape == (128, 160, 3) and vis.dtype == np.uint8
        assert ir.shape == (128, 160) and ir.dtype == np.uint8
        root = ET.parse(small_dataset / "Annotations" / f"{name}.xml").getroot()
        assert root.tag == "annotation"
        assert root.findtext("filename") == f"{name}.png"
        size = root.find("size")
        assert [size.findtext(k) for k in ("width", "height", "depth")] == ["160", "128", "3"]
        objects = root.findall("object")
        assert objects
        for obj in objects:
            assert obj.findtext("name") in CLASSES
            assert obj.findtext("difficult") == "0"
            x0, y0, x1, y1 = (
                int(obj.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")
            )
            assert 0 <= x0 < x1 <= 160 and 0 <= y0 < y1 <= 128
    main_dir = small_dataset / "ImageSets" / "Main"
    train = main_dir.joinpath("train.txt").read_text().split()
    test = main_dir.joinpath("test.txt").read_text().split()
    assert sorted(train + test) == ids and not set(train) & set(test) and len(test) == 2


def test_meta_json_matches_annotations(small_dataset):
    meta = json.loads((small_dataset / "meta.json").read_text())
    assert meta["generator"] == "e2emfd.synth" and meta["size"] == [160, 128]
    assert [m["id"] for m in meta["images"]] == [f"{i:05d}" for i in range(5)]
    for m in meta["images"]:
        assert m["condition"] in CONDITIONS and m["split"] in ("train", "test")
        root = ET.parse(small_dataset / "Annotations" / f"{m['id']}.xml").getroot()
        xml_boxes = [
            [int(o.find("bndbox").findtext(k)) for k in ("xmin", "ymin", "xmax", "ymax")]
            for o in root.findall("object")
        ]
        assert xml_boxes == [o["box"] for o in m["objects"]]
        assert [o.findtext("name") for o in root.findall("object")] == [
            o["class"] for o in m["objects"]
        ]
        for o in m["objects"]:
            assert isinstance(o["vis"], bool) and isinstance(o["ir"], bool)


def test_project_voc_reader_recovers_the_boxes(small_dataset):
    from e2emfd.data.labels import parse_voc_xml

    meta = json.loads((small_dataset / "meta.json").read_text())
    first = meta["images"][0]
    ann = parse_voc_xml(small_dataset / "Annotations" / f"{first['id']}.xml", list(CLASSES))
    assert ann.boxes.tolist() == [o["box"] for o in first["objects"]]
    assert [CLASSES[i] for i in ann.labels] == [o["class"] for o in first["objects"]]


def test_project_dataset_loads_the_layout(small_dataset, recwarn):
    from e2emfd.data.datasets import PairDataset

    ds = PairDataset.from_labelled(small_dataset, "voc", list(CLASSES), split="test")
    assert len(ds) == 2 and not recwarn.list
    sample = ds[0]
    assert tuple(sample["vis"].shape) == (3, 128, 160) and tuple(sample["ir"].shape) == (
        1,
        128,
        160,
    )


def test_split_is_exact_and_stable():
    for frac in (0.0, 0.2, 0.25, 0.33):
        for n in (1, 7, 50, 101):
            assert sum(is_test_index(i, frac) for i in range(n)) == int(n * frac + 1e-9)


def test_refuses_non_empty_folder_and_overwrites_only_datasets(small_dataset, tmp_path):
    with pytest.raises(ValueError, match="--overwrite"):
        generate_dataset(small_dataset, num=2, size=(96, 96), progress=False)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(ValueError, match="notes.txt"):
        generate_dataset(foreign, num=2, size=(96, 96), overwrite=True, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    fake = tmp_path / "fake"
    (fake / "Vis").mkdir(parents=True)
    with pytest.raises(ValueError, match="refusing"):
        generate_dataset(fake, num=2, size=(96, 96), overwrite=True, progress=False)
    redo = tmp_path / "redo"
    generate_dataset(redo, num=4, size=(96, 96), progress=False)
    generate_dataset(redo, num=2, size=(96, 96), overwrite=True, progress=False)
    assert sorted(p.name for p in (redo / "Vis").iterdir()) == ["00000.png", "00001.png"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"num": 0}, "num"),
        ({"test_fraction": 1.0}, "test_fraction"),
        ({"size": (32, 200)}, "small"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generate_dataset(tmp_path / "x", **{"num": 2, "progress": False, **kwargs})


# --- command line --------------------------------------------------------------------------


def test_cli_writes_a_dataset(tmp_path, capsys):
    out = tmp_path / "cli"
    rc = main(["synth", str(out), "--num", "3", "--size", "96x80", "--seed", "1", "--quiet"])
    assert rc == 0
    assert len(list((out / "Vis").iterdir())) == 3
    assert cv2.imread(str(out / "Ir" / "00000.png"), cv2.IMREAD_UNCHANGED).shape == (80, 96)
    assert "wrote 3" in capsys.readouterr().out
    assert main(["synth", str(out), "--num", "3", "--quiet"]) == 2  # not empty
    assert "--overwrite" in capsys.readouterr().err


def test_cli_help_and_bad_size(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synth", "--help"])
    assert exc.value.code == 0
    assert "infrared" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["synth", "out", "--size", "320"])
    assert exc.value.code == 2
    assert "WIDTHxHEIGHT" in capsys.readouterr().err
