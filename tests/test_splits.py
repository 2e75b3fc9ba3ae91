"""Scene-aware splits: no scene of a video crosses the train/test boundary."""

import cv2
import numpy as np
import pytest

from e2emfd.cli.main import main
from e2emfd.data.splits import scene_boundaries, scene_split


def _video(root, scene_lengths, seed=0):
    """Frames of several 'scenes': each a random picture that drifts a little per frame."""
    rng = np.random.default_rng(seed)
    (root / "Vis").mkdir(parents=True)
    (root / "Ir").mkdir()
    index, truth = 0, []
    for length in scene_lengths:
        base = cv2.GaussianBlur(rng.random((96, 128)).astype(np.float32), (0, 0), 6)
        base = (base - base.min()) / (base.max() - base.min())
        truth.append(index)
        for k in range(length):
            frame = np.clip(np.roll(base, k, axis=1) + rng.normal(0, 0.01, base.shape), 0, 1)
            image = (frame * 255).astype(np.uint8)
            cv2.imwrite(str(root / "Vis" / f"{index:05d}.png"), image)
            cv2.imwrite(str(root / "Ir" / f"{index:05d}.png"), image)
            index += 1
    return truth


def test_scene_boundaries_found_and_split_keeps_scenes_whole(tmp_path, capsys):
    lengths = [12, 7, 20, 9, 15, 11]
    truth = _video(tmp_path, lengths)
    assert main(["split", str(tmp_path), "--test-fraction", "0.3", "--no-progress"]) == 0
    assert "6 scenes" in capsys.readouterr().out
    main_dir = tmp_path / "ImageSets" / "Main"
    train = main_dir.joinpath("scene_train.txt").read_text().split()
    test = main_dir.joinpath("scene_test.txt").read_text().split()
    assert sorted(train + test) == [f"{i:05d}" for i in range(sum(lengths))]
    edges = [*truth, sum(lengths)]
    for a, b in zip(edges[:-1], edges[1:]):
        scene = {f"{i:05d}" for i in range(a, b)}
        assert scene <= set(train) or scene <= set(test)
    assert 0.15 <= len(test) / sum(lengths) <= 0.45


def test_split_helpers_directly():
    thumbs = np.concatenate([np.zeros((5, 4, 4)), np.ones((3, 4, 4)), np.zeros((4, 4, 4))])
    thumbs += np.random.default_rng(0).normal(0, 0.001, thumbs.shape)
    assert scene_boundaries(thumbs) == [0, 5, 8]
    ids = [str(i) for i in range(12)]
    train, test, scenes = scene_split(ids, [0, 5, 8], test_fraction=0.3, seed=1)
    assert [len(s) for s in scenes] == [5, 3, 4] and set(train).isdisjoint(test)
    assert len(test) in (3, 4, 5)
    with pytest.raises(ValueError, match="only 1 scene"):
        scene_split(ids, [0], test_fraction=0.3)
