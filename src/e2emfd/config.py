"""Typed configuration: dataclasses loaded from YAML, with dotted ``key=value`` overrides.

Every run resolves one :class:`Config` and writes it next to its outputs, so a result can
always be traced to the exact settings that produced it. Unknown keys and values of the
wrong type are errors that name the key (and the closest valid key, when there is one).
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from e2emfd.config_types import ConfigError, build_dataclass, unknown_key

M3FD_CLASSES = ["People", "Car", "Bus", "Lamp", "Motorcycle", "Truck"]


@dataclass
class DataConfig:
    """Where the pairs come from and how they are prepared."""

    format: str = "voc"  # voc | yolo | paired | dronevehicle
    root: str = ""  # dataset folder (M3FD-like: Vis/ Ir/ Annotations/ ImageSets/Main/)
    train_split: str = "train"  # name of ImageSets/Main/<split>.txt, or "" for every pair
    test_split: str = "test"
    classes: list[str] = field(default_factory=lambda: list(M3FD_CLASSES))
    vis_dir: str = ""  # "" = auto-detect (Vis, vi, visible, ...); "{split}" = the split name
    ir_dir: str = ""
    label_dir: str = ""
    label_modality: str = "visible"  # yolo/dronevehicle: which modality's labels to use
    unknown_class: str = "error"  # error | skip
    unlabelled: str = "skip"  # pairs without a label file: skip | empty | error
    size_mismatch: str = "error"  # error | resize (IR resized to the visible size)
    # the box kind: hbb (axis-aligned xyxy) | obb (rotated cx cy w h angle, le90);
    # model.detection.boxes must be the same
    boxes: str = "hbb"
    crop_border: int = 0  # DroneVehicle: crop this many pixels of white border
    short_side: int = 0  # resize so the short side is this (0 = native resolution)
    max_size: int = 0  # cap on the long side after resizing (0 = no cap)
    hflip: float = 0.0  # probability of a horizontal flip (train only)
    scale_jitter: list[float] = field(default_factory=list)  # e.g. [0.8, 1.2] (train only)
    num_workers: int = 0


@dataclass
class BackboneConfig:
    depth: int = 50  # ResNet 18 | 34 | 50
    width: int = 64  # base width (64 = torchvision; smaller for CPU-sized models)
    out_channels: int = 256  # FPN channels
    p6: bool = False
    frozen_bn: bool = True
    freeze_at: int = 2  # 0 = train all; 1 = freeze stem; 2 = stem + stage 1; ...
    # "" = random init; "imagenet" (or imagenet:V1 | imagenet:V2 where torchvision has both):
    # torchvision's ImageNet weights via the torch hub cache (downloaded once); or a local
    # path to a torchvision ResNet state dict
    pretrained: str = ""


@dataclass
class FusionConfig:
    enabled: bool = True
    num_regions: int = 3  # K RFRM branches on P2..P(K+1), 0..4
    pixel_channels: int = 32  # PFMM first block width (x2 heads)
    hidden: int = 128  # gate / decoder width
    region_paths: int = 2  # M selective-kernel attention maps
    color: str = "ycbcr"  # ycbcr | hsv | gray
    norm: str = "bn"  # bn (paper) | gn (batch-independent, e.g. for exact multi-process CPU runs)
    loss_ssim: float = 10.0
    loss_grad: float = 10.0
    loss_pixel: float = 10.0
    # training only: side fraction of a random window (per batch) that the full-resolution
    # part of the fusion head and the fusion loss see (1.0 = the whole image; 0.5 = a
    # quarter of it, ~3x less full-resolution work); inference always fuses whole images
    train_crop: float = 1.0
    # the public code's layout (configs/m3fd_official.yaml, e2emfd convert-official): the
    # region branches are upsampled with align_corners=True, and each selective-kernel
    # unit's softmax runs over its attention maps (per path) instead of over its paths
    region_align_corners: bool = False
    sk_softmax: str = "paths"  # paths | maps (the public code's)
    # how the region branches reach full resolution: "matmul" resizes and sums all levels
    # in one matrix product (e2emfd.ops.upsample); "interpolate" one F.interpolate per
    # level (what ONNX export uses: its sizes stay dynamic). Equal up to float rounding.
    region_upsampling: str = "matmul"


@dataclass
class DetectionConfig:
    enabled: bool = True
    boxes: str = "hbb"  # hbb | obb
    num_classes: int = 6
    num_proposals: int = 500
    num_proposals_test: int = 0  # 0 = same as training
    sampling_steps: int = 1  # DDIM steps at inference
    timesteps: int = 1000
    signal_scale: float = 2.0
    hidden: int = 256
    num_stages: int = 6
    num_heads: int = 8
    dim_dynamic: int = 64
    num_dynamic: int = 2
    dim_feedforward: int = 2048
    dropout: float = 0.0
    pooler_resolution: int = 7
    prior_prob: float = 0.01
    # shape term of the box loss: giou (rotated GIoU for obb) | kld (obb only: Gaussian KLD)
    shape_loss: str = "giou"
    ddim_eta: float = 1.0  # DDIM noise at inference (0 deterministic, 1 DDPM-like)
    renewal_threshold: float = 0.5  # box renewal: proposals scoring <= this restart from noise
    box_renewal: bool = True
    use_ensemble: bool = True
    score_threshold: float = 0.0
    nms_threshold: float = 0.5
    max_detections: int = 100
    ota_k: int = 5
    loss_class: float = 2.0
    loss_l1: float = 5.0
    loss_giou: float = 2.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0

    def inference_proposals(self, override: int | None = None) -> int:
        """Proposals at inference: ``override``, else ``num_proposals_test``, else the
        training count."""
        return override or self.num_proposals_test or self.num_proposals


@dataclass
class ModelConfig:
    modality: str = "both"  # both | vis | ir (single-modality baselines)
    # warm start: a checkpoint (or state dict) whose tensors of the same name and shape
    # initialise the model before training ("" = none; ignored when resuming)
    init_from: str = ""
    channels_last: bool = True  # NHWC convolutions: faster on CPU (oneDNN) and CUDA (cuDNN)
    # images are zero-padded (bottom, right) to multiples of this, in training, evaluation
    # and inference alike
    size_divisor: int = 32
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)


@dataclass
class TrainConfig:
    task: str = "joint"  # joint | fusion | detection
    mtl: str = "gmta"  # sum | gmta | pcgrad | cagrad | nashmtl | imtl | mgda | upgrad
    gmta_every: int = 1000  # run the multi-task balancing every n iterations
    gmta_scale: str = "min"  # length of the aligned gradient: min (paper) | median | rmse
    max_iters: int = 15000
    batch_size: int = 1
    lr: float = 2.5e-5
    weight_decay: float = 1e-4
    warmup_iters: int = 1000
    warmup_factor: float = 0.01
    schedule: str = "step"  # step | cosine | constant
    lr_steps: list[int] = field(default_factory=lambda: [5000, 10000])
    lr_gamma: float = 0.1
    clip_grad: float = 1.0  # full-model L2 gradient clipping (0 = off)
    amp: bool = True  # bf16 autocast on CUDA (always off on CPU)
    eval_every: int = (
        5000  # evaluate on the test split every n steps; 0 = only at the end; -1 = never
    )
    checkpoint_every: int = 1000
    log_every: int = 20
    max_bad_steps: int = 5  # consecutive non-finite losses before the run stops
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    deterministic: bool = True


@dataclass
class Config:
    """The whole configuration of one run."""

    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


# --------------------------------------------------------------------------------------
# Loading, overriding and saving


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"model.backbone.depth=18"`` -> (["model", "backbone", "depth"], 18)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override '{text}' has an empty key")
    value = yaml.safe_load(raw) if raw.strip() else ""
    return key.split("."), value


def _nest(path: list[str], value: Any) -> dict:
    out: Any = value
    for part in reversed(path):
        out = {part: out}
    return out


def _validate_path(path: list[str]) -> None:
    cls: Any = Config
    for i, part in enumerate(path):
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(f"'{'.'.join(path[:i])}' is a value, not a section")
        if part not in {f.name for f in dataclasses.fields(cls)}:
            raise unknown_key(cls, part, "".join(p + "." for p in path[:i]))
        cls = typing.get_type_hints(cls)[part]


# Keys of earlier versions: moved ones are read under their new name; removed ones are
# accepted only with the one value that the code now always uses.
MOVED_KEYS = {"data.size_divisor": "model.size_divisor"}
REMOVED_KEYS = {"model.detection.use_focal": True}  # sigmoid focal classification only


def _upgrade(values: dict, where: str) -> dict:
    """``values`` with the keys of earlier versions mapped to today's (see MOVED_KEYS)."""
    for old, new in MOVED_KEYS.items():
        *parents, name = old.split(".")
        section = _section(values, parents)
        if section is not None and name in section:
            value = section.pop(name)
            values = _merge(values, _nest(new.split("."), value))
    for old, only in REMOVED_KEYS.items():
        *parents, name = old.split(".")
        section = _section(values, parents)
        if section is not None and name in section:
            if section.pop(name) != only:
                raise ConfigError(f"{where}: '{old}' was removed; only {only!r} is supported")
    return values


def _section(values: dict, path: list[str]) -> dict | None:
    for part in path:
        values = values.get(part) if isinstance(values, dict) else None
    return values if isinstance(values, dict) else None


def validate_config(cfg: Config) -> Config:
    """Checks that span several keys; raises ConfigError naming them."""
    if cfg.data.boxes not in ("hbb", "obb"):
        raise ConfigError(f"data.boxes: expected hbb or obb, got {cfg.data.boxes!r}")
    if cfg.model.detection.boxes != cfg.data.boxes:
        raise ConfigError(
            f"data.boxes={cfg.data.boxes} but model.detection.boxes="
            f"{cfg.model.detection.boxes}: the box kind must be the same in both"
        )
    det = cfg.model.detection
    shapes = ("giou", "kld") if det.boxes == "obb" else ("giou",)
    if det.shape_loss not in shapes:
        raise ConfigError(
            f"model.detection.shape_loss: {det.shape_loss!r} is not available for "
            f"{det.boxes} boxes; choose from {', '.join(shapes)}"
        )
    if not 0.0 < cfg.model.fusion.train_crop <= 1.0:
        raise ConfigError(
            f"model.fusion.train_crop: must be in (0, 1], got {cfg.model.fusion.train_crop}"
        )
    if cfg.model.size_divisor < 1:
        raise ConfigError(f"model.size_divisor: must be >= 1, got {cfg.model.size_divisor}")
    if cfg.model.fusion.region_upsampling not in ("matmul", "interpolate"):
        raise ConfigError(
            "model.fusion.region_upsampling: expected matmul or interpolate, got "
            f"{cfg.model.fusion.region_upsampling!r}"
        )
    if cfg.model.fusion.sk_softmax not in ("paths", "maps"):
        raise ConfigError(
            f"model.fusion.sk_softmax: expected paths or maps, got {cfg.model.fusion.sk_softmax!r}"
        )
    return cfg


def load_config(
    path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) and apply overrides.

    A YAML file may name another with ``_base_: other.yaml`` (relative to itself); its
    values are loaded first and then updated.
    """
    values: dict = {}
    if path is not None:
        values = _upgrade(_load_yaml(Path(path)), str(path))
    for text in overrides:
        key, value = parse_override(text)
        dotted = ".".join(key)
        if dotted in REMOVED_KEYS:
            _upgrade(_nest(key, value), f"override '{text}'")  # raises unless the one value
            continue
        key = MOVED_KEYS.get(dotted, dotted).split(".")
        _validate_path(key)
        values = _merge(values, _nest(key, value))
    return validate_config(build_dataclass(Config, values))


def _load_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    if path.resolve() in _seen:
        raise ConfigError(f"{path}: _base_ chain loops back to itself")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
            "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        values = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    base = values.pop("_base_", None)
    if base is not None:
        values = _merge(_load_yaml(path.parent / base, (*_seen, path.resolve())), values)
    return values


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def config_from_dict(values: dict) -> Config:
    """A config from its dict form (e.g. a checkpoint's), keys of earlier versions mapped."""
    import copy

    return validate_config(build_dataclass(Config, _upgrade(copy.deepcopy(values), "config")))


def save_config(cfg: Config, path: str | Path) -> Path:
    """Write the fully resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    tmp.replace(path)
    return path
