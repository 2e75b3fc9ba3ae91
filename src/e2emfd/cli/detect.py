"""``e2emfd detect``: detections for folders or videos of pairs, as COCO results JSON and
drawings."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Run a trained model's detector on every pair of --vi and --ir (paired by file stem).
Writes to --out:
  detections.json   COCO-format results [{image_id, category_id, bbox: [x, y, w, h], score}];
                    for rotated-box models {image_id, category_id, score, obb: [cx, cy, w,
                    h, angle (rad, le90)], poly: [x1, y1, ..., x4, y4]} (DOTA corner order)
  images.json       the image ids: [{id, file_name, width, height}] and the categories
  drawn/<stem>.png  the fused image (or the visible one, for a detection-only model)
                    with boxes and class names above --draw-threshold
Boxes are in the files' pixel coordinates. Pairs of one size are batched together.

--vi and --ir may also be two videos (any format OpenCV reads): frames are paired by index
up to the end of the shorter video (a warning says if the lengths differ); images.json
gives each frame's index ("frame"), drawn/NNNNNN.png is frame NNNNNN, and the drawings are
also written as --out/detections.mp4. With --cuda-graph, all frames (of one size) replay
one CUDA graph: the last, smaller batch is filled up with copies of its last frame.

Example:
  e2emfd detect --weights ckpt.pt --vi drive_rgb.mp4 --ir drive_thermal.mp4 --out drive/ \
      --cuda-graph
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="detect objects in image pairs with a trained model",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--weights", required=True, help="checkpoint of a model with a detection head"
    )
    parser.add_argument("--vi", required=True, help="folder of visible images, or a video")
    parser.add_argument("--ir", required=True, help="folder of infrared images, or a video")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--num-proposals", type=int, help="proposals at inference (default: the model's)"
    )
    parser.add_argument("--steps", type=int, help="DDIM sampling steps (default: the model's)")
    parser.add_argument("--draw-threshold", type=float, default=0.3, help="minimum score to draw")
    parser.add_argument("--no-draw", action="store_true", help="write only the JSON files")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--cuda-graph",
        action="store_true",
        help="on CUDA, replay each image size from a CUDA graph (captured at its first "
        "batch; a last, smaller batch is filled up so it replays the same graph; worth it "
        "for many same-size frames, e.g. a video's; on CPU the same batches run eagerly)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import contextlib
    import json
    from pathlib import Path

    import torch
    from tqdm import tqdm

    from e2emfd.cli.paths import output_folder
    from e2emfd.data import Resize, write_png
    from e2emfd.data.video import VideoWriter, pair_source
    from e2emfd.engine.checkpoint import load_model_for_inference
    from e2emfd.engine.evaluate import boxes_to_original
    from e2emfd.engine.graphed import GraphedInference
    from e2emfd.engine.runtime import resolve_device
    from e2emfd.metrics.detection import to_coco_results
    from e2emfd.viz import draw_boxes

    out_dir = output_folder(args.out)
    device = resolve_device(args.device, setting="--device")
    model, cfg = load_model_for_inference(args.weights, device)
    if model.detector is None:
        raise ValueError(f"{args.weights}: this model has no detection head")
    classes = list(cfg.data.classes)
    # the resolution it was trained at
    resize = Resize(cfg.data.short_side, cfg.data.max_size, codec=model.box_codec)
    source, total, video = pair_source(args.vi, args.ir, transform=resize)
    (out_dir / "drawn").mkdir(parents=True, exist_ok=True)
    drawing = video and not args.no_draw
    writer = VideoWriter(out_dir / "detections.mp4", video.fps) if drawing else None
    images, results = [], []
    pending: dict[tuple[int, int], list[dict]] = {}
    # one runner per batch shape: both heads on one backbone pass, a CUDA graph if asked
    runners: dict[tuple[int, ...], GraphedInference] = {}

    def flush(samples: list[dict]) -> None:
        # A graph replays one batch size: a smaller batch is filled up to it, and the
        # copies' results are dropped (zip below stops at the real samples).
        filler = args.batch_size - len(samples) if args.cuda_graph else 0
        batch = samples + samples[-1:] * filler
        vis = torch.stack([s["vis"] for s in batch]).to(device)
        ir = torch.stack([s["ir"] for s in batch]).to(device)
        shape = (vis.shape[0], *vis.shape[-2:])
        if shape not in runners:
            runners[shape] = GraphedInference(
                model,
                *shape,
                bf16=cfg.train.amp,
                num_proposals=args.num_proposals,
                sampling_steps=args.steps,
                graph=args.cuda_graph,
            )
        out = runners[shape](vis, ir)
        detections = out["detections"]
        shown = out["fused_rgb"] if out["fused_rgb"] is not None else vis
        for sample, det, image in zip(samples, detections, shown.float().cpu()):
            det = {k: v.cpu() for k, v in det.items()}
            det["boxes"] = boxes_to_original(det["boxes"], sample["scale"], model.box_codec)
            image_id = len(images) + 1
            h, w = sample["orig_size"].tolist()
            entry = {"id": image_id, "file_name": Path(sample["vis_path"]).name}
            if "frame" in sample:
                entry["frame"] = sample["frame"]
            images.append({**entry, "width": w, "height": h})
            if model.box_codec.kind == "obb":
                results.extend(rotated_results(det, image_id))
            else:
                results.extend(to_coco_results([det], [image_id], classes))
            if not args.no_draw:
                keep = det["scores"] >= args.draw_threshold
                picture = torch.nn.functional.interpolate(
                    image[None], size=(h, w), mode="bilinear"
                )[0]
                drawn = draw_boxes(
                    picture.permute(1, 2, 0).numpy(),
                    det["boxes"][keep].numpy(),
                    det["labels"][keep].numpy(),
                    classes,
                    det["scores"][keep].numpy(),
                    thickness=max(1, round(min(h, w) / 400)),
                )
                write_png(out_dir / "drawn" / f"{sample['image_id']}.png", drawn)
                if writer is not None:
                    writer.write(drawn)
            bar.update(1)

    bar = tqdm(total=total, desc="detecting", unit="pair", disable=args.no_progress)
    with writer or contextlib.nullcontext():
        for sample in source:
            key = tuple(sample["vis"].shape[-2:])
            pending.setdefault(key, []).append(sample)
            if len(pending[key]) == args.batch_size:
                flush(pending.pop(key))
        for batch in pending.values():
            flush(batch)
    bar.close()
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(classes)]
    (out_dir / "detections.json").write_text(json.dumps(results))
    (out_dir / "images.json").write_text(
        json.dumps({"images": images, "categories": categories}, indent=1)
    )
    also = f" and {writer.path}" if writer is not None else ""
    print(
        f"{len(results)} detections on {len(images)} pairs -> {out_dir / 'detections.json'}{also}"
    )
    return 0


def rotated_results(det: dict, image_id: int) -> list[dict]:
    """Result records of rotated detections: the box and its corner polygon."""
    from e2emfd.ops.rotated import obb_to_poly

    polys = obb_to_poly(det["boxes"].double()) if len(det["boxes"]) else det["boxes"]
    return [
        {
            "image_id": image_id,
            "category_id": int(label) + 1,
            "score": round(float(score), 5),
            "obb": [round(float(v), 3) for v in box],
            "poly": [round(float(v), 2) for v in poly],
        }
        for box, poly, score, label in zip(det["boxes"], polys, det["scores"], det["labels"])
    ]
