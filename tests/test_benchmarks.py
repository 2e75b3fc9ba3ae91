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
