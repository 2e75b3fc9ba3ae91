"""Runs the installed ``e2emfd`` console script once per case, in this one process (torch
is imported once instead of once per case): ``python cli_driver.py CASES.json OUT.json``.

Each case is ``{"argv": [...]}``; the script file runs as ``__main__`` with that argv, its
stdout and stderr (file descriptors 1 and 2, so C libraries' messages too) captured. An
exception that escapes it is written to the captured stderr as Python would print it at
exit, traceback included. OUT.json gets ``[{"code", "stdout", "stderr"}]`` per case.
"""

from __future__ import annotations

import json
import os
import runpy
import shutil
import sys
import tempfile
import traceback


def run_case(script: str, argv: list[str]) -> dict:
    saved = os.dup(1), os.dup(2)
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        sys.argv = [script, *argv]
        try:
            runpy.run_path(script, run_name="__main__")
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        except BaseException:  # noqa: BLE001 - what the interpreter would print
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
        out.seek(0)
        err.seek(0)
        return {
            "code": code,
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


def main() -> None:
    spec, out = sys.argv[1:3]  # each case replaces sys.argv
    with open(spec) as fh:
        cases = json.load(fh)
    script = shutil.which("e2emfd", path=os.path.dirname(sys.executable))
    results = [run_case(script, case["argv"]) for case in cases]
    with open(out, "w") as fh:
        json.dump(results, fh)


if __name__ == "__main__":
    main()
