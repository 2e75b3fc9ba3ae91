"""Real MSRS pairs (``../shared/data/msrs_det``) through the project's configs: every pair
is read with the box counts its README states, and a model pretrained on synthetic scenes
warm-starts the CPU config (``model.init_from``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from e2emfd.config import load_config
from e2emfd.data import build_dataset, build_transforms
from e2emfd.engine.checkpoint import init_from_checkpoint, load_checkpoint
from e2emfd.engine.trainer import train
from e2emfd.models import build_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# ../shared/data/msrs_det/README.md: person / bicycle / car boxes and empty label files
README_COUNTS = {
    ("fusion", "train"): ((634, 53, 266), 15),
    ("fusion", "val"): ((186, 43, 86), 7),
    ("visible", "train"): ((316, 45, 243), 48),
    ("visible", "val"): ((97, 36, 70), 13),
    ("infrared", "train"): ((821, 95, 239), 10),
    ("infrared", "val"): ((213, 78, 55), 2),
}


def _msrs_config(shared_data, overrides=()):
    root = shared_data / "msrs_det"
    if not root.is_dir():
        pytest.skip(f"{root} not found")
    return load_config(CONFIGS / "msrs_cpu.yaml", [f"data.root={root}", *overrides])


def test_all_287_pairs_read_with_the_readme_box_counts(shared_data):
    cfg = _msrs_config(shared_data)
    assert cfg.data.label_modality == "fusion"
    total = 0
    for (modality, split), (counts, empty) in README_COUNTS.items():
        cfg.data.label_modality = modality
        split_file = cfg.data.train_split if split == "train" else cfg.data.test_split
        dataset = build_dataset(cfg.data, split_file, build_transforms(cfg.data, train=False))
        assert dataset.classes == ["person", "bicycle", "car"]
        assert tuple(dataset.class_counts().values()) == counts, (modality, split)
        assert sum(len(r.annotation) == 0 for r in dataset.records) == empty
        if modality == "fusion":
            total += len(dataset)
            # what training sees: every box survives reading (none clipped away) and
            # lands inside the resized image
            labels = torch.zeros(3, dtype=torch.long)
            for i in range(len(dataset)):
                sample = dataset[i]
                h, w = sample["vis"].shape[-2:]
                assert (h, w) == (240, 320) and sample["ir"].shape == (1, 240, 320)
                boxes = sample["boxes"]
                assert ((boxes[:, 0::2] >= 0) & (boxes[:, 0::2] <= w)).all()
                assert ((boxes[:, 1::2] >= 0) & (boxes[:, 1::2] <= h)).all()
                labels += torch.bincount(sample["labels"], minlength=3)
            assert tuple(labels.tolist()) == counts
    assert total == 287


@pytest.fixture(scope="module")
def synthetic_checkpoint(tmp_path_factory, synth_small) -> Path:
    """A two-step run of the CPU config's model on synthetic street scenes (6 classes)."""
    tmp_path = tmp_path_factory.mktemp("synthetic_pretraining")
    cfg = load_config(
        CONFIGS / "msrs_cpu.yaml",
        [
            "data.format=voc",
            f"data.root={synth_small}",
            "data.train_split=train",
            "data.test_split=test",
            "data.classes=[People,Car,Bus,Lamp,Motorcycle,Truck]",
            "data.unlabelled=skip",
            "data.short_side=0",
            "model.detection.num_classes=6",
            "train.max_iters=2",
            "train.batch_size=2",
            "train.checkpoint_every=0",
            f"output_dir={tmp_path / 'synthetic'}",
        ],
    )
    return train(cfg, progress=False).checkpoint


def test_init_from_loads_what_fits_and_reports_the_rest(tmp_path, synthetic_checkpoint):
    checkpoint = synthetic_checkpoint
    cfg = load_config(CONFIGS / "msrs_cpu.yaml")
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    warm = init_from_checkpoint(model, checkpoint)
    saved = load_checkpoint(checkpoint)["model"]
    # everything but the class layers (6 synthetic classes vs 3) comes from the checkpoint
    assert warm.shape_mismatch and all("class_logits" in k for k in warm.shape_mismatch)
    assert not warm.not_in_checkpoint and not warm.not_in_model
    assert len(warm.loaded) == len(saved) - len(warm.shape_mismatch)
    state = model.state_dict()
    for key in warm.loaded:
        assert torch.equal(state[key], saved[key]), key
    for key in (k.split(" ")[0] for k in warm.shape_mismatch):
        assert torch.equal(state[key], before[key]), key
    assert f"loaded {len(warm.loaded)} of {len(state)} model tensors" in warm.summary()
    with pytest.raises(FileNotFoundError, match="init_from"):
        init_from_checkpoint(model, tmp_path / "missing.pt")
    # a plain state dict works too
    torch.save({k: v for k, v in saved.items() if "class_logits" not in k}, tmp_path / "sd.pt")
    plain = init_from_checkpoint(build_model(cfg.model), tmp_path / "sd.pt")
    assert plain.loaded == warm.loaded and len(plain.not_in_checkpoint) == len(warm.shape_mismatch)


def test_cpu_config_fine_tunes_real_pairs_from_a_synthetic_checkpoint(
    tmp_path, synthetic_checkpoint, shared_data, capsys
):
    checkpoint = tmp_path / "synthetic.pt"  # a copy: this test deletes it afterwards
    checkpoint.write_bytes(synthetic_checkpoint.read_bytes())
    capsys.readouterr()
    cfg = _msrs_config(
        shared_data,
        [
            f"model.init_from={checkpoint}",
            "train.max_iters=3",
            "train.checkpoint_every=0",
            f"output_dir={tmp_path / 'msrs'}",
        ],
    )
    result = train(cfg, progress=False)
    report = capsys.readouterr().out
    assert "init_from" in report and "loaded" in report and "class_logits" in report
    assert result.step == 3
    log = (tmp_path / "msrs" / "train_log.jsonl").read_text().splitlines()
    assert log and all("NaN" not in line for line in log)
    # the fine-tuned checkpoint stands alone: it loads without the synthetic one
    checkpoint.unlink()
    state = load_checkpoint(result.checkpoint)
    model = build_model(load_config(CONFIGS / "msrs_cpu.yaml").model)
    model.load_state_dict(state["model"])


def test_a_stripped_checkpoint_keeps_the_weights_and_drops_the_training_state(
    tmp_path, synthetic_checkpoint
):
    from e2emfd.engine.checkpoint import load_model_for_inference, strip_checkpoint

    small = strip_checkpoint(synthetic_checkpoint, tmp_path / "small.pt")
    assert small.stat().st_size < synthetic_checkpoint.stat().st_size / 2
    assert set(load_checkpoint(small)) == {"format", "model", "config", "step"}
    a, _ = load_model_for_inference(synthetic_checkpoint)
    b, _ = load_model_for_inference(small)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name
