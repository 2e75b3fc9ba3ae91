"""Time and peak memory of a plain joint training step and of a GMTA step.

    python benchmarks/train_step.py [--device cpu|cuda] [--size 320x256] [--batch 2]
    python benchmarks/train_step.py --train-crop 1.0 0.5   # the fusion task on crops
    python benchmarks/train_step.py --before-after         # the CPU step, issue 20

With ``--train-crop``: instead, the plain joint step of the same model with the fusion
head and loss trained on a random window of each side fraction (``model.fusion.
train_crop``; 1.0 = whole images), timed in interleaved rounds so that a load change on
the machine hits every setting alike; the ratio is to the first value. ``--before-after``
times the same way the step as it was before issue 20 (whole images, torchvision's RoIAlign
backward, one ``F.interpolate`` per region level) against its changes added one by one
(half-side crops, the sparse CPU backward of ``e2emfd.ops.roi_align``, the one-pass
upsampling of ``e2emfd.ops.upsample``).

Targets (issue 6): a GMTA step at most 1.8x the time of a plain step, and at most the
memory of a plain step plus three copies of the shared parameters. The model is the demo's
CPU-sized E2E-MFD (or `--m3fd` for the ResNet-50 M3FD configuration on a GPU).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, median_seconds, mib, peak_memory, print_table  # noqa: E402
from e2emfd.config import load_config  # noqa: E402
from e2emfd.demo.config import DEMO_OVERRIDES  # noqa: E402
from e2emfd.models import build_model  # noqa: E402
from e2emfd.mtl import TaskBalancer  # noqa: E402
from e2emfd.ops import roi_align as roi_align_ops  # noqa: E402

# The CPU step before issue 20 and after each of its changes, in the demo's model:
# name -> (config overrides, sparse CPU RoIAlign backward). train_step.py --before-after
# times them in one process, cpu_processes.py --before-after in the demo's two.
PER_LEVEL = "model.fusion.region_upsampling=interpolate"
ISSUE20_STEPS = {
    "before: whole images, torchvision backward, per-level upsampling": (
        ["model.fusion.train_crop=1.0", PER_LEVEL],
        False,
    ),
    "crops 0.5": (["model.fusion.train_crop=0.5", PER_LEVEL], False),
    "crops 0.5, sparse RoIAlign backward": (["model.fusion.train_crop=0.5", PER_LEVEL], True),
    "after: crops 0.5, sparse backward, one-pass upsampling": (
        ["model.fusion.train_crop=0.5"],
        True,
    ),
}


def ratio_rows(times: dict[str, list[float]], images: int) -> list[list[str]]:
    """Table rows of interleaved timings: median ms, each round, images/s, and the speed-up
    over the first entry."""
    first = statistics.median(next(iter(times.values())))
    rows = []
    for name, each in times.items():
        seconds = statistics.median(each)
        rows.append(
            [
                name,
                f"{seconds * 1000:.1f}",
                " / ".join(f"{t * 1000:.0f}" for t in each),
                f"{images / seconds:.2f}",
                f"{first / seconds:.2f}x",
            ]
        )
    return rows


def synthetic_batch(batch: int, width: int, height: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    targets = []
    for _ in range(batch):
        xy = torch.rand(6, 2, generator=g) * torch.tensor([width * 0.7, height * 0.7])
        wh = 16 + torch.rand(6, 2, generator=g) * torch.tensor([width * 0.25, height * 0.25])
        boxes = torch.cat([xy, xy + wh], 1)
        targets.append(
            {"boxes": boxes.to(device), "labels": torch.randint(0, 6, (6,), generator=g).to(device)}
        )
    return {
        "vis": torch.rand(batch, 3, height, width, generator=g).to(device),
        "ir": torch.rand(batch, 1, height, width, generator=g).to(device),
        "image_sizes": torch.tensor([[height, width]] * batch, device=device),
        "targets": targets,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", default="320x256")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--m3fd", action="store_true", help="ResNet-50 M3FD configuration (GPU)")
    parser.add_argument(
        "--train-crop",
        type=float,
        nargs="+",
        help="compare plain joint steps at these model.fusion.train_crop values",
    )
    parser.add_argument(
        "--before-after",
        action="store_true",
        help="the CPU step before issue 20 against its two changes, alone and together",
    )
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    if args.before_after:
        compare_steps(args, ISSUE20_STEPS)
        return
    if args.train_crop:
        crops = args.train_crop
        compare_steps(
            args,
            {f"train_crop {c:g}": ([f"model.fusion.train_crop={c}"], True) for c in crops},
        )
        return
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    if args.m3fd:
        cfg = load_config(
            Path(__file__).resolve().parents[1] / "configs" / "m3fd.yaml",
            ["model.backbone.pretrained="],
        )
    else:
        cfg = load_config(None, DEMO_OVERRIDES)
    model = build_model(cfg.model).to(device).train()
    batch = synthetic_batch(args.batch, width, height, device)
    shared = model.shared_parameters()
    shared_bytes = sum(p.numel() * p.element_size() for p in shared)
    amp = device.type == "cuda"

    def step(method: str):
        balancer = TaskBalancer(method, shared, every=1)

        def run():
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                out = model(batch, feature_leaves=method != "sum")
            losses = {k: v.float() for k, v in out["losses"].items()}
            balancer.backward(losses, step=0, features=out.get("features"))

        return run

    rows, results = [], {}
    for method in ("sum", "gmta"):
        fn = step(method)
        seconds = median_seconds(fn, device, repeats=args.repeats)
        model.zero_grad(set_to_none=True)
        with peak_memory(device) as mem:
            fn()
        results[method] = (seconds, mem["bytes"])
        name = "plain joint step (sum)" if method == "sum" else "GMTA step"
        rows.append(
            [name, f"{seconds * 1000:.1f}", f"{args.batch / seconds:.2f}", mib(mem["bytes"])]
        )
    (t_sum, m_sum), (t_gmta, m_gmta) = results["sum"], results["gmta"]
    rows.append(
        [
            "GMTA / plain",
            f"{t_gmta / t_sum:.2f}x (target <= 1.8x)",
            "",
            f"+{(m_gmta - m_sum) / shared_bytes:.2f} shared copies (target <= 3)",
        ]
    )
    print(
        f"# train step: {device_name(device)}, batch {args.batch}, {width}x{height}, "
        f"shared parameters {mib(shared_bytes)}, torch {torch.__version__}"
    )
    print_table(["step", "ms", "images/s", "peak memory"], rows)


def compare_steps(args: argparse.Namespace, variants: dict[str, tuple[list, bool]]) -> None:
    """Plain joint steps of the demo model, one per variant ``name: (config overrides,
    sparse CPU RoIAlign backward)``, in interleaved rounds."""
    device = torch.device(args.device)
    width, height = (int(v) for v in args.size.split("x"))
    batch = synthetic_batch(args.batch, width, height, device)
    steps = {}
    for name, (overrides, sparse) in variants.items():
        torch.manual_seed(0)
        cfg = load_config(None, [*DEMO_OVERRIDES, *overrides])
        model = build_model(cfg.model).to(device).train()

        def run(model=model, sparse=sparse):
            roi_align_ops.SPARSE_CPU_BACKWARD = sparse
            model.zero_grad(set_to_none=True)
            torch.manual_seed(0)
            out = model(batch)
            sum(out["losses"].values()).backward()

        steps[name] = run
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(args.rounds):
        for name, run in steps.items():
            times[name].append(median_seconds(run, device, repeats=args.repeats))
    roi_align_ops.SPARSE_CPU_BACKWARD = True
    rows = ratio_rows(times, args.batch)
    print(
        f"# plain joint step: {device_name(device)}, demo model, batch {args.batch}, "
        f"{width}x{height}, {args.rounds} rounds x median of {args.repeats}, "
        f"torch {torch.__version__}"
    )
    print_table(["step", "ms", "each round ms", "images/s", "speed-up"], rows)


if __name__ == "__main__":
    main()
