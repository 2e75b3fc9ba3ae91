"""Issue #21, one test per case: no run silently overwritten, no traceback from the command
line, no NaN in a result file. Each command-line case checks the exit code, that the
message is one line naming the path, and that nothing on disk was lost."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY_JOINT
from e2emfd.cli.main import main
from e2emfd.config import load_config
from e2emfd.data.labels import parse_yolo_txt
from e2emfd.metrics.fusion import _fusion_metrics
from e2emfd.models.e2emfd import E2EMFD


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (hidden ones included) and its bytes."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def one_line_error(capsys, code: int, *names: str) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for name in names:
        assert str(name) in err, (name, err)
    return err


@pytest.fixture(scope="module")
def config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "empty.yaml"
    path.write_text("{}\n")
    return path


@pytest.fixture(scope="module")
def run_args(synth_small, config_file):
    """``e2emfd train`` arguments of the tiny joint model; add -o and overrides."""
    return ["train", str(config_file), "--no-progress", f"data.root={synth_small}", *TINY_JOINT]


@pytest.fixture
def finished_run(tiny_joint_run) -> Path:
    """A run folder of 2 steps with a checkpoint at step 2 (shared: copy it to change it)."""
    return tiny_joint_run


def _steps(path: Path) -> list[int]:
    return [json.loads(line)["step"] for line in path.read_text().splitlines()]


# --- 1. work is not lost -------------------------------------------------------------------


def test_train_refuses_a_folder_holding_a_run_and_overwrite_replaces_it(
    finished_run, run_args, tmp_path, capsys
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    (run / "notes.txt").write_text("mine")
    before = snapshot(run)
    code = main([*run_args, "-o", str(run), "train.max_iters=1"])
    err = one_line_error(capsys, code, run, "--resume", "--overwrite")
    assert "not empty" in err
    assert snapshot(run) == before

    assert main([*run_args, "-o", str(run), "--overwrite", "train.max_iters=1"]) == 0
    assert _steps(run / "train_log.jsonl") == [1]  # the old run's steps 1 and 2 are gone
    assert (run / "notes.txt").read_text() == "mine"
    assert len(list((run / "tensorboard").iterdir())) == 1


@pytest.mark.parametrize("boxes", ["hbb", "obb"])
def test_synth_overwrite_deletes_only_what_synth_wrote(tmp_path, capsys, boxes):
    out = tmp_path / "ds"
    common = ["synth", str(out), "--size", "64x64", "--quiet", "--boxes", boxes]
    assert main([*common, "--num", "3"]) == 0
    images = out / ("Vis" if boxes == "hbb" else "train/rgb/images")
    mine = [images / "my_notes.txt", out / "ImageSets" / "Main" / "scene_train.txt"]
    if boxes == "obb":
        mine[1] = out / "test" / "ir" / "labels" / "scene_train.txt"
    for path in mine:
        path.write_text("keep me")
    assert main([*common, "--num", "2", "--overwrite"]) == 0
    assert all(path.read_text() == "keep me" for path in mine)
    assert sorted(p.name for p in images.glob("*.png")) == ["00000.png", "00001.png"]


def test_resume_logs_each_step_once_and_removes_temp_files_of_dead_writers(
    finished_run, run_args, tmp_path
):
    run = tmp_path / "run"
    shutil.copytree(finished_run, run)
    # What a kill after step 4 leaves: steps 3 and 4 logged after the step-2 checkpoint, a
    # line cut short, and the temp file of a checkpoint write.
    with open(run / "train_log.jsonl", "a") as f:
        f.write('{"step": 3, "lr": 1.0}\n{"step": 4, "lr": 1.0}\n{"step": 5, "l')
    (run / "metrics.jsonl").write_text('{"step": 2, "AP": 0.1}\n{"step": 4, "AP": 0.2}\n')
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = run / f".checkpoint_last.pt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    live = run / f".checkpoint_last.pt.tmp-{os.getppid()}"
    live.write_bytes(b"another process, still writing")

    assert main([*run_args, "-o", str(run), "--resume", "train.max_iters=3"]) == 0
    assert _steps(run / "train_log.jsonl") == [1, 2, 3]
    assert _steps(run / "metrics.jsonl") == [2]
    assert not stale.exists() and live.exists()


# --- 2. degenerate images and the fusion metrics -------------------------------------------

# What each reference gives for these pairs (see the metric docstrings): NaN or inf where it
# divides by zero. Those are undefined; every other metric has a value.
UNDEFINED = {
    "python": {
        "black": {"SCD", "CC", "Qabf", "PSNR"},
        "white": {"SCD", "CC", "PSNR"},
        "const_ir": {"SCD", "CC"},
        "normal": set(),
    },
    "matlab": {
        "black": {"SCD", "CC", "VIF", "Qabf", "PSNR"},
        "white": {"SCD", "CC", "VIF", "PSNR"},
        "const_ir": {"SCD", "CC", "VIF"},
        "normal": set(),
    },
}


@pytest.fixture
def degenerate_pairs(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    noise = lambda: rng.integers(0, 256, (48, 48), dtype=np.uint8)  # noqa: E731
    flat = lambda v: np.full((48, 48), v, np.uint8)  # noqa: E731
    pairs = {
        "normal": (noise(), noise(), noise()),
        "black": (flat(0), flat(0), flat(0)),
        "white": (flat(255), flat(255), flat(255)),
        "const_ir": (flat(128), noise(), noise()),
    }
    for stem, images in pairs.items():
        for sub, image in zip(("ir", "vi", "fused"), images):
            (tmp_path / sub).mkdir(exist_ok=True)
            cv2.imwrite(str(tmp_path / sub / f"{stem}.png"), image)
    return tmp_path


def _eval_fusion(root: Path, *extra: str) -> list[str]:
    folders = ("--ir", str(root / "ir"), "--vi", str(root / "vi"), "--fused", str(root / "fused"))
    return ["eval-fusion", *folders, "--no-progress", "--workers", "1", *extra]


def _strict_json(path: Path):
    def refuse(name):
        raise AssertionError(f"{path} holds {name}")

    return json.loads(path.read_text(), parse_constant=refuse)


@pytest.mark.parametrize("convention", ["python", "matlab"])
def test_eval_fusion_reports_undefined_values_as_null_and_means_over_the_rest(
    degenerate_pairs, capsys, convention
):
    out = degenerate_pairs / "res.json"
    assert main(_eval_fusion(degenerate_pairs, "--convention", convention, "--out", str(out))) == 0
    printed = capsys.readouterr()
    result = _strict_json(out)
    expected = UNDEFINED[convention]
    for stem, values in result["images"].items():
        assert {k for k, v in values.items() if v is None} == expected[stem], stem
    for metric in result["metrics"]:
        defined = [v[metric] for v in result["images"].values() if v[metric] is not None]
        assert result["defined"][metric] == len(defined)
        assert result["mean"][metric] == pytest.approx(sum(defined) / len(defined))
        missing = sorted(s for s in expected if metric in expected[s])
        if missing:
            line = next(x for x in printed.err.splitlines() if f"warning: {metric}:" in x)
            assert all(s in line for s in missing)
            assert f"mean over {4 - len(missing)} of 4 images" in line
    assert "(mean over 1 of 4 images)" in printed.out  # CC, SCD: only the normal pair

    csv_out = degenerate_pairs / "res.csv"
    assert main(_eval_fusion(degenerate_pairs, "--metrics", "CC,EN", "--out", str(csv_out))) == 0
    rows = dict(line.split(",", 1) for line in csv_out.read_text().splitlines())
    assert rows["black"].startswith(",") and rows["normal"][0] != ","


def test_cpu_engine_gives_nan_like_the_references_for_all_black_sources():
    black = torch.zeros(1, 48, 48, dtype=torch.float64)
    for convention in ("python", "matlab"):
        for engine in ("cpu", "torch"):
            qabf = _fusion_metrics(black, black, black, convention, ["Qabf"], engine)["Qabf"]
            assert math.isnan(qabf.item()), (convention, engine)


@pytest.fixture
def checkpoint(finished_run) -> Path:
    return finished_run / "checkpoint_last.pt"


def test_eval_on_a_split_with_a_black_pair_writes_valid_json(
    synth_small, checkpoint, tmp_path, capsys
):
    data = tmp_path / "data"
    shutil.copytree(synth_small, data)
    black = (data / "ImageSets" / "Main" / "test.txt").read_text().split()[0]
    cv2.imwrite(str(data / "Vis" / f"{black}.png"), np.zeros((96, 128, 3), np.uint8))
    cv2.imwrite(str(data / "Ir" / f"{black}.png"), np.zeros((96, 128), np.uint8))
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {data}\n")
    out = tmp_path / "metrics.json"
    code = main(["eval", str(config), "--weights", str(checkpoint), "--out", str(out)])
    assert code == 0
    result = _strict_json(out)
    for convention in ("python", "matlab"):
        assert result["fusion_undefined"][convention]["Qabf"] == [black]
        assert result["fusion"][convention]["Qabf"] is not None  # the 3 other pairs
    err = capsys.readouterr().err
    assert f"fusion (python) Qabf: undefined for {black}" in err
    assert "mean over 3 of 4 images" in err


# --- 3. output paths -----------------------------------------------------------------------


def _output_case(name: str, tmp: Path, config: Path) -> tuple[list[str], Path]:
    """A command whose output is an existing file (or, for the JSON writers, a folder)."""
    target = tmp / ("taken.json" if name.startswith("eval") else "taken")
    if name.startswith("eval"):
        target.mkdir()
        (target / "inside.txt").write_text("mine")
    else:
        target.write_text("mine")
    folders = ["--vi", str(tmp), "--ir", str(tmp)]
    argv = {
        "fuse": ["fuse", "--method", "max", *folders, "--out", str(target)],
        "detect": ["detect", "--weights", str(tmp / "w.pt"), *folders, "--out", str(target)],
        "train -o": ["train", str(config), "-o", str(target)],
        "demo": ["demo", "--out", str(target), "--no-progress"],
        "eval": ["eval", str(config), "--weights", str(tmp / "w.pt"), "--out", str(target)],
        "eval-fusion": [
            *("eval-fusion", "--ir", str(tmp), "--vi", str(tmp), "--fused", str(tmp)),
            *("--out", str(target)),
        ],
    }[name]
    return argv, target


@pytest.mark.parametrize("name", ["fuse", "detect", "train -o", "demo", "eval", "eval-fusion"])
def test_an_output_that_is_a_file_or_a_folder_is_one_line(tmp_path, config_file, capsys, name):
    argv, target = _output_case(name, tmp_path, config_file)
    before = snapshot(tmp_path)
    err = one_line_error(capsys, main(argv), target)
    assert "folder" in err
    assert snapshot(tmp_path) == before


# --- 4. other errors -----------------------------------------------------------------------


@pytest.mark.parametrize("command", ["fuse", "detect", "eval", "eval-fusion", "train"])
def test_an_unknown_device_lists_the_valid_ones(tmp_path, config_file, capsys, command):
    folders = ["--vi", str(tmp_path), "--ir", str(tmp_path)]
    weights = ["--weights", str(tmp_path / "w.pt")]
    argv = {
        "fuse": ["fuse", "--method", "max", *folders, "--out", str(tmp_path / "o"), "--device"],
        "detect": ["detect", *weights, *folders, "--out", str(tmp_path / "o"), "--device"],
        "eval": ["eval", str(config_file), *weights, "--device"],
        "eval-fusion": ["eval-fusion", *folders, "--fused", str(tmp_path), "--device"],
        "train": ["train", str(config_file), "-o", str(tmp_path / "run"), "train.device=tpu"],
    }[command]
    if command != "train":
        argv.append("tpu")
    err = one_line_error(capsys, main(argv), "'tpu'", "auto, cpu, cuda or cuda:N")
    assert ("train.device" if command == "train" else "--device") in err


@pytest.fixture
def two_pairs(tmp_path) -> Path:
    rng = np.random.default_rng(1)
    for sub in ("vi", "ir"):
        (tmp_path / sub).mkdir()
        for stem in ("a", "b"):
            image = rng.integers(0, 256, (48, 64), np.uint8)
            cv2.imwrite(str(tmp_path / sub / f"{stem}.png"), image)
    return tmp_path


OUT_OF_MEMORY = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.15 GiB"),
    RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate "
        "memory: you tried to allocate 2304000000 bytes. Error code 12"
    ),
]


@pytest.mark.parametrize("error", OUT_OF_MEMORY, ids=["cuda", "cpu"])
@pytest.mark.parametrize("fits_alone", [False, True])
def test_fuse_out_of_memory_names_the_pair_or_retries_it_alone(
    two_pairs, monkeypatch, capsys, error, fits_alone
):
    from e2emfd.models import baselines

    real = baselines.fuse_baseline

    def fuse(vis, ir, method, color):
        if len(vis) > 1 or not fits_alone:
            raise error
        return real(vis, ir, method, color)

    monkeypatch.setattr(baselines, "fuse_baseline", fuse)
    out = two_pairs / "fused"
    argv = ["fuse", "--method", "max", "--vi", str(two_pairs / "vi"), "--ir", str(two_pairs / "ir")]
    code = main([*argv, "--out", str(out), "--batch-size", "2", "--no-progress"])
    if fits_alone:
        assert code == 0 and sorted(p.name for p in out.iterdir()) == ["a.png", "b.png"]
        return
    err = one_line_error(capsys, code, two_pairs / "vi" / "a.png", "64x48", "out of memory")
    assert "downscale" in err
    assert not list(out.iterdir())


def test_a_non_finite_loss_ends_train_with_one_line(run_args, tmp_path, monkeypatch, capsys):
    real = E2EMFD.forward

    def nan_losses(self, batch, tasks=None, **kwargs):
        out = real(self, batch, tasks, **kwargs)
        out["losses"] = {k: v * float("nan") for k, v in out["losses"].items()}
        return out

    monkeypatch.setattr(E2EMFD, "forward", nan_losses)
    run = tmp_path / "run"
    with pytest.warns(UserWarning, match="non-finite"):
        code = main([*run_args, "-o", str(run), "train.max_iters=5", "train.max_bad_steps=2"])
    err = one_line_error(capsys, code, "2 consecutive steps with a non-finite loss")
    assert "train.max_bad_steps" in err
    assert _steps(run / "train_log.jsonl") == [1, 2]  # the skipped steps stay logged


@pytest.mark.parametrize("first", ["1.7", "nan", "1e0"])
def test_a_yolo_class_that_is_not_an_integer_is_refused(tmp_path, first):
    path = tmp_path / "x.txt"
    path.write_text(f"0 0.5 0.5 0.1 0.1\n{first} 0.5 0.5 0.2 0.2\n")
    if first == "1e0":  # an integer written as a float is still class 1
        assert parse_yolo_txt(path, 3).labels.tolist() == [0, 1]
        return
    with pytest.raises(ValueError, match=rf"x\.txt:2: class index {first} is not an integer"):
        parse_yolo_txt(path, 3)


def test_a_config_that_is_not_utf8_is_named(tmp_path, capsys):
    config = tmp_path / "latin1.yaml"
    config.write_bytes("name: caf\xe9\n".encode("latin-1"))
    err = one_line_error(capsys, main(["train", str(config)]), config)
    assert "not UTF-8" in err


def test_a_checkpoint_of_other_classes_lists_both(synth_small, checkpoint, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {synth_small}\n  unknown_class: skip\n")
    out = tmp_path / "m.json"
    argv = ["eval", str(config), "data.classes=[People,Car,Bus]", "--weights", str(checkpoint)]
    err = one_line_error(capsys, main([*argv, "--out", str(out)]), checkpoint)
    assert "6 classes (People, Car, Bus, Lamp, Motorcycle, Truck)" in err
    assert "the data's 3 (People, Car, Bus)" in err
    assert not out.exists()


def test_eval_fusion_refuses_a_truncated_jpeg(degenerate_pairs, capsys):
    jpeg = degenerate_pairs / "fused" / "normal.jpg"
    ok, data = cv2.imencode(".jpg", cv2.imread(str(degenerate_pairs / "fused" / "normal.png")))
    jpeg.write_bytes(data.tobytes()[: len(data) // 2])
    (degenerate_pairs / "fused" / "normal.png").unlink()
    out = degenerate_pairs / "res.json"
    code = main(_eval_fusion(degenerate_pairs, "--out", str(out)))
    err = one_line_error(capsys, code, jpeg, "truncated")
    assert "Premature end" not in err and not out.exists()


def test_demo_checks_its_arguments_before_any_work(tmp_path, capsys):
    out = tmp_path / "demo"
    code = main(["demo", "--out", str(out), "--num-images", "1", "--no-progress"])
    err = one_line_error(capsys, code, "--num-images 1", "use at least 5")
    assert "0 test pairs" in err and not out.exists()


def test_train_help_tells_what_overwrite_and_resume_do(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "must be new or empty" in text
    assert "log records of later steps" in text


# --- 5. DDP is told of unused parameters only where they exist -----------------------------


@pytest.mark.parametrize(
    "task, extra, frozen, keep, search",
    [
        ("joint", [], None, True, False),
        ("detection", [], "fusion", True, False),
        ("fusion", [], "detection", False, True),  # P5 is never read by 3 fusion regions
        (
            "fusion",
            ["model.detection.enabled=false", "model.fusion.num_regions=4"],
            None,
            False,
            False,
        ),
    ],
)
def test_ddp_plan_freezes_untrained_heads_and_searches_only_where_needed(
    synth_small, task, extra, frozen, keep, search
):
    from e2emfd.engine.trainer import training_tasks
    from e2emfd.engine.unused_parameters import prepare_for_ddp
    from e2emfd.models import build_model

    cfg = load_config(None, [*TINY_JOINT, f"data.root={synth_small}", f"train.task={task}", *extra])
    model = build_model(cfg.model)
    plan = prepare_for_ddp(model, training_tasks(cfg, model.tasks), cfg.model)
    heads = {"detection": model.detector, "fusion": model.fusion}
    for name, head in heads.items():
        if head is not None:
            assert all(p.requires_grad == (name != frozen) for p in head.parameters()), name
    assert (plan.keep_in_graph == model.shared_parameters()) if keep else not plan.keep_in_graph
    assert plan.find_unused is search


def test_two_processes_train_jointly_without_the_search_or_its_warning(
    synth_small, tmp_path, capfd
):
    from e2emfd.engine.local import train_locally

    # At 128x96 no box reaches P5: without the zero-weighted term DDP fails the second step.
    # (mtl=sum: GMTA's balancing steps run outside DDP's all-reduce.)
    paths = [f"data.root={synth_small}", f"output_dir={tmp_path}"]
    cfg = load_config(None, [*TINY_JOINT, *paths, "train.max_iters=3", "train.mtl=sum"])
    assert train_locally(cfg, processes=2, threads=1, progress=False) == 3
    assert "find_unused_parameters" not in capfd.readouterr().err


def test_an_error_in_a_local_training_process_is_raised_as_itself():
    from e2emfd.engine.distributed import run_local_processes

    # The demo's processes: the CLI prints a ValueError as one line, not spawn's text of the
    # traceback. (int, a builtin, keeps the spawned processes' imports to torch's.)
    with pytest.raises(ValueError, match=r"^invalid literal for int\(\) with base 10: 'x'$"):
        run_local_processes(int, 2, ("x",))
