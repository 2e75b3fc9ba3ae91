"""The output folder of a synthetic-dataset generator: written only when new or empty, or,
with ``overwrite``, over a dataset the same generator wrote (whose files alone are deleted:
notes or split files added later stay)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path


def image_ids(meta: dict) -> list[str]:
    """The image ids a meta.json lists; an id that is not a plain file name (a hand-edited
    file) is skipped, so that nothing outside the dataset's folders can be deleted."""
    entries = meta.get("images", [])
    ids = [str(e.get("id", "")) for e in entries if isinstance(e, dict)]
    return [i for i in ids if i and Path(i).name == i]


def prepare_out(
    out: Path,
    overwrite: bool,
    generator: str,
    layout: Sequence[str],
    written_files: Callable[[Path, dict], list[Path]],
) -> None:
    """Refuse a folder holding anything but a dataset of ``generator`` (whose top-level
    entries are ``layout``); with ``overwrite``, delete that dataset's files
    (``written_files(out, meta)``) first."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    if not out.exists() or not any(out.iterdir()):
        return
    foreign = sorted(p.name for p in out.iterdir() if p.name not in layout)
    if foreign:
        raise ValueError(
            f"{out}: folder is not empty and holds files that are not a synthetic dataset "
            f"({', '.join(foreign[:3])}); choose an empty or new folder"
        )
    if not overwrite:
        raise ValueError(f"{out}: folder already holds a dataset; pass --overwrite to replace it")
    try:
        meta = json.loads((out / "meta.json").read_text())
        written_by = meta.get("generator")
    except (OSError, ValueError, AttributeError):
        written_by = None
    if written_by != generator:
        raise ValueError(
            f"{out}: not written by {generator} (no valid meta.json); refusing to overwrite"
        )
    for path in written_files(out, meta):
        path.unlink(missing_ok=True)


def check_request(num: int, test_fraction: float, width: int, height: int) -> None:
    """The arguments every generator takes, checked before anything is written."""
    if num < 1:
        raise ValueError(f"num must be at least 1, got {num}")
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if width < 64 or height < 64:
        raise ValueError(f"image size {width}x{height} is too small (min 64x64)")


def numbered(num: int, progress: bool) -> Iterator[tuple[int, str]]:
    """``(index, image id)`` of ``num`` images, ids zero-padded to a common width (at
    least 5 digits), with a progress bar."""
    from tqdm import tqdm

    digits = max(5, len(str(num - 1)))
    for index in tqdm(range(num), desc="synth", unit="pair", disable=not progress):
        yield index, f"{index:0{digits}d}"


def write_meta(
    out: Path,
    generator: str,
    version: int,
    *,
    seed: int,
    num: int,
    size: tuple[int, int],
    test_fraction: float,
    images: list[dict],
    **details,
) -> None:
    """Write ``out/meta.json``: what made the dataset (generator, version, seed, count,
    size, split), the generator's own ``details`` and one record per image."""
    meta = {
        "generator": generator,
        "format_version": version,
        "seed": seed,
        "num": num,
        "size": list(size),
        "test_fraction": test_fraction,
        **details,
        "images": images,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
