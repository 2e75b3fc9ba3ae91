"""The interface every box kind implements (see :mod:`e2emfd.boxes`)."""

from __future__ import annotations

import abc

import torch
from torch import Tensor

from e2emfd.config import DetectionConfig


class BoxCodec(abc.ABC):
    """One kind of box (axis-aligned or rotated) and everything the pipeline does with it.

    Frames: *pixel* boxes (what data, losses and outputs use), *normalised* boxes (every
    number in [0, 1] for a box inside the image, relative to :meth:`image_scale`), and
    the CFDP head's diffusion *signal* (normalised boxes mapped affinely to
    ``[-signal_scale, signal_scale]``). Shapes: ``(..., dim)`` unless stated.
    """

    kind: str  # the config value: "hbb" | "obb"
    dim: int  # numbers per box

    # ------------------------------------------------------------------- data side
    @abc.abstractmethod
    def rescale(self, boxes: Tensor, sx: float, sy: float) -> Tensor:
        """Boxes of an image resized by (sx, sy)."""

    @abc.abstractmethod
    def hflip(self, boxes: Tensor, width: float) -> Tensor:
        """Boxes of an image mirrored left-right."""

    @abc.abstractmethod
    def mask(self, boxes: Tensor, height: int, width: int) -> Tensor:
        """(H, W) bool: pixels whose centre lies in any of the (N, dim) boxes."""

    @abc.abstractmethod
    def area(self, boxes: Tensor) -> Tensor:
        """(...,) areas in pixels (0 for empty boxes)."""

    # ------------------------------------------------------------ diffusion signal
    @abc.abstractmethod
    def image_scale(self, image_sizes: Tensor) -> Tensor:
        """(B, 2) ``[h, w]`` -> (B, 4) float: what normalised boxes are relative to."""

    @abc.abstractmethod
    def normalize(self, boxes: Tensor, scale: Tensor) -> Tensor:
        """Pixel boxes -> normalised boxes; ``scale`` broadcasts against them."""

    @abc.abstractmethod
    def from_signal(self, signal: Tensor, scale: Tensor, signal_scale: float) -> Tensor:
        """Diffusion signal -> pixel boxes (always valid boxes: sizes >= 0)."""

    def to_signal(self, boxes: Tensor, scale: Tensor, signal_scale: float) -> Tensor:
        """Pixel boxes -> diffusion signal in ``[-signal_scale, signal_scale]``."""
        signal = (self.normalize(boxes, scale) * 2.0 - 1.0) * signal_scale
        return signal.clamp(-signal_scale, signal_scale)

    @abc.abstractmethod
    def random_normalized(
        self,
        num: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """(num, dim) normalised placeholder boxes that pad the ground truth in training."""

    @abc.abstractmethod
    def apply_deltas(self, deltas: Tensor, boxes: Tensor) -> Tensor:
        """Refine pixel boxes by a stage's regression output (..., dim), in float32."""

    # ------------------------------------------------------------------- pooling
    @abc.abstractmethod
    def roi_align(
        self,
        feature: Tensor,
        rois: Tensor,
        output_size: int,
        spatial_scale: float,
        sampling_ratio: int,
    ) -> Tensor:
        """Pool (K, 1 + dim) RoIs ``(batch index, box)`` from one (B, C, H, W) map ->
        (K, C, S, S) float32."""

    @abc.abstractmethod
    def sample_points(self, boxes: Tensor, output_size: int, ratio: int) -> tuple[Tensor, Tensor]:
        """Input-pixel coordinates x, y of the ``(S * ratio)^2`` sample points of each of
        (K, dim) boxes, as :meth:`roi_align` places them; (K, S * ratio, S * ratio) each
        (or shapes that broadcast to it)."""

    # ---------------------------------------------------------------- matching cost
    @abc.abstractmethod
    def l1_cost(self, boxes: Tensor, gt: Tensor, scale: Tensor) -> Tensor:
        """(N, G) L1 distance of normalised proposals (N, dim) to ground truth (G, dim)."""

    @abc.abstractmethod
    def overlap_cost(self, boxes: Tensor, gt: Tensor) -> tuple[Tensor, Tensor]:
        """(N, G) overlap the matching cost rewards, and (N, G) IoU (for dynamic k)."""

    @abc.abstractmethod
    def centre_prior(self, boxes: Tensor, gt: Tensor, radius: float) -> tuple[Tensor, Tensor]:
        """(N, G) bool: proposal centre strictly inside the box, and inside its centre
        region (+- ``radius`` x its size)."""

    # ----------------------------------------------------------------- inference
    @abc.abstractmethod
    def select(
        self, candidates: tuple[Tensor, Tensor, Tensor], scale: Tensor, cfg: DetectionConfig
    ) -> list[dict[str, Tensor]]:
        """Per image: the final detections (per-class NMS at ``cfg.nms_threshold``, scores
        above ``cfg.score_threshold``, the best ``cfg.max_detections``) of candidate scores,
        labels (B, K) and boxes (B, K, dim); ``scale`` (B, 4)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"
