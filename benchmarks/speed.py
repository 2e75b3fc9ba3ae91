"""End-to-end speed of E2E-MFD: inference and training throughput, peak memory, achieved
TFLOP/s as a fraction of the device's measured matmul peak.

    python benchmarks/speed.py                # CUDA if available, else CPU
    python benchmarks/speed.py --device cpu

On CUDA: the M3FD configuration (ResNet-50-FPN, CFDP with 500 proposals and 6 stages,
1 DDIM step) at 1024x768, bf16 autocast, channels_last; ``--cuda-graph`` adds the same
inference rows replayed from CUDA graphs (e2emfd.engine.graphed), training rows come at
batch 1 and 8. On CPU: the demo's CPU-sized
model at 320x256 (fp32), plus fusion-only inference at 640x512. FLOPs are counted with
torch.utils.flop_counter (matmuls and convolutions).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, median_seconds, mib, peak_memory, print_table  # noqa: E402
from e2emfd.config import load_config  # noqa: E402
from e2emfd.demo.config import DEMO_OVERRIDES  # noqa: E402
from e2emfd.engine.graphed import GraphedInference  # noqa: E402
from e2emfd.models import build_model  # noqa: E402
from e2emfd.mtl import TaskBalancer  # noqa: E402
from train_step import synthetic_batch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def matmul_peak_tflops(device: torch.device) -> float:
    n = 8192 if device.type == "cuda" else 1024
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, repeats=10, warmup=3)
    return 2 * n**3 / seconds / 1e12


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def profile_inference(infer, device) -> None:
    """Where one batch-1 inference spends its time (CPU launch overhead vs device kernels)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    for _ in range(3):
        infer()
    with profile(activities=activities) as prof:
        infer()
        if device.type == "cuda":
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=15, max_name_column_width=50))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--compile",
        nargs="?",
        const="default",
        choices=["default", "reduce-overhead", "max-autotune"],
        help="torch.compile the backbone, the fusion head and each detection stage, in this "
        "mode (reduce-overhead: CUDA graphs, for the launch-bound batch-1 inference)",
    )
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="also time inference replayed from one CUDA graph per workload (the whole "
        "network up to NMS; with --compile the compiled parts are captured too)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="also print the top operators of one inference"
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if args.cuda_graph and not cuda:
        parser.error("--cuda-graph needs --device cuda")
    if args.cuda_graph and args.compile == "reduce-overhead":
        parser.error("--compile reduce-overhead makes CUDA graphs of its own; use --compile")
    if cuda:
        torch.backends.cudnn.benchmark = True  # fixed shapes: let cuDNN pick its fastest
        cfg = load_config(ROOT / "configs" / "m3fd.yaml", ["model.backbone.pretrained="])
        width, height, batches = 1024, 768, (1, 8)
    else:
        # The demo's model at the M3FD inference setting (1 DDIM step, training proposals).
        one_step = ["model.detection.sampling_steps=1", "model.detection.num_proposals_test=0"]
        cfg = load_config(None, DEMO_OVERRIDES + one_step)
        width, height, batches = 320, 256, (1, 4)
    model = build_model(cfg.model).to(device)
    if args.compile:
        model.backbone = torch.compile(model.backbone, mode=args.compile)
        model.fusion = torch.compile(model.fusion, mode=args.compile)
        stages = model.detector.stages
        for i, stage in enumerate(stages):
            stages[i] = torch.compile(stage, mode=args.compile)
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16)
        if cuda
        else torch.autocast("cpu", enabled=False)
    )
    peak = matmul_peak_tflops(device)
    rows = []

    def measure(
        name: str, batch_size: int, size: tuple[int, int], fn, train: bool = False, eager=None
    ) -> None:
        """``eager``: the same work without the CUDA graph, for the FLOP count (a graph
        replay dispatches no operators the counter could see)."""
        model.train(train)
        seconds = median_seconds(fn, device, repeats=args.repeats, warmup=3)
        with peak_memory(device) as mem:
            fn()
        flops = count_flops(eager or fn)
        tflops = flops / seconds / 1e12
        rows.append(
            [
                name,
                str(batch_size),
                f"{size[0]}x{size[1]}",
                f"{seconds * 1000:.1f}",
                f"{batch_size / seconds:.1f}",
                mib(mem["bytes"]),
                f"{tflops:.2f}",
                f"{100 * tflops / peak:.0f}%",
            ]
        )
        # Progress on stderr, so that a run cut short still leaves its figures.
        print(" | ".join(rows[-1]), file=sys.stderr, flush=True)

    def measure_graphed(name: str, batch: dict, eager, **heads) -> None:
        """The inference of ``eager`` replayed from a CUDA graph; a failed capture is
        reported and the table goes on."""
        b = batch["vis"].shape[0]
        try:
            runner = GraphedInference(model, b, height, width, **heads)
            fn = lambda: runner(batch["vis"], batch["ir"])  # noqa: E731
            measure(f"{name}, CUDA graph", b, (width, height), fn, eager=eager)
        except Exception as error:  # noqa: BLE001 - the eager rows are still worth printing
            print(f"CUDA graph of '{name}' failed: {type(error).__name__}: {error}", flush=True)

    for b in batches:
        batch = synthetic_batch(b, width, height, device)

        def infer(batch=batch):
            with torch.no_grad(), autocast:
                out = model(batch)
            return out["fused"], out["detections"]

        measure("inference: fused image + detections", b, (width, height), infer)
        if args.cuda_graph:
            measure_graphed("inference: fused image + detections", batch, infer)

    batch = synthetic_batch(1, width, height, device)

    def fuse_only():
        with torch.no_grad(), autocast:
            return model.fuse(batch["vis"], batch["ir"])

    def detect_only():
        with torch.no_grad(), autocast:
            return model.detect(batch["vis"], batch["ir"])

    measure("inference: fusion only", 1, (width, height), fuse_only)
    measure("inference: detection only", 1, (width, height), detect_only)
    if args.cuda_graph:
        measure_graphed("inference: fusion only", batch, fuse_only, detection=False)
        measure_graphed("inference: detection only", batch, detect_only, fusion=False)
    if not cuda:
        big = synthetic_batch(1, 640, 512, device)

        def fuse_640():
            with torch.no_grad():
                return model.fuse(big["vis"], big["ir"])

        measure("inference: fusion only", 1, (640, 512), fuse_640)

    for b in batches if cuda else batches[:1]:
        train_batch = synthetic_batch(b, width, height, device)
        for method, name in (("sum", "training: joint step"), ("gmta", "training: GMTA step")):
            balancer = TaskBalancer(method, model.shared_parameters(), every=1)

            def train_step(balancer=balancer, train_batch=train_batch):
                model.zero_grad(set_to_none=True)
                with autocast:
                    out = model(train_batch, feature_leaves=balancer.balances(0))
                losses = {k: v.float() for k, v in out["losses"].items()}
                balancer.backward(losses, step=0, features=out.get("features"))

            measure(name, b, (width, height), train_step, train=True)

    dtype = "bf16 autocast" if cuda else "fp32"
    print(
        f"# speed: {device_name(device)}, {dtype}, matmul peak {peak:.1f} TFLOP/s, "
        f"torch {torch.__version__}, "
        f"backbone R{cfg.model.backbone.depth}/w{cfg.model.backbone.width}, "
        f"{cfg.model.detection.num_proposals} proposals, {cfg.model.detection.num_stages} stages, "
        f"{cfg.model.detection.sampling_steps} DDIM step"
        + (f", torch.compile mode {args.compile}" if args.compile else "")
    )
    print_table(
        ["workload", "batch", "size", "ms/iter", "images/s", "peak memory", "TFLOP/s", "of peak"],
        rows,
    )
    if args.profile:
        model.eval()
        if args.cuda_graph:
            # kernels of one replay: what the GPU itself spends once launches cost nothing
            runner = GraphedInference(model, 1, height, width)
            profile_inference(lambda: runner(batch["vis"], batch["ir"]), device)
        else:

            def infer_one():
                with torch.no_grad(), autocast:
                    model(batch)

            profile_inference(infer_one, device)


if __name__ == "__main__":
    main()
