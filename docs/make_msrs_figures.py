"""The README's pictures of real MSRS validation pairs: visible | infrared | fused with the
detections (score >= 0.3) | ground truth, for a checkpoint trained on msrs_det.

    python docs/make_msrs_figures.py --weights weights/msrs_cpu.pt --ids 01023N 00530D
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import torch

from e2emfd.config import load_config
from e2emfd.data import build_dataset, build_transforms
from e2emfd.demo.report import write_scene_grid
from e2emfd.engine.checkpoint import load_model_for_inference

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=str(ROOT / "weights" / "msrs_cpu.pt"))
    parser.add_argument("--config", default=str(ROOT / "configs" / "msrs_cpu.yaml"))
    parser.add_argument("--ids", nargs="+", required=True, help="val ids, e.g. 01023N 00530D")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()

    model, _ = load_model_for_inference(args.weights)
    cfg = load_config(args.config)
    dataset = build_dataset(cfg.data, cfg.data.test_split, build_transforms(cfg.data, False))
    index = {r.image_id: i for i, r in enumerate(dataset.records)}
    missing = [i for i in args.ids if i not in index]
    if missing:
        raise SystemExit(f"{cfg.data.test_split}: no pair {missing[0]}")
    torch.manual_seed(0)  # the detector's random starting boxes
    out = Path(args.out)
    pngs = write_scene_grid(
        model, dataset, [index[i] for i in args.ids], out / "msrs_tmp", dataset.classes
    )
    for image_id, png in zip(args.ids, pngs):
        target = out / f"msrs_{image_id}.jpg"
        cv2.imwrite(str(target), cv2.imread(str(png)), [cv2.IMWRITE_JPEG_QUALITY, 88])
        png.unlink()
        print(target)
    (out / "msrs_tmp").rmdir()


if __name__ == "__main__":
    main()
