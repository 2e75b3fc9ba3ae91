"""End to end: the ``e2emfd eval-fusion`` command against the CDDFuse evaluator.

Both run as a user runs them: a fresh process, timed from its start to its exit
(interpreter start, imports, reading the images, all metrics, output), on the pairs of
one tno42 method (42 pairs): the command once per ``--workers`` count (all 13 metrics,
python convention), and the evaluator (``cddfuse_evaluator.py``, its 12 metrics, one
process). The runs are interleaved - each round runs every configuration once - and the
table gives the median over the rounds and the evaluator's median divided by each
command's. On a shared machine the absolute seconds move with the load; ratios of runs
made side by side move much less. The values of the last round are compared, as a check
that both did the same work.

Needs scikit-image and scikit-learn (the evaluator's libraries).

    python benchmarks/eval_fusion_command.py [--data PATH] [--method U2Fusion]
        [--workers 1,2] [--repeats 3] [--pairs N] [--compare-src TREE]

``--compare-src`` adds the command as another source tree has it (e.g. ``git archive`` of
an older commit unpacked in TREE; its ``src`` goes first on the Python path), in the same
rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import print_table  # noqa: E402

DEFAULT_DATA = HERE.parents[1] / "shared" / "data" / "tno42"


def command_prefix() -> list[str]:
    """The installed ``e2emfd`` console script of this interpreter's environment."""
    script = Path(sys.executable).with_name("e2emfd")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "e2emfd"]


def subset(data: Path, method: str, count: int, into: Path) -> Path:
    """A copy of the first ``count`` pairs of ``method`` in tno42's layout."""
    stems = sorted(p.name for p in (data / "fused" / method).glob("*.png"))[:count]
    for sub in ("ir", "vi", f"fused/{method}"):
        (into / sub).mkdir(parents=True)
        for name in stems:
            shutil.copy(data / sub / name, into / sub / name)
    return into


def timed(argv: list[str], env: dict | None) -> float:
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return seconds


def largest_difference(command_json: Path, evaluator_json: Path) -> tuple[float, str]:
    """Largest relative difference over the metrics both compute, and where."""
    ours = json.loads(command_json.read_text())["images"]
    theirs = json.loads(evaluator_json.read_text())
    worst = (0.0, "-")
    for name, values in theirs.items():
        for metric, value in values.items():
            got = ours[Path(name).stem][metric]
            if got is not None:
                rel = abs(got - value) / max(abs(value), 1e-12)
                worst = max(worst, (rel, f"{metric} of {name}"))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="tno42 folder")
    parser.add_argument("--method", default="U2Fusion", help="fused/<method> to evaluate")
    parser.add_argument("--workers", default="1,2", help="--workers counts of the command")
    parser.add_argument("--repeats", type=int, default=3, help="rounds (median)")
    parser.add_argument("--pairs", type=int, help="only the first N pairs (a quick check)")
    parser.add_argument("--compare-src", type=Path, help="also time the command of this tree")
    args = parser.parse_args()
    if not (args.data / "fused" / args.method).is_dir():
        raise SystemExit(f"{args.data / 'fused' / args.method}: not found")
    workers = [int(w) for w in args.workers.split(",")]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = subset(args.data, args.method, args.pairs, tmp / "data") if args.pairs else args.data
        fused = data / "fused" / args.method
        pairs = len(list(fused.glob("*.png")))
        folders = ["--ir", str(data / "ir"), "--vi", str(data / "vi")]
        trees = {"": None}
        if args.compare_src:
            src = str(args.compare_src.resolve() / "src")
            trees[f" ({args.compare_src.name})"] = {**os.environ, "PYTHONPATH": src}
        runs = {
            f"e2emfd eval-fusion --workers {w}{tree}": (
                [
                    *command_prefix(),
                    *("eval-fusion", *folders, "--fused", str(fused), "--workers", str(w)),
                    *("--no-progress", "--out", str(tmp / "command.json")),
                ],
                env,
            )
            for tree, env in trees.items()
            for w in workers
        }
        evaluator = "CDDFuse evaluator (1 process)"
        runs[evaluator] = (
            [
                sys.executable,
                str(HERE / "cddfuse_evaluator.py"),
                *(*folders, "--fused", str(fused), "--out", str(tmp / "evaluator.json")),
            ],
            None,
        )
        load_before = os.getloadavg()
        seconds: dict[str, list[float]] = {name: [] for name in runs}
        for _ in range(args.repeats):
            for name, (argv, env) in runs.items():
                seconds[name].append(timed(argv, env))
        load_after = os.getloadavg()
        rel, where = largest_difference(tmp / "command.json", tmp / "evaluator.json")

    medians = {name: statistics.median(times) for name, times in seconds.items()}
    rows = [
        [
            name,
            f"{medians[name]:.2f}",
            " / ".join(f"{t:.2f}" for t in seconds[name]),
            f"{medians[name] / pairs:.3f}",
            f"{medians[evaluator] / medians[name]:.1f}x",
        ]
        for name in runs
    ]
    print(
        f"{pairs} pairs of tno42/{args.method}, python convention, {args.repeats} interleaved "
        f"rounds; {os.cpu_count()} CPUs, load average {load_before[0]:.1f} before, "
        f"{load_after[0]:.1f} after"
    )
    print_table(["run", "median s", "each round s", "s/pair", "evaluator / run"], rows)
    print(f"values: largest relative difference command vs evaluator {rel:.1e} ({where})")


if __name__ == "__main__":
    main()
