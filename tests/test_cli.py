"""The command line on the real samples: fuse TNO/RoadScene, score them, detect on LLVIP,
evaluate a checkpoint; and every subcommand's --help."""

import json
import shutil

import cv2
import pytest
import torch

from e2emfd.cli.main import build_parser, main
from e2emfd.config import load_config


@pytest.fixture
def tiny_checkpoint(tiny_joint_run):
    return tiny_joint_run / "checkpoint_last.pt"


def _sizes(folder):
    return {p.stem: cv2.imread(str(p), cv2.IMREAD_UNCHANGED).shape[:2] for p in folder.iterdir()}


def test_every_subcommand_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"synth", "train", "fuse", "detect", "eval", "eval-fusion", "demo", "experiment"} <= set(
        commands
    )
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "usage: e2emfd" in capsys.readouterr().out


@pytest.mark.parametrize("dataset, count", [("tno", 25), ("roadscene", 50)])
def test_fuse_writes_one_png_per_pair_at_the_source_size(shared_data, tmp_path, dataset, count):
    out = tmp_path / "fused"
    code = main(
        [
            "fuse",
            "--method",
            "laplacian",
            "--vi",
            str(shared_data / dataset / "vi"),
            "--ir",
            str(shared_data / dataset / "ir"),
            "--out",
            str(out),
            "--no-progress",
        ]
    )
    assert code == 0
    assert len(list(out.glob("*.png"))) == count
    sources = {
        p.stem: cv2.imread(str(p)).shape[:2] for p in (shared_data / dataset / "vi").iterdir()
    }
    assert _sizes(out) == sources
    scores = tmp_path / "scores.json"
    code = main(
        [
            "eval-fusion",
            "--ir",
            str(shared_data / dataset / "ir"),
            "--vi",
            str(shared_data / dataset / "vi"),
            "--fused",
            str(out),
            "--out",
            str(scores),
            "--no-progress",
            "--metrics",
            "EN,MI,Qabf",
        ]
    )
    assert code == 0
    assert scores.is_file() and "MI" in scores.read_text()


def test_fuse_with_a_trained_model_any_size(shared_data, tiny_checkpoint, tmp_path):
    src = shared_data / "tno"
    vi, ir = tmp_path / "vi", tmp_path / "ir"
    vi.mkdir()
    ir.mkdir()
    for name in ("01.png", "05.png", "10.png"):  # 768x576, 620x450 and another size
        shutil.copy(src / "vi" / name, vi / name)
        shutil.copy(src / "ir" / name, ir / name)
    out = tmp_path / "fused"
    assert (
        main(
            [
                "fuse",
                "--weights",
                str(tiny_checkpoint),
                "--vi",
                str(vi),
                "--ir",
                str(ir),
                "--out",
                str(out),
                "--color",
                "gray",
                "--no-progress",
            ]
        )
        == 0
    )
    assert _sizes(out) == {p.stem: cv2.imread(str(p)).shape[:2] for p in vi.iterdir()}


def test_detect_on_real_llvip_pairs(shared_data, tiny_checkpoint, tmp_path):
    src = shared_data / "llvip"
    vi, ir = tmp_path / "vi", tmp_path / "ir"
    vi.mkdir()
    ir.mkdir()
    for name in sorted(p.name for p in (src / "vi").iterdir())[:3]:
        shutil.copy(src / "vi" / name, vi / name)
        shutil.copy(src / "ir" / name, ir / name)
    out = tmp_path / "det"
    assert (
        main(
            [
                "detect",
                "--weights",
                str(tiny_checkpoint),
                "--vi",
                str(vi),
                "--ir",
                str(ir),
                "--out",
                str(out),
                "--draw-threshold",
                "0",
                "--no-progress",
            ]
        )
        == 0
    )
    images = json.loads((out / "images.json").read_text())
    assert [(i["width"], i["height"]) for i in images["images"]] == [(1280, 1024)] * 3
    results = json.loads((out / "detections.json").read_text())
    assert results and {"image_id", "category_id", "bbox", "score"} <= set(results[0])
    assert all(0 <= r["bbox"][0] <= 1280 and 0 <= r["bbox"][1] <= 1024 for r in results)
    drawn = cv2.imread(str(out / "drawn" / "010001.png"))
    assert drawn.shape[:2] == (1024, 1280)


def test_eval_writes_metrics_json(synth_small, tiny_checkpoint, tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text(f"data:\n  root: {synth_small}\n")
    out = tmp_path / "metrics.json"
    assert (
        main(
            [
                "eval",
                str(config),
                "--weights",
                str(tiny_checkpoint),
                "--out",
                str(out),
                "--no-progress",
                "--baselines",
            ]
        )
        == 0
    )
    result = json.loads(out.read_text())
    assert result["num_images"] == 4
    assert {"AP", "AP50", "voc07_mAP50", "voc_mAP50", "per_class"} <= set(result["detection"])
    assert set(result["fusion"]) == {"python", "matlab"} and "VIF" in result["fusion"]["matlab"]
    # the classical methods scored on the same pairs, against an independent computation
    from e2emfd.data import build_dataset, build_transforms
    from e2emfd.metrics.fusion import fusion_metrics, to_grey_levels
    from e2emfd.models.color import luminance, restore_color

    baselines = result["fusion_baselines"]
    assert set(baselines["python"]) == {"average", "max", "laplacian"}
    dataset = build_dataset(
        load_config(config).data, "test", build_transforms(load_config(config).data, False)
    )
    en = []
    for i in range(len(dataset)):
        vis, ir = dataset[i]["vis"][None], dataset[i]["ir"][None]
        brighter = torch.maximum(luminance(vis, "ycbcr"), ir)
        grey = [
            to_grey_levels(x, "python") for x in (restore_color(brighter, vis, "ycbcr"), ir, vis)
        ]
        en.append(float(fusion_metrics(*grey)["EN"]))
    assert baselines["python"]["max"]["EN"] == pytest.approx(sum(en) / len(en), rel=1e-9)
    printed = capsys.readouterr().out
    assert "fusion (python convention)" in printed and "laplacian" in printed


def test_cli_errors_are_one_line(tmp_path, capsys):
    code = main(
        [
            "fuse",
            "--method",
            "max",
            "--vi",
            str(tmp_path / "nope"),
            "--ir",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope" in err
    code = main(["train", str(tmp_path / "missing.yaml")])
    assert code == 2 and "missing.yaml: config file not found" in capsys.readouterr().err
    code = main(["train", str(tmp_path / "missing.yaml"), "model.backbone.dept=3"])
    assert code == 2


def test_experiment_takes_overrides_after_its_list_options(monkeypatch, tmp_path):
    """`--seeds 0 1 model.x=...` must not read the override as a seed (argparse's list
    options swallow what follows them)."""
    import e2emfd.demo.experiment as experiment

    calls = []
    monkeypatch.setattr(
        experiment, "run_modality_experiment", lambda *a, **k: calls.append((a, k)) or {}
    )
    monkeypatch.setattr(experiment, "results_markdown", lambda results: "")
    argv = ["experiment", "modality", "--out", str(tmp_path / "x"), "--variants", "visible only"]
    assert main([*argv, "--seeds", "3", "1", "model.init_from=a.pt", "seed=5"]) == 0
    (out, seeds, _, _, variants, overrides, _), _ = calls[0]
    assert seeds == [3, 1] and variants == ["visible only"]
    assert overrides == ["model.init_from=a.pt", "seed=5"]
    assert main([*argv, "--seeds", "x"]) == 2
