"""Leakage-aware splits for datasets cut from videos.

M3FD's public split (used by the E2E-MFD code) draws frames at random, so adjacent frames
of one scene - nearly the same image - fall on both sides, and test scores measure
memorisation as much as detection. :func:`scene_split` keeps every scene on one side: it
orders the pairs by id (frame order), cuts the sequence where consecutive frames stop
looking alike, and assigns whole scenes to the test side until it holds the requested
fraction of frames.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from e2emfd.data.io import read_image


def thumbnail(path: Path, size: tuple[int, int] = (32, 24)) -> np.ndarray:
    """A small, blurred greyscale signature of an image: (h, w) float32 in [0, 1]."""
    import cv2

    grey = read_image(path, channels=1)
    return cv2.resize(grey, size, interpolation=cv2.INTER_AREA)


def scene_boundaries(thumbs: np.ndarray, threshold: float | None = None) -> list[int]:
    """Indices i where a new scene starts at frame i (0 always), from (N, h, w) signatures.

    The cut threshold defaults to a robust outlier rule on the frame-to-frame differences
    (median + 6 x MAD, at least 0.05): within a scene frames change smoothly, at a cut
    they change all at once.
    """
    if len(thumbs) == 0:
        return []
    diffs = np.abs(np.diff(thumbs, axis=0)).mean(axis=(1, 2))
    if threshold is None and len(diffs):
        median = float(np.median(diffs))
        mad = float(np.median(np.abs(diffs - median)))
        threshold = max(median + 6 * 1.4826 * mad, 0.05)
    return [0] + [i + 1 for i, d in enumerate(diffs) if d > threshold]


def scene_split(
    ids: list[str],
    boundaries: list[int],
    test_fraction: float = 0.3,
    seed: int = 0,
) -> tuple[list[str], list[str], list[list[str]]]:
    """Assign whole scenes to train or test. Returns (train ids, test ids, scenes).

    Scenes are taken in a seeded random order and go to the test side while it holds
    fewer than ``test_fraction`` of the frames, so every scene stays on one side.
    """
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    edges = [*boundaries, len(ids)]
    scenes = [ids[a:b] for a, b in zip(edges[:-1], edges[1:]) if b > a]
    order = np.random.default_rng(seed).permutation(len(scenes))
    target = test_fraction * len(ids)
    test: list[str] = []
    train: list[str] = []
    for index in order:
        scene = scenes[index]
        # take the scene if that brings the test side closer to its target size
        if len(test) + len(scene) / 2 <= target:
            test += scene
        else:
            train += scene
    if not train or not test:
        raise ValueError(
            f"found only {len(scenes)} scene(s) in {len(ids)} frames: cannot put whole scenes "
            "on both sides (lower the cut threshold, or change test_fraction)"
        )
    return sorted(train), sorted(test), scenes
