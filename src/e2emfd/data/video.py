"""Infrared-visible video pairs: frames paired by index and read the way the image
readers read files, and results written back as a video.

Any container and codec the installed OpenCV decodes works (its FFmpeg build here reads
mp4, avi, mkv, ...). Visible frames become RGB, infrared frames one grey channel (a
thermal video usually stores grey as three equal channels), exactly as
:func:`e2emfd.data.io.read_image` converts a decoded image file.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import cv2
import numpy as np

from e2emfd.data.io import ImageReadError, convert_image

# What OpenCV's FFmpeg writer can encode without a hardware or licensed encoder.
_CODECS = {".mp4": "mp4v", ".avi": "MJPG"}
_DEFAULT_FPS = 25.0


def is_video_pair(vis: str | Path, ir: str | Path) -> bool:
    """True for two video files, False for two folders; one of each is an error."""
    vis, ir = Path(vis), Path(ir)
    kinds = [p.is_file() for p in (vis, ir)]
    if kinds[0] != kinds[1] and vis.exists() and ir.exists():
        video, folder = (vis, ir) if kinds[0] else (ir, vis)
        raise ValueError(
            f"{folder}: is a folder but {video} is a file; give two videos or two folders"
        )
    return kinds[0] or (kinds[1] and not vis.exists())


def _open(path: Path) -> cv2.VideoCapture:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video file")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ImageReadError(
            f"{path}: cannot be read as a video (not a video, or a codec this OpenCV cannot decode)"
        )
    return capture


class VideoPairs:
    """The frames of a visible and an infrared video, paired by index, as sample dicts
    (:func:`e2emfd.data.datasets.make_sample`, ``image_id`` the zero-padded frame index,
    plus ``frame``), transformed by ``transform(sample, None)`` if given.

    The shorter video decides the length; videos of different lengths give a warning.
    ``length`` is the frame count the containers report (None if they do not), ``fps``
    the visible video's frame rate (25 if it has none).
    """

    def __init__(
        self,
        vis_path: str | Path,
        ir_path: str | Path,
        transform: Callable[[dict, object], dict] | None = None,
    ) -> None:
        self.vis_path, self.ir_path = Path(vis_path), Path(ir_path)
        self.transform = transform
        counts = []
        for path in (self.vis_path, self.ir_path):
            capture = _open(path)
            counts.append(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)))
            if path == self.vis_path:
                self.fps = capture.get(cv2.CAP_PROP_FPS) or _DEFAULT_FPS
            capture.release()
        self.length = min(counts) if min(counts) > 0 else None
        self._warned = False
        if min(counts) > 0 and counts[0] != counts[1]:
            self._warn_lengths(*counts)

    def _warn_lengths(self, vis_frames: int | str, ir_frames: int | str) -> None:
        self._warned = True
        warnings.warn(
            f"{self.vis_path}: {vis_frames} frames, {self.ir_path}: {ir_frames} frames; "
            "pairing frames by index up to the end of the shorter one",
            stacklevel=3,
        )

    def __iter__(self) -> Iterator[dict]:
        from e2emfd.data.datasets import make_sample

        vis_video, ir_video = _open(self.vis_path), _open(self.ir_path)
        index = 0
        try:
            while True:
                vis_ok, vis = vis_video.read()
                ir_ok, ir = ir_video.read()
                if not (vis_ok and ir_ok):
                    if vis_ok != ir_ok and not self._warned:  # lengths unknown or misreported
                        more = f"more than {index}"
                        self._warn_lengths(*((more, index) if vis_ok else (index, more)))
                    break
                frame = f"{self.vis_path} frame {index}"
                vis = convert_image(vis, 3, frame)
                ir = convert_image(ir, 1, f"{self.ir_path} frame {index}")
                if vis.shape[:2] != ir.shape[:2]:
                    raise ValueError(
                        f"{self.ir_path}: frame {index} is {ir.shape[1]}x{ir.shape[0]}, its "
                        f"visible partner in {self.vis_path} {vis.shape[1]}x{vis.shape[0]}; "
                        "the two videos must have one size"
                    )
                sample = make_sample(vis, ir, f"{index:06d}", self.vis_path, self.ir_path)
                sample["frame"] = index
                yield sample if self.transform is None else self.transform(sample, None)
                index += 1
        finally:
            vis_video.release()
            ir_video.release()
        if index == 0:
            raise ImageReadError(f"{self.vis_path}: no frame could be decoded")


def pair_source(
    vis: str | Path, ir: str | Path, transform=None
) -> tuple[Iterable[dict], int | None, VideoPairs | None]:
    """The samples of ``--vi``/``--ir`` given as two folders or two videos: (samples,
    their number if known, the :class:`VideoPairs` or None for folders)."""
    if is_video_pair(vis, ir):
        video = VideoPairs(vis, ir, transform)
        return video, video.length, video
    from e2emfd.data.datasets import PairDataset

    dataset = PairDataset.from_folders(
        vis_dir=str(Path(vis).resolve()), ir_dir=str(Path(ir).resolve()), transform=transform
    )
    return (dataset[i] for i in range(len(dataset))), len(dataset), None


class VideoWriter:
    """Frames into a video file (``.mp4``: MPEG-4 part 2, ``.avi``: Motion JPEG), opened
    at the first frame, which sets the size. The file is written under a temporary name
    and renamed by :meth:`close`, so a run that fails leaves no half video.

    ``write`` takes (H, W) grey or (H, W, 3) RGB frames, float in [0, 1] or uint8.
    """

    def __init__(self, path: str | Path, fps: float) -> None:
        self.path = Path(path)
        if self.path.suffix.lower() not in _CODECS:
            raise ValueError(f"{self.path}: a video must end in {' or '.join(_CODECS)}")
        self.fps = fps
        self.frames = 0
        self._partial = self.path.with_name(f".{self.path.stem}.partial{self.path.suffix}")
        self._writer: cv2.VideoWriter | None = None
        self._size: tuple[int, int] | None = None

    def write(self, image: np.ndarray) -> None:
        if image.dtype != np.uint8:
            image = np.clip(np.rint(np.asarray(image, np.float32) * 255.0), 0, 255)
            image = image.astype(np.uint8)
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        else:
            image = np.ascontiguousarray(image[:, :, ::-1])
        size = (image.shape[1], image.shape[0])
        if self._writer is None:
            codec = _CODECS[self.path.suffix.lower()]
            self._writer = cv2.VideoWriter(
                str(self._partial), cv2.VideoWriter_fourcc(*codec), self.fps, size
            )
            if not self._writer.isOpened():
                raise OSError(
                    f"{self.path}: OpenCV cannot write a {size[0]}x{size[1]} {codec} video here"
                )
            self._size = size
        elif size != self._size:
            raise ValueError(
                f"{self.path}: frame {self.frames} is {size[0]}x{size[1]}, the video "
                f"{self._size[0]}x{self._size[1]}"
            )
        self._writer.write(image)
        self.frames += 1

    def close(self) -> None:
        """Finish the file and give it its name (nothing is written for no frames)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            self._partial.replace(self.path)

    def discard(self) -> None:
        """Drop what was written (after an error)."""
        if self._writer is not None:
            self._writer.release()
            self._writer = None
        self._partial.unlink(missing_ok=True)

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.discard()
