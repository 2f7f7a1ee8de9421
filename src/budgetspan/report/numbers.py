"""Reading numbers from span attributes, and percentiles."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def number(v: Any) -> float | None:
    """A finite number as float, else None (bools, text, NaN and infinities are not figures)."""
    t = type(v)  # exact types first: most values (bool is a subclass of int, so not these)
    if t is float:
        return v if math.isfinite(v) else None
    if t is int:
        return float(v)
    if v is None:  # an attribute absent (``attrs.get``)
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return float(v) if math.isfinite(v) else None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); 0.0 for no values."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)
