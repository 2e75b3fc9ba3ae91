"""Evaluation maps predictions back to the files' pixels and scores them with pycocotools."""

import torch
from torch import nn

from e2emfd.boxes import box_codec
from e2emfd.config import DataConfig
from e2emfd.data import build_dataset, build_transforms
from e2emfd.engine.evaluate import evaluate, predictions_to_original


class EchoModel(nn.Module):
    """Predicts, for every image, boxes given at construction (in the files' pixels),
    converted to the network's input frame by the batch's scale, plus a shifted copy."""

    box_codec = box_codec("hbb")
    size_divisor = 32

    def __init__(self, boxes_by_id: dict) -> None:
        super().__init__()
        self.boxes_by_id = boxes_by_id

    def forward(self, batch):
        dets = []
        for image_id, scale in zip(batch["image_ids"], batch["scales"]):
            boxes, labels = self.boxes_by_id[image_id]
            factor = scale.repeat(2)
            shifted = boxes + torch.tensor([40.0, 0.0, 40.0, 0.0])
            dets.append(
                {
                    "boxes": torch.cat([boxes, shifted]) * factor,
                    "scores": torch.cat(
                        [torch.full((len(boxes),), 0.9), torch.full((len(boxes),), 0.1)]
                    ),
                    "labels": torch.cat([labels, labels]),
                }
            )
        return {"fused": None, "fused_rgb": None, "detections": dets}


def test_predictions_are_scored_in_file_pixels_after_resizing(synth_small):
    cfg = DataConfig(root=str(synth_small), short_side=160)  # 128x96 files -> 213x160 inputs
    dataset = build_dataset(cfg, "test", build_transforms(cfg, train=False))
    assert dataset[0]["vis"].shape[-2:] == (160, 213)
    truth = {}
    for record in dataset.records:
        ann = record.annotation
        truth[record.image_id] = (torch.from_numpy(ann.boxes), torch.from_numpy(ann.labels))
    result = evaluate(
        EchoModel(truth), dataset, torch.device("cpu"), dataset.classes, conventions=()
    )
    assert result["num_images"] == 4
    assert result["detection"]["AP50"] == 1.0 and result["detection"]["AP"] == 1.0


def test_predictions_to_original():
    det = [
        {
            "boxes": torch.tensor([[10.0, 20.0, 30.0, 40.0]]),
            "scores": torch.ones(1),
            "labels": torch.zeros(1),
        }
    ]
    out = predictions_to_original(det, torch.tensor([[2.0, 4.0]]), box_codec("hbb"))
    assert out[0]["boxes"].tolist() == [[5.0, 5.0, 15.0, 10.0]]


def test_subsets_are_scored_from_the_same_predictions(synth_small):
    import copy
    import json

    cfg = DataConfig(root=str(synth_small))
    dataset = build_dataset(cfg, "test", build_transforms(cfg, train=False))
    predicted = {}
    for k, record in enumerate(dataset.records):
        boxes = torch.from_numpy(record.annotation.boxes)
        if k >= 2:  # the last two images get boxes far off their objects
            boxes = boxes + torch.tensor([200.0, 200.0, 200.0, 200.0])
        predicted[record.image_id] = (boxes, torch.from_numpy(record.annotation.labels))
    model = EchoModel(predicted)
    subsets = {"good": [0, 1], "bad": [2, 3], "empty": []}
    result = evaluate(
        model, dataset, torch.device("cpu"), dataset.classes, conventions=(), subsets=subsets
    )
    by_subset = result["detection_by_subset"]
    assert set(by_subset) == {"good", "bad"}  # an empty subset has no scores
    assert by_subset["good"]["AP50"] == 1.0 and by_subset["bad"]["AP50"] == 0.0
    # the same numbers as a separate evaluation of only those images
    for name in ("good", "bad"):
        alone = copy.copy(dataset)
        alone.records = [dataset.records[i] for i in subsets[name]]
        direct = evaluate(model, alone, torch.device("cpu"), dataset.classes, conventions=())
        # (compared as JSON: a size range with no objects scores NaN, and NaN != NaN)
        assert json.dumps(by_subset[name], sort_keys=True) == json.dumps(
            direct["detection"], sort_keys=True
        )


class NoisyEchoModel(EchoModel):
    """The ground truth moved by random noise from the global generator, like the
    diffusion detector's random starting boxes: its score depends on the random state."""

    def forward(self, batch):
        out = super().forward(batch)
        for det in out["detections"]:
            shift = 6.0 * torch.randn(len(det["boxes"]), 2)
            det["boxes"] = det["boxes"] + shift.repeat(1, 2)  # moved, same size
        return out


def test_a_model_scores_the_same_whatever_ran_before(synth_small):
    import json

    cfg = DataConfig(root=str(synth_small))
    dataset = build_dataset(cfg, "test", build_transforms(cfg, train=False))
    truth = {
        r.image_id: (torch.from_numpy(r.annotation.boxes), torch.from_numpy(r.annotation.labels))
        for r in dataset.records
    }
    model = NoisyEchoModel(truth)

    def score(**kwargs) -> str:
        result = evaluate(
            model, dataset, torch.device("cpu"), dataset.classes, conventions=(), **kwargs
        )
        return json.dumps(result["detection"], sort_keys=True)

    scores = []
    for state in (1, 2):
        torch.manual_seed(state)  # a different global random state before each evaluation
        scores.append(score())
        after = torch.rand(1)
        torch.manual_seed(state)
        assert torch.equal(after, torch.rand(1))  # the caller's random state is untouched
    assert scores[0] == scores[1]
    assert score(seed=7) != scores[0]  # the noise matters: another seed scores otherwise
