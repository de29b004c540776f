"""Formatting for the report: display strings and CSS classes from plain numbers and MetricInfo.

Values go through :mod:`pytest_qrel.display` (one rule per metric) with a typographic minus; this
module adds what only the page needs: the em dash for a missing value, the colour level of a delta
(scaled by its size, not only its sign) and flattening of metadata values. The deltas come
computed (:class:`pytest_qrel.summary.Number`).

Colour levels of a delta (signed, positive = worse), by its size in the table's unit:

- fraction metrics, in percentage points: ``< 0.1`` (0, neutral), ``< 0.5`` (1), ``< 1`` (2),
  ``< 2`` (3), ``< 5`` (4), ``>= 5`` (5);
- other metrics, relative to FP32 in percent: ``< 1``, ``< 2.5``, ``< 5``, ``< 10``, ``< 25``, ``>= 25``.

The CSS classes are ``w1``..``w5`` (worse) and ``b1``..``b5`` (better); ``n0`` is neutral.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .. import display
from ..results import MetricInfo
from ..summary import Number

__all__ = [
    "MISSING",
    "delta_level",
    "delta_class",
    "fmt_delta",
    "fmt_info",
    "fmt_value",
    "missing",
]

MISSING = "\u2014"  # em dash

PP_LEVELS = (0.1, 0.5, 1.0, 2.0, 5.0)
REL_LEVELS = (1.0, 2.5, 5.0, 10.0, 25.0)


def missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def fmt_value(info: MetricInfo, x: Any, *, unit: bool = False) -> str:
    """A table value (no unit by default: headers and legends name it); missing -> em dash."""
    return display.format_value(info, x, unit=unit, missing=MISSING, typographic=True)


def fmt_delta(info: MetricInfo, delta: Any, *, unit: bool = True) -> str:
    """A table delta (pp for fractions, the metric's unit otherwise), typographic sign."""
    return display.format_delta(info, delta, symbol=unit, missing=MISSING, typographic=True)


def delta_level(info: MetricInfo, n: Number) -> int:
    """0 (negligible) .. 5 (large): the size of ``n.delta`` on the scale of the module docstring."""
    if n.delta is None:
        return 0
    if info.fraction:
        size, levels = 100.0 * abs(n.delta), PP_LEVELS  # the delta in percentage points
    elif n.delta_percent is None:  # a reference of 0: no relative size
        return 0 if n.delta == 0 else 3
    else:
        size, levels = abs(n.delta_percent), REL_LEVELS
    return sum(size >= t for t in levels)


def delta_class(info: MetricInfo, n: Number) -> str:
    """``"w3"`` (worse, level 3), ``"b1"`` (better, level 1) or ``"n0"`` (negligible / missing)."""
    level = delta_level(info, n)
    if level == 0 or n.delta is None:
        return "n0"
    return f"{'w' if n.delta > 0 else 'b'}{level}"


def fmt_info(x: Any) -> str:
    """A metadata or fitted-parameter value: floats with 4 significant digits, containers flattened."""
    if isinstance(x, bool) or x is None:
        return MISSING if x is None else str(x)
    if isinstance(x, float):
        return MISSING if math.isnan(x) else f"{x:.4g}"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}={fmt_info(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt_info(v) for v in x)
    return str(x)


def fmt_duration(seconds: Any) -> str:
    """``"12.3 s"``, ``"4 min 05 s"``; missing -> em dash."""
    if missing(seconds):
        return MISSING
    s = float(seconds)
    if s < 60:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    return f"{m} min {sec:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def dash(x: Any) -> Any:
    """The value itself, or an em dash when it is ``None`` or an empty string."""
    return MISSING if x is None or x == "" else x
