"""The E2E-MFD network: one shared backbone, the ORPPT fusion head and the CFDP detection
head, trained together in one stage (Zhang et al., NeurIPS 2024).

``model(batch)`` in training mode returns each task's loss (the trainer balances them);
in eval mode it returns the fused image and the detections. ``fuse`` and ``detect`` are
the tensor-level APIs for arbitrary image sizes. All inference goes through
:meth:`E2EMFD.infer` (the network up to NMS, fixed shapes), which the CUDA-graph runner
captures too.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from e2emfd.boxes import box_codec
from e2emfd.config import ModelConfig
from e2emfd.losses.fusion import fusion_loss
from e2emfd.models.backbone import SharedBackbone
from e2emfd.models.color import restore_color
from e2emfd.models.detection import CFDPHead
from e2emfd.models.orppt import ORPPTHead

TASKS = ("detection", "fusion")


def pad_batch(image: Tensor, divisor: int = 32) -> Tensor:
    """Zero-pad (B, C, H, W) at the bottom/right to multiples of ``divisor``."""
    h, w = image.shape[-2:]
    ph, pw = math.ceil(h / divisor) * divisor - h, math.ceil(w / divisor) * divisor - w
    return F.pad(image, (0, pw, 0, ph)) if ph or pw else image


class E2EMFD(nn.Module):
    """Backbone + ORPPT + CFDP. Either head can be disabled (fusion-only or
    detection-only models); ``modality`` = ``vis`` or ``ir`` builds a single-modality
    detector for comparison runs (fusion needs both, so it must be disabled there)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        if not (cfg.fusion.enabled or cfg.detection.enabled):
            raise ValueError("model: enable at least one of model.fusion and model.detection")
        if cfg.detection.enabled and cfg.detection.hidden != cfg.backbone.out_channels:
            raise ValueError(
                f"model.detection.hidden ({cfg.detection.hidden}) must equal "
                f"model.backbone.out_channels ({cfg.backbone.out_channels}): the detection head "
                "reads the pyramid features directly"
            )
        if cfg.modality != "both" and cfg.fusion.enabled:
            raise ValueError(
                f"model.modality={cfg.modality} has one input, so it cannot fuse: "
                "set model.fusion.enabled=false"
            )
        self.cfg = cfg
        self.backbone = SharedBackbone(cfg.backbone, cfg.modality)
        channels = self.backbone.out_channels
        self.fusion = ORPPTHead(cfg.fusion, channels) if cfg.fusion.enabled else None
        # the fusion loss's object mask needs the box kind, with or without a detection head
        self.box_codec = box_codec(cfg.detection.boxes)
        self.detector = None
        if cfg.detection.enabled:
            self.detector = CFDPHead(
                cfg.detection,
                channels,
                tuple(self.backbone.names[:4]),
                tuple(self.backbone.strides[:4]),
            )

        if cfg.channels_last:
            self.to(memory_format=torch.channels_last)

    @property
    def size_divisor(self) -> int:
        """Images are zero-padded to multiples of this (``model.size_divisor``)."""
        return self.cfg.size_divisor

    def pad(self, image: Tensor) -> Tensor:
        """(B, C, H, W) zero-padded at the bottom/right to multiples of the size divisor."""
        return pad_batch(image, self.size_divisor)

    def layout(self, *images: Tensor) -> tuple[Tensor, ...]:
        """The inputs in the memory layout the convolutions run in (``channels_last``)."""
        if not self.cfg.channels_last:
            return images
        return tuple(x.contiguous(memory_format=torch.channels_last) for x in images)

    @property
    def tasks(self) -> tuple[str, ...]:
        return tuple(
            t for t in TASKS if getattr(self, "detector" if t == "detection" else t) is not None
        )

    def shared_parameters(self) -> list[nn.Parameter]:
        """The parameters both tasks train: backbone + FPN."""
        return [p for p in self.backbone.parameters() if p.requires_grad]

    def task_parameters(self) -> dict[str, list[nn.Parameter]]:
        heads = {"detection": self.detector, "fusion": self.fusion}
        return {t: [p for p in heads[t].parameters() if p.requires_grad] for t in self.tasks}

    def forward(
        self, batch: dict, tasks: tuple[str, ...] | None = None, feature_leaves: bool = False
    ) -> dict:
        """batch: ``vis`` (B, 3, H, W), ``ir`` (B, 1, H, W) in [0, 1], H and W multiples of
        the size divisor; ``image_sizes`` (B, 2); ``targets`` (training) as built by the
        collate.

        Training: ``{"losses": {task: scalar}, "terms": {name: scalar}}``; with
        ``feature_leaves`` the heads read detached copies of the pyramid and the output also
        holds ``"features": (pyramid, detached copies)``, so a multi-task balancer can
        backpropagate each head once and the shared trunk once per task.
        Eval: ``{"fused": (B, 1, H, W) luminance, "fused_rgb": (B, 3|1, H, W),
        "detections": list of B dicts or None}``, in the padded input frame.
        """
        tasks = self.tasks if tasks is None else tuple(t for t in tasks if t in self.tasks)
        if not self.training:
            inferred = self.infer(batch["vis"], batch["ir"], batch["image_sizes"], tasks=tasks)
            return self.finish(inferred)
        vis, ir = self.layout(batch["vis"], batch["ir"])
        sizes = batch["image_sizes"]
        features = self.backbone(vis, ir)
        trunk = None
        if feature_leaves:
            trunk = features
            features = {k: v.detach().requires_grad_() for k, v in features.items()}
        # Losses in TASKS order (detection, fusion): the balancer's statistics
        # (norm ratio |g_det| / |g_fus|) follow it.
        losses, terms = {}, {}
        if "detection" in tasks:
            parts = self.detector(features, sizes, batch["targets"])
            losses["detection"] = sum(parts.values())
            terms.update(parts)
        if "fusion" in tasks:
            boxes = [t["boxes"] for t in batch["targets"]]
            window, inner = self.fusion_window(vis.shape[-2:])
            out = self.fusion(features, vis, ir, window)
            fused, lum = out["fused"], out["luminance"]
            if inner is not None:  # the window's margin only made its inside exact
                (y0, x0, y1, x1), (top, left) = inner, window[:2]
                fused = fused[..., y0 - top : y1 - top, x0 - left : x1 - left]
                lum = lum[..., y0 - top : y1 - top, x0 - left : x1 - left]
                ir = ir[..., y0:y1, x0:x1]
            parts = fusion_loss(
                fused,
                ir,
                lum,
                boxes,
                sizes,
                self.cfg.fusion,
                self.box_codec,
                offset=None if inner is None else inner[:2],
            )
            losses["fusion"] = sum(parts.values())
            terms.update(parts)
        out = {"losses": losses, "terms": terms}
        if trunk is not None:
            out["features"] = (list(trunk.values()), list(features.values()))
        return out

    def fusion_window(
        self, size: tuple[int, int]
    ) -> tuple[tuple[int, int, int, int] | None, tuple[int, int, int, int] | None]:
        """In training with ``model.fusion.train_crop`` < 1: a random region (top, left,
        bottom, right) of the padded frame whose sides are that fraction of the frame's,
        where the fusion loss is taken, and the window around it (the region grown by the
        fusion head's receptive radius, within the frame) that the head computes.
        Returns ``(window, region)``, or ``(None, None)`` for the whole image."""
        fraction = self.cfg.fusion.train_crop
        if fraction >= 1.0:
            return None, None
        height, width = int(size[0]), int(size[1])
        h, w = max(1, round(height * fraction)), max(1, round(width * fraction))
        top = int(torch.randint(0, height - h + 1, ()))
        left = int(torch.randint(0, width - w + 1, ()))
        region = (top, left, top + h, left + w)
        m = self.fusion.receptive_radius
        window = (
            max(0, top - m),
            max(0, left - m),
            min(height, top + h + m),
            min(width, left + w + m),
        )
        return window, region

    def infer(
        self,
        vis: Tensor,
        ir: Tensor,
        image_sizes: Tensor,
        noise: Tensor | None = None,
        *,
        tasks: tuple[str, ...] | None = None,
        num_proposals: int | None = None,
        sampling_steps: int | None = None,
    ) -> dict:
        """The inference forward up to NMS, with fixed shapes and no host synchronisation
        (what a CUDA graph captures).

        vis (B, 3, H, W), ir (B, 1, H, W) in [0, 1], H and W multiples of the size
        divisor; image_sizes (B, 2) [h, w] before padding. ``noise``: every random draw of
        the detector's DDIM loop, (2 * steps - 1, B, N, dim) (``draw_noise``); default:
        drawn from the global generator, with the config's (or the given) proposals and
        steps.

        Returns ``{"fused": (B, 1, H, W) luminance, "fused_rgb": (B, 3|1, H, W),
        "candidates": (scores, labels, boxes) before NMS, "scale": (B, 4) box scale}``
        (None for a task not run), in the padded input frame; :meth:`finish` selects the
        detections.
        """
        tasks = self.tasks if tasks is None else tuple(t for t in tasks if t in self.tasks)
        vis, ir = self.layout(vis, ir)
        features = self.backbone(vis, ir)
        out: dict = {"fused": None, "fused_rgb": None, "candidates": None, "scale": None}
        if "fusion" in tasks:
            fused = self.fusion(features, vis, ir)["fused"]
            out["fused"] = fused
            out["fused_rgb"] = restore_color(fused, vis.float(), self.cfg.fusion.color)
        if "detection" in tasks:
            head = self.detector
            scale = head.box_scale(torch.as_tensor(image_sizes).to(vis.device))
            if noise is None:
                noise = head.draw_noise(
                    vis.shape[0],
                    head.cfg.inference_proposals(num_proposals),
                    sampling_steps or head.cfg.sampling_steps,
                    vis.device,
                )
            feats = [features[name] for name in head.feature_names]
            out["candidates"] = head.candidates(feats, scale, noise)
            out["scale"] = scale
        return out

    def finish(self, inferred: dict) -> dict:
        """:meth:`infer`'s output -> ``{"fused", "fused_rgb", "detections"}``: NMS on the
        candidates, B dicts {"boxes", "scores", "labels"} (None without detection)."""
        detections = None
        if inferred["candidates"] is not None:
            detections = self.detector.select(inferred["candidates"], inferred["scale"])
        return {
            "fused": inferred["fused"],
            "fused_rgb": inferred["fused_rgb"],
            "detections": detections,
        }

    @torch.no_grad()
    def fuse(self, vis: Tensor, ir: Tensor, color: str | None = None) -> Tensor:
        """Fused images for (B, 3, H, W) visible and (B, 1, H, W) infrared in [0, 1], any
        H, W: (B, 3, H, W) RGB, or (B, 1, H, W) for ``color="gray"``."""
        if self.fusion is None:
            raise ValueError("this model has no fusion head (model.fusion.enabled=false)")
        b, _, h, w = vis.shape
        sizes = torch.tensor([[h, w]] * b, device=vis.device)
        out = self.infer(self.pad(vis), self.pad(ir), sizes, tasks=("fusion",))
        if color is None or color == self.cfg.fusion.color:
            # colour restoration is per pixel: the crop of the padded result is the result
            return out["fused_rgb"][..., :h, :w]
        return restore_color(out["fused"][..., :h, :w], vis.float(), color)

    @torch.no_grad()
    def detect(self, vis: Tensor, ir: Tensor, **kwargs) -> list[dict[str, Tensor]]:
        """Detections for one batch of same-size images in [0, 1], any H, W; boxes in the
        input's pixels. kwargs: ``noise``, ``num_proposals``, ``sampling_steps`` (see
        :meth:`infer`)."""
        if self.detector is None:
            raise ValueError("this model has no detection head (model.detection.enabled=false)")
        b, _, h, w = vis.shape
        sizes = torch.tensor([[h, w]] * b, device=vis.device)
        out = self.infer(self.pad(vis), self.pad(ir), sizes, tasks=("detection",), **kwargs)
        return self.finish(out)["detections"]


def build_model(cfg: ModelConfig) -> E2EMFD:
    return E2EMFD(cfg)
