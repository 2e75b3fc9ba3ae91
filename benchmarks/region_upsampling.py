"""The fusion head's region maps brought to full resolution: one matrix product for all
levels (``model.fusion.region_upsampling=matmul``, the default) against one
``F.interpolate`` per level and their sum (``interpolate``, what ONNX export uses).

    python benchmarks/region_upsampling.py                 # CUDA if available, else CPU
    python benchmarks/region_upsampling.py --device cpu --rounds 5

Times ``ORPPTHead.regions_at`` (the region branches, their 1x1 reduction, upsampling, sum,
bias and ReLU) in interleaved rounds. CUDA: the M3FD head (3 levels of 256 channels,
hidden 128) at 1024x768, bf16 autocast, channels_last, batch 1 and 8, inference and
forward + backward. CPU: the demo's head (64 channels, hidden 16) at 320x256, batch 2,
whole-frame inference and training on the demo's half-side window.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, median_seconds, print_table  # noqa: E402
from e2emfd.config import FusionConfig  # noqa: E402
from e2emfd.models.orppt import ORPPTHead  # noqa: E402

MODES = ("interpolate", "matmul")


def workloads(device: torch.device):
    """(name, batch, in_channels, FusionConfig kwargs, (H, W), window, train) per row."""
    if device.type == "cuda":
        m3fd = {"hidden": 128}
        return [
            (f"{what}, batch {b}", b, 256, m3fd, (768, 1024), None, train)
            for b in (1, 8)
            for what, train in (("inference", False), ("forward + backward", True))
        ]
    demo = {"pixel_channels": 4, "hidden": 16}
    return [
        ("inference, whole frame", 2, 64, demo, (256, 320), None, False),
        ("training, half-side window", 2, 64, demo, (256, 320), (64, 80, 192, 240), True),
    ]


def region_call(head, feats, size, window, train: bool, device: torch.device):
    amp = device.type == "cuda"

    def run():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
            with torch.set_grad_enabled(train):
                out = head.regions_at(feats, size, window)
        if train:
            out.float().sum().backward()

    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    device = torch.device(args.device)
    rows = []
    for name, batch, channels, kwargs, size, window, train in workloads(device):
        torch.manual_seed(0)
        feats = {
            f"p{level}": torch.randn(
                batch, channels, size[0] >> level, size[1] >> level, device=device
            ).contiguous(memory_format=torch.channels_last)
            for level in (2, 3, 4)
        }
        calls = {}
        for mode in MODES:
            torch.manual_seed(1)
            cfg = FusionConfig(region_upsampling=mode, **kwargs)
            head = ORPPTHead(cfg, in_channels=channels).to(device).train(train)
            head.to(memory_format=torch.channels_last)
            calls[mode] = region_call(head, feats, size, window, train, device)
        times = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                times[mode].append(median_seconds(calls[mode], device, repeats=args.repeats))
        before, after = (statistics.median(times[mode]) for mode in MODES)
        rows.append(
            [
                name,
                f"{before * 1000:.2f}",
                f"{after * 1000:.2f}",
                f"{before / after:.2f}x",
            ]
        )
    print(
        f"# region maps to full resolution: {device_name(device)}, medians of {args.rounds} "
        f"interleaved rounds x {args.repeats} calls, torch {torch.__version__}"
    )
    print_table(["workload", "interpolate ms", "matmul ms", "speed-up"], rows)


if __name__ == "__main__":
    main()
