"""Reference forwards of the public E2E-MFD model's parts, written from the public code's
structure (detectron2 ResNet/FPN, FusionNet of detectron2/layers/fusion.py, DiffusionDet's
RCNNHead and ROIPooler, as described in ../shared/spec/official-checkpoint.md) and run
directly on a state dict in the public names. The converter's output is compared with
them; nothing here imports e2emfd."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

PIXEL_MEAN = (123.675, 116.28, 103.53)  # 0-255 units, RGB
PIXEL_STD = (58.395, 57.12, 57.375)


def _frozen_bn(sd, prefix, x):
    # detectron2 FrozenBatchNorm2d, eps 1e-5
    scale = sd[f"{prefix}.weight"] * (sd[f"{prefix}.running_var"] + 1e-5).rsqrt()
    shift = sd[f"{prefix}.bias"] - sd[f"{prefix}.running_mean"] * scale
    return x * scale[:, None, None] + shift[:, None, None]


def _bn(sd, prefix, x):  # nn.BatchNorm2d in eval, eps 1e-5
    return F.batch_norm(
        x, sd[f"{prefix}.running_mean"], sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], False, 0.0, 1e-5,
    )  # fmt: skip


def resnet_fpn(sd: dict, image: Tensor) -> dict[str, Tensor]:
    """detectron2 build_resnet_fpn_backbone, ResNet-50, STRIDE_IN_1X1 False, FrozenBN,
    top block LastLevelMaxPool, on a (B, 3, H, W) image of 0-255 RGB values already
    normalised by PIXEL_MEAN / PIXEL_STD."""
    x = F.conv2d(image, sd["backbone.bottom_up.stem.conv1.weight"], stride=2, padding=3)
    x = F.relu(_frozen_bn(sd, "backbone.bottom_up.stem.conv1.norm", x))
    x = F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    stages = {}
    for k, blocks in zip(range(2, 6), (3, 4, 6, 3)):
        for i in range(blocks):
            p = f"backbone.bottom_up.res{k}.{i}"
            stride = 2 if i == 0 and k > 2 else 1
            out = F.relu(_frozen_bn(sd, f"{p}.conv1.norm", F.conv2d(x, sd[f"{p}.conv1.weight"])))
            out = F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1)
            out = F.relu(_frozen_bn(sd, f"{p}.conv2.norm", out))
            out = _frozen_bn(sd, f"{p}.conv3.norm", F.conv2d(out, sd[f"{p}.conv3.weight"]))
            if f"{p}.shortcut.weight" in sd:
                short = F.conv2d(x, sd[f"{p}.shortcut.weight"], stride=stride)
                short = _frozen_bn(sd, f"{p}.shortcut.norm", short)
            else:
                short = x
            x = F.relu(out + short)
        stages[k] = x
    pyramid, prev = {}, None
    for k in (5, 4, 3, 2):
        lateral = F.conv2d(
            stages[k], sd[f"backbone.fpn_lateral{k}.weight"], sd[f"backbone.fpn_lateral{k}.bias"]
        )
        prev = lateral if prev is None else lateral + F.interpolate(prev, scale_factor=2.0)
        pyramid[f"p{k}"] = F.conv2d(
            prev, sd[f"backbone.fpn_output{k}.weight"], sd[f"backbone.fpn_output{k}.bias"],
            padding=1,
        )  # fmt: skip
    pyramid["p6"] = F.max_pool2d(pyramid["p5"], kernel_size=1, stride=2, padding=0)
    return {k: pyramid[k] for k in ("p2", "p3", "p4", "p5", "p6")}


def backbone_features(sd: dict, vis: Tensor, ir: Tensor) -> dict[str, Tensor]:
    """detector.py: both images (0-255) normalised, one backbone pass each, summed."""
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(PIXEL_STD).view(1, 3, 1, 1)
    a = resnet_fpn(sd, (vis * 255 - mean) / std)
    b = resnet_fpn(sd, (ir.expand(-1, 3, -1, -1) * 255 - mean) / std)
    return {k: a[k] + b[k] for k in a}


def fusion_weights(sd: dict, features: list[Tensor], x0: Tensor) -> Tensor:
    """FusionNet(features, x0) of the public code: (B, 2, H, W) weights (IR, visible)."""

    def block(x, p):
        for name in ("conv1_1", "conv1_2", "conv1_3"):
            x = F.relu(F.conv2d(x, sd[f"{p}.{name}.weight"], sd[f"{p}.{name}.bias"], padding=1))
        heads = [
            F.relu(F.conv2d(x, sd[f"{p}.{n}.weight"], sd[f"{p}.{n}.bias"], padding=1))
            for n in ("conv1_0_00", "conv1_0_01")
        ]
        return torch.cat(heads, 1)

    def region(x, p):  # Attentionregion(M=2) around SKConv(C, 2)
        feats = [
            F.relu(_bn(sd, f"{p}.convs.{i}.1", F.conv2d(x, sd[f"{p}.convs.{i}.0.weight"],
                                                         padding=1 + i, dilation=1 + i)))
            for i in (0, 1)
        ]  # fmt: skip
        s = sum(feats).mean((2, 3))
        z = F.linear(F.relu(F.linear(s, sd[f"{p}.fc.0.weight"], sd[f"{p}.fc.0.bias"])),
                     sd[f"{p}.fc.2.weight"], sd[f"{p}.fc.2.bias"])  # fmt: skip
        a = z.view(x.shape[0], -1, 2).softmax(dim=1)  # (B, maps, paths), softmax over maps
        v = a[:, :, 0, None, None] * feats[0] + a[:, :, 1, None, None] * feats[1]
        return torch.cat([x * v[:, m : m + 1] for m in range(v.shape[1])], 1)

    def conv_module(x, p):  # mmcv ConvModule: conv (no bias), BN, ReLU
        return F.relu(_bn(sd, f"{p}.bn", F.conv2d(x, sd[f"{p}.conv.weight"])))

    low = block(block(x0, "fusion.block1.block1.0"), "fusion.block1.block1.1")
    ups = [
        F.interpolate(region(f, f"fusion.block1.att{a}.conv"), size=low.shape[-2:],
                      mode="bilinear", align_corners=True)
        for a, f in zip((1, 2, 3), features[:3])
    ]  # fmt: skip
    r = F.relu(F.conv2d(sum(ups), sd["fusion.block1.conv2.weight"], sd["fusion.block1.conv2.bias"]))
    origin = conv_module(low, "fusion.block1.conv_module")
    act = F.relu6(conv_module(r, "fusion.block1.conv_module_act") + 3) / 6
    x = origin * act + origin
    for i in (0, 2, 4, 6):
        x = F.relu(F.conv2d(x, sd[f"fusion.block2.{i}.weight"], sd[f"fusion.block2.{i}.bias"],
                            padding=1))  # fmt: skip
    return torch.sigmoid(F.conv2d(x, sd["fusion.block2.8.weight"], sd["fusion.block2.8.bias"]))


def time_embedding(sd: dict, t: Tensor, dim: int) -> Tensor:
    """DynamicHead.time_mlp: sinusoidal embedding, Linear, GELU, Linear."""
    half = dim // 2
    freqs = torch.exp(torch.arange(half) * -(math.log(10000) / (half - 1)))
    emb = t.float()[:, None] * freqs[None]
    emb = torch.cat([emb.sin(), emb.cos()], -1)
    emb = F.gelu(F.linear(emb, sd["head.time_mlp.1.weight"], sd["head.time_mlp.1.bias"]))
    return F.linear(emb, sd["head.time_mlp.3.weight"], sd["head.time_mlp.3.bias"])


def rcnn_head(sd, s, rois, boxes, pro, time_emb, heads):
    """DiffusionDet RCNNHead.forward of stage ``s``: rois (B*N, d, 7, 7), boxes (B, N, 4),
    pro (B, N, d) or None -> class logits (B, N, C), boxes (B, N, 4), features (B, N, d)."""
    p = f"head.head_series.{s}"
    w = lambda n: sd[f"{p}.{n}.weight"]  # noqa: E731
    b = lambda n: sd[f"{p}.{n}.bias"]  # noqa: E731
    ln = lambda x, n: F.layer_norm(x, x.shape[-1:], w(n), b(n))  # noqa: E731
    n_img, nr = boxes.shape[:2]
    d = rois.shape[1]
    if pro is None:
        pro = rois.view(n_img, nr, d, -1).mean(-1)
    roi = rois.view(n_img * nr, d, -1).permute(2, 0, 1)
    q = pro.view(n_img, nr, d).permute(1, 0, 2)
    attn = F.multi_head_attention_forward(
        q, q, q, d, heads, sd[f"{p}.self_attn.in_proj_weight"], sd[f"{p}.self_attn.in_proj_bias"],
        None, None, False, 0.0, w("self_attn.out_proj"), b("self_attn.out_proj"),
        training=False, need_weights=False,
    )[0]  # fmt: skip
    q = ln(q + attn, "norm1")
    q = q.view(nr, n_img, d).permute(1, 0, 2).reshape(1, n_img * nr, d)
    # DynamicConv
    params = F.linear(q, w("inst_interact.dynamic_layer"), b("inst_interact.dynamic_layer"))
    params = params.permute(1, 0, 2)
    dyn = w("inst_interact.norm1").shape[0]
    param1 = params[:, :, : d * dyn].view(-1, d, dyn)
    param2 = params[:, :, d * dyn :].view(-1, dyn, d)
    f = F.relu(ln(torch.bmm(roi.permute(1, 0, 2), param1), "inst_interact.norm1"))
    f = F.relu(ln(torch.bmm(f, param2), "inst_interact.norm2"))
    f = F.linear(f.flatten(1), w("inst_interact.out_layer"), b("inst_interact.out_layer"))
    q = ln(q + F.relu(ln(f, "inst_interact.norm3")), "norm2")
    ffn = F.linear(F.relu(F.linear(q, w("linear1"), b("linear1"))), w("linear2"), b("linear2"))
    obj = ln(q + ffn, "norm3")
    fc = obj.transpose(0, 1).reshape(n_img * nr, -1)
    ss = F.linear(F.silu(time_emb), w("block_time_mlp.1"), b("block_time_mlp.1"))
    scale, shift = ss.repeat_interleave(nr, dim=0).chunk(2, dim=1)
    fc = fc * (scale + 1) + shift
    cls = F.relu(ln(F.linear(fc, w("cls_module.0")), "cls_module.1"))
    reg = fc
    for i in (0, 3, 6):
        reg = F.relu(ln(F.linear(reg, w(f"reg_module.{i}")), f"reg_module.{i + 1}"))
    logits = F.linear(cls, w("class_logits"), b("class_logits"))
    deltas = F.linear(reg, w("bboxes_delta"), b("bboxes_delta"))
    return (
        logits.view(n_img, nr, -1),
        apply_deltas(deltas, boxes.view(-1, 4)).view(n_img, nr, 4),
        obj.view(n_img, nr, d),
    )


def apply_deltas(deltas: Tensor, boxes: Tensor) -> Tensor:
    """RCNNHead.apply_deltas: weights (2, 2, 1, 1), scale clamp log(1e5 / 16)."""
    widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    cx, cy = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
    dx, dy = deltas[:, 0] / 2.0, deltas[:, 1] / 2.0
    dw = deltas[:, 2].clamp(max=math.log(100000.0 / 16))
    dh = deltas[:, 3].clamp(max=math.log(100000.0 / 16))
    px, py = dx * widths + cx, dy * heights + cy
    pw, ph = torch.exp(dw) * widths, torch.exp(dh) * heights
    return torch.stack([px - 0.5 * pw, py - 0.5 * ph, px + 0.5 * pw, py + 0.5 * ph], -1)


def _bilinear(f: Tensor, y: float, x: float) -> Tensor:
    """ROIAlignV2's bilinear read of one point from (C, H, W)."""
    h, w = f.shape[-2:]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return f.new_zeros(f.shape[0])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (
        (1 - ly) * (1 - lx) * f[:, y0, x0] + (1 - ly) * lx * f[:, y0, x1]
        + ly * (1 - lx) * f[:, y1, x0] + ly * lx * f[:, y1, x1]
    )  # fmt: skip


def roi_pool(features: dict[str, Tensor], image: int, box: list[float], out=7, ratio=2):
    """detectron2 ROIPooler(ROIAlignV2, sampling 2, levels p2..p5, canonical 224 at 4) of
    one xyxy box of one image: (C, out, out), and the level it read."""
    area = (box[2] - box[0]) * (box[3] - box[1])
    level = math.floor(4 + math.log2(math.sqrt(area) / 224 + 1e-8))
    level = min(max(level, 2), 5)
    f = features[f"p{level}"][image]
    s = 1.0 / 2**level
    x1, y1, x2, y2 = (v * s - 0.5 for v in box)  # aligned=True: pixel centres at +0.5
    bw, bh = (x2 - x1) / out, (y2 - y1) / out
    result = f.new_zeros(f.shape[0], out, out)
    for i in range(out):
        for j in range(out):
            acc = 0
            for iy in range(ratio):
                for ix in range(ratio):
                    y = y1 + i * bh + (iy + 0.5) * bh / ratio
                    x = x1 + j * bw + (ix + 0.5) * bw / ratio
                    acc = acc + _bilinear(f, y, x)
            result[:, i, j] = acc / ratio**2
    return result, level
