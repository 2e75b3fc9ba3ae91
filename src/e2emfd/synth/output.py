"""The output folder of a synthetic-dataset generator: written only when new or empty, or,
with ``overwrite``, over a dataset the same generator wrote (whose files alone are deleted:
notes or split files added later stay)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
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
