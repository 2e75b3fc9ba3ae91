"""The ``e2emfd`` command line.

Every module in :mod:`e2emfd.cli` that defines ``register(subparsers)`` is a subcommand.
``register`` adds its parser and sets ``func`` to a function taking the parsed arguments
and returning an exit code. Heavy imports happen inside that function, so ``--help``
stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys

import e2emfd
import e2emfd.cli as cli_pkg


class CommandError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="e2emfd",
        description="End-to-end infrared-visible image fusion and object detection (E2E-MFD).",
    )
    parser.add_argument("--version", action="version", version=f"e2emfd {e2emfd.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(cli_pkg.__path__), key=lambda m: m.name):
        if info.name == "main":
            continue
        module = importlib.import_module(f"{cli_pkg.__name__}.{info.name}")
        if hasattr(module, "register"):
            module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops filling a positional list (the key=value overrides) at the first
    # option, so `train cfg.yaml --resume a=1` would leave `a=1` over: take it back.
    if (
        extra
        and hasattr(args, "overrides")
        and all("=" in e and not e.startswith("-") for e in extra)
    ):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 1
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (CommandError, OSError, ValueError) as exc:
        # Library errors are written to be read: one line that names the file and the
        # problem. E2EMFD_DEBUG=1 shows the traceback instead.
        if os.environ.get("E2EMFD_DEBUG"):
            raise
        message = " ".join(_describe(exc).split())
        print(f"e2emfd {args.command}: error: {message}", file=sys.stderr)
        return 2


def _describe(exc: Exception) -> str:
    """The message of a user-facing error. An OSError raised by the system (permission
    denied, no space left, a file where a folder should be) says it as "path: problem"
    instead of Python's "[Errno 13] Permission denied: 'path'"."""
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
        return f"{' -> '.join(paths)}: {exc.strerror}" if paths else exc.strerror
    return str(exc)


if __name__ == "__main__":
    sys.exit(main())
