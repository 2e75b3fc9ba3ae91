"""Inputs as they come in the wild, and every bad input the data layer must name."""

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from e2emfd.data import ImageReadError, PairDataset, read_image

CLASSES = ["People", "Car"]


def _write(path: Path, image: np.ndarray, ext_params=()) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image, list(ext_params))
    return path


def _voc(path: Path, objects, width=64, height=48) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    body = "".join(
        f"<object><name>{name}</name><difficult>0</difficult><bndbox><xmin>{x1}</xmin>"
        f"<ymin>{y1}</ymin><xmax>{x2}</xmax><ymax>{y2}</ymax></bndbox></object>"
        for name, (x1, y1, x2, y2) in objects
    )
    path.write_text(
        f"<annotation><filename>{path.stem}.png</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{body}</annotation>"
    )
    return path


def _pair(root: Path, stem: str, h=48, w=64, vis_ext=".png", ir_ext=".png"):
    rng = np.random.default_rng(abs(hash(stem)) % 1000)
    _write(root / "Vis" / f"{stem}{vis_ext}", rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    _write(root / "Ir" / f"{stem}{ir_ext}", rng.integers(0, 255, (h, w), dtype=np.uint8))


@pytest.fixture()
def voc_root(tmp_path):
    _pair(tmp_path, "a")
    _pair(tmp_path, "b")
    _voc(
        tmp_path / "Annotations" / "a.xml", [("People", (1, 2, 20, 30)), ("Car", (30, 10, 60, 40))]
    )
    _voc(tmp_path / "Annotations" / "b.xml", [("Car", (5, 5, 15, 15))])
    return tmp_path


def test_good_voc_folder(voc_root):
    dataset = PairDataset.from_labelled(voc_root, "voc", CLASSES)
    sample = dataset[0]
    assert sample["boxes"].tolist() == [[1, 2, 20, 30], [30, 10, 60, 40]]
    assert sample["labels"].tolist() == [0, 1]
    assert sample["vis"].dtype == torch.float32 and sample["vis"].shape == (3, 48, 64)


# ------------------------------------------------------------------ formats in the wild


@pytest.mark.parametrize("ext", [".png", ".PNG", ".tif", ".TIFF", ".jpg", ".JPEG"])
@pytest.mark.parametrize("ir_kind", ["grey8", "rgb8", "grey16"])
def test_ir_formats(tmp_path, ext, ir_kind):
    if ir_kind == "grey16" and ext.lower() in (".jpg", ".jpeg"):
        pytest.skip("JPEG has no 16-bit variant")
    grey = np.tile(np.linspace(0, 255, 64, dtype=np.float32), (48, 1))
    image = {
        "grey8": grey.astype(np.uint8),
        "rgb8": np.repeat(grey.astype(np.uint8)[:, :, None], 3, axis=2),
        "grey16": (grey * 40 + 1000).astype(np.uint16),
    }[ir_kind]
    path = _write(tmp_path / f"ir{ext}", image)
    out = read_image(path, channels=1)
    assert out.shape == (48, 64) and out.dtype == np.float32
    assert 0.0 <= out.min() and out.max() <= 1.0
    # the ramp survives: left dark, right bright (JPEG is lossy, so compare loosely)
    assert out[:, :4].mean() < 0.1 and out[:, -4:].mean() > 0.9


def test_grey_visible_becomes_three_equal_channels(tmp_path):
    path = _write(tmp_path / "v.png", np.full((8, 9), 200, np.uint8))
    out = read_image(path, channels=3)
    assert out.shape == (8, 9, 3)
    np.testing.assert_allclose(out, 200 / 255, atol=1e-6)


def test_rgb_order_is_preserved(tmp_path):
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 2] = 255  # red in OpenCV's BGR order
    out = read_image(_write(tmp_path / "red.png", bgr), channels=3)
    assert out[..., 0].min() == 1.0 and out[..., 1:].max() == 0.0


def test_rgba_visible_drops_alpha(tmp_path):
    path = _write(tmp_path / "v.png", np.full((5, 5, 4), 100, np.uint8))
    assert read_image(path, channels=3).shape == (5, 5, 3)


def test_mixed_case_extensions_pair_up(tmp_path):
    _pair(tmp_path, "x", vis_ext=".JPG", ir_ext=".png")
    dataset = PairDataset.from_folders(tmp_path)
    assert len(dataset) == 1 and dataset[0]["ir"].shape == (1, 48, 64)


# ------------------------------------------------------------------ bad input, named


def test_image_without_partner(voc_root):
    (voc_root / "Ir" / "b.png").unlink()
    with pytest.raises(ValueError, match=r"Vis/b\.png: no infrared partner"):
        PairDataset.from_labelled(voc_root, "voc", CLASSES)


def test_ir_without_visible_partner(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path / "Ir" / "c.png", np.zeros((48, 64), np.uint8))
    with pytest.raises(ValueError, match=r"Ir/c\.png: no visible partner"):
        PairDataset.from_folders(tmp_path)


def test_size_mismatch_is_an_error_or_resized(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path / "Ir" / "a.png", np.zeros((40, 50), np.uint8))
    with pytest.raises(ValueError, match=r"Ir/a\.png: size 50x40 differs"):
        PairDataset.from_folders(tmp_path)[0]
    sample = PairDataset.from_folders(tmp_path, size_mismatch="resize")[0]
    assert sample["ir"].shape == (1, 48, 64)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_truncated_image(tmp_path, ext):
    _pair(tmp_path, "a", vis_ext=ext)
    path = tmp_path / "Vis" / f"a{ext}"
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(ImageReadError, match=rf"Vis/a\{ext}: truncated"):
        PairDataset.from_folders(tmp_path)[0]


def test_unreadable_image(tmp_path):
    _pair(tmp_path, "a")
    (tmp_path / "Ir" / "a.png").write_bytes(b"not an image at all" * 10 + b"IEND")
    with pytest.raises(ImageReadError, match=r"Ir/a\.png: cannot decode"):
        PairDataset.from_folders(tmp_path)[0]


def test_empty_image_file(tmp_path):
    _pair(tmp_path, "a")
    (tmp_path / "Ir" / "a.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match=r"Ir/a\.png: empty file"):
        PairDataset.from_folders(tmp_path)[0]


def test_malformed_xml(voc_root):
    (voc_root / "Annotations" / "b.xml").write_text("<annotation><object><name>Car</name>")
    with pytest.raises(ValueError, match=r"Annotations/b\.xml: malformed XML"):
        PairDataset.from_labelled(voc_root, "voc", CLASSES)


def test_xml_with_non_numeric_box(voc_root):
    _voc(voc_root / "Annotations" / "b.xml", [("Car", ("a", 1, 2, 3))])
    with pytest.raises(ValueError, match=r"Annotations/b\.xml: object 'Car' has a missing"):
        PairDataset.from_labelled(voc_root, "voc", CLASSES)


def test_unknown_class_error_or_skip(voc_root):
    _voc(voc_root / "Annotations" / "b.xml", [("Tank", (1, 1, 9, 9)), ("car", (2, 2, 8, 8))])
    with pytest.raises(ValueError, match=r"Annotations/b\.xml: unknown class 'Tank'"):
        PairDataset.from_labelled(voc_root, "voc", CLASSES)
    dataset = PairDataset.from_labelled(voc_root, "voc", CLASSES, unknown_class="skip")
    record = dataset.records[1]
    assert record.annotation.skipped == ["Tank"]
    assert record.annotation.labels.tolist() == [1]  # 'car' matches 'Car' ignoring case


def test_label_file_for_missing_image(voc_root):
    _voc(voc_root / "Annotations" / "zzz.xml", [("Car", (1, 1, 5, 5))])
    with pytest.raises(ValueError, match=r"Annotations/zzz\.xml: label file for a missing image"):
        PairDataset.from_labelled(voc_root, "voc", CLASSES)


def test_split_with_unknown_id(voc_root):
    split = voc_root / "ImageSets" / "Main" / "train.txt"
    split.parent.mkdir(parents=True)
    split.write_text("a\nnope\n")
    with pytest.raises(
        ValueError,
        match=r"Main/train\.txt: 1 id\(s\) of split 'train' have no image pair, e\.g\. nope",
    ):
        PairDataset.from_labelled(voc_root, "voc", CLASSES, split="train")
    split.write_text("b\n")
    assert [
        r.image_id
        for r in PairDataset.from_labelled(voc_root, "voc", CLASSES, split="train").records
    ] == ["b"]


def test_missing_split_file(voc_root):
    with pytest.raises(FileNotFoundError, match=r"ImageSets/Main/test\.txt: split file"):
        PairDataset.from_labelled(voc_root, "voc", CLASSES, split="test")


def test_degenerate_boxes_dropped_with_warning(voc_root):
    _voc(
        voc_root / "Annotations" / "b.xml",
        [("Car", (5, 5, 5, 20)), ("Car", (10, 10, 4, 30)), ("People", (1, 1, 9, 9))],
    )
    dataset = PairDataset.from_labelled(voc_root, "voc", CLASSES)
    with pytest.warns(UserWarning, match=r"Annotations/b\.xml: dropped 2 degenerate"):
        sample = dataset[1]
    assert sample["labels"].tolist() == [0]


def test_boxes_outside_the_image_are_clipped(voc_root):
    _voc(voc_root / "Annotations" / "b.xml", [("Car", (-5, 10, 80, 60))])
    dataset = PairDataset.from_labelled(voc_root, "voc", CLASSES)
    with pytest.warns(UserWarning, match=r"Annotations/b\.xml: 1 box\(es\) extend outside"):
        sample = dataset[1]
    assert sample["boxes"].tolist() == [[0, 10, 64, 48]]


def test_yolo_bad_lines(tmp_path):
    _pair(tmp_path, "a")
    labels = tmp_path / "labels"
    labels.mkdir()
    (labels / "classes.txt").write_text("person\ncar\n")
    (labels / "a.txt").write_text("0 0.5 0.5 0.2\n")
    with pytest.raises(ValueError, match=r"labels/a\.txt:1: expected 'cls cx cy w h'"):
        PairDataset.from_labelled(tmp_path, "yolo", [])
    (labels / "a.txt").write_text("7 0.5 0.5 0.2 0.2\n")
    with pytest.raises(ValueError, match=r"labels/a\.txt:1: class index 7 out of range"):
        PairDataset.from_labelled(tmp_path, "yolo", [])


def test_unlabelled_pairs_policy(voc_root):
    _pair(voc_root, "c")
    with pytest.warns(UserWarning, match="1 pair\\(s\\) without a label file skipped"):
        assert len(PairDataset.from_labelled(voc_root, "voc", CLASSES)) == 2
    assert len(PairDataset.from_labelled(voc_root, "voc", CLASSES, unlabelled="empty")) == 3
    with pytest.raises(ValueError, match=r"Vis/c\.png: no label file c\.xml"):
        PairDataset.from_labelled(voc_root, "voc", CLASSES, unlabelled="error")


def test_missing_modality_folder(tmp_path):
    (tmp_path / "Vis").mkdir()
    with pytest.raises(FileNotFoundError, match="no infrared folder"):
        PairDataset.from_folders(tmp_path)


def test_two_files_with_one_stem(tmp_path):
    _pair(tmp_path, "a")
    _write(tmp_path / "Vis" / "a.jpg", np.zeros((48, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="two images share the stem 'a'"):
        PairDataset.from_folders(tmp_path)
