"""CFDP: the Coarse-to-Fine Diffusion Process detection head of E2E-MFD (= DiffusionDet).

Detection is the denoising of boxes. In training, the ground-truth boxes of each image
(padded with random boxes to N proposals) are noised to a random diffusion timestep and
a cascade of refinement stages learns to recover them; every stage is supervised. At
inference, N pure-noise boxes are denoised by DDIM in S steps (default 1); N and S can
change without retraining.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from e2emfd.config import DetectionConfig
from e2emfd.losses.detection import SetCriterion

from .boxes import (
    BOX_DIM,
    boxes_to_signal,
    image_whwh,
    normalize_boxes,
    random_normalized_boxes,
    signal_to_boxes,
)
from .diffusion import BoxDiffusion, ddim_timesteps
from .head import RefinementStage, time_mlp
from .matcher import DynamicKMatcher
from .pooler import MultiLevelRoIAlign
from .postprocess import select_detections, topk_candidates


class CFDPHead(nn.Module):
    """The diffusion detection head on a feature pyramid.

    Args:
        cfg: the detection hyper-parameters (only axis-aligned boxes and focal
            classification are implemented here).
        in_channels: channels of every pyramid level; must equal ``cfg.hidden``.
        feature_names / strides: the pyramid levels used for RoIAlign, finest first.
        ddim_eta: DDIM noise level at inference (DiffusionDet uses 1.0).
        renewal_threshold: with box renewal, proposals whose best score is not above this
            are replaced by fresh noise between DDIM steps.
    """

    def __init__(
        self,
        cfg: DetectionConfig,
        in_channels: int = 256,
        feature_names: Sequence[str] = ("p2", "p3", "p4", "p5"),
        strides: Sequence[int] = (4, 8, 16, 32),
        ddim_eta: float = 1.0,
        renewal_threshold: float = 0.5,
    ) -> None:
        super().__init__()
        if cfg.boxes != "hbb":
            raise NotImplementedError(f"CFDPHead supports boxes='hbb' only, got {cfg.boxes!r}")
        if not cfg.use_focal:
            raise NotImplementedError("CFDPHead supports sigmoid focal classification only")
        if in_channels != cfg.hidden:
            raise ValueError(f"in_channels ({in_channels}) must equal hidden ({cfg.hidden})")
        if len(feature_names) != len(strides):
            raise ValueError("feature_names and strides must have the same length")
        self.cfg = cfg
        self.num_classes = cfg.num_classes
        self.feature_names = tuple(feature_names)
        self.renewal_threshold = renewal_threshold

        self.pooler = MultiLevelRoIAlign(tuple(strides), cfg.pooler_resolution, sampling_ratio=2)
        self.time_mlp = time_mlp(cfg.hidden)
        self.stages = nn.ModuleList(
            RefinementStage(
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
        matcher = DynamicKMatcher(
            cost_class=cfg.loss_class,
            cost_l1=cfg.loss_l1,
            cost_giou=cfg.loss_giou,
            ota_k=cfg.ota_k,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
        )
        self.criterion = SetCriterion(
            matcher,
            weight_class=cfg.loss_class,
            weight_l1=cfg.loss_l1,
            weight_giou=cfg.loss_giou,
            focal_alpha=cfg.focal_alpha,
            focal_gamma=cfg.focal_gamma,
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)
        # focal prior: every class starts at probability prior_prob, so the many
        # background proposals do not swamp the loss in the first iterations
        bias = -math.log((1 - self.cfg.prior_prob) / self.cfg.prior_prob)
        for stage in self.stages:
            nn.init.constant_(stage.class_logits.bias, bias)

    # ------------------------------------------------------------------------------------

    box_dim = BOX_DIM

    @staticmethod
    def box_scale(image_sizes: Tensor) -> Tensor:
        """(B, 2) ``[h, w]`` -> (B, 4) ``[w, h, w, h]``: what box signals are relative to."""
        return image_whwh(image_sizes)

    def refine(
        self, features: list[Tensor], boxes: Tensor, t: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run the cascade on proposals ``boxes`` (B, N, 4) pixel xyxy at timesteps t (B,).

        Returns per stage the class logits (B, N, C) and refined boxes (B, N, 4) float32.
        Boxes are detached between stages; proposal features are passed on.
        """
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
        """features: name -> (B, C, H/s, W/s) of a batch padded to a multiple of 32.
        image_sizes: (B, 2) [h, w] of each image before padding (boxes live in that frame).
        targets (training): per image {"boxes": (N_i, 4) xyxy pixels float, "labels":
        (N_i,) int64 in [0, num_classes)}; N_i may be 0.

        Training (``self.training`` and targets given): dict of weighted loss terms summed
        over all stages: "loss_cls", "loss_l1", "loss_giou" (scalars).
        Inference: list of B dicts {"boxes": (K, 4) xyxy in the image_sizes frame, clipped,
        "scores": (K,), "labels": (K,) int64}, K <= max_detections. ``num_proposals`` and
        ``sampling_steps`` override the config.
        """
        feats = [features[name] for name in self.feature_names]
        device = feats[0].device
        whwh = self.box_scale(torch.as_tensor(image_sizes).to(device))
        if self.training and targets is not None:
            if len(targets) != whwh.shape[0]:
                raise ValueError(f"{len(targets)} targets for a batch of {whwh.shape[0]}")
            boxes, t = self.diffuse_targets(targets, whwh)
            logits, pred_boxes = self.refine(feats, boxes, t)
            return self.criterion(logits, pred_boxes, targets, whwh)
        n = self.cfg.inference_proposals(num_proposals)
        return self.sample(feats, whwh, n, sampling_steps or self.cfg.sampling_steps)

    def diffuse_targets(
        self, targets: Sequence[dict[str, Tensor]], whwh: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Noised training proposals: (B, N, 4) pixel xyxy and their timesteps (B,) int64.

        A target with a ``seed`` (the training sampler gives each sample one) draws its
        padding boxes, timestep and noise from its own generator, so an image is noised
        the same way whatever batch or process it lands in (multi-process training then
        matches one process exactly); without one, the global generator is used.
        """
        n, scale = self.cfg.num_proposals, self.cfg.signal_scale
        device = whwh.device
        starts, steps, noises = [], [], []
        for target, size in zip(targets, whwh):
            gen = None
            if target.get("seed") is not None:
                gen = torch.Generator().manual_seed(int(target["seed"]))
            gt = normalize_boxes(target["boxes"].to(device=device, dtype=torch.float32), size)
            g = gt.shape[0]
            if g > n:  # more objects than proposals: diffuse a random subset
                gt = gt[torch.randperm(g, generator=gen)[:n].to(device)]
            elif g < n:
                gt = torch.cat([gt, random_normalized_boxes(n - g, generator=gen).to(device)])
            starts.append(gt)
            steps.append(torch.randint(0, self.cfg.timesteps, (1,), generator=gen))
            noises.append(torch.randn(n, gt.shape[1], generator=gen))
        x0 = (torch.stack(starts) * 2.0 - 1.0) * scale
        t = torch.cat(steps).to(device)
        x_t = self.diffusion.q_sample(x0, t, torch.stack(noises).to(device))
        return signal_to_boxes(x_t, whwh[:, None], scale), t

    @torch.no_grad()
    def sample(
        self, features: list[Tensor], whwh: Tensor, num_proposals: int, steps: int
    ) -> list[dict[str, Tensor]]:
        """DDIM from Gaussian noise boxes, then NMS; ``whwh`` is (B, 4). See :meth:`forward`."""
        noise = torch.randn(steps, whwh.shape[0], num_proposals, BOX_DIM, device=whwh.device)
        return self.select(self.candidates(features, whwh, noise), whwh)

    @torch.no_grad()
    def candidates(
        self, features: list[Tensor], whwh: Tensor, noise: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The DDIM loop: scores (B, K), labels (B, K) and pixel boxes (B, K, 4) of the best
        (proposal, class) pairs, before NMS.

        ``noise`` (S, B, N, 4) holds every random draw of S DDIM steps: the starting box
        signals, then the fresh boxes of each renewal. With the randomness an input, the
        loop has fixed shapes, no host synchronisation and no generator state, so a CUDA
        graph can capture it and replay it with the same result as the eager loop.
        """
        cfg, scale = self.cfg, self.cfg.signal_scale
        steps, b, num_proposals = noise.shape[:3]
        x = noise[0]
        candidates = []
        for step, (t, t_next) in enumerate(ddim_timesteps(cfg.timesteps, steps)):
            tt = torch.full((b,), t, device=whwh.device, dtype=torch.long)
            logits, boxes = self.refine(features, signal_to_boxes(x, whwh[:, None], scale), tt)
            logits, boxes = logits[-1], boxes[-1]
            candidates.append(topk_candidates(logits, boxes, num_proposals))
            if t_next < 0:
                break
            x0 = boxes_to_signal(boxes, whwh[:, None], scale)
            eps = self.diffusion.predict_noise(x, tt, x0)
            x_next = self.diffusion.ddim_step(x0, eps, t, t_next)
            if cfg.box_renewal:
                # proposals that found nothing restart from fresh noise (in place, so every
                # image keeps N proposals and the batch stays rectangular)
                keep = logits.float().sigmoid().amax(-1) > self.renewal_threshold
                x_next = torch.where(keep[..., None], x_next, noise[step + 1])
            x = x_next
        if not (cfg.use_ensemble and steps > 1):
            candidates = candidates[-1:]
        scores, labels, boxes = (torch.cat(parts, dim=1) for parts in zip(*candidates))
        return scores, labels, boxes

    def select(
        self, candidates: tuple[Tensor, Tensor, Tensor], whwh: Tensor
    ) -> list[dict[str, Tensor]]:
        """NMS and the per-image detections of :meth:`candidates`' output."""
        cfg = self.cfg
        return select_detections(
            *candidates,
            whwh,
            self.num_classes,
            nms_threshold=cfg.nms_threshold,
            max_detections=cfg.max_detections,
            score_threshold=cfg.score_threshold,
        )
