"""The benchmark scripts run on a CPU (CI exercises them; the figures are in RESULTS.md)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, *args: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.slow
def test_speed_table_on_cpu():
    out = _run("speed.py", "--device", "cpu", "--repeats", "1")
    assert "inference: fused image + detections" in out
    assert "640x512" in out  # fusion-only inference at 640x512 is reported
    assert "training: GMTA step" in out and "of peak" in out


@pytest.mark.slow
def test_train_step_table_on_cpu():
    out = _run("train_step.py", "--device", "cpu", "--repeats", "1", "--size", "160x128")
    assert "GMTA / plain" in out and "shared copies" in out
    crops = _run(
        "train_step.py",
        "--size",
        "64x64",
        "--repeats",
        "1",
        "--rounds",
        "1",
        "--train-crop",
        "1.0",
        "0.5",
    )
    rows = [line.split("|") for line in crops.splitlines() if line.startswith("| train_crop 0.5")]
    assert len(rows) == 1 and rows[0][-2].strip().endswith("x")
    both = _run(
        "train_step.py", "--size", "64x64", "--repeats", "1", "--rounds", "1", "--before-after"
    )
    names = [line.split("|")[1].strip() for line in both.splitlines() if line.startswith("| ")]
    assert names[1:] == [
        "before: whole images, torchvision backward, per-level upsampling",
        "crops 0.5",
        "crops 0.5, sparse RoIAlign backward",
        "after: crops 0.5, sparse backward, one-pass upsampling",
    ]


@pytest.mark.slow
def test_cpu_processes_table():
    out = _run("cpu_processes.py", "--size", "160x128", "--repeats", "1")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "processes" not in line]
    assert [row.split("|")[1].strip() for row in rows] == ["1", "2"]
    assert all(float(row.split("|")[4]) > 0 for row in rows)


def test_fusion_metric_table_with_worker_processes(tmp_path):
    tno = ROOT.parent / "shared" / "data" / "tno42"
    if not tno.is_dir():
        pytest.skip("shared/data/tno42 not available")
    for sub in ("ir", "vi", "fused/U2Fusion"):
        (tmp_path / sub).mkdir(parents=True)
        for stem in ("05", "08"):
            (tmp_path / sub / f"{stem}.png").write_bytes((tno / sub / f"{stem}.png").read_bytes())
    out = _run(
        "fusion_metrics.py",
        "--data",
        str(tmp_path),
        "--repeats",
        "1",
        "--threads",
        "1",
        "--workers",
        "1,2",
        "--no-cuda",
    )
    rows = [line.split() for line in out.splitlines() if line.startswith(("python", "matlab"))]
    assert [(r[0], r[2]) for r in rows] == [("python", "1"), ("python", "2")] + [
        ("matlab", "1"),
        ("matlab", "2"),
    ]
    assert all(float(r[4]) > 0 for r in rows)


def test_eval_fusion_command_against_the_evaluator(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    tno = ROOT.parent / "shared" / "data" / "tno42"
    if not tno.is_dir():
        pytest.skip("shared/data/tno42 not available")
    for sub in ("ir", "vi", "fused/U2Fusion"):
        (tmp_path / sub).mkdir(parents=True)
        for stem in ("05", "08"):  # the two smallest pairs
            (tmp_path / sub / f"{stem}.png").write_bytes((tno / sub / f"{stem}.png").read_bytes())
    out = _run(
        "eval_fusion_command.py", "--data", str(tmp_path), "--workers", "2", "--repeats", "1"
    )
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| e2emfd")]
    assert [r[1].strip() for r in rows] == ["e2emfd eval-fusion --workers 2"]
    assert float(rows[0][2]) > 0 and rows[0][5].strip().endswith("x")
    # the evaluator and the command computed the same values
    rel = float(out.split("largest relative difference command vs evaluator ")[1].split()[0])
    assert rel < 1e-5


def test_region_upsampling_table_on_cpu():
    out = _run("region_upsampling.py", "--device", "cpu", "--repeats", "1", "--rounds", "1")
    rows = [line.split("|") for line in out.splitlines() if line.startswith("| ")][1:]
    assert [r[1].strip() for r in rows] == ["inference, whole frame", "training, half-side window"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 and r[4].strip().endswith("x") for r in rows)
