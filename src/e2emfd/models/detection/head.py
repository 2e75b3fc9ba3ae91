"""One refinement stage of the CFDP head (Sparse R-CNN's dynamic head with a timestep).

A stage takes each proposal's RoI feature and its "proposal feature" (the previous
stage's object feature, or the mean RoI feature at the first stage), lets the proposals
of one image attend to each other, mixes each proposal's RoI feature with weights
generated from its own proposal feature (DynamicConv), applies an FFN, modulates the
result by the diffusion timestep (scale and shift), and predicts class logits and box
deltas relative to the incoming boxes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from e2emfd.boxes import BoxCodec


class SinusoidalTimeEmbedding(nn.Module):
    """Timesteps (B,) -> (B, dim) sin/cos features (Transformer positional encoding)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim % 2 or dim < 4:
            raise ValueError(f"time embedding dim must be even and >= 4, got {dim}")
        self.dim = dim

    def forward(self, t: Tensor) -> Tensor:
        half = self.dim // 2
        freqs = torch.exp(
            torch.arange(half, device=t.device, dtype=torch.float32)
            * (-math.log(10000.0) / (half - 1))
        )
        angles = t.float()[:, None] * freqs[None, :]
        return torch.cat([angles.sin(), angles.cos()], dim=-1)


def time_mlp(hidden: int) -> nn.Sequential:
    """Timesteps (B,) -> (B, 4 * hidden), shared by all stages."""
    return nn.Sequential(
        SinusoidalTimeEmbedding(hidden),
        nn.Linear(hidden, 4 * hidden),
        nn.GELU(),
        nn.Linear(4 * hidden, 4 * hidden),
    )


class DynamicConv(nn.Module):
    """Instance interaction: per-proposal 1x1 convolutions whose weights are generated
    from the proposal feature, applied to that proposal's RoI feature.

    ``num_dynamic`` generated layers map ``hidden -> dim_dynamic -> ... -> hidden``
    (each followed by LayerNorm and ReLU); the result is flattened over the S x S bins
    and projected back to ``hidden``.
    """

    def __init__(
        self, hidden: int, dim_dynamic: int, num_dynamic: int = 2, pooler_resolution: int = 7
    ) -> None:
        super().__init__()
        if num_dynamic < 1:
            raise ValueError(f"num_dynamic must be >= 1, got {num_dynamic}")
        dims = [hidden] + [dim_dynamic] * (num_dynamic - 1) + [hidden]
        self.shapes = list(zip(dims[:-1], dims[1:]))
        self.dynamic_layer = nn.Linear(hidden, sum(a * b for a, b in self.shapes))
        self.norms = nn.ModuleList(nn.LayerNorm(b) for _, b in self.shapes)
        self.out_layer = nn.Linear(hidden * pooler_resolution**2, hidden)
        self.out_norm = nn.LayerNorm(hidden)

    def forward(self, pro_features: Tensor, roi_features: Tensor) -> Tensor:
        """pro_features: (M, hidden); roi_features: (M, S*S, hidden) -> (M, hidden)."""
        params = self.dynamic_layer(pro_features)
        x = roi_features
        start = 0
        for (a, b), norm in zip(self.shapes, self.norms):
            weight = params[:, start : start + a * b].view(-1, a, b)
            start += a * b
            x = torch.relu(norm(torch.bmm(x, weight)))
        return torch.relu(self.out_norm(self.out_layer(x.flatten(1))))


def _linear_norm_relu(hidden: int, num: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(num):
        layers += [nn.Linear(hidden, hidden, bias=False), nn.LayerNorm(hidden), nn.ReLU()]
    return nn.Sequential(*layers)


class RefinementStage(nn.Module):
    """One cascade stage. ``hidden`` must equal the channel count of the RoI features; the
    box regression has one output per number of the ``codec``'s boxes, decoded by it."""

    def __init__(
        self,
        num_classes: int,
        codec: BoxCodec,
        hidden: int = 256,
        num_heads: int = 8,
        dim_dynamic: int = 64,
        num_dynamic: int = 2,
        dim_feedforward: int = 2048,
        dropout: float = 0.0,
        pooler_resolution: int = 7,
        num_cls_layers: int = 1,
        num_reg_layers: int = 3,
    ) -> None:
        super().__init__()
        self.hidden = hidden
        self.codec = codec
        self.self_attn = nn.MultiheadAttention(hidden, num_heads, dropout=dropout, batch_first=True)
        self.norm1 = nn.LayerNorm(hidden)
        self.inst_interact = DynamicConv(hidden, dim_dynamic, num_dynamic, pooler_resolution)
        self.norm2 = nn.LayerNorm(hidden)
        self.ffn = nn.Sequential(
            nn.Linear(hidden, dim_feedforward),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(dim_feedforward, hidden),
        )
        self.norm3 = nn.LayerNorm(hidden)
        self.dropout = nn.Dropout(dropout)
        self.time_scale_shift = nn.Sequential(nn.SiLU(), nn.Linear(4 * hidden, 2 * hidden))
        self.cls_tower = _linear_norm_relu(hidden, num_cls_layers)
        self.reg_tower = _linear_norm_relu(hidden, num_reg_layers)
        self.class_logits = nn.Linear(hidden, num_classes)
        self.box_deltas = nn.Linear(hidden, codec.dim)

    def forward(
        self,
        roi_features: Tensor,
        boxes: Tensor,
        pro_features: Tensor | None,
        time_emb: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """
        roi_features: (B * N, hidden, S, S), image-major; boxes: (B, N, dim) pixels;
        pro_features: (B, N, hidden) or None (first stage: the mean RoI feature);
        time_emb: (B, 4 * hidden).

        Returns class logits (B, N, num_classes), refined boxes (B, N, dim) float32 and the
        object features (B, N, hidden) for the next stage.
        """
        b, n = boxes.shape[:2]
        rois = roi_features.flatten(2).transpose(1, 2)  # (B*N, S*S, hidden)
        if pro_features is None:
            pro_features = rois.mean(1).view(b, n, self.hidden)

        # attention stays within each image: the batch dimension is B, the sequence N
        attn = self.self_attn(pro_features, pro_features, pro_features, need_weights=False)[0]
        x = self.norm1(pro_features + self.dropout(attn)).reshape(b * n, self.hidden)
        x = self.norm2(x + self.dropout(self.inst_interact(x, rois)))
        obj = self.norm3(x + self.dropout(self.ffn(x))).view(b, n, self.hidden)

        scale, shift = self.time_scale_shift(time_emb)[:, None, :].chunk(2, dim=-1)
        fc = obj * (scale + 1) + shift
        logits = self.class_logits(self.cls_tower(fc))
        deltas = self.box_deltas(self.reg_tower(fc))
        return logits, self.codec.apply_deltas(deltas, boxes), obj
