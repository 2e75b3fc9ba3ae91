"""``e2emfd export``: a trained model as one ONNX graph (see :mod:`e2emfd.export`)."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Export a checkpoint as an ONNX graph (opset 18) that any ONNX runtime can run.

Inputs (batch and size dynamic; H and W multiples of the model's size divisor, 32):
  visible   (B, 3, H, W) float32 RGB in [0, 1]
  infrared  (B, 1, H, W) float32 in [0, 1]
  noise     (S, B, N, dim) float32 standard normal: every random draw of the S DDIM
            steps for N proposals (dim 4, or 5 for rotated boxes); S and N are fixed
            here (--steps, --num-proposals). The same noise gives the same detections
            as model.detect(vis, ir, noise=noise). Not an input with --fusion-only.
Outputs:
  fused     (B, 3, H, W) fused image in [0, 1] (1 channel for color=gray)
  boxes, scores, labels
            axis-aligned boxes: (B, D, 4) xyxy pixels, (B, D), (B, D) int64 with D =
            max_detections, NMS done in the graph, best first; label -1 marks padding.
            Rotated boxes: the candidates before NMS (rotated NMS does not export); run
            e2emfd.export.select(meta, outputs, sizes) on them.
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "export",
        help="export a trained model as an ONNX graph",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--weights", required=True, help="checkpoint to export")
    parser.add_argument("--out", required=True, help="the .onnx file to write")
    parser.add_argument(
        "--fusion-only", action="store_true", help="export only the fusion head (no noise input)"
    )
    parser.add_argument(
        "--num-proposals", type=int, help="proposals N of the graph (default: the model's)"
    )
    parser.add_argument(
        "--steps", type=int, help="DDIM steps S of the graph (default: the model's)"
    )
    parser.add_argument(
        "--verify",
        action="store_true",
        help="then run the graph with onnxruntime and the model with PyTorch on one random "
        "pair and report their differences",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from e2emfd.cli.main import CommandError
    from e2emfd.cli.paths import output_file
    from e2emfd.engine.checkpoint import load_model_for_inference
    from e2emfd.export import export_onnx, verify_onnx

    for option, value in (("--num-proposals", args.num_proposals), ("--steps", args.steps)):
        if value is not None and value < 1:
            raise CommandError(f"{option} must be >= 1, got {value}")
    out = output_file(args.out)
    model, _ = load_model_for_inference(args.weights, "cpu")
    meta = export_onnx(
        model,
        out,
        fusion_only=args.fusion_only,
        num_proposals=args.num_proposals,
        sampling_steps=args.steps,
    )
    print(f"wrote {out}")
    print(f"  inputs:  {', '.join(meta['inputs'])}")
    if "noise_shape" in meta:
        print(f"  noise:   {meta['noise_shape']} (steps, batch, proposals, box numbers)")
    print(f"  outputs: {', '.join(meta['outputs'])}")
    if meta.get("nms") == "select":
        print("  rotated boxes: the graph ends before NMS; run e2emfd.export.select on its outputs")
    if args.verify:
        report = verify_onnx(model, out, meta)
        if "fused_max_diff" in report:
            print(f"  onnxruntime vs PyTorch: fused max |diff| {report['fused_max_diff']:.2e}")
        for i, det in enumerate(report.get("detections", [])):
            print(
                f"  image {i}: {det['paired']} detections above 0.3 paired, "
                f"{det['unpaired']} unpaired, box max |diff| {det['box_max_diff']:.2e} px, "
                f"score max |diff| {det['score_max_diff']:.2e}"
            )
    return 0
