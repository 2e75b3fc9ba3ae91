"""Box kinds: axis-aligned (``hbb``, xyxy pixels) and rotated (``obb``, le90
``(cx, cy, w, h, angle)`` pixels) boxes behind one interface, :class:`BoxCodec`.

Every layer that handles boxes asks the codec of the configured kind, never a tensor's
width: augmentations, the fusion loss's object mask, the CFDP head's diffusion signal,
deltas, pooling, matching cost and detection selection, the detection loss. One config
key names the kind: ``data.boxes`` (``model.detection.boxes`` must equal it; checked when
the config is loaded).
"""

from __future__ import annotations

from .axis_aligned import AxisAlignedBoxes
from .base import BoxCodec
from .rotated import RotatedBoxes

CODECS: dict[str, BoxCodec] = {"hbb": AxisAlignedBoxes(), "obb": RotatedBoxes()}


def box_codec(kind: str) -> BoxCodec:
    """The codec of a box kind (``"hbb"`` or ``"obb"``)."""
    if kind not in CODECS:
        raise ValueError(f"unknown box kind {kind!r}; expected one of {', '.join(CODECS)}")
    return CODECS[kind]


__all__ = ["CODECS", "AxisAlignedBoxes", "BoxCodec", "RotatedBoxes", "box_codec"]
