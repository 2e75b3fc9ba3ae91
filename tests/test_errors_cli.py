"""Every subcommand's error paths through the installed console script: an exit code of 2,
one line naming the path on stderr, never a traceback. The cases of each group run in one
process (tests/cli_driver.py) to pay torch's import once; the read-only group runs without
the capabilities that let root write anywhere."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
SCRIPT = Path(sys.executable).parent / "e2emfd"
# root ignores file permissions through these two capabilities; setpriv drops them
DROP_CAPS = ["--inh-caps=-dac_override,-dac_read_search"]
DROP_CAPS += ["--bounding-set=-dac_override,-dac_read_search"]


def run_cases(cases: list[tuple], tmp: Path, prefix: list[str] = ()) -> list[dict]:
    """Run ``(argv, ...)`` cases through the console script; returns code/stdout/stderr."""
    spec, out = tmp / "cases.json", tmp / "results.json"
    spec.write_text(json.dumps([{"argv": [str(a) for a in case[0]]} for case in cases]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [*prefix, sys.executable, str(HERE / "cli_driver.py"), str(spec), str(out)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(out.read_text())


def check(case: tuple, result: dict) -> None:
    argv, *names = case
    label = " ".join(str(a) for a in argv[:2])
    assert "Traceback" not in result["stderr"], (label, result["stderr"])
    assert result["code"] == 2, (label, result)
    if names == ["usage"]:  # argparse's own errors: usage line + error line
        assert "usage: e2emfd" in result["stderr"], label
        return
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"e2emfd {argv[0]}: error: "), (label, lines)
    for name in names:
        assert str(name) in lines[0], (label, name, lines[0])


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    paths = {
        "file": tmp_path / "taken",
        "dir_json": tmp_path / "taken.json",
        "busy": tmp_path / "busy",
        "config": tmp_path / "c.yaml",
        "latin1": tmp_path / "latin1.yaml",
        "weights": tmp_path / "none.pt",
        "cut": tmp_path / "cut",
    }
    paths["file"].write_text("mine")
    paths["dir_json"].mkdir()
    paths["busy"].mkdir()
    (paths["busy"] / "notes.txt").write_text("mine")
    paths["config"].write_text("{}\n")
    paths["latin1"].write_bytes("name: caf\xe9\n".encode("latin-1"))
    rng = np.random.default_rng(0)
    for sub in ("ir", "vi", "fused"):
        (paths["cut"] / sub).mkdir(parents=True)
        _, data = cv2.imencode(".jpg", rng.integers(0, 256, (48, 48), np.uint8))
        data = data.tobytes()
        (paths["cut"] / sub / "a.jpg").write_bytes(
            data[: len(data) // 2] if sub == "fused" else data
        )
    return paths


def test_every_subcommand_error_is_one_line_without_traceback(inputs, tmp_path):
    p, t = inputs, tmp_path
    folders = ["--vi", t, "--ir", t]
    cut = ["--ir", p["cut"] / "ir", "--vi", p["cut"] / "vi", "--fused", p["cut"] / "fused"]
    cut.append("--no-progress")
    cases = [
        (["synth", p["file"]], p["file"], "not a folder"),
        (["synth", p["busy"], "--num", "2", "--quiet"], p["busy"], "notes.txt"),
        (["synth", t / "s", "--num", "0", "--quiet"], "num must be at least 1"),
        (["synth", t / "s", "--size", "12"], "usage"),
        (["split", t / "nodata"], t / "nodata"),
        (["train", t / "missing.yaml"], t / "missing.yaml", "not found"),
        (["train", p["latin1"]], p["latin1"], "not UTF-8"),
        (["train", p["config"], "-o", p["file"]], p["file"], "not a folder"),
        (["train", p["config"], "-o", p["busy"]], p["busy"], "--resume", "--overwrite"),
        (["train", p["config"], "-o", t / "r", "train.device=tpu"], "train.device 'tpu'"),
        (["train", p["config"], "model.backbone.dept=3"], "model.backbone.dept"),
        (["train", p["config"], "--resume", "--overwrite"], "usage"),
        (["fuse", "--method", "max", "--vi", t / "nope", "--ir", t, "--out", t / "o"], "nope"),
        (["fuse", "--method", "max", *folders, "--out", p["file"]], p["file"], "not a folder"),
        (["fuse", "--method", "max", *folders, "--out", t / "o", "--device", "tpu"], "'tpu'"),
        (["fuse", "--method", "max", *folders, "--out", t / "o", "--batch-size", "0"], "batch"),
        (["detect", "--weights", p["weights"], *folders, "--out", t / "d"], p["weights"]),
        (["detect", "--weights", p["weights"], *folders, "--out", p["file"]], p["file"]),
        (["eval", p["config"], "--weights", p["weights"], "--out", t / "m.json"], p["weights"]),
        (["eval", p["config"], "--weights", p["weights"], "--out", p["dir_json"]], p["dir_json"]),
        (["eval-fusion", *cut, "--out", t / "x.txt"], t / "x.txt", ".json or .csv"),
        (["eval-fusion", *cut, "--out", p["dir_json"]], p["dir_json"], "is a folder"),
        (["eval-fusion", *cut, "--workers", "1"], p["cut"] / "fused" / "a.jpg", "truncated"),
        (["eval-fusion", "--ir", t / "no", "--vi", t, "--fused", t], t / "no"),
        (["demo", "--out", p["file"]], p["file"], "not a folder"),
        (["demo", "--out", t / "demo", "--num-images", "1"], "--num-images 1"),
        (["demo", "--out", t / "demo", "--budget-minutes", "0"], "--budget-minutes"),
        (["experiment", "modality", "--out", p["file"]], p["file"], "not a folder"),
        (["experiment", "nonsense"], "usage"),
    ]
    before = {q: q.read_bytes() for q in t.rglob("*") if q.is_file()}
    for case, result in zip(cases, run_cases(cases, t)):
        check(case, result)
    assert {q: q.read_bytes() for q in before} == before
    assert not (t / "demo").exists() and not (t / "s").exists()
    # and once as a process of its own, straight from the shell's point of view
    alone = subprocess.run(
        [str(SCRIPT), "train", str(p["latin1"])], capture_output=True, text=True, timeout=120
    )
    check((["train", p["latin1"]], p["latin1"]), {"code": alone.returncode, **vars(alone)})


def _read_only(path: Path) -> None:
    for q in [path, *path.rglob("*")]:
        mode = q.stat().st_mode
        q.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def test_every_writer_refuses_a_read_only_folder(synth_small, inputs, tmp_path):
    prefix: list[str] = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("root writes anywhere, and setpriv (to drop that) is missing")
        prefix = ["setpriv", *DROP_CAPS]
    ro = tmp_path / "ro"
    shutil.copytree(synth_small, ro / "ds")
    ds, p = ro / "ds", inputs
    weights = ["--weights", p["weights"]]
    vis_ir = ["--vi", ds / "Vis", "--ir", ds / "Ir"]
    sources = ["--ir", ds / "Ir", "--vi", ds / "Vis", "--fused", ds / "Vis"]
    cases = [
        (["synth", ro / "new", "--num", "2", "--quiet"], ro / "new"),
        (["split", ds, "--no-progress"], ds / "ImageSets" / "Main"),
        (["train", p["config"], "-o", ro / "run"], ro / "run"),
        (["fuse", "--method", "max", *vis_ir, "--out", ro / "f"], ro / "f"),
        (["detect", *weights, *vis_ir, "--out", ro / "d"], ro / "d"),
        (["eval", p["config"], *weights, "--out", ro / "m.json"], ro / "m.json"),
        (["eval-fusion", *sources, "--out", ro / "x.json"], ro / "x.json"),
        (["demo", "--out", ro / "demo", "--no-progress"], ro / "demo"),
        (["experiment", "modality", "--out", ro / "exp"], ro / "exp"),
    ]
    cases = [(*case, "read-only") for case in cases]
    _read_only(ro)
    before = {q: q.read_bytes() for q in ro.rglob("*") if q.is_file()}
    try:
        for case, result in zip(cases, run_cases(cases, tmp_path, prefix)):
            check(case, result)
        assert {q: q.read_bytes() for q in ro.rglob("*") if q.is_file()} == before
    finally:
        for q in [ro, *ro.rglob("*")]:
            q.chmod(q.stat().st_mode | stat.S_IWUSR)
