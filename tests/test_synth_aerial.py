"""Synthetic aerial scenes: determinism, boxes that are the drawn extent, the thermal and
visible rules, the DroneVehicle layout read back by the project's reader."""

import json
import math
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from scipy import ndimage

from e2emfd.data.dronevehicle import DRONEVEHICLE_CLASSES, DroneVehicleDataset
from e2emfd.synth.aerial import aerial_scene_for_index, generate_aerial_dataset

SIZE = (128, 96)


@pytest.fixture(scope="module")
def scenes():
    return [aerial_scene_for_index(0, i, (160, 128)) for i in range(40)]


def test_scene_depends_only_on_seed_and_index():
    a, b = aerial_scene_for_index(3, 5, SIZE), aerial_scene_for_index(3, 5, SIZE)
    assert np.array_equal(a.vis, b.vis) and np.array_equal(a.ir, b.ir)
    assert a.objects == b.objects
    c = aerial_scene_for_index(3, 6, SIZE)
    assert not np.array_equal(a.vis, c.vis)


def test_boxes_are_le90_inside_the_image_and_exactly_the_drawn_pixels(scenes):
    for scene in scenes:
        h, w = scene.ir.shape
        assert scene.vis.shape == (h, w, 3) and scene.vis.dtype == np.uint8
        for k, o in enumerate(scene.objects):
            cx, cy, bw, bh, a = o.obb
            assert bw >= bh > 0 and -math.pi / 2 <= a < math.pi / 2
            corners = np.array(o.polygon).reshape(4, 2)
            assert corners.min() >= 0 and corners[:, 0].max() <= w and corners[:, 1].max() <= h
            ys, xs = np.nonzero(scene.index == k + 1)
            # every drawn pixel centre lies in the box (its own frame, written out here)
            du, dv = xs + 0.5 - cx, ys + 0.5 - cy
            u = du * math.cos(a) + dv * math.sin(a)
            v = -du * math.sin(a) + dv * math.cos(a)
            assert (np.abs(u) <= bw / 2 + 1e-3).all() and (np.abs(v) <= bh / 2 + 1e-3).all()
            # and the pixels fill it: count = area up to the boundary pixels
            assert abs(len(xs) - bw * bh) <= bw + bh + 4, (o, len(xs))


def test_thermal_rules_running_warm_parked_at_background(scenes):
    running, parked = [], []
    for scene in scenes:
        ir = scene.ir.astype(np.float64)
        for k, o in enumerate(scene.objects):
            mask = scene.index == k + 1
            ring = ndimage.binary_dilation(mask, iterations=3) & ~mask & (scene.index == 0)
            if ring.sum() < 10:
                continue
            contrast = ir[mask].mean() - ir[ring].mean()
            (running if o.state == "running" else parked).append(contrast)
    assert len(running) > 30 and len(parked) > 30
    assert np.mean(running) > 8  # grey levels
    assert np.mean(running) > 3 * np.mean(np.abs(parked))
    assert np.median(np.abs(parked)) < 6


def test_visible_rules_and_modality_split(scenes):
    conditions = Counter(s.condition for s in scenes)
    assert set(conditions) == {"day", "night", "fog", "glare"}
    day = np.mean([s.vis.mean() for s in scenes if s.condition == "day"])
    night = np.mean([s.vis.mean() for s in scenes if s.condition == "night"])
    assert night < 0.5 * day
    objects = [(s.condition, o) for s in scenes for o in s.objects]
    assert {o.cls for _, o in objects} == set(DRONEVEHICLE_CLASSES)
    vis_only = [o for _, o in objects if o.vis and not o.ir]
    ir_only = [(c, o) for c, o in objects if o.ir and not o.vis]
    assert vis_only and ir_only and any(o.vis and o.ir for _, o in objects)
    assert all(o.state == "parked" for o in vis_only)  # parked: no thermal contrast
    assert all(o.state == "running" and c != "day" for c, o in ir_only)  # nothing hides by day
    assert all(o.vis or o.ir for _, o in objects)  # seen in neither: not placed
    assert all(
        (o.vis == (o.vis_factor >= 0.2)) and (o.ir == (o.ir_factor >= 0.4)) for _, o in objects
    )


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_dataset_reads_back_with_the_dronevehicle_reader(tmp_path):
    out = generate_aerial_dataset(tmp_path / "ds", num=5, size=SIZE, border=6, progress=False)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["generator"] == "e2emfd.synth_aerial" and meta["classes"] == list(
        DRONEVEHICLE_CLASSES
    )
    splits = Counter(img["split"] for img in meta["images"])
    assert splits == {"train": 4, "test": 1}
    for split in ("train", "test"):
        for modality in ("visible", "infrared"):
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # no box may need clipping
                ds = DroneVehicleDataset.from_root(out, split, modality, crop_border=6)
            for sample in ds:
                img = next(i for i in meta["images"] if i["id"] == sample["image_id"])
                assert sample["vis"].shape == (3, SIZE[1], SIZE[0])
                expected = torch.tensor([o["obb"] for o in img["objects"]], dtype=torch.float32)
                got = sample["boxes"]
                assert got.shape == (len(img["objects"]), 5)
                if len(got):
                    torch.testing.assert_close(got[:, :4], expected[:, :4], atol=0.02, rtol=0)
                    d = torch.remainder(got[:, 4] - expected[:, 4], math.pi)
                    assert torch.minimum(d, math.pi - d).max() < 2e-3
                names = [DRONEVEHICLE_CLASSES[i] for i in sample["labels"].tolist()]
                assert names == [o["class"] for o in img["objects"]]
    # the white border surrounds both images
    from e2emfd.data.io import read_image

    vis = read_image(next((out / "train/rgb/images").iterdir()), 3)
    ir = read_image(next((out / "train/ir/images").iterdir()), 1)
    assert vis.shape[:2] == (SIZE[1] + 12, SIZE[0] + 12)
    assert (vis[:6] == 1).all() and (ir[:, -6:] == 1).all()


def test_modality_labels_list_what_each_modality_shows(tmp_path):
    out = generate_aerial_dataset(
        tmp_path / "m", num=6, size=SIZE, labels="modality", progress=False
    )
    meta = {i["id"]: i for i in json.loads((out / "meta.json").read_text())["images"]}
    seen = Counter()
    for modality, flag in (("rgb", "vis"), ("ir", "ir")):
        for split in ("train", "test"):
            ds = DroneVehicleDataset.from_root(out, split, modality)
            for sample in ds:
                objs = [o for o in meta[sample["image_id"]]["objects"] if o[flag]]
                assert len(sample["boxes"]) == len(objs)
                seen[modality] += len(objs)
    total = sum(len(i["objects"]) for i in meta.values())
    assert seen["rgb"] < total or seen["ir"] < total  # some vehicle is missing from one


def test_files_are_byte_identical_and_num_only_adds_images(tmp_path):
    a = generate_aerial_dataset(tmp_path / "a", num=3, size=SIZE, seed=2, progress=False)
    b = generate_aerial_dataset(tmp_path / "b", num=3, size=SIZE, seed=2, progress=False)
    assert _files(a) == _files(b)
    c = generate_aerial_dataset(tmp_path / "c", num=5, size=SIZE, seed=2, progress=False)
    files_c = _files(c)
    for path, data in _files(a).items():
        if path.name != "meta.json":
            assert files_c[path] == data


def test_output_folder_safety_and_bad_arguments(tmp_path):
    out = tmp_path / "ds"
    generate_aerial_dataset(out, num=1, size=(64, 64), progress=False)
    with pytest.raises(ValueError, match="pass --overwrite"):
        generate_aerial_dataset(out, num=1, size=(64, 64), progress=False)
    generate_aerial_dataset(out, num=2, size=(64, 64), overwrite=True, progress=False)
    assert len(list((out / "train/rgb/images").iterdir())) == 2
    (out / "meta.json").write_text(json.dumps({"generator": "e2emfd.synth"}))
    with pytest.raises(ValueError, match="refusing to overwrite"):
        generate_aerial_dataset(out, num=1, size=(64, 64), overwrite=True, progress=False)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ValueError, match="holiday.jpg"):
        generate_aerial_dataset(foreign, num=1, overwrite=True, progress=False)
    assert (foreign / "holiday.jpg").exists()
    for kwargs, message in [
        (dict(num=0), "num"),
        (dict(test_fraction=1.0), "test_fraction"),
        (dict(size=(32, 64)), "too small"),
        (dict(border=-1), "border"),
        (dict(labels="rgb"), "labels"),
    ]:
        with pytest.raises(ValueError, match=message):
            generate_aerial_dataset(tmp_path / "new", progress=False, **kwargs)


def test_view_sets_the_ground_scale(tmp_path):
    # vehicle lengths in pixels: length_m x (1 +- 6%) x H / view_m x (1 +- 15%)
    length_m = {"car": 4.6, "van": 5.2, "truck": 7.6, "bus": 11.5, "freight_car": 13.5}
    for view_m in (20.0, 40.0):
        for i in range(6):
            scene = aerial_scene_for_index(1, i, (160, 128), view_m)
            for o in scene.objects:
                ppm = o.obb[2] / length_m[o.cls]
                assert 0.94 * 0.85 * 128 / view_m - 0.5 <= ppm <= 1.06 * 1.15 * 128 / view_m + 0.5
    out = generate_aerial_dataset(tmp_path / "z", num=1, size=SIZE, view_m=25.0, progress=False)
    assert json.loads((out / "meta.json").read_text())["view_m"] == 25.0
    with pytest.raises(ValueError, match="view_m must be positive"):
        aerial_scene_for_index(0, 0, SIZE, 0.0)
