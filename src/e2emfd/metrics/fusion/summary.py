"""Per-image fusion metrics summed up over a set of images, some of whose values are
undefined.

A metric is undefined for an image where its reference implementation divides by zero or
takes log10(0) (CC and SCD with a constant image, the MATLAB VIF with a constant source,
Qabf with two all-black sources, PSNR where the fused image equals both sources): the
value is NaN or +-inf. JSON has no such numbers and one of them would turn the mean into
NaN, so they are reported as ``None`` (``null`` in JSON, an empty CSV cell), left out of
the means and standard deviations, and the images are named in a warning.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

# Images named in one warning before "and N more".
_NAMED = 5


@dataclass
class MetricSummary:
    """One metric over a set of images: mean and population standard deviation of the
    defined values (None when there are none), how many there are, and the images whose
    value is undefined."""

    mean: float | None
    std: float | None
    count: int
    total: int
    undefined: list[str] = field(default_factory=list)


def defined(value: float | None) -> float | None:
    """``value`` if it is a finite number (-0.0 as 0.0), else None."""
    if value is None or not math.isfinite(value):
        return None
    return float(value) + 0.0


Rows = Mapping[str, Mapping[str, float | None]] | Sequence[tuple[str, Mapping[str, float | None]]]


def summarize(per_image: Rows, names: Iterable[str]) -> dict[str, MetricSummary]:
    """Summaries of the metrics ``names`` from ``{image: {metric: value}}`` (or a list of
    ``(image, {metric: value})``, where an image may occur twice)."""
    rows = list(per_image.items()) if isinstance(per_image, Mapping) else list(per_image)
    out = {}
    for name in names:
        values, undefined = [], []
        for image, row in rows:
            value = defined(row.get(name))
            if value is None:
                undefined.append(image)
            else:
                values.append(value)
        mean = std = None
        if values:
            mean = math.fsum(values) / len(values)
            std = math.sqrt(math.fsum((x - mean) ** 2 for x in values) / len(values))
        out[name] = MetricSummary(mean, std, len(values), len(rows), undefined)
    return out


def undefined_warnings(summaries: Mapping[str, MetricSummary]) -> list[str]:
    """One line per metric with undefined values, naming the images and saying what the
    mean is over, e.g. ``SCD: undefined for black.png (...); mean over 41 of 42 images``."""
    lines = []
    for name, s in summaries.items():
        if not s.undefined:
            continue
        shown = ", ".join(s.undefined[:_NAMED])
        if len(s.undefined) > _NAMED:
            shown += f" and {len(s.undefined) - _NAMED} more"
        over = f"mean over {s.count} of {s.total} images" if s.count else "no mean"
        lines.append(
            f"{name}: undefined for {shown} (the reference divides by zero: a constant or "
            f"all-black image); {over}"
        )
    return lines
