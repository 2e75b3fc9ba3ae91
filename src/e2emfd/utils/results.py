"""Result files that any JSON reader accepts: Python writes NaN and inf as ``NaN`` and
``Infinity``, which are not JSON. An undefined value (the AP of a class with no ground
truth, a fusion metric where its reference divides by zero) is written as ``null``."""

from __future__ import annotations

import json
import math
from typing import Any


def json_ready(value: Any) -> Any:
    """``value`` with every non-finite float, at any depth of dicts, lists and tuples,
    replaced by None."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    return value


def dumps(value: Any, **kwargs) -> str:
    """``json.dumps`` of :func:`json_ready` ``(value)``; never writes NaN or Infinity."""
    return json.dumps(json_ready(value), allow_nan=False, **kwargs)
