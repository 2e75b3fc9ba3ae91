"""Checks of output paths, made before a command does any work: an output that cannot be
written is one line naming it, not a traceback after minutes of computing."""

from __future__ import annotations

import os
from pathlib import Path

from e2emfd.cli.main import CommandError


def _nearest_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def _check_can_create(path: Path, option: str) -> None:
    """``path`` does not exist yet: its nearest existing ancestor must be a folder this
    process may write into."""
    base = _nearest_existing(path.parent)
    if not base.is_dir():
        raise CommandError(f"{path}: {base} is a file, not a folder; choose another {option}")
    if not os.access(base, os.W_OK | os.X_OK):
        raise CommandError(f"{path}: cannot create it, {base} is read-only (permission denied)")


def output_file(path: str | Path, option: str = "--out") -> Path:
    """An output file about to be written (replaced if it exists)."""
    path = Path(path)
    if path.is_dir():
        raise CommandError(f"{path}: is a folder; {option} must name a file")
    if path.exists():
        if not os.access(path, os.W_OK) or not os.access(path.parent, os.W_OK | os.X_OK):
            raise CommandError(f"{path}: cannot replace it (permission denied)")
    else:
        _check_can_create(path, option)
    return path


def output_folder(path: str | Path, option: str = "--out") -> Path:
    """An output folder, existing or to be created."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CommandError(f"{path}: exists and is not a folder; {option} must be a folder")
    if path.is_dir():
        if not os.access(path, os.W_OK | os.X_OK):
            raise CommandError(f"{path}: folder is read-only (permission denied)")
    else:
        _check_can_create(path, option)
    return path
