"""The output folder of a training run, kept to one run: a new run does not write into a
folder that holds files (they would be replaced, and the logs would mix two runs) unless
told to replace the old run, and a run resumed after a kill reads as if it had never
stopped (no step logged twice, no temp file of an interrupted checkpoint write left)."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

# What training writes into its output folder (engine/trainer.py).
RUN_FILES = (
    "config.yaml",
    "config.yaml.tmp",
    "checkpoint_last.pt",
    "train_log.jsonl",
    "metrics.jsonl",
    "tensorboard",
)
LOGS = ("train_log.jsonl", "metrics.jsonl")
# engine/checkpoint.py writes ".{name}.tmp-{pid}" and renames it over {name}.
_TEMP_FILE = re.compile(r"^\..+\.tmp-(\d+)$")


def check_output_dir(out_dir: Path, resume: bool, overwrite: bool) -> None:
    """Refuse to start a new run in a folder that holds files, unless ``resume`` (continue
    its run) or ``overwrite`` (replace it). Every process runs this before any writes."""
    if resume and overwrite:
        raise ValueError(f"{out_dir}: resume and overwrite exclude each other; choose one")
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a folder; output_dir must be a folder")
    if resume or overwrite or not out_dir.is_dir():
        return
    names = sorted(p.name for p in out_dir.iterdir())
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ValueError(
            f"{out_dir}: folder is not empty ({shown}); pass --resume to continue its run, "
            "--overwrite to replace it, or choose a new -o"
        )


def remove_run_files(out_dir: Path) -> None:
    """Delete what an earlier run wrote into ``out_dir`` (other files stay)."""
    if not out_dir.is_dir():
        return
    for path in out_dir.iterdir():
        if path.name in RUN_FILES or _TEMP_FILE.match(path.name):
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def remove_stale_temp_files(out_dir: Path) -> list[Path]:
    """Delete the temp files of checkpoint writes whose writer is gone (a process killed
    mid-write); returns them. A file of a live process is kept: it may be mid-write."""
    removed = []
    for path in out_dir.iterdir() if out_dir.is_dir() else ():
        match = _TEMP_FILE.match(path.name)
        if match and not _writer_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _writer_alive(pid: int) -> bool:
    # This process has not written yet, so a file with its PID is from a dead process
    # whose PID was reused.
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by another user
        return True
    except OSError:
        return False
    return True


def truncate_logs(out_dir: Path, limits: dict[str, int]) -> None:
    """Keep in each log ``name`` only the records with ``step <= limits[name]``, dropping
    the steps that a resumed run will redo and a line cut short by a kill."""
    for name, last in limits.items():
        path = out_dir / name
        if not path.is_file():
            continue
        kept = []
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            step = record.get("step") if isinstance(record, dict) else None
            if not isinstance(step, (int, float)) or step <= last:
                kept.append(line + "\n")
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)


def tidy_for_resume(out_dir: Path, step: int, max_iters: int) -> None:
    """Make ``out_dir`` read as a run that stopped at its checkpoint's ``step``: remove
    stale temp files and the log records of later steps. A run resumed when already
    finished evaluates its last step again, so that evaluation is dropped too."""
    remove_stale_temp_files(out_dir)
    last_eval = step - 1 if step >= max_iters else step
    truncate_logs(out_dir, {"train_log.jsonl": step, "metrics.jsonl": last_eval})
