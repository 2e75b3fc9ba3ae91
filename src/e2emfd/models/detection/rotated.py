"""Rotated CFDP: the diffusion detection head on oriented boxes (DroneVehicle).

The same coarse-to-fine diffusion process as :class:`~.cfdp.CFDPHead`, with boxes
``(cx, cy, w, h, angle)`` (le90, pixels) everywhere:

* the diffusion signal has five numbers per box, the angle included
  (:mod:`.rotated_boxes`); training pads the ground truth with random boxes of uniform
  angle, inference starts from Gaussian noise in all five;
* each stage pools its proposals with rotated RoIAlign (features in the box's own frame)
  and regresses ``(dx, dy, dw, dh, da)`` in that frame;
* matching and loss use the exact rotated IoU and a rotated GIoU loss (or a Gaussian KLD
  loss) (:mod:`.rotated_loss`);
* post-processing is per-class rotated NMS.

The stage modules, time embedding, schedule, DDIM and candidate selection are the
axis-aligned head's, imported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from e2emfd.config import DetectionConfig
from e2emfd.ops.rotated import MultiLevelRotatedRoIAlign, rotated_batched_nms

from .diffusion import BoxDiffusion, ddim_timesteps
from .head import RefinementStage, time_mlp
from .postprocess import topk_candidates
from .rotated_boxes import (
    BOX_DIM,
    apply_obb_deltas,
    image_scale,
    normalize_obb,
    obb_to_signal,
    random_normalized_obb,
    signal_to_obb,
)
from .rotated_loss import RotatedDynamicKMatcher, RotatedSetCriterion


class RotatedRefinementStage(RefinementStage):
    """A cascade stage with a five-number box regression (``(dx, dy, dw, dh, da)`` in the
    box's frame). Everything before the regression is the axis-aligned stage's."""

    def __init__(self, num_classes: int, **kwargs) -> None:
        super().__init__(num_classes, **kwargs)
        self.box_deltas = nn.Linear(self.hidden, BOX_DIM)

    def forward(
        self,
        roi_features: Tensor,
        boxes: Tensor,
        pro_features: Tensor | None,
        time_emb: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """roi_features: (B * N, hidden, S, S), image-major; boxes: (B, N, 5) le90 pixels;
        pro_features: (B, N, hidden) or None; time_emb: (B, 4 * hidden).

        Returns class logits (B, N, C), refined boxes (B, N, 5) float32 and the object
        features (B, N, hidden).
        """
        # the parent's forward ends in the axis-aligned decoding, so its body is repeated
        # here up to the regression
        b, n = boxes.shape[:2]
        rois = roi_features.flatten(2).transpose(1, 2)
        if pro_features is None:
            pro_features = rois.mean(1).view(b, n, self.hidden)
        attn = self.self_attn(pro_features, pro_features, pro_features, need_weights=False)[0]
        x = self.norm1(pro_features + self.dropout(attn)).reshape(b * n, self.hidden)
        x = self.norm2(x + self.dropout(self.inst_interact(x, rois)))
        obj = self.norm3(x + self.dropout(self.ffn(x))).view(b, n, self.hidden)

        scale, shift = self.time_scale_shift(time_emb)[:, None, :].chunk(2, dim=-1)
        fc = obj * (scale + 1) + shift
        logits = self.class_logits(self.cls_tower(fc))
        deltas = self.box_deltas(self.reg_tower(fc))
        return logits, apply_obb_deltas(deltas, boxes), obj


def select_rotated_detections(
    scores: Tensor,
    labels: Tensor,
    boxes: Tensor,
    image_wh: Tensor,
    nms_threshold: float = 0.5,
    max_detections: int = 100,
    score_threshold: float = 0.0,
) -> list[dict[str, Tensor]]:
    """Per image: drop boxes whose centre is outside the image (or empty, or non-finite),
    per-class rotated NMS, keep the best ``max_detections``.

    scores, labels: (B, K); boxes: (B, K, 5) le90 pixels; image_wh: (B, 2) ``[W, H]``.
    Boxes are not clipped (a rotated box cut by the image border is no longer a
    rectangle). Returns B dicts {"boxes": (D, 5), "scores": (D,), "labels": (D,)}, best
    first.
    """
    out = []
    for score, label, box, (width, height) in zip(scores, labels, boxes.float(), image_wh):
        ok = (
            torch.isfinite(box).all(1)
            & (box[:, 0] >= 0)
            & (box[:, 0] <= width)
            & (box[:, 1] >= 0)
            & (box[:, 1] <= height)
            & (box[:, 2] > 0)
            & (box[:, 3] > 0)
            & (score > score_threshold)
        )
        idx = ok.nonzero().squeeze(1)
        keep = idx[rotated_batched_nms(box[idx], score[idx], label[idx], nms_threshold)]
        keep = keep[:max_detections]
        out.append({"boxes": box[keep], "scores": score[keep], "labels": label[keep]})
    return out


class RotatedCFDPHead(nn.Module):
    """The diffusion detection head on rotated boxes; interface of :class:`~.cfdp.CFDPHead`.

    Args:
        cfg: the detection hyper-parameters; ``cfg.boxes`` must be ``"obb"``.
            ``cfg.loss_giou`` weighs the shape loss (see :mod:`.rotated_loss`).
        in_channels: channels of every pyramid level; must equal ``cfg.hidden``.
        feature_names / strides: the pyramid levels used for RoIAlign, finest first.
        ddim_eta: DDIM noise level at inference.
        renewal_threshold: with box renewal, proposals whose best score is not above this
            restart from noise between DDIM steps.
        shape_loss: ``"giou"`` (rotated GIoU, default) or ``"kld"``.
    """

    def __init__(
        self,
        cfg: DetectionConfig,
        in_channels: int = 256,
        feature_names: Sequence[str] = ("p2", "p3", "p4", "p5"),
        strides: Sequence[int] = (4, 8, 16, 32),
        ddim_eta: float = 1.0,
        renewal_threshold: float = 0.5,
        shape_loss: str = "giou",
    ) -> None:
        super().__init__()
        if cfg.boxes != "obb":
            raise ValueError(f"RotatedCFDPHead needs boxes='obb', got {cfg.boxes!r}")
        if not cfg.use_focal:
            raise NotImplementedError("RotatedCFDPHead supports sigmoid focal classification only")
        if in_channels != cfg.hidden:
            raise ValueError(f"in_channels ({in_channels}) must equal hidden ({cfg.hidden})")
        if len(feature_names) != len(strides):
            raise ValueError("feature_names and strides must have the same length")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.feature_names = tuple(feature_names)
        self.renewal_threshold = renewal_threshold

        self.pooler = MultiLevelRotatedRoIAlign(tuple(strides), cfg.pooler_resolution, 2)
        self.time_mlp = time_mlp(cfg.hidden)
        self.stages = nn.ModuleList(
            RotatedRefinementStage(
                cfg.num_classes,
                hidden=cfg.hidden,
                num_heads=cfg.num_heads,
                dim_dynamic=cfg.dim_dynamic,
                num_dynamic=cfg.num_dynamic,
                dim_feedforward=cfg.dim_feedforward,
                dropout=cfg.dropout,
                pooler_resolution=cfg.pooler_resolution,
            )
            for _ in range(cfg.num_stages)
        )
        self.diffusion = BoxDiffusion(cfg.timesteps, eta=ddim_eta)
        matcher = RotatedDynamicKMatcher(
            cost_class=cfg.loss_class,
            cost_l1=cfg.loss_l1,
            cost_giou=cfg.loss_giou,
            ota_k=cfg.ota_k,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
        )
        self.criterion = RotatedSetCriterion(
            matcher,
            weight_class=cfg.loss_class,
            weight_l1=cfg.loss_l1,
            weight_shape=cfg.loss_giou,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
            shape_loss=shape_loss,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # focal prior, as in the axis-aligned head
        bias = -math.log((1 - self.cfg.prior_prob) / self.cfg.prior_prob)
        for stage in self.stages:
            nn.init.constant_(stage.class_logits.bias, bias)

    box_dim = BOX_DIM

    @staticmethod
    def box_scale(image_sizes: Tensor) -> Tensor:
        """(B, 2) ``[h, w]`` -> (B, 4) ``[W, H, D, D]``: what box signals are relative to."""
        return image_scale(image_sizes)

    def refine(
        self, features: list[Tensor], boxes: Tensor, t: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run the cascade on proposals (B, N, 5) at timesteps t (B,); per stage the class
        logits (B, N, C) and refined boxes (B, N, 5), boxes detached between stages."""
        time_emb = self.time_mlp(t)
        # RoIAlign samples float32 maps: cast the pyramid once here, not once per stage
        features = [f.float() for f in features]
        all_logits, all_boxes = [], []
        pro_features = None
        for stage in self.stages:
            rois = self.pooler(features, boxes)
            logits, new_boxes, pro_features = stage(rois, boxes, pro_features, time_emb)
            all_logits.append(logits)
            all_boxes.append(new_boxes)
            boxes = new_boxes.detach()
        return all_logits, all_boxes

    def forward(
        self,
        features: dict[str, Tensor],
        image_sizes: Tensor,
        targets: list[dict[str, Tensor]] | None = None,
        *,
        num_proposals: int | None = None,
        sampling_steps: int | None = None,
    ) -> dict[str, Tensor] | list[dict[str, Tensor]]:
        """features: name -> (B, C, H/s, W/s); image_sizes: (B, 2) [h, w] before padding.
        targets (training): per image {"boxes": (N_i, 5) le90 pixels, "labels": (N_i,)}.

        Training: {"loss_cls", "loss_l1", "loss_giou" (or "loss_kld")} weighted and summed
        over stages.
        Inference: B dicts {"boxes": (K, 5) le90 pixels, "scores": (K,), "labels": (K,)}.
        """
        feats = [features[name] for name in self.feature_names]
        device = feats[0].device
        scale = self.box_scale(torch.as_tensor(image_sizes).to(device))
        if self.training and targets is not None:
            if len(targets) != scale.shape[0]:
                raise ValueError(f"{len(targets)} targets for a batch of {scale.shape[0]}")
            boxes, t = self.diffuse_targets(targets, scale)
            logits, pred_boxes = self.refine(feats, boxes, t)
            return self.criterion(logits, pred_boxes, targets, scale)
        n = self.cfg.inference_proposals(num_proposals)
        return self.sample(feats, scale, n, sampling_steps or self.cfg.sampling_steps)

    def diffuse_targets(
        self, targets: Sequence[dict[str, Tensor]], scale: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Noised training proposals (B, N, 5) and their timesteps (B,); a target's
        ``seed`` fixes its padding boxes, timestep and noise (see ``CFDPHead``)."""
        n, s = self.cfg.num_proposals, self.cfg.signal_scale
        device = scale.device
        starts, steps, noises = [], [], []
        for target, size in zip(targets, scale):
            gen = None
            if target.get("seed") is not None:
                gen = torch.Generator().manual_seed(int(target["seed"]))
            gt_boxes = target["boxes"].to(device=device, dtype=torch.float32).reshape(-1, 5)
            gt = normalize_obb(gt_boxes, size)
            g = gt.shape[0]
            if g > n:
                gt = gt[torch.randperm(g, generator=gen)[:n].to(device)]
            elif g < n:
                gt = torch.cat([gt, random_normalized_obb(n - g, generator=gen).to(device)])
            starts.append(gt)
            steps.append(torch.randint(0, self.cfg.timesteps, (1,), generator=gen))
            noises.append(torch.randn(n, BOX_DIM, generator=gen))
        x0 = (torch.stack(starts) * 2.0 - 1.0) * s
        t = torch.cat(steps).to(device)
        x_t = self.diffusion.q_sample(x0, t, torch.stack(noises).to(device))
        return signal_to_obb(x_t, scale[:, None], s), t

    @torch.no_grad()
    def sample(
        self, features: list[Tensor], scale: Tensor, num_proposals: int, steps: int
    ) -> list[dict[str, Tensor]]:
        """DDIM from Gaussian noise boxes, then rotated NMS; ``scale`` is (B, 4)."""
        noise = torch.randn(steps, scale.shape[0], num_proposals, BOX_DIM, device=scale.device)
        return self.select(self.candidates(features, scale, noise), scale)

    @torch.no_grad()
    def candidates(
        self, features: list[Tensor], scale: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The DDIM loop: scores, labels and le90 boxes of the best (proposal, class) pairs
        before NMS; ``noise`` (S, B, N, 5) holds the starting signals and each step's
        renewal draws (see :meth:`CFDPHead.candidates`), so the loop is CUDA-graph
        capturable."""
        cfg, s = self.cfg, self.cfg.signal_scale
        steps, b, num_proposals = noise.shape[:3]
        x = noise[0]
        candidates = []
        for step, (t, t_next) in enumerate(ddim_timesteps(cfg.timesteps, steps)):
            tt = torch.full((b,), t, device=scale.device, dtype=torch.long)
            logits, boxes = self.refine(features, signal_to_obb(x, scale[:, None], s), tt)
            logits, boxes = logits[-1], boxes[-1]
            candidates.append(topk_candidates(logits, boxes, num_proposals))
            if t_next < 0:
                break
            x0 = obb_to_signal(boxes, scale[:, None], s)
            eps = self.diffusion.predict_noise(x, tt, x0)
            x_next = self.diffusion.ddim_step(x0, eps, t, t_next)
            if cfg.box_renewal:
                keep = logits.float().sigmoid().amax(-1) > self.renewal_threshold
                x_next = torch.where(keep[..., None], x_next, noise[step + 1])
            x = x_next
        if not (cfg.use_ensemble and steps > 1):
            candidates = candidates[-1:]
        scores, labels, boxes = (torch.cat(parts, dim=1) for parts in zip(*candidates))
        return scores, labels, boxes

    def select(
        self, candidates: tuple[Tensor, Tensor, Tensor], scale: Tensor
    ) -> list[dict[str, Tensor]]:
        """Rotated NMS and the per-image detections of :meth:`candidates`' output."""
        cfg = self.cfg
        return select_rotated_detections(
            *candidates,
            scale[:, :2],
            nms_threshold=cfg.nms_threshold,
            max_detections=cfg.max_detections,
            score_threshold=cfg.score_threshold,
        )
