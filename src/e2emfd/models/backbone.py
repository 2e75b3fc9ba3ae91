"""The shared backbone: one ResNet + FPN run on both modalities, pyramids summed.

The visible image and the infrared image (repeated to three channels) go through the SAME
weights, as one batch of 2B images; the two feature pyramids are summed level by level
(the paper's shared backbone). Both heads read the summed pyramid.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from urllib.parse import urlparse

import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import FeaturePyramidNetwork, FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from e2emfd.config import BackboneConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESNET_LAYERS = {
    18: (BasicBlock, [2, 2, 2, 2]),
    34: (BasicBlock, [3, 4, 6, 3]),
    50: (Bottleneck, [3, 4, 6, 3]),
}
IMAGENET = "imagenet"  # model.backbone.pretrained: torchvision's weights via the hub cache
WEIGHTS_HINT = {
    18: "resnet18-f37072fd.pth",
    34: "resnet34-b627a593.pth",
    50: "resnet50-0676ba61.pth",
}


class ResNetTrunk(nn.Module):
    """A torchvision-layout ResNet (``conv1``, ``bn1``, ``layer1..4``; same state-dict keys,
    so torchvision's ImageNet weights load) with a configurable base width, so a model a
    quarter of the size can train on a CPU. Returns C2..C5 (strides 4, 8, 16, 32)."""

    def __init__(self, depth: int = 50, width: int = 64, frozen_bn: bool = True) -> None:
        super().__init__()
        if depth not in RESNET_LAYERS:
            raise ValueError(
                f"model.backbone.depth must be one of {sorted(RESNET_LAYERS)}, got {depth}"
            )
        block, layers = RESNET_LAYERS[depth]
        norm = FrozenBatchNorm2d if frozen_bn else nn.BatchNorm2d
        self._norm = norm
        self.conv1 = nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.inplanes = width
        self.layer1 = self._make_layer(block, width, layers[0], stride=1)
        self.layer2 = self._make_layer(block, width * 2, layers[1], stride=2)
        self.layer3 = self._make_layer(block, width * 4, layers[2], stride=2)
        self.layer4 = self._make_layer(block, width * 8, layers[3], stride=2)
        self.out_channels = [width * m * block.expansion for m in (1, 2, 4, 8)]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def _make_layer(self, block, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride=stride, bias=False),
                self._norm(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample, norm_layer=self._norm)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, norm_layer=self._norm) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> list[Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return [c2, c3, c4, c5]

    def freeze(self, freeze_at: int) -> None:
        """0: train everything; 1: freeze the stem; k >= 2: also freeze layer1..layer(k-1)."""
        stages = [
            [self.conv1, self.bn1],
            [self.layer1],
            [self.layer2],
            [self.layer3],
            [self.layer4],
        ]
        for stage in stages[: max(0, freeze_at)]:
            for module in stage:
                for p in module.parameters():
                    p.requires_grad_(False)


def load_pretrained(trunk: ResNetTrunk, path: str, depth: int) -> None:
    """Load a torchvision ResNet ImageNet state dict from a local file (no downloads)."""
    file = Path(path)
    if not file.is_file():
        name = WEIGHTS_HINT.get(depth, f"resnet{depth}.pth")
        raise FileNotFoundError(
            f"{file}: pretrained backbone weights not found. On a machine with internet, get "
            f"torchvision's ImageNet weights (https://download.pytorch.org/models/{name}, or "
            f"torchvision.models.resnet{depth}(weights='DEFAULT').state_dict()), copy the file "
            "here and set model.backbone.pretrained=PATH, or set it to 'imagenet' to download "
            "them into the torch hub cache (or '' for random initialisation)"
        )
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
        raise ValueError(f"{file}: not a loadable state dict ({exc})") from None
    load_trunk_state(trunk, state, file, depth)


def load_trunk_state(trunk: ResNetTrunk, state: dict, source: str | Path, depth: int) -> None:
    """Load a torchvision ResNet state dict (its ``fc`` dropped) into the trunk; anything
    that does not fit is one error naming ``source``."""
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    state = {k: v for k, v in state.items() if not k.startswith("fc.")}
    result = trunk.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    if missing or result.unexpected_keys:
        raise ValueError(
            f"{source}: does not match a ResNet-{depth} of width {trunk.conv1.out_channels} "
            f"(missing {missing[:3]}, unexpected {result.unexpected_keys[:3]})"
        )


def is_imagenet(spec: str) -> bool:
    """``imagenet`` or ``imagenet:VERSION``: torchvision's weights, not a local path."""
    return spec == IMAGENET or spec.startswith(IMAGENET + ":")


def imagenet_weights(spec: str, depth: int):
    """The torchvision weights entry (``ResNet50_Weights.IMAGENET1K_V2`` ...) that
    ``imagenet`` (torchvision's default) or ``imagenet:V1|V2`` names for a depth."""
    from torchvision.models import get_model_weights

    versions = get_model_weights(f"resnet{depth}")
    _, _, version = spec.partition(":")
    if not version:
        return versions.DEFAULT
    available = [name.rsplit("_", 1)[1] for name in versions.__members__ if name != "DEFAULT"]
    if version.upper() not in available:
        raise ValueError(
            f"model.backbone.pretrained={spec}: torchvision has {', '.join(available)} "
            f"ImageNet weights for ResNet-{depth}; use imagenet or "
            + " or ".join(f"imagenet:{v}" for v in available)
        )
    return versions[f"IMAGENET1K_{version.upper()}"]


def imagenet_cache_file(spec: str, depth: int) -> Path:
    """Where the torch hub cache keeps the file of ``spec`` ($TORCH_HOME/hub/checkpoints)."""
    url = imagenet_weights(spec, depth).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def load_imagenet(trunk: ResNetTrunk, spec: str, depth: int) -> None:
    """torchvision's ImageNet weights, read from the torch hub cache; downloaded into it
    first when the file is not there yet (which needs a network)."""
    weights = imagenet_weights(spec, depth)
    width = trunk.conv1.out_channels
    if width != 64:
        raise ValueError(
            f"model.backbone.pretrained={spec}: torchvision's ImageNet ResNet-{depth} has base "
            f"width 64, this backbone has model.backbone.width={width}; set the width to 64 "
            "or pretrained to ''"
        )
    file = imagenet_cache_file(spec, depth)
    cached = file.is_file()
    try:
        state = weights.get_state_dict(progress=not cached, check_hash=True, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - network, hash and unpickling failures alike
        reason = " ".join(str(exc).split()) or type(exc).__name__
        if cached:
            raise ValueError(
                f"{file}: not a loadable state dict ({reason}); delete it to download it again"
            ) from None
        raise FileNotFoundError(
            f"{file}: torchvision's ImageNet weights for ResNet-{depth} ({weights}) are not in "
            f"the torch hub cache and downloading {weights.url} failed ({reason}); on a "
            f"machine with internet, download that file and put it in {file.parent} (the "
            "cache folder, $TORCH_HOME/hub/checkpoints), or set model.backbone.pretrained to "
            "a local copy of it"
        ) from None
    load_trunk_state(trunk, state, file, depth)


def load_backbone_weights(trunk: ResNetTrunk, spec: str, depth: int) -> None:
    """``model.backbone.pretrained``: ``imagenet[:V1|V2]`` or a local file."""
    if is_imagenet(spec):
        load_imagenet(trunk, spec, depth)
    else:
        load_pretrained(trunk, spec, depth)


class SharedBackbone(nn.Module):
    """ResNet + FPN shared by both modalities.

    ``forward(vis, ir)`` takes vis (B, 3, H, W) and ir (B, 1, H, W) in [0, 1] (H, W
    multiples of 32) and returns an ordered dict ``p2..p5`` (and ``p6``) of (B, C, H/s, W/s)
    with the two modalities' pyramids summed. ``modality`` = ``vis`` or ``ir`` runs only one
    (the single-modality baselines).
    """

    def __init__(self, cfg: BackboneConfig, modality: str = "both") -> None:
        super().__init__()
        if modality not in ("both", "vis", "ir"):
            raise ValueError(f"model.modality must be both, vis or ir, got {modality!r}")
        self.modality = modality
        self.trunk = ResNetTrunk(cfg.depth, cfg.width, cfg.frozen_bn)
        if cfg.pretrained:
            load_backbone_weights(self.trunk, cfg.pretrained, cfg.depth)
        self.trunk.freeze(cfg.freeze_at)
        self.fpn = FeaturePyramidNetwork(
            self.trunk.out_channels, cfg.out_channels, LastLevelMaxPool() if cfg.p6 else None
        )
        self.out_channels = cfg.out_channels
        self.names = ["p2", "p3", "p4", "p5"] + (["p6"] if cfg.p6 else [])
        self.strides = [4, 8, 16, 32] + ([64] if cfg.p6 else [])
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _inputs(self, vis: Tensor, ir: Tensor) -> Tensor:
        images = []
        if self.modality in ("both", "vis"):
            images.append(vis)
        if self.modality in ("both", "ir"):
            images.append(ir.expand(-1, 3, -1, -1))
        return (torch.cat(images) - self.mean) / self.std

    def forward(self, vis: Tensor, ir: Tensor) -> OrderedDict[str, Tensor]:
        batch = vis.shape[0]
        feats = self.trunk(self._inputs(vis, ir))
        pyramid = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        out = OrderedDict()
        for name, feat in zip(self.names, pyramid.values()):
            out[name] = feat[:batch] + feat[batch:] if self.modality == "both" else feat
        return out
