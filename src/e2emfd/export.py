"""ONNX export of an E2E-MFD model (#19): one graph from the images to the fused image and
the detections, run by any ONNX runtime.

Inputs: ``visible`` (B, 3, H, W) and ``infrared`` (B, 1, H, W) in [0, 1], H and W
multiples of the model's size divisor (``model.size_divisor``, 32), batch and size
dynamic; with detection also ``noise`` (S, B, N, dim), every random draw of the S DDIM
steps for N proposals (as :meth:`E2EMFD.infer` takes it), so a run is reproducible and
equals ``model.detect(vis, ir, noise=noise)``. S and N are fixed when exporting.

Outputs: ``fused`` (B, 3|1, H, W) in [0, 1]; for axis-aligned boxes ``boxes`` (B, D, 4)
xyxy pixels, ``scores`` (B, D), ``labels`` (B, D) int64 with D = ``max_detections``,
per-class NMS inside the graph (ONNX NonMaxSuppression), best first; rows with label -1
(score 0, box 0) are padding. Rotated NMS does not export (it is a data-dependent loop),
so for rotated boxes the graph ends at the candidates before NMS (D = proposals x steps)
and :func:`select` does the NMS with the model's box codec.

The model's config travels in the file's metadata (``e2emfd.config``), so :func:`select`
and :func:`read_metadata` need only the .onnx file.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import nms

from e2emfd.boxes import box_codec
from e2emfd.boxes.axis_aligned import clip_boxes
from e2emfd.config import DetectionConfig, config_to_dict
from e2emfd.models.detection import MultiLevelRoIAlign, assign_levels
from e2emfd.models.e2emfd import E2EMFD
from e2emfd.ops.rotated_roi_align import rotated_sample_points

OPSET = 18
METADATA_KEY = "e2emfd.config"


class AllLevelsRoIAlign(MultiLevelRoIAlign):
    """The pooler of an exported graph: every box is pooled at every level and keeps its
    own level's result. Four times the RoIAlign work of pooling each box once, but no
    data-dependent shapes, which a graph needs."""

    @classmethod
    def like(cls, pooler: MultiLevelRoIAlign) -> AllLevelsRoIAlign:
        return cls(
            pooler.codec,
            pooler.strides,
            pooler.output_size,
            pooler.sampling_ratio,
            pooler.canonical_size,
            pooler.canonical_level,
        )

    def prepare(self, features: list[Tensor]) -> list[Tensor]:
        return list(features)

    def forward(self, features: list[Tensor], boxes: Tensor) -> Tensor:
        b, n = boxes.shape[:2]
        flat = boxes.reshape(b * n, self.codec.dim).float()
        image = torch.arange(b, device=boxes.device, dtype=flat.dtype)[:, None].expand(b, n)
        rois = torch.cat([image.reshape(-1, 1), flat], dim=1)
        levels = assign_levels(
            self.codec.area(flat), self.strides, self.canonical_size, self.canonical_level
        )
        pool = self.roi_align if self.codec.kind == "hbb" else self.rotated_roi_align
        out = None
        for i, (feature, stride) in enumerate(zip(features, self.strides)):
            pooled = pool(feature, rois, stride)
            here = levels[:, None, None, None] == i
            out = pooled if out is None else torch.where(here, pooled, out)
        return out

    def rotated_roi_align(self, feature: Tensor, rois: Tensor, stride: int) -> Tensor:
        """:func:`e2emfd.ops.rotated_roi_align.rotated_roi_align` for image-major rois, the
        same number per image: one ``grid_sample`` over the whole batch, where the library
        function selects each image's rois (a data-dependent shape)."""
        s, g = self.output_size, self.sampling_ratio
        b, c, height, width = feature.shape
        k = rois.shape[0]
        x, y = rotated_sample_points(rois[:, 1:], s, s, g)
        fx, fy = x / stride - 0.5, y / stride - 0.5
        inside = (fx >= -1) & (fx <= width) & (fy >= -1) & (fy <= height)
        fx, fy = fx.clamp(0, width - 1), fy.clamp(0, height - 1)
        grid = torch.stack([(fx + 0.5) * (2 / width) - 1, (fy + 0.5) * (2 / height) - 1], -1)
        grid = grid.reshape(b, -1, s * g, 2)  # the rois of image i sampled from map i
        got = F.grid_sample(
            feature.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
        )
        samples = got.view(b, c, k // b, s * g, s * g).transpose(1, 2).reshape(k, c, s * g, s * g)
        samples = samples * inside[:, None].to(samples.dtype)
        return samples.view(k, c, s, g, s, g).mean((3, 5)).to(feature.dtype)


def graph_select(
    scores: Tensor, labels: Tensor, boxes: Tensor, whwh: Tensor, cfg
) -> tuple[Tensor, Tensor, Tensor]:
    """:meth:`e2emfd.boxes.AxisAlignedBoxes.select` with fixed output shapes, for a
    graph: (B, D, 4) boxes, (B, D) scores and labels, padding rows labelled -1.

    Per-class NMS of all images at once as one NMS of shifted boxes (each image and class
    moved to its own region, so that boxes of different groups never overlap), the same
    way torchvision's batched_nms does it for many boxes."""
    b, k = scores.shape
    boxes = clip_boxes(boxes.float(), whwh.float())
    group = torch.arange(b, device=labels.device)[:, None] * cfg.num_classes + labels
    shift = (group.to(boxes.dtype) * (boxes.max() + 1))[..., None]
    keep = nms((boxes + shift).reshape(-1, 4), scores.reshape(-1), cfg.nms_threshold)
    kept = torch.zeros(b * k, device=scores.device).index_fill(0, keep, 1.0).view(b, k) > 0
    nonempty = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])
    kept = kept & nonempty & (scores > cfg.score_threshold)
    ranked, order = torch.where(kept, scores, torch.full_like(scores, -1.0)).topk(
        min(cfg.max_detections, k), dim=1
    )
    valid = ranked >= 0
    out_boxes = boxes.gather(1, order[..., None].expand(-1, -1, 4)) * valid[..., None]
    out_labels = torch.where(valid, labels.gather(1, order), torch.full_like(order, -1))
    return out_boxes, ranked.clamp(min=0), out_labels


class InferenceGraph(nn.Module):
    """What is exported: ``forward(visible, infrared[, noise])`` -> the outputs of the
    module docstring, in that order, for the heads in ``tasks``."""

    def __init__(self, model: E2EMFD, tasks: tuple[str, ...]) -> None:
        super().__init__()
        self.model = model
        self.tasks = tasks

    def forward(self, visible: Tensor, infrared: Tensor, noise: Tensor | None = None):
        b, _, h, w = visible.shape
        sizes = torch.stack([torch.full((b,), h), torch.full((b,), w)], 1).to(visible.device)
        out = self.model.infer(visible, infrared, sizes, noise, tasks=self.tasks)
        outputs = []
        if "fusion" in self.tasks:
            outputs.append(out["fused_rgb"])
        if "detection" in self.tasks:
            head = self.model.detector
            if head.codec.kind == "hbb":
                outputs += graph_select(*out["candidates"], out["scale"], head.cfg)
            else:
                scores, labels, boxes = out["candidates"]
                outputs += [boxes, scores, labels]
        return tuple(outputs)


def export_tasks(model: E2EMFD, fusion_only: bool = False) -> tuple[str, ...]:
    if fusion_only:
        if model.fusion is None:
            raise ValueError("--fusion-only: this model has no fusion head")
        return ("fusion",)
    return tuple(t for t in ("fusion", "detection") if t in model.tasks)


def graph_copy(model: E2EMFD) -> E2EMFD:
    """A CPU float32 copy in eval mode, contiguous layout, with the fixed-shape pooler."""
    graph = copy.deepcopy(model).float().cpu().eval()
    graph.cfg.channels_last = False
    graph.to(memory_format=torch.contiguous_format)
    if graph.fusion is not None:  # ONNX Resize keeps the frame size dynamic; matrices would not
        graph.fusion.upsampling = "interpolate"
    if graph.detector is not None:
        graph.detector.pooler = AllLevelsRoIAlign.like(graph.detector.pooler)
    return graph


def export_onnx(
    model: E2EMFD,
    path: str | Path,
    *,
    fusion_only: bool = False,
    num_proposals: int | None = None,
    sampling_steps: int | None = None,
    opset: int = OPSET,
) -> dict:
    """Write ``model`` as an ONNX graph to ``path``; returns its metadata (see
    :func:`read_metadata`)."""
    path = Path(path)
    tasks = export_tasks(model, fusion_only)
    graph = InferenceGraph(graph_copy(model), tasks).eval()
    divisor = model.size_divisor
    batch = torch.export.Dim("batch", min=1, max=1024)
    height = divisor * torch.export.Dim("height_blocks", min=1, max=1024)
    width = divisor * torch.export.Dim("width_blocks", min=1, max=1024)
    # example sizes other than 1 so that no dimension is specialised to it
    example = {"visible": torch.rand(2, 3, 2 * divisor, 3 * divisor)}
    example["infrared"] = torch.rand(2, 1, 2 * divisor, 3 * divisor)
    shapes = {
        "visible": {0: batch, 2: height, 3: width},
        "infrared": {0: batch, 2: height, 3: width},
    }
    meta = {"tasks": list(tasks), "size_divisor": divisor, "inputs": ["visible", "infrared"]}
    outputs = ["fused"] if "fusion" in tasks else []
    if "detection" in tasks:
        head = model.detector
        n = head.cfg.inference_proposals(num_proposals)
        steps = sampling_steps or head.cfg.sampling_steps
        example["noise"] = head.draw_noise(2, n, steps, "cpu")
        shapes["noise"] = {1: batch}
        outputs += ["boxes", "scores", "labels"]
        meta.update(
            inputs=["visible", "infrared", "noise"],
            noise_shape=[2 * steps - 1, "batch", n, head.codec.dim],
            boxes=head.codec.kind,
            nms="graph" if head.codec.kind == "hbb" else "select",
        )
    meta.update(outputs=outputs, config=config_to_dict(model.cfg))
    big = sum(p.numel() for p in model.parameters()) * 4 > 1.8e9
    # the exporter prints its progress and warns about its own internals: keep the
    # command's output to what the user asked for
    quiet = warnings.catch_warnings()
    with torch.no_grad(), quiet, contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            program = torch.onnx.export(
                graph,
                tuple(example.values()),
                input_names=list(example),
                output_names=outputs,
                dynamic_shapes=tuple(shapes[name] for name in example),
                opset_version=opset,
                dynamo=True,
                optimize=True,
                verbose=False,
            )
        except Exception as exc:  # noqa: BLE001 - the exporter's errors are pages long
            first = next((line for line in str(exc).splitlines() if line.strip()), "")
            raise ValueError(
                f"{path}: ONNX export failed ({type(exc).__name__}: {first})"
            ) from None
    program.model.metadata_props[METADATA_KEY] = json.dumps(meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    program.save(str(path), external_data=big)
    return meta


def read_metadata(path: str | Path) -> dict:
    """The metadata :func:`export_onnx` wrote into an .onnx file."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    for prop in proto.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ValueError(f"{path}: not an e2emfd ONNX export (no {METADATA_KEY} metadata)")


def select(meta: dict, outputs: dict[str, Tensor], image_sizes: Tensor) -> list[dict[str, Tensor]]:
    """The detections of one run of an exported graph, as ``model.detect`` returns them: B
    dicts {"boxes", "scores", "labels"}.

    ``outputs``: the graph's ``boxes``, ``scores``, ``labels`` (tensors or arrays);
    ``image_sizes`` (B, 2) [h, w] of the inputs. For axis-aligned boxes the graph has
    done NMS and this drops the padding rows; for rotated boxes it runs the box codec's
    NMS on the candidates (``meta["nms"] == "select"``)."""
    boxes, scores, labels = (torch.as_tensor(outputs[k]) for k in ("boxes", "scores", "labels"))
    if meta.get("nms") == "graph":
        return [
            {"boxes": b[keep], "scores": s[keep], "labels": lab[keep]}
            for b, s, lab in zip(boxes, scores, labels)
            for keep in [lab >= 0]
        ]
    det = DetectionConfig(**meta["config"]["detection"])
    codec = box_codec(det.boxes)
    scale = codec.image_scale(torch.as_tensor(image_sizes))
    return codec.select((scores, labels, boxes), scale, det)


def run_onnx(path: str | Path, visible: Tensor, infrared: Tensor, noise: Tensor | None = None):
    """One onnxruntime (CPU) run of an exported graph: {output name: array}."""
    try:
        import onnxruntime
    except ImportError:
        raise ValueError(
            "onnxruntime is not installed; pip install 'e2emfd[export]' to run ONNX graphs"
        ) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"visible": visible.numpy(), "infrared": infrared.numpy()}
    if noise is not None:
        feeds["noise"] = noise.numpy()
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, feeds)))


def verify_onnx(model: E2EMFD, path: str | Path, meta: dict, seed: int = 0) -> dict:
    """Run the graph with onnxruntime and the model with PyTorch on the same random pair
    (2 images, 2 x 3 size-divisor blocks) and noise; returns the largest fused-pixel
    difference and, per image, the detections above 0.3 in each and the largest box
    difference among them (None where their counts or labels differ)."""
    gen = torch.Generator().manual_seed(seed)
    divisor = meta["size_divisor"]
    size = (2 * divisor, 3 * divisor)
    vis, ir = torch.rand(2, 3, *size, generator=gen), torch.rand(2, 1, *size, generator=gen)
    noise = None
    if "noise_shape" in meta:
        shape = [2 if d == "batch" else d for d in meta["noise_shape"]]
        noise = torch.randn(*shape, generator=gen)
    out = run_onnx(path, vis, ir, noise)
    model = model.float().cpu().eval()
    report: dict = {}
    if "fused" in out:
        expected = model.fuse(vis, ir)
        report["fused_max_diff"] = (torch.from_numpy(out["fused"]) - expected).abs().max().item()
    if noise is not None:
        sizes = torch.tensor([list(size)] * 2)
        got = select(meta, out, sizes)
        expected = model.detect(vis, ir, noise=noise)
        report["detections"] = [compare_detections(a, b) for a, b in zip(got, expected)]
    return report


def compare_detections(a: dict, b: dict, min_score: float = 0.3, margin: float = 1e-3) -> dict:
    """Two runs' detections of one image: every detection above ``min_score`` on either
    side is paired with the other side's detection of the same label and the nearest box,
    among those above ``min_score - margin`` (a score a hair from the threshold may fall
    on either side of it). Returns how many paired and did not, and the largest box and
    score differences of the pairs."""
    box_diff = score_diff = 0.0
    paired = unpaired = 0
    for one, other in ((a, b), (b, a)):
        near = other["scores"] > min_score - margin
        candidates = {k: v[near] for k, v in other.items()}
        for box, score, label in zip(one["boxes"], one["scores"], one["labels"]):
            if score <= min_score:
                continue
            same = candidates["labels"] == label
            if not same.any():
                unpaired += 1
                continue
            dist = (candidates["boxes"][same] - box).abs().amax(-1)
            j = int(dist.argmin())
            paired += 1
            box_diff = max(box_diff, float(dist[j]))
            score_diff = max(score_diff, float((candidates["scores"][same][j] - score).abs()))
    return {
        "paired": paired,
        "unpaired": unpaired,
        "box_max_diff": box_diff,
        "score_max_diff": score_diff,
    }
