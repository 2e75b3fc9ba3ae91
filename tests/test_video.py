"""Videos as input of ``e2emfd fuse`` and ``e2emfd detect``: two short videos written by
OpenCV here (6 visible and 5 infrared frames of 64x48), frames paired by index."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch

from conftest import TINY_JOINT
from e2emfd.cli.main import main
from e2emfd.config import config_to_dict, load_config
from e2emfd.data.io import ImageReadError, convert_image
from e2emfd.data.video import VideoPairs, VideoWriter
from e2emfd.engine.checkpoint import save_checkpoint
from e2emfd.models import build_model

W, H = 64, 48


def write_video(path, frames, fps=10.0):
    codec = {".mp4": "mp4v", ".avi": "MJPG"}[path.suffix]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), fps, (W, H))
    if not writer.isOpened():
        pytest.skip(f"this OpenCV cannot write {codec} video")
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def visible_frames(count):
    """Blue frames with a bright square moving right (BGR, as OpenCV writes)."""
    frames = []
    for i in range(count):
        frame = np.zeros((H, W, 3), np.uint8)
        frame[:, :, 0] = 200
        frame[16:32, 8 + 6 * i : 24 + 6 * i] = 255
        frames.append(frame)
    return frames


def infrared_frames(count):
    """A warm disc on a cool background, grey stored as three equal channels."""
    yy, xx = np.mgrid[:H, :W]
    frames = []
    for i in range(count):
        grey = np.where((yy - 24) ** 2 + (xx - 20 - 4 * i) ** 2 < 80, 220, 40).astype(np.uint8)
        frames.append(np.dstack([grey] * 3))
    return frames


@pytest.fixture
def videos(tmp_path):
    vi = write_video(tmp_path / "vi.mp4", visible_frames(6))
    ir = write_video(tmp_path / "ir.avi", infrared_frames(5))
    return vi, ir


def command(name, videos, out, *extra):
    """``e2emfd NAME`` on the two videos in batches of 2, drawing every box."""
    vi, ir = videos
    sources = ["--vi", str(vi), "--ir", str(ir), "--out", str(out), "--batch-size", "2"]
    draw = ["--draw-threshold", "0"] if name == "detect" else []
    return [name, *extra, *sources, *draw, "--no-progress"]


def read_all(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def test_frames_are_paired_by_index_and_converted_like_image_files(videos):
    vi, ir = videos
    with pytest.warns(UserWarning, match="6 frames.*5 frames"):
        pairs = VideoPairs(vi, ir)
    assert pairs.length == 5 and pairs.fps == pytest.approx(10.0)
    samples = list(pairs)
    assert [s["frame"] for s in samples] == list(range(5))
    assert [s["image_id"] for s in samples] == [f"{i:06d}" for i in range(5)]
    raw_ir, raw_vi = read_all(ir), read_all(vi)
    for sample, frame_ir, frame_vi in zip(samples, raw_ir, raw_vi):
        assert sample["vis"].shape == (3, H, W) and sample["ir"].shape == (1, H, W)
        assert torch.equal(sample["ir"][0], torch.from_numpy(convert_image(frame_ir, 1, "x")))
        assert torch.equal(
            sample["vis"], torch.from_numpy(convert_image(frame_vi, 3, "x")).permute(2, 0, 1)
        )
    # RGB order: the blue background is in the last channel
    background = samples[0]["vis"][:, 40:, 40:].mean(dim=(1, 2))
    assert background[2] > 0.7 and background[0] < 0.1


def test_fuse_two_videos_with_a_classical_method(videos, tmp_path):
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="pairing frames by index"):
        code = main(command("fuse", videos, out, "--method", "average"))
    assert code == 0
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [f"{i:06d}.png" for i in range(5)]
    frames = read_all(out / "fused.mp4")
    assert len(frames) == 5 and frames[0].shape == (H, W, 3)
    # the video holds the PNGs' frames, in order (up to the codec's loss)
    pngs = [cv2.imread(str(out / f"{i:06d}.png")).astype(int) for i in range(5)]
    for i, frame in enumerate(frames):
        errors = [np.abs(frame.astype(int) - png).mean() for png in pngs]
        assert int(np.argmin(errors)) == i and errors[i] < 6, errors
    assert not list(out.glob(".*partial*"))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    cfg = load_config(None, TINY_JOINT)
    model = build_model(cfg.model)
    path = tmp_path_factory.mktemp("video_ckpt") / "tiny.pt"
    save_checkpoint(path, {"model": model.state_dict(), "config": config_to_dict(cfg), "step": 0})
    return path


def test_detect_on_two_videos_one_runner_per_frame_size(
    videos, tiny_checkpoint, tmp_path, monkeypatch
):
    import e2emfd.engine.graphed as graphed

    shapes = []

    class Recording(graphed.GraphedInference):
        def __init__(self, model, *shape, **kwargs):
            shapes.append(shape)
            super().__init__(model, *shape, **kwargs)

    monkeypatch.setattr(graphed, "GraphedInference", Recording)
    out = tmp_path / "det"
    with pytest.warns(UserWarning, match="6 frames.*5 frames"):
        code = main(
            command("detect", videos, out, "--weights", str(tiny_checkpoint), "--cuda-graph")
        )
    assert code == 0
    # 5 frames in batches of 2: the last batch of 1 is filled up, so one runner serves all
    assert shapes == [(2, H, W)]
    images = json.loads((out / "images.json").read_text())["images"]
    assert [(i["frame"], i["file_name"], i["width"], i["height"]) for i in images] == [
        (k, "vi.mp4", W, H) for k in range(5)
    ]
    results = json.loads((out / "detections.json").read_text())
    assert {r["image_id"] for r in results} <= {i["id"] for i in images}
    assert sorted(p.name for p in (out / "drawn").iterdir()) == [f"{i:06d}.png" for i in range(5)]
    frames = read_all(out / "detections.mp4")
    assert len(frames) == 5 and frames[0].shape == (H, W, 3)


def test_video_errors_name_the_file(videos, tmp_path, capsys):
    vi, ir = videos
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video at all")
    folder = tmp_path / "frames"
    folder.mkdir()
    cases = [
        (["--vi", str(broken), "--ir", str(ir)], f"{broken}: cannot be read as a video"),
        (["--vi", str(vi), "--ir", str(folder)], f"{folder}: is a folder but {vi} is a file"),
        (["--vi", str(vi), "--ir", str(tmp_path / "no.mp4")], "no.mp4: no such video file"),
    ]
    for sources, message in cases:
        code = main(
            ["fuse", "--method", "max", *sources, "--out", str(tmp_path / "o"), "--no-progress"]
        )
        err = capsys.readouterr().err.strip()
        assert code == 2 and err.count("\n") == 0 and message in err, err
    other_size = tmp_path / "other.avi"
    writer = cv2.VideoWriter(str(other_size), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (32, 24))
    for _ in range(6):  # as many as the visible video: no length warning here
        writer.write(np.zeros((24, 32, 3), np.uint8))
    writer.release()
    with pytest.raises(ValueError, match=f"{other_size}: frame 0 is 32x24.*must have one size"):
        list(VideoPairs(vi, other_size))
    with pytest.raises(ImageReadError, match="cannot be read as a video"):
        VideoPairs(broken, broken)


def test_video_writer_leaves_no_file_after_an_error(tmp_path):
    path = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError), VideoWriter(path, 10.0) as writer:
        writer.write(np.zeros((H, W), np.float32))
        raise RuntimeError("interrupted")
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="frame 1 is 32x24"), VideoWriter(path, 10.0) as writer:
        writer.write(np.zeros((H, W, 3), np.uint8))
        writer.write(np.zeros((24, 32, 3), np.uint8))
    with pytest.raises(ValueError, match=r"must end in \.mp4 or \.avi"):
        VideoWriter(tmp_path / "x.mov", 10.0)
