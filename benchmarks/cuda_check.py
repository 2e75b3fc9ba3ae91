"""Checks of the CUDA path against the CPU, and of bf16 autocast against fp32.

    python benchmarks/cuda_check.py [--weights demo_out/run/checkpoint_last.pt]

1. CPU vs CUDA, fp32, same weights and batch: fused images (max abs difference, target
   1e-3) and the detection head's refinement of the same proposals (logits and boxes).
2. CUDA bf16 autocast vs fp32 on a fixed input: fused pixels (target 1e-2) and the
   detections above score 0.5 (--score; same count, labels, boxes within IoU 0.9). Needs trained
   weights (--weights) for there to be confident detections; without them only the
   pixels are compared.
3. Inference replayed from a CUDA graph (e2emfd.engine.graphed) vs the eager model, bf16,
   same starting boxes: fused pixels and the same detections above --score.
Prints one table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torchvision.ops import box_iou

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, print_table  # noqa: E402
from e2emfd.config import config_from_dict, load_config  # noqa: E402
from e2emfd.demo.config import DEMO_OVERRIDES  # noqa: E402
from e2emfd.engine.graphed import GraphedInference  # noqa: E402
from e2emfd.models import build_model  # noqa: E402
from train_step import synthetic_batch  # noqa: E402


def load(weights: str | None):
    if not weights:
        return build_model(load_config(None, DEMO_OVERRIDES).model)
    state = torch.load(weights, map_location="cpu", weights_only=True)
    cfg = config_from_dict(state["config"])
    model = build_model(cfg.model)
    model.load_state_dict(state["model"])
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--weights", help="a trained checkpoint (e.g. the demo's)")
    parser.add_argument(
        "--batch-file",
        help="a saved batch {'vis', 'ir'} (e.g. real test images; see --save-batch) instead "
        "of random images: trained weights only give confident detections on real scenes",
    )
    parser.add_argument(
        "--save-batch",
        nargs=2,
        metavar=("DATA_ROOT", "FILE"),
        help="save the first --batch test pairs of a VOC dataset to FILE and exit",
    )
    parser.add_argument(
        "--score",
        type=float,
        default=0.5,
        help="detections above this score must agree between bf16 and fp32 (default 0.5)",
    )
    parser.add_argument("--size", default="320x256")
    parser.add_argument("--batch", type=int, default=2)
    args = parser.parse_args()
    if args.save_batch:
        save_batch(*args.save_batch, args.batch)
        return
    if not torch.cuda.is_available():
        sys.exit("cuda_check.py needs a CUDA device")
    width, height = (int(v) for v in args.size.split("x"))
    cuda = torch.device("cuda")
    # fp32 means fp32: cuDNN convolutions default to TF32 on Ampere and later (10-bit
    # mantissa), which alone moves fused pixels by ~1e-3.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    model = load(args.weights).eval()
    if args.batch_file:
        saved = torch.load(args.batch_file, weights_only=True)
        b, _, height, width = saved["vis"].shape
        args.batch = b
        batch_cpu = {
            "vis": saved["vis"],
            "ir": saved["ir"],
            "image_sizes": torch.tensor([[height, width]] * b),
            "targets": [],
        }
    else:
        batch_cpu = synthetic_batch(args.batch, width, height, torch.device("cpu"))
    rows = []

    # 1. CPU vs CUDA in fp32
    with torch.no_grad():
        fused_cpu = model.fuse(batch_cpu["vis"], batch_cpu["ir"])
        feats_cpu = model.backbone(batch_cpu["vis"], batch_cpu["ir"])
        g = torch.Generator().manual_seed(0)
        boxes = torch.rand(args.batch, 50, 4, generator=g) * torch.tensor([width, height] * 2) / 2
        boxes[..., 2:] += boxes[..., :2] + 8
        t = torch.full((args.batch,), 999)
        names = model.detector.feature_names if model.detector is not None else ()
        logits_cpu, boxes_cpu = model.detector.refine([feats_cpu[n] for n in names], boxes, t)
    model_gpu = model.to(cuda)
    batch = {k: v.to(cuda) if torch.is_tensor(v) else v for k, v in batch_cpu.items()}
    with torch.no_grad():
        fused_gpu = model_gpu.fuse(batch["vis"], batch["ir"])
        feats_gpu = model_gpu.backbone(batch["vis"], batch["ir"])
        logits_gpu, boxes_gpu = model_gpu.detector.refine(
            [feats_gpu[n] for n in names], boxes.to(cuda), t.to(cuda)
        )
    fused_diff = (fused_cpu - fused_gpu.cpu()).abs().max().item()
    logit_diff = (logits_cpu[-1] - logits_gpu[-1].cpu()).abs().max().item()
    box_diff = (boxes_cpu[-1] - boxes_gpu[-1].cpu()).abs().max().item()
    rows.append(
        [
            "CPU vs CUDA (fp32)",
            "fused pixels, max |diff|",
            f"{fused_diff:.2e}",
            "<= 1e-3",
            _ok(fused_diff <= 1e-3),
        ]
    )
    rows.append(
        [
            "CPU vs CUDA (fp32)",
            "detection logits, max |diff|",
            f"{logit_diff:.2e}",
            "<= 1e-3",
            _ok(logit_diff <= 1e-3),
        ]
    )
    rows.append(
        [
            "CPU vs CUDA (fp32)",
            "refined boxes, max |diff| px",
            f"{box_diff:.2e}",
            "<= 1e-2",
            _ok(box_diff <= 1e-2),
        ]
    )

    # 2. bf16 autocast vs fp32 on CUDA, same noise
    def run(bf16: bool):
        torch.manual_seed(0)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            out = model_gpu(batch)
        return out

    ref, low = run(False), run(True)
    pix = (ref["fused_rgb"].float() - low["fused_rgb"].float()).abs().max().item()
    rows.append(
        [
            "bf16 vs fp32 (CUDA)",
            "fused pixels, max |diff|",
            f"{pix:.2e}",
            "<= 1e-2",
            _ok(pix <= 1e-2),
        ]
    )
    if ref["detections"] is not None:
        same, total = _matched(ref["detections"], low["detections"], args.score)
        rows.append(
            [
                "bf16 vs fp32 (CUDA)",
                f"detections > {args.score:g} matched (IoU>0.9, label)",
                f"{same}/{total}",
                "all",
                _ok(same == total > 0) if args.weights else "n/a (untrained)",
            ]
        )
        # why a strict count can differ: a score at the threshold crosses it under rounding
        found, total, drift = _partners(ref["detections"], low["detections"], args.score)
        rows.append(
            [
                "bf16 vs fp32 (CUDA)",
                f"fp32 detections > {args.score:g} in bf16 at any score; max |score diff|",
                f"{found}/{total}; {drift:.3f}",
                "info",
                "",
            ]
        )

    # 3. the CUDA-graph replay vs the eager model (bf16), same starting boxes
    runner = GraphedInference(model_gpu, args.batch, height, width)
    noise = None
    if model_gpu.detector is not None:
        torch.manual_seed(0)  # as run(): the eager head's first draw is all its noise
        noise = model_gpu.detector.draw_noise(
            args.batch, runner.num_proposals, runner.sampling_steps, cuda
        )
    graphed = runner(batch["vis"], batch["ir"], noise=noise)
    graphed = runner(batch["vis"], batch["ir"], noise=noise)  # a replay, not the capture
    pix = (graphed["fused_rgb"].float() - low["fused_rgb"].float()).abs().max().item()
    rows.append(
        [
            "CUDA graph vs eager (bf16)",
            "fused pixels, max |diff|",
            f"{pix:.2e}",
            "<= 1e-3",
            _ok(pix <= 1e-3),
        ]
    )
    if noise is not None:
        same, total = _matched(low["detections"], graphed["detections"], args.score)
        rows.append(
            [
                "CUDA graph vs eager (bf16)",
                f"detections > {args.score:g} matched (IoU>0.9, label)",
                f"{same}/{total}",
                "all",
                _ok(same == total > 0) if args.weights else "n/a (untrained)",
            ]
        )
    print(
        f"# cuda check: {device_name(cuda)}, torch {torch.__version__}, "
        f"batch {args.batch} at {width}x{height}, weights {args.weights or 'random'}"
    )
    print_table(["comparison", "quantity", "value", "target", "result"], rows)


def save_batch(root: str, path: str, count: int, split: str = "test") -> None:
    from e2emfd.config import DataConfig
    from e2emfd.data import build_dataset, collate_pairs

    dataset = build_dataset(DataConfig(root=root), split)
    batch = collate_pairs([dataset[i] for i in range(count)])
    torch.save({"vis": batch["vis"], "ir": batch["ir"]}, path)
    print(f"saved {count} pairs {tuple(batch['vis'].shape)} to {path}")


def _matched(reference: list[dict], other: list[dict], score: float) -> tuple[int, int]:
    """How many of the reference detections above ``score`` have a partner in ``other``
    (same count per image, IoU > 0.9, same label), and how many there are."""
    same, total = 0, 0
    for a, b in zip(reference, other):
        ka, kb = a["scores"] > score, b["scores"] > score
        total += int(ka.sum())
        if ka.sum() == kb.sum() and ka.any():
            iou = box_iou(a["boxes"][ka].float(), b["boxes"][kb].float())
            best, idx = iou.max(1)
            same += int(((best > 0.9) & (a["labels"][ka] == b["labels"][kb][idx])).sum())
    return same, total


def _partners(reference: list[dict], other: list[dict], score: float) -> tuple[int, int, float]:
    """Reference detections above ``score`` that have a partner in ``other`` at any score
    (IoU > 0.9, same label), how many there are, and the largest score difference."""
    found, total, drift = 0, 0, 0.0
    for a, b in zip(reference, other):
        keep = a["scores"] > score
        total += int(keep.sum())
        if not keep.any() or not len(b["scores"]):
            continue
        iou = box_iou(a["boxes"][keep].float(), b["boxes"].float())
        iou[a["labels"][keep][:, None] != b["labels"][None, :]] = 0
        best, idx = iou.max(1)
        hit = best > 0.9
        found += int(hit.sum())
        if hit.any():
            diff = (a["scores"][keep][hit] - b["scores"][idx[hit]]).abs().max().item()
            drift = max(drift, diff)
    return found, total, drift


def _ok(flag: bool) -> str:
    return "pass" if flag else "FAIL"


if __name__ == "__main__":
    main()
