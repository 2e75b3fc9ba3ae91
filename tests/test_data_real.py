"""Every labelled pair of the real samples, counted against the label files themselves."""

import re

import numpy as np
import pytest

from e2emfd.config import M3FD_CLASSES
from e2emfd.data import ImageReadError, PairDataset

CORRUPT_MSRS_ID = "00085D"


def _voc_objects(text: str) -> list[str]:
    return re.findall(r"<object>.*?<name>\s*(.*?)\s*</name>", text, flags=re.S)


@pytest.mark.parametrize(
    "name, classes",
    [("llvip", ["person"]), ("m3fd", M3FD_CLASSES)],
)
def test_voc_samples_match_label_files(shared_data, name, classes):
    root = shared_data / name
    label_files = sorted((root / "labels").glob("*.xml"))
    dataset = PairDataset.from_labelled(root, "voc", classes)
    assert len(dataset) == len(label_files)
    expected: dict[str, int] = {}
    for path in label_files:
        for cls in _voc_objects(path.read_text()):
            expected[cls] = expected.get(cls, 0) + 1
    counts = {k: v for k, v in dataset.class_counts().items() if v}
    assert counts == expected
    for i in range(len(dataset)):
        sample = dataset[i]
        text = (root / "labels" / f"{sample['image_id']}.xml").read_text()
        assert len(sample["boxes"]) == len(_voc_objects(text))
        assert sample["vis"].shape[0] == 3 and sample["ir"].shape[0] == 1
        assert sample["vis"].shape[1:] == sample["ir"].shape[1:]
        h, w = sample["vis"].shape[1:]
        assert (sample["boxes"][:, 2] <= w).all() and (sample["boxes"][:, 3] <= h).all()


def test_llvip_published_totals(shared_data):
    dataset = PairDataset.from_labelled(shared_data / "llvip", "voc", ["person"])
    assert (len(dataset), dataset.num_boxes) == (34, 151)


@pytest.mark.parametrize(
    "modality, folder, readme_total",
    # The data README says 11 fusion boxes, but the six fusion files hold 16 non-blank
    # lines (their last line has no newline, so `wc -l` undercounts); we trust the files.
    [("visible", "visible", 13), ("infrared", "infrared", 22), ("fusion", "fusion", None)],
)
def test_msrs_yolo_per_modality(shared_data, modality, folder, readme_total):
    root = shared_data / "msrs"
    dataset = PairDataset.from_labelled(root, "yolo", [], label_modality=modality)
    assert dataset.classes == ["person", "bicycle", "car"]
    file_total = sum(
        1
        for path in (root / "labels" / folder).glob("*.txt")
        for line in path.read_text().splitlines()
        if line.strip()
    )
    assert len(dataset) == 6 and dataset.num_boxes == file_total
    if readme_total is not None:
        assert file_total == readme_total
    for i in range(len(dataset)):
        if dataset.records[i].image_id == CORRUPT_MSRS_ID:
            continue
        sample = dataset[i]
        lines = [
            line.split()
            for line in (root / "labels" / folder / f"{sample['image_id']}.txt")
            .read_text()
            .splitlines()
            if line.strip()
        ]
        assert sample["labels"].tolist() == [int(f[0]) for f in lines]
        h, w = sample["vis"].shape[1:]
        cx = np.array([float(f[1]) for f in lines]) * w
        got_cx = ((sample["boxes"][:, 0] + sample["boxes"][:, 2]) / 2).numpy()
        np.testing.assert_allclose(got_cx, np.clip(cx, 0, w), atol=1e-2)


@pytest.mark.parametrize("name, count", [("tno", 25), ("roadscene", 50)])
def test_unlabelled_folders_read_completely(shared_data, name, count):
    dataset = PairDataset.from_folders(shared_data / name)
    assert len(dataset) == count
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["vis"].shape[0] == 3 and sample["ir"].shape[0] == 1
        assert sample["vis"].shape[1:] == sample["ir"].shape[1:]
        assert 0.0 <= float(sample["ir"].min()) and float(sample["ir"].max()) <= 1.0
        assert len(sample["boxes"]) == 0


def test_msrs_ir_stored_as_rgb_or_grey_reads_one_channel(shared_data):
    dataset = PairDataset.from_labelled(shared_data / "msrs", "yolo", [])
    ids = {r.image_id: i for i, r in enumerate(dataset.records)}
    assert dataset[ids["00004N"]]["ir"].shape == dataset[ids["00055D"]]["ir"].shape == (1, 480, 640)


def test_msrs_corrupt_png_is_reported_with_its_name(shared_data):
    """The MSRS sample's ir/00085D.png has a damaged zlib stream (libpng: "bad adaptive
    filter value"); a real case of an unreadable image."""
    dataset = PairDataset.from_labelled(shared_data / "msrs", "yolo", [])
    index = [r.image_id for r in dataset.records].index(CORRUPT_MSRS_ID)
    with pytest.raises(ImageReadError, match=r"ir/00085D\.png: cannot decode"):
        dataset[index]
