"""The DroneVehicle reader on small fixtures that hold every quirk of the real labels."""

import math
import warnings

import cv2
import numpy as np
import pytest
import torch
from shapely.geometry import Polygon, box

from e2emfd.data import build_dataset
from e2emfd.data.collate import collate_pairs
from e2emfd.data.dronevehicle import (
    DRONEVEHICLE_CLASSES,
    DroneVehicleDataset,
    clip_obb_to_image,
    find_dronevehicle_folders,
    parse_dota_txt,
    parse_dronevehicle_xml,
)

W, H, BORDER = 60, 50, 10  # files of 60x50 with a 10-px white border -> 40x30 inside


def _corners(cx, cy, w, h, a):
    """Rectangle corners built with numpy (independent of the package's conversions)."""
    rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    local = np.array([[-w, -h], [w, -h], [w, h], [-w, h]]) / 2
    return (local @ rot.T + [cx, cy]).reshape(-1).tolist()


def _polygon_xml(name, coords, difficult=None):
    keys = ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")
    body = "".join(f"<{k}>{v}</{k}>" for k, v in zip(keys, coords))
    diff = "" if difficult is None else f"<difficult>{difficult}</difficult>"
    return f"<object><name>{name}</name>{diff}<polygon>{body}</polygon></object>"


def _bndbox_xml(name, x0, y0, x1, y1):
    return (
        f"<object><name>{name}</name><pose>Unspecified</pose><bndbox><xmin>{x0}</xmin>"
        f"<ymin>{y0}</ymin><xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
    )


def _xml(*objects):
    size = f"<size><width>{W}</width><height>{H}</height><depth>3</depth></size>"
    return f"<annotation><filename>x.jpg</filename>{size}{''.join(objects)}</annotation>"


# every quirk of the RGB labels, with the box each one must become after a 10-px crop
RGB_OBJECTS = [
    (_polygon_xml("car", _corners(30, 25, 12, 4, 0.5), difficult=0), 0, (20, 15, 12, 4, 0.5)),
    (_bndbox_xml("feright_car", 14, 18, 26, 24), 4, (10, 11, 12, 6, 0.0)),
    # integer polygon of a vertical rectangle: long side along y -> angle -pi/2
    (
        _polygon_xml("feright car", [40, 20, 44, 20, 44, 36, 40, 36]),
        4,
        (32, 18, 16, 4, -math.pi / 2),
    ),
    (_polygon_xml("feright", _corners(25, 32, 8, 3, -0.3)), 4, (15, 22, 8, 3, -0.3)),
    (_polygon_xml("truvk", _corners(40, 32, 10, 4, 1.2)), 1, (30, 22, 10, 4, 1.2)),
    (_polygon_xml(" Bus ", _corners(22, 30, 9, 5, 0.0)), 2, (12, 20, 9, 5, 0.0)),
    (_polygon_xml("van", [4, 20, 20, 20, 20, 24, 4, 24]), 3, (5, 12, 10, 4, 0.0)),  # cut
    (_polygon_xml("car", [0, 20, 12, 20, 12, 24, 0, 24]), 0, None),  # 1/6 inside: dropped
]
IR_OBJECTS = [
    (_polygon_xml("car", _corners(30, 25, 12, 4, 0.5)), 0, (20, 15, 12, 4, 0.5)),
    (_polygon_xml("bus", _corners(35, 30, 14, 5, 0.2)), 2, (25, 20, 14, 5, 0.2)),
]


def _image(path, value, channels):
    img = np.full((H, W, channels), 255, np.uint8)  # white border
    interior = np.arange((H - 2 * BORDER) * (W - 2 * BORDER) * channels) % 200
    img[BORDER:-BORDER, BORDER:-BORDER] = interior.reshape(H - 2 * BORDER, -1, channels) + value
    cv2.imwrite(str(path), img if channels == 3 else img[..., 0])


def _original_layout(root, split="train", stems=("00001", "00002")):
    d = root / split
    for sub in (f"{split}img", f"{split}imgr", f"{split}label", f"{split}labelr"):
        (d / sub).mkdir(parents=True)
    for i, stem in enumerate(stems):
        _image(d / f"{split}img" / f"{stem}.png", i, 3)
        _image(d / f"{split}imgr" / f"{stem}.png", i + 20, 1)
    (d / f"{split}label" / f"{stems[0]}.xml").write_text(_xml(*(o[0] for o in RGB_OBJECTS)))
    (d / f"{split}labelr" / f"{stems[0]}.xml").write_text(_xml(*(o[0] for o in IR_OBJECTS)))
    for stem in stems[1:]:  # an image without objects
        (d / f"{split}label" / f"{stem}.xml").write_text(_xml())
        (d / f"{split}labelr" / f"{stem}.xml").write_text(_xml())
    return root


def _expected(objects):
    kept = [(label, b) for _, label, b in objects if b is not None]
    return torch.tensor([b for _, b in kept], dtype=torch.float32), [lab for lab, _ in kept]


def _assert_boxes(got, expected):
    torch.testing.assert_close(got[:, :4], expected[:, :4], atol=1e-4, rtol=0)
    d = torch.remainder(got[:, 4] - expected[:, 4], math.pi)
    assert torch.minimum(d, math.pi - d).max() < 1e-4


# ------------------------------------------------------------------------------ parsers


def test_xml_parser_maps_misspellings_and_bndbox(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(_xml(*(o[0] for o in RGB_OBJECTS)))
    ann = parse_dronevehicle_xml(path)
    assert ann.boxes.shape == (len(RGB_OBJECTS), 8)
    assert ann.labels.tolist() == [o[1] for o in RGB_OBJECTS]
    np.testing.assert_allclose(ann.boxes[1], [14, 18, 26, 18, 26, 24, 14, 24])  # bndbox corners
    assert not ann.difficult.any()


def test_unknown_class_is_an_error_naming_file_and_class_or_skipped(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(
        _xml(_polygon_xml("car", [0, 0, 4, 0, 4, 2, 0, 2]), _bndbox_xml("*", 1, 1, 3, 3))
    )
    with pytest.raises(ValueError, match=r"bad\.xml.*unknown class '\*'"):
        parse_dronevehicle_xml(path)
    ann = parse_dronevehicle_xml(path, unknown_class="skip")
    assert ann.labels.tolist() == [0] and ann.skipped == ["*"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<annotation><object>", "malformed XML"),
        ("<doc/>", "root element <doc>"),
        (_xml("<object><name>car</name></object>"), "neither <polygon> nor <bndbox>"),
        (_xml(_polygon_xml("car", [0, 0, 4, 0, 4, "x", 0, 2])), "non-numeric"),
        (_xml(_polygon_xml("car", [0, 0, 4, 0, 4, 2, 0])), "missing or non-numeric"),
    ],
)
def test_xml_errors_name_the_file(tmp_path, text, message):
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message) as info:
        parse_dronevehicle_xml(path)
    assert str(path) in str(info.value)


def test_dota_txt_parser_headers_spaces_and_difficult(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text(
        "imagesource:GoogleEarth\ngsd:0.146\n\n"
        "14 18 26 18 26 24 14 24 car 0\n"
        "40 20 44 20 44 36 40 36 feright car 1\n"
        "10.5 10 20 10 20 14 10.5 14 van\n"
        "1 1 3 1 3 2 1 2 truvk 2"
    )
    ann = parse_dota_txt(path)
    assert ann.labels.tolist() == [0, 4, 3, 1]
    assert ann.difficult.tolist() == [False, True, False, True]
    np.testing.assert_allclose(ann.boxes[2], [10.5, 10, 20, 10, 20, 14, 10.5, 14])


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("1 2 3 4 5 6 7 8", r"a\.txt:1: expected"),
        ("1 2 3 4 5 6 7 y car 0", r"a\.txt:1: non-numeric"),
    ],
)
def test_dota_txt_errors_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "a.txt"
    path.write_text(line)
    with pytest.raises(ValueError, match=message):
        parse_dota_txt(path)
    path.write_text("1 2 3 4 5 6 7 8 plane 0")
    with pytest.raises(ValueError, match=r"a\.txt:1: unknown class 'plane'"):
        parse_dota_txt(path)


# ------------------------------------------------------------------------------ dataset


def test_original_layout_rgb_labels_with_border_crop(tmp_path):
    root = _original_layout(tmp_path)
    with pytest.warns(UserWarning, match="1 box.*cut.*1 dropped"):
        ds = DroneVehicleDataset.from_root(root, "train", "visible", crop_border=BORDER)
        sample = ds[0]
    assert len(ds) == 2 and ds.classes == list(DRONEVEHICLE_CLASSES)
    expected, labels = _expected(RGB_OBJECTS)
    assert sample["boxes"].dtype == torch.float32 and sample["boxes"].shape == (len(labels), 5)
    _assert_boxes(sample["boxes"], expected)
    assert sample["labels"].tolist() == labels
    # le90: w >= h, angle in [-pi/2, pi/2)
    b = sample["boxes"]
    assert (
        (b[:, 2] >= b[:, 3]).all()
        and (b[:, 4] >= -math.pi / 2).all()
        and (b[:, 4] < math.pi / 2).all()
    )
    # the crop removed exactly the white border of both images
    assert sample["vis"].shape == (3, H - 2 * BORDER, W - 2 * BORDER)
    assert sample["ir"].shape == (1, H - 2 * BORDER, W - 2 * BORDER)
    assert sample["vis"].max() < 1.0 and sample["ir"].max() < 1.0
    assert sample["orig_size"].tolist() == [H - 2 * BORDER, W - 2 * BORDER]
    empty = ds[1]
    assert empty["boxes"].shape == (0, 5) and empty["labels"].shape == (0,)
    batch = collate_pairs([sample, empty])
    assert batch["targets"][0]["boxes"].shape == (len(labels), 5)


def test_clipped_box_is_the_visible_part(tmp_path):
    # independent check of the "cut" van: shapely intersection with the cropped image
    root = _original_layout(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = DroneVehicleDataset.from_root(root, "train", crop_border=BORDER, min_visible=0.0)
        boxes = ds[0]["boxes"]
    assert len(boxes) == len(RGB_OBJECTS)  # nothing dropped with min_visible=0
    quad = np.array([0, 20, 12, 20, 12, 24, 0, 24], float).reshape(4, 2) - BORDER
    visible = Polygon(quad).intersection(box(0, 0, W - 2 * BORDER, H - 2 * BORDER))
    assert float(boxes[-1, 2] * boxes[-1, 3]) == pytest.approx(visible.area, rel=1e-5)


def test_without_crop_boxes_stay_in_file_pixels(tmp_path):
    root = _original_layout(tmp_path)
    ds = DroneVehicleDataset.from_root(root, "train")
    sample = ds[0]
    assert sample["vis"].shape == (3, H, W)
    assert len(sample["boxes"]) == len(RGB_OBJECTS)  # all inside the uncropped image
    torch.testing.assert_close(
        sample["boxes"][0], torch.tensor([30, 25, 12, 4, 0.5]), atol=1e-4, rtol=0
    )


def test_infrared_labels_and_hbb_option(tmp_path):
    root = _original_layout(tmp_path)
    ds = DroneVehicleDataset.from_root(root, "train", "infrared", crop_border=BORDER)
    expected, labels = _expected(IR_OBJECTS)
    sample = ds[0]
    _assert_boxes(sample["boxes"], expected)
    assert sample["labels"].tolist() == labels
    hbb = DroneVehicleDataset.from_root(root, "train", "ir", crop_border=BORDER, boxes="hbb")[0]
    # hull of a 14 x 5 box at 0.2 rad, centred (25, 20)
    ex = (14 * math.cos(0.2) + 5 * math.sin(0.2)) / 2
    ey = (14 * math.sin(0.2) + 5 * math.cos(0.2)) / 2
    torch.testing.assert_close(hbb["boxes"][1], torch.tensor([25 - ex, 20 - ey, 25 + ex, 20 + ey]))


def test_nested_original_layout_and_txt_label_folders(tmp_path):
    # train/raw/trainimg + train/rays/trainimgr, DOTA txt labels in trainlabelrtxt
    d = tmp_path / "train"
    for sub in ("raw/trainimg", "rays/trainimgr", "rays/trainlabelrtxt"):
        (d / sub).mkdir(parents=True)
    _image(d / "raw/trainimg/7.png", 0, 3)
    _image(d / "rays/trainimgr/7.png", 0, 1)
    (d / "rays/trainlabelrtxt/7.txt").write_text("gsd:1\n20 20 32 20 32 24 20 24 feright_car 0\n")
    vis, ir, labels = find_dronevehicle_folders(tmp_path, "train", "infrared")
    assert (vis.name, ir.name, labels.name) == ("trainimg", "trainimgr", "trainlabelrtxt")
    sample = DroneVehicleDataset.from_root(tmp_path, "train", "infrared")[0]
    torch.testing.assert_close(sample["boxes"], torch.tensor([[26.0, 22, 12, 4, 0]]))
    assert sample["labels"].tolist() == [4]


def test_converted_layout_with_dota_labels_and_config_builder(tmp_path):
    for mod in ("rgb", "ir"):
        (tmp_path / "test" / mod / "images").mkdir(parents=True)
        (tmp_path / "test" / mod / "labels").mkdir(parents=True)
    _image(tmp_path / "test/rgb/images/00003.png", 0, 3)
    _image(tmp_path / "test/ir/images/00003.png", 0, 1)
    (tmp_path / "test/rgb/labels/00003.txt").write_text(
        "imagesource:x\ngsd:0.1\n14 18 26 18 26 24 14 24 car 0\n"
    )
    (tmp_path / "test/ir/labels/00003.txt").write_text(
        "14 18 26 18 26 24 14 24 car 0\n40 20 44 20 44 36 40 36 truck 0\n"
    )

    class Cfg:  # the fields of DataConfig the builder reads
        root, label_modality, classes = str(tmp_path), "infrared", list(DRONEVEHICLE_CLASSES)
        unknown_class, unlabelled, size_mismatch = "error", "skip", "error"
        crop_border, boxes, format = BORDER, "obb", "dronevehicle"

    ds = build_dataset(Cfg, "test")
    sample = ds[0]
    assert sample["labels"].tolist() == [0, 1]
    _assert_boxes(
        sample["boxes"], torch.tensor([[10.0, 11, 12, 6, 0], [32, 18, 16, 4, -math.pi / 2]])
    )
    Cfg.label_modality = "visible"
    assert build_dataset(Cfg, "test")[0]["labels"].tolist() == [0]


def test_unlabelled_pairs_and_layout_errors(tmp_path):
    root = _original_layout(tmp_path)
    (root / "train/trainlabel/00002.xml").unlink()
    with pytest.warns(UserWarning, match="1 pair"):
        assert len(DroneVehicleDataset.from_root(root, "train")) == 1
    ds = DroneVehicleDataset.from_root(root, "train", unlabelled="empty")
    assert len(ds) == 2 and ds[1]["boxes"].shape == (0, 5)
    with pytest.raises(ValueError, match=r"00002\.png: no label file"):
        DroneVehicleDataset.from_root(root, "train", unlabelled="error")
    (root / "train/trainlabel/00009.xml").write_text(_xml())
    with pytest.raises(ValueError, match=r"00009\.xml: label file for a missing image"):
        DroneVehicleDataset.from_root(root, "train")
    (root / "train/trainimgr/00002.png").unlink()
    with pytest.raises(ValueError, match="no infrared partner"):
        DroneVehicleDataset.from_root(root, "train", "infrared")
    with pytest.raises(FileNotFoundError, match="no DroneVehicle layout for split 'val'"):
        DroneVehicleDataset.from_root(root, "val")
    with pytest.raises(ValueError, match="label_modality"):
        DroneVehicleDataset.from_root(root, "train", "fusion")
    with pytest.raises(FileNotFoundError, match="dataset folder not found"):
        DroneVehicleDataset.from_root(tmp_path / "nowhere", "train")


def test_bad_label_file_is_reported_when_the_dataset_is_built(tmp_path):
    root = _original_layout(tmp_path)
    (root / "train/trainlabel/00002.xml").write_text(_xml(_bndbox_xml("plane", 1, 1, 3, 3)))
    with pytest.raises(ValueError, match=r"00002\.xml.*unknown class 'plane'"):
        DroneVehicleDataset.from_root(root, "train")
    ds = DroneVehicleDataset.from_root(root, "train", unknown_class="skip")
    assert ds.records[1].annotation.skipped == ["plane"]


def test_crop_larger_than_the_image_is_an_error(tmp_path):
    root = _original_layout(tmp_path)
    ds = DroneVehicleDataset.from_root(root, "train", crop_border=30)
    with pytest.raises(ValueError, match="too small to crop a 30-px border"):
        ds[0]


def test_clip_obb_to_image_matches_shapely():
    gen = torch.Generator().manual_seed(0)
    n = 30
    boxes = torch.cat(
        [
            torch.rand(n, 2, generator=gen, dtype=torch.float64) * 60 - 10,  # around a 40x30 image
            torch.rand(n, 2, generator=gen, dtype=torch.float64) * 20 + 1,
            torch.rand(n, 1, generator=gen, dtype=torch.float64) * 3,
        ],
        dim=1,
    )
    clipped, fraction = clip_obb_to_image(boxes, 40.0, 30.0)
    frame = box(0, 0, 40, 30)
    for b, c, f in zip(boxes.tolist(), clipped, fraction.tolist()):
        rect = Polygon(np.array(_corners(*b)).reshape(4, 2))
        visible = rect.intersection(frame)
        assert f == pytest.approx(visible.area / rect.area, abs=1e-9)
        if visible.area > 1e-9:
            assert float(c[2] * c[3]) == pytest.approx(
                visible.minimum_rotated_rectangle.area, rel=1e-6
            )
            assert (
                Polygon(np.array(_corners(*c.tolist())).reshape(4, 2))
                .buffer(1e-6)
                .contains(visible)
            )
