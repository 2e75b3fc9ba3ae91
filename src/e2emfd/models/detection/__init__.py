"""CFDP: the diffusion detection head (DiffusionDet) of E2E-MFD, for axis-aligned and
rotated boxes (the box kind is a codec, :mod:`e2emfd.boxes`)."""

from .cfdp import CFDPHead, DetectionHead
from .diffusion import BoxDiffusion, cosine_alphas_cumprod, ddim_timesteps
from .head import DynamicConv, RefinementStage
from .matcher import DynamicKMatcher, dynamic_k_assign
from .pooler import MultiLevelRoIAlign, assign_levels

__all__ = [
    "BoxDiffusion",
    "CFDPHead",
    "DetectionHead",
    "DynamicConv",
    "DynamicKMatcher",
    "MultiLevelRoIAlign",
    "RefinementStage",
    "assign_levels",
    "cosine_alphas_cumprod",
    "ddim_timesteps",
    "dynamic_k_assign",
]
