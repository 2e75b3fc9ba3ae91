"""CFDP: the Coarse-to-Fine Diffusion Process detection head of E2E-MFD (= DiffusionDet),
for axis-aligned or rotated boxes.

Detection is the denoising of boxes. In training, the ground-truth boxes of each image
(padded with random boxes to N proposals) are noised to a random diffusion timestep and
a cascade of refinement stages learns to recover them; every stage is supervised. At
inference, N pure-noise boxes are denoised by DDIM in S steps (default 1); N and S can
change without retraining.

The box kind (``cfg.boxes``) only changes the box codec (:mod:`e2emfd.boxes`): the
diffusion signal (five numbers with the angle for rotated boxes, which training pads with
random boxes of uniform angle), the deltas each stage regresses (in the box's own frame
for rotated boxes), the RoIAlign (rotated boxes are pooled in their own frame), the
matching cost, the box loss terms and NMS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from e2emfd.boxes import BoxCodec, box_codec
from e2emfd.config import DetectionConfig
from e2emfd.losses.detection import SetCriterion

from .diffusion import BoxDiffusion, ddim_timesteps
from .head import RefinementStage, time_mlp
from .matcher import DynamicKMatcher
from .pooler import MultiLevelRoIAlign
from .postprocess import topk_candidates

Candidates = tuple[Tensor, Tensor, Tensor]  # scores (B, K), labels (B, K), boxes (B, K, dim)


class DetectionHead(Protocol):
    """What inference code outside the model (the CUDA-graph runner) relies on: the DDIM
    loop up to NMS with fixed shapes and every random draw an input (``candidates``), and
    NMS after it (``select``)."""

    cfg: DetectionConfig
    codec: BoxCodec
    feature_names: tuple[str, ...]

    def box_scale(self, image_sizes: Tensor) -> Tensor: ...

    def draw_noise(self, batch: int, num_proposals: int, steps: int, device) -> Tensor: ...

    def noise_steps(self, noise: Tensor) -> int: ...

    def candidates(self, features: list[Tensor], scale: Tensor, noise: Tensor) -> Candidates: ...

    def select(self, candidates: Candidates, scale: Tensor) -> list[dict[str, Tensor]]: ...


class CFDPHead(nn.Module):
    """The diffusion detection head on a feature pyramid.

    Args:
        cfg: the detection hyper-parameters (``cfg.boxes`` picks the box kind).
        in_channels: channels of every pyramid level; must equal ``cfg.hidden``.
        feature_names / strides: the pyramid levels used for RoIAlign, finest first.
    """

    def __init__(
        self,
        cfg: DetectionConfig,
        in_channels: int = 256,
        feature_names: Sequence[str] = ("p2", "p3", "p4", "p5"),
        strides: Sequence[int] = (4, 8, 16, 32),
    ) -> None:
        super().__init__()
        if in_channels != cfg.hidden:
            raise ValueError(f"in_channels ({in_channels}) must equal hidden ({cfg.hidden})")
        if len(feature_names) != len(strides):
            raise ValueError("feature_names and strides must have the same length")
        self.cfg = cfg
        self.codec = box_codec(cfg.boxes)
        self.num_classes = cfg.num_classes
        self.feature_names = tuple(feature_names)

        self.pooler = MultiLevelRoIAlign(
            self.codec, tuple(strides), cfg.pooler_resolution, sampling_ratio=2
        )
        self.time_mlp = time_mlp(cfg.hidden)
        self.stages = nn.ModuleList(
            RefinementStage(
                cfg.num_classes,
                self.codec,
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
        self.diffusion = BoxDiffusion(cfg.timesteps, eta=cfg.ddim_eta)
        self.criterion = SetCriterion(DynamicKMatcher(self.codec, cfg), self.codec, cfg)
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

    def box_scale(self, image_sizes: Tensor) -> Tensor:
        """(B, 2) ``[h, w]`` -> (B, 4): what box signals are relative to (see the codec)."""
        return self.codec.image_scale(image_sizes)

    def refine(
        self, features: list[Tensor], boxes: Tensor, t: Tensor
    ) -> tuple[list[Tensor], list[Tensor]]:
        """Run the cascade on proposals ``boxes`` (B, N, dim) pixels at timesteps t (B,).

        Returns per stage the class logits (B, N, C) and refined boxes (B, N, dim) float32.
        Boxes are detached between stages; proposal features are passed on.
        """
        time_emb = self.time_mlp(t)
        # RoIAlign samples float32 maps: cast the pyramid once here, not once per stage
        features = self.pooler.prepare([f.float() for f in features])
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
        """features: name -> (B, C, H/s, W/s) of a batch padded to the size divisor.
        image_sizes: (B, 2) [h, w] of each image before padding (boxes live in that frame).
        targets (training): per image {"boxes": (N_i, dim) pixels float, "labels": (N_i,)
        int64 in [0, num_classes)}; N_i may be 0.

        Training (``self.training`` and targets given): dict of weighted loss terms summed
        over all stages: "loss_cls", "loss_l1", "loss_<shape_loss>" (scalars).
        Inference: list of B dicts {"boxes": (K, dim) in the image_sizes frame (axis-aligned
        boxes clipped to the image), "scores": (K,), "labels": (K,) int64}, K <=
        max_detections. ``num_proposals`` and ``sampling_steps`` override the config.
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
        steps = sampling_steps or self.cfg.sampling_steps
        noise = self.draw_noise(scale.shape[0], n, steps, device)
        return self.select(self.candidates(feats, scale, noise), scale)

    def diffuse_targets(
        self, targets: Sequence[dict[str, Tensor]], scale: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Noised training proposals: (B, N, dim) pixels and their timesteps (B,) int64.

        A target with a ``seed`` (the training sampler gives each sample one) draws its
        padding boxes, timestep and noise from its own generator, so an image is noised
        the same way whatever batch or process it lands in (multi-process training then
        matches one process exactly); without one, the global generator is used.
        """
        n, signal_scale, dim = self.cfg.num_proposals, self.cfg.signal_scale, self.codec.dim
        device = scale.device
        starts, steps, noises = [], [], []
        for target, size in zip(targets, scale):
            gen = None
            if target.get("seed") is not None:
                gen = torch.Generator().manual_seed(int(target["seed"]))
            gt_boxes = target["boxes"].to(device=device, dtype=torch.float32).reshape(-1, dim)
            gt = self.codec.normalize(gt_boxes, size)
            g = gt.shape[0]
            if g > n:  # more objects than proposals: diffuse a random subset
                gt = gt[torch.randperm(g, generator=gen)[:n].to(device)]
            elif g < n:
                gt = torch.cat([gt, self.codec.random_normalized(n - g, generator=gen).to(device)])
            starts.append(gt)
            steps.append(torch.randint(0, self.cfg.timesteps, (1,), generator=gen))
            noises.append(torch.randn(n, dim, generator=gen))
        x0 = (torch.stack(starts) * 2.0 - 1.0) * signal_scale
        t = torch.cat(steps).to(device)
        x_t = self.diffusion.q_sample(x0, t, torch.stack(noises).to(device))
        return self.codec.from_signal(x_t, scale[:, None], signal_scale), t

    def draw_noise(self, batch: int, num_proposals: int, steps: int, device) -> Tensor:
        """Every random draw of a DDIM loop of ``steps`` steps, from the global generator:
        (2 * steps - 1, B, N, dim) Gaussian box signals: the starting signals, the fresh
        boxes of each of the ``steps - 1`` renewals, then the noise of each of the
        ``steps - 1`` DDIM updates (see :meth:`candidates`)."""
        return torch.randn(2 * steps - 1, batch, num_proposals, self.codec.dim, device=device)

    @staticmethod
    def noise_steps(noise: Tensor) -> int:
        """The DDIM steps a :meth:`draw_noise` tensor serves."""
        return (noise.shape[0] + 1) // 2

    @torch.no_grad()
    def candidates(self, features: list[Tensor], scale: Tensor, noise: Tensor) -> Candidates:
        """The DDIM loop: scores (B, K), labels (B, K) and pixel boxes (B, K, dim) of the
        best (proposal, class) pairs, before NMS.

        ``noise`` (2S - 1, B, N, dim) holds every random draw of S DDIM steps
        (:meth:`draw_noise`): the starting box signals, the fresh boxes of each renewal and
        the noise of each DDIM update. With the randomness an input, the loop has fixed
        shapes, no host synchronisation and no generator state, so a CUDA graph can capture
        it and replay it with the same result as the eager loop, and an ONNX graph can take
        it as an input.
        """
        cfg, signal_scale = self.cfg, self.cfg.signal_scale
        steps = self.noise_steps(noise)
        b, num_proposals = noise.shape[1:3]
        x = noise[0]
        candidates = []
        for step, (t, t_next) in enumerate(ddim_timesteps(cfg.timesteps, steps)):
            tt = torch.full((b,), t, device=scale.device, dtype=torch.long)
            boxes = self.codec.from_signal(x, scale[:, None], signal_scale)
            logits, boxes = self.refine(features, boxes, tt)
            logits, boxes = logits[-1], boxes[-1]
            candidates.append(topk_candidates(logits, boxes, num_proposals))
            if t_next < 0:
                break
            x0 = self.codec.to_signal(boxes, scale[:, None], signal_scale)
            eps = self.diffusion.predict_noise(x, tt, x0)
            x_next = self.diffusion.ddim_step(
                x0, eps, t, t_next, noise[steps + step], eta=cfg.ddim_eta
            )
            if cfg.box_renewal:
                # proposals that found nothing restart from fresh noise (in place, so every
                # image keeps N proposals and the batch stays rectangular)
                keep = logits.float().sigmoid().amax(-1) > cfg.renewal_threshold
                x_next = torch.where(keep[..., None], x_next, noise[step + 1])
            x = x_next
        if not (cfg.use_ensemble and steps > 1):
            candidates = candidates[-1:]
        scores, labels, boxes = (torch.cat(parts, dim=1) for parts in zip(*candidates))
        return scores, labels, boxes

    def select(self, candidates: Candidates, scale: Tensor) -> list[dict[str, Tensor]]:
        """NMS and the per-image detections of :meth:`candidates`' output."""
        return self.codec.select(candidates, scale, self.cfg)
