"""Evaluation of both tasks on a dataset split: COCO detection AP and fusion metrics."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Protocol

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from e2emfd.boxes import BoxCodec
from e2emfd.data import make_collate
from e2emfd.engine.runtime import autocast_context, move_batch


def boxes_to_original(boxes: torch.Tensor, scale: torch.Tensor, codec: BoxCodec) -> torch.Tensor:
    """Boxes (N, dim) of the codec's kind from the network's input frame back to the
    files' pixels; ``scale`` is (2,) [sx, sy] from the files to the input."""
    sx, sy = (float(v) for v in scale)
    return codec.rescale(boxes, 1.0 / sx, 1.0 / sy)


def predictions_to_original(
    detections: list[dict], scales: torch.Tensor, codec: BoxCodec
) -> list[dict]:
    """Map boxes from the network's input frame back to the files' pixels."""
    return [
        {**det, "boxes": boxes_to_original(det["boxes"], scale, codec)}
        for det, scale in zip(detections, scales)
    ]


class EvaluatedModel(Protocol):
    """What evaluation needs of a model: ``model(batch)`` in eval mode returns
    ``{"fused", "fused_rgb", "detections"}`` (as :class:`e2emfd.models.E2EMFD` does), its
    box kind and the size divisor its batches are padded to."""

    box_codec: BoxCodec
    size_divisor: int

    def __call__(self, batch: dict) -> dict: ...

    def eval(self): ...


def iterate_predictions(
    model: EvaluatedModel,
    dataset,
    device: torch.device,
    batch_size: int = 4,
    amp: bool = False,
    max_images: int | None = None,
    progress: bool = False,
    num_workers: int = 0,
) -> Iterator[tuple[dict, dict]]:
    """Yield ``(batch, outputs)`` for the dataset in order, the model in eval mode, batches
    padded to the model's size divisor; the batch on the CPU, outputs moved to the CPU."""
    subset = dataset
    if max_images is not None and max_images < len(dataset):
        subset = torch.utils.data.Subset(dataset, range(max_images))
    loader = DataLoader(
        subset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=make_collate(model.size_divisor),
    )
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(loader, desc="evaluating", disable=not progress, leave=False):
            with torch.no_grad(), autocast_context(device, amp):
                outputs = model(move_batch(batch, device))
            cpu = {
                "fused": None if outputs["fused"] is None else outputs["fused"].float().cpu(),
                "fused_rgb": None
                if outputs["fused_rgb"] is None
                else outputs["fused_rgb"].float().cpu(),
                "detections": None,
            }
            if outputs["detections"] is not None:
                cpu["detections"] = [
                    {k: v.float().cpu() if k != "labels" else v.cpu() for k, v in d.items()}
                    for d in outputs["detections"]
                ]
            yield batch, cpu
    finally:
        model.train(was_training)


@contextlib.contextmanager
def single_threaded_metrics():
    """One BLAS/OpenMP thread and one torch thread inside the block. The fusion metrics of
    one image pair are too small to split across threads: with the default pools they only
    compete with training or with another job for the cores (on a busy 2-core machine one
    320x256 evaluation took 0.23 s with the default pools and 0.07 s with one thread)."""
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def fusion_scores(
    fused01: torch.Tensor, ir01: torch.Tensor, vis01: torch.Tensor, conventions
) -> dict:
    """Per-image fusion metrics for one image: fused (1|3, H, W), ir (1, H, W), vis (3, H, W)
    in [0, 1], converted to each convention's grey levels as if saved as 8-bit PNG;
    computed single-threaded (see :func:`single_threaded_metrics`)."""
    from e2emfd.metrics.fusion import fusion_metrics, to_grey_levels

    out = {}
    with single_threaded_metrics():
        for conv in conventions:
            f, a, b = (to_grey_levels(x[None], conv)[0] for x in (fused01, ir01, vis01))
            values = fusion_metrics(f, a, b, convention=conv)
            out[conv] = {k: float(v) for k, v in values.items()}
    return out


def baseline_fusion_scores(
    dataset, conventions: tuple[str, ...] = ("python", "matlab"), methods=None
) -> dict[str, dict[str, dict]]:
    """Mean fusion metrics of the classical fusion methods (average, max, Laplacian
    pyramid; :mod:`e2emfd.models.baselines`) on a dataset's pairs, at the size the dataset
    gives them: ``{conv: {method: {metric: mean}}}``, each mean over the images where the
    metric is defined (as the model's in :func:`evaluate`)."""
    from e2emfd.metrics.fusion.summary import summarize
    from e2emfd.models.baselines import BASELINES, fuse_baseline

    rows: dict = {}
    for index in range(len(dataset)):
        sample = dataset[index]
        vis, ir = sample["vis"][None], sample["ir"][None]
        for method in methods or BASELINES:
            fused = fuse_baseline(vis, ir, method)[0]
            for conv, values in fusion_scores(
                fused, sample["ir"], sample["vis"], conventions
            ).items():
                per_image = rows.setdefault(conv, {}).setdefault(method, [])
                per_image.append((sample["image_id"], values))
    return {
        conv: {
            m: {k: s.mean for k, s in summarize(r, r[0][1]).items()} for m, r in by_method.items()
        }
        for conv, by_method in rows.items()
    }


def rotated_scores(predictions: list[dict], ground_truths: list[dict], class_names) -> dict:
    """Rotated-box detection metrics under the same keys as the COCO ones (AP = AP50:95,
    AP50 all-point) plus the DroneVehicle papers' VOC07 11-point mAP50."""
    from e2emfd.metrics.rotated import evaluate_rotated

    r = evaluate_rotated(predictions, ground_truths, class_names)
    return {
        "AP": r["mAP50_95"],
        "AP50": r["mAP50"],
        "voc07_mAP50": r["mAP50_07"],
        "per_class_AP50": r["per_class_AP50"],
        "per_class_AP50_07": r["per_class_07"],
        "per_class": r["per_class"],  # AP50:95, as coco_evaluate's "per_class"
        "boxes": "obb",
    }


def _mean_table(rows: list[dict], image_ids: list[str]) -> tuple[dict, dict]:
    """Per convention, each metric's mean over the images where it is defined (None where
    it is defined for none), and ``{conv: {metric: [image ids]}}`` of the images where it
    is not (see :mod:`e2emfd.metrics.fusion.summary`)."""
    from e2emfd.metrics.fusion.summary import summarize

    means, undefined = {}, {}
    for conv in rows[0]:
        summary = summarize([(i, r[conv]) for i, r in zip(image_ids, rows)], rows[0][conv])
        means[conv] = {name: s.mean for name, s in summary.items()}
        missing = {name: s.undefined for name, s in summary.items() if s.undefined}
        if missing:
            undefined[conv] = missing
    return means, undefined


def evaluate(
    model: EvaluatedModel,
    dataset,
    device: torch.device,
    class_names: list[str],
    batch_size: int = 4,
    amp: bool = False,
    conventions: tuple[str, ...] = ("python",),
    max_images: int | None = None,
    progress: bool = False,
    voc: bool = False,
    subsets: dict[str, list[int]] | None = None,
    seed: int = 0,
) -> dict:
    """Detection (COCO AP50:95, AP50, ... per class; with ``voc`` also VOC07 11-point and
    all-point mAP50) and fusion metrics (means per convention) of ``model`` on
    ``dataset``, in the files' pixel frame. ``subsets`` (name -> dataset indices) adds
    ``"detection_by_subset"``: the detection scores of each subset of images, from the
    same predictions. A fusion metric's mean is over the images where it is defined;
    ``"fusion_undefined"`` (only when there are any) lists the others.

    The diffusion detector starts from random boxes; they are drawn from a generator
    seeded with ``seed`` (the caller's random state is left as it was), so the same model
    scores the same on the same data whatever ran before."""
    from e2emfd.metrics.detection import coco_evaluate, voc_evaluate

    codec = model.box_codec
    predictions, ground_truths, fusion_rows, fusion_ids = [], [], [], []
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for batch, outputs in iterate_predictions(
            model, dataset, device, batch_size, amp, max_images, progress
        ):
            sizes = batch["image_sizes"].tolist()
            if outputs["detections"] is not None:
                predictions += predictions_to_original(
                    outputs["detections"], batch["scales"], codec
                )
                for target, scale, orig in zip(
                    batch["targets"], batch["scales"], batch["orig_sizes"]
                ):
                    ground_truths.append(
                        {
                            "boxes": boxes_to_original(target["boxes"], scale, codec),
                            "labels": target["labels"],
                            "difficult": target["difficult"],
                            "height": int(orig[0]),
                            "width": int(orig[1]),
                        }
                    )
            if outputs["fused_rgb"] is not None and conventions:
                for i, (h, w) in enumerate(sizes):
                    fusion_rows.append(
                        fusion_scores(
                            outputs["fused_rgb"][i, :, :h, :w],
                            batch["ir"][i, :, :h, :w],
                            batch["vis"][i, :, :h, :w],
                            conventions,
                        )
                    )
                    fusion_ids.append(batch["image_ids"][i])
    result: dict = {"num_images": len(predictions) or len(fusion_rows)}
    if predictions:

        def score(preds: list[dict], truths: list[dict]) -> dict:
            if codec.kind == "obb":
                return rotated_scores(preds, truths, class_names)
            return coco_evaluate(preds, truths, class_names)

        result["detection"] = score(predictions, ground_truths)
        if subsets:
            result["detection_by_subset"] = {
                name: score([predictions[i] for i in idx], [ground_truths[i] for i in idx])
                for name, idx in subsets.items()
                if idx
            }
        if voc and "voc07_mAP50" not in result["detection"]:
            for name, use_07 in (("voc07_mAP50", True), ("voc_mAP50", False)):
                scores = voc_evaluate(predictions, ground_truths, class_names, use_07_metric=use_07)
                result["detection"][name] = scores["mAP"]
    if fusion_rows:
        result["fusion"], undefined = _mean_table(fusion_rows, fusion_ids)
        if undefined:
            result["fusion_undefined"] = undefined
    return result
