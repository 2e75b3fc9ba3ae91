"""Checkpoints that lose nothing: atomic writes, safe loading, clear mismatch errors.

A checkpoint is a plain dict of tensors and Python scalars/containers: ``model``,
``optimizer``, ``scheduler``, ``step``, ``rng`` (CPU and CUDA generator states),
``config`` (the resolved config as a dict), ``bad_steps`` and ``format``. It is written to
a temporary file in the same folder and renamed over the target, so a crash mid-write
never leaves a broken checkpoint; it is read with ``torch.load(weights_only=True)``, which
cannot execute code from the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from e2emfd.config import Config, ConfigError, config_from_dict, config_to_dict

FORMAT = "e2emfd-checkpoint-v1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically (temp file + fsync + rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        torch.save({"format": FORMAT, **state}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable e2emfd checkpoint ({first})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path}: not an e2emfd checkpoint (no '{FORMAT}' marker)")
    return state


def strip_checkpoint(source: str | Path, target: str | Path) -> Path:
    """Write the weights, config and step of a checkpoint without the training state
    (optimiser, scheduler, random generators): a file to share for inference or
    fine-tuning, a third of the size. It loads like any checkpoint but cannot resume."""
    state = load_checkpoint(source)
    kept = {k: state[k] for k in ("model", "config", "step") if k in state}
    return save_checkpoint(target, kept)


def checkpoint_config(state: dict[str, Any], path: str | Path = "checkpoint") -> Config:
    try:
        return config_from_dict(state["config"])
    except (KeyError, ConfigError) as exc:
        raise ValueError(f"{path}: checkpoint has an invalid config ({exc})") from None


def _flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# Detection settings that act only at inference: a run may change them and still resume.
INFERENCE_ONLY_KEYS = frozenset(
    f"model.detection.{k}"
    for k in (
        "num_proposals_test",
        "sampling_steps",
        "box_renewal",
        "use_ensemble",
        "score_threshold",
        "nms_threshold",
        "max_detections",
        "ddim_eta",
        "renewal_threshold",
    )
)


def inference_settings(cfg: Config) -> dict[str, Any]:
    """The inference-only detection settings of a config, by short name."""
    det = cfg.model.detection
    return {
        key.rsplit(".", 1)[1]: getattr(det, key.rsplit(".", 1)[1])
        for key in sorted(INFERENCE_ONLY_KEYS)
    }


def apply_inference_settings(model: torch.nn.Module, settings: dict[str, Any]) -> None:
    """Set inference-only detection settings on a built model (its weights are unchanged)."""
    for name, value in settings.items():
        setattr(model.detector.cfg, name, value)


def config_mismatches(saved: dict, current: Config, section: str = "model") -> list[str]:
    """Keys of ``section`` whose values differ between a checkpoint and the current run
    (inference-only detection settings and the warm start, which a resumed run does not
    read, excepted)."""
    try:  # the saved config as today's code reads it (keys of earlier versions mapped)
        saved = config_to_dict(config_from_dict(saved))
    except ConfigError:
        pass
    a = _flatten(saved.get(section, {}), f"{section}.")
    b = _flatten(config_to_dict(current).get(section, {}), f"{section}.")
    return [
        f"{k}: checkpoint {a.get(k)!r} != config {b.get(k)!r}"
        for k in sorted(a.keys() | b.keys())
        if a.get(k) != b.get(k) and k not in INFERENCE_ONLY_KEYS and k != "model.init_from"
    ]


def load_model_state(model: torch.nn.Module, state_dict: dict, path: str | Path) -> None:
    """Load weights strictly; a mismatch is one error listing the offending keys."""
    own = model.state_dict()
    missing = sorted(own.keys() - state_dict.keys())
    unexpected = sorted(state_dict.keys() - own.keys())
    shapes = sorted(
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own.keys() & state_dict.keys()
        if own[k].shape != state_dict[k].shape
    )
    if missing or unexpected or shapes:
        parts = []
        for name, keys in (("missing", missing), ("unexpected", unexpected), ("shape", shapes)):
            if keys:
                more = f" (+{len(keys) - 4} more)" if len(keys) > 4 else ""
                parts.append(f"{name}: {', '.join(keys[:4])}{more}")
        raise ValueError(f"{path}: weights do not fit this model; " + "; ".join(parts))
    model.load_state_dict(state_dict)


@dataclass
class WarmStart:
    """What :func:`init_from_checkpoint` loaded: tensor names by outcome."""

    path: Path
    loaded: list[str]
    shape_mismatch: list[str]  # "name (checkpoint shape vs model shape)"
    not_in_checkpoint: list[str]
    not_in_model: list[str]

    def summary(self, limit: int = 6) -> str:
        total = len(self.loaded) + len(self.shape_mismatch) + len(self.not_in_checkpoint)
        lines = [f"init_from {self.path}: loaded {len(self.loaded)} of {total} model tensors"]
        for what, names in (
            ("not loaded, shape differs", self.shape_mismatch),
            ("not in the checkpoint (kept at their initial values)", self.not_in_checkpoint),
            ("in the checkpoint but not in the model (ignored)", self.not_in_model),
        ):
            if names:
                more = f" (+{len(names) - limit} more)" if len(names) > limit else ""
                lines.append(f"  {len(names)} {what}: {', '.join(names[:limit])}{more}")
        return "\n".join(lines)


def init_from_checkpoint(model: torch.nn.Module, path: str | Path) -> WarmStart:
    """Initialise ``model`` from every tensor of a checkpoint (or a plain state dict) whose
    name and shape match, e.g. a model pretrained on synthetic scenes fine-tuned on real
    pairs with other classes: the class layers differ in shape and keep their fresh
    initialisation. Returns what was loaded and what was not."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: model.init_from checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, foreign or unsafe files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a readable checkpoint ({first})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no state dict of tensors")
    state = upgrade_state_dict(state)
    own = model.state_dict()
    loaded = sorted(k for k in own.keys() & state.keys() if own[k].shape == state[k].shape)
    mismatch = sorted(
        f"{k} ({tuple(state[k].shape)} vs {tuple(own[k].shape)})"
        for k in own.keys() & state.keys()
        if own[k].shape != state[k].shape
    )
    model.load_state_dict({k: state[k] for k in loaded}, strict=False)
    return WarmStart(
        path, loaded, mismatch, sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
    )


def upgrade_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensor names of older checkpoints mapped to today's (none have changed yet)."""
    return state


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_model_for_inference(path: str | Path, device: str | torch.device = "cpu"):
    """Build the model a checkpoint describes and load its weights (eval mode).
    Returns ``(model, config)``."""
    from e2emfd.models import build_model

    state = load_checkpoint(path)
    cfg = checkpoint_config(state, path)
    # the checkpoint holds the trained weights
    cfg.model.backbone.pretrained = cfg.model.init_from = ""
    model = build_model(cfg.model)
    load_model_state(model, state["model"], path)
    return model.to(device).eval(), cfg
