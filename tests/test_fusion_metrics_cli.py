"""``e2emfd eval-fusion`` on a few tno42 pairs copied to a temporary folder."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from e2emfd.cli.main import main

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "tno42"
PAIRS = ("05", "08")  # the two smallest images: 280x280 and 256x256

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="shared/data/tno42 not available")


@pytest.fixture
def folders(tmp_path):
    for sub in ("ir", "vi", "fused"):
        (tmp_path / sub).mkdir()
    for stem in PAIRS:
        shutil.copy(DATA / "ir" / f"{stem}.png", tmp_path / "ir" / f"{stem}.png")
        shutil.copy(DATA / "vi" / f"{stem}.png", tmp_path / "vi" / f"{stem}.png")
        # Upper-case extension: pairing is by stem, extensions are case-insensitive.
        shutil.copy(DATA / "fused" / "U2Fusion" / f"{stem}.png", tmp_path / "fused" / f"{stem}.PNG")
    return tmp_path


def args(root: Path, *extra: str) -> list[str]:
    return [
        "eval-fusion",
        *("--ir", str(root / "ir"), "--vi", str(root / "vi"), "--fused", str(root / "fused")),
        "--no-progress",
        "--threads",
        "1",
        "--workers",
        "1",
        *extra,
    ]


def golden(convention: str) -> dict[tuple[str, str], float]:
    name = {"python": "python_reference_metrics.csv", "matlab": "matlab_metrics.csv"}[convention]
    with open(DATA / name, newline="") as fh:
        return {
            (r["image"][:-4], r["metric"]): float(r["value"])
            for r in csv.DictReader(fh)
            if r["method"] == "U2Fusion"
        }


@pytest.mark.parametrize("convention,workers", [("python", 1), ("matlab", 1), ("matlab", 2)])
def test_json_output_matches_golden_values(folders, capsys, convention, workers):
    out = folders / "res.json"
    extra = ("--convention", convention, "--out", str(out), "--workers", str(workers))
    assert main(args(folders, *extra)) == 0
    printed = capsys.readouterr().out
    assert f"2 images, {convention} convention" in printed and "Qabf" in printed
    result = json.loads(out.read_text())
    assert result["convention"] == convention and list(result["images"]) == list(PAIRS)
    expected = golden(convention)
    for (stem, metric), value in expected.items():
        if stem in PAIRS:
            got = result["images"][stem][metric]
            tol = 2e-3 if (convention, metric) == ("matlab", "Qabf") else 1e-3 * abs(value)
            assert abs(got - value) <= tol, (stem, metric, got, value)
    for metric in result["metrics"]:
        mean = np.mean([v[metric] for v in result["images"].values()])
        assert result["mean"][metric] == pytest.approx(mean)


def test_csv_output_with_metric_subset(folders):
    out = folders / "sub" / "res.csv"
    assert main(args(folders, "--metrics", "mi,EN", "--out", str(out))) == 0
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image", "MI", "EN"]
    assert [r[0] for r in rows[1:]] == list(PAIRS)
    assert all(float(x) > 0 for r in rows[1:] for x in r[1:])


def test_colour_fused_image_is_converted_like_the_sources(folders, capsys):
    grey = cv2.imread(str(folders / "fused" / "05.PNG"), cv2.IMREAD_GRAYSCALE)
    (folders / "fused" / "05.PNG").unlink()
    cv2.imwrite(str(folders / "fused" / "05.png"), np.dstack([grey] * 3))
    out = folders / "res.json"
    assert main(args(folders, "--metrics", "EN", "--out", str(out))) == 0
    value = json.loads(out.read_text())["images"]["05"]["EN"]
    assert value == pytest.approx(golden("python")[("05", "EN")], rel=1e-12)


def test_missing_partner_is_an_error_naming_the_file(folders, capsys):
    (folders / "vi" / "08.png").unlink()
    assert main(args(folders)) == 2
    err = capsys.readouterr().err
    assert "08.PNG" in err and "no visible image" in err and len(err.strip().splitlines()) == 1


def test_size_mismatch_is_an_error_naming_the_file(folders, capsys):
    cv2.imwrite(str(folders / "ir" / "05.png"), np.zeros((10, 12), np.uint8))
    assert main(args(folders)) == 2
    err = capsys.readouterr().err
    assert "05.PNG" in err and "differs" in err and "12x10" in err


def test_user_errors(folders, capsys):
    assert main(args(folders, "--out", str(folders / "r.txt"))) == 2
    assert ".json or .csv" in capsys.readouterr().err
    assert main(args(folders, "--workers", "0")) == 2
    assert "--workers must be positive" in capsys.readouterr().err
    assert main(args(folders, "--metrics", "EN,XYZ")) == 2
    assert "unknown metric 'XYZ'" in capsys.readouterr().err
    shutil.rmtree(folders / "ir")
    assert main(args(folders)) == 2
    assert "infrared folder not found" in capsys.readouterr().err
