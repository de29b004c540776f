"""The decision with evidence: a bound, a point estimate and its interval -> passed / failed / inconclusive.

Pure functions of plain numbers, in the bound's unit (the relative delta in percent for
``delta <= 12%``, percentage points for ``pp``, the metric's unit otherwise; for bounds against
another quantizer, ``delta - ref_delta`` or ``value - ref_value`` against 0).

Without a demanded ``confidence`` the point estimate decides, as before intervals existed. With
``confidence = c`` the check is a non-inferiority test on the ``c`` interval:

- **passed** when the whole interval lies within the bound (``high <= 12`` for ``delta <= 12%``);
- **failed** when the whole interval lies beyond it (``low > 12``);
- **inconclusive** otherwise, or when there is no interval to show it with.

Because the interval is two-sided at level ``c``, "the whole interval within the bound" is a
one-sided test at level ``(1 + c) / 2`` (97.5 % for ``c = 0.95``): a conservative gate.

How many samples would decide an inconclusive check: an interval's half-width shrinks like
``1 / sqrt(N)``. With ``d`` the distance from the point estimate to the bound and ``h`` the
half-width of the interval on the side facing the bound, the interval stops touching the bound
at about ``(h / d)**2`` times the samples (every set scaled alike). It is a rough guide: it
assumes the point estimate stays where it is.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from ..spec.schema import Bound

Outcome = Literal["passed", "failed", "inconclusive"]

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


@dataclass(frozen=True)
class Evidence:
    """``outcome``; ``margin``: how far the point estimate is from the bound in the bound's unit
    (positive: room left, negative: violated); ``explanation``: one line for an inconclusive
    outcome (empty otherwise); ``factor``: about how many times the samples would decide an
    inconclusive check (``None`` when decided, or when no number of samples would)."""

    outcome: Outcome
    margin: float
    explanation: str = ""
    factor: float | None = None


EQUAL_TOLERANCE = 1e-9
"""Relative tolerance (of ``max(1, |bound|)``) within which a compared quantity *is* the bound.
``0.30 - 0.29`` is ``0.009999999999999953`` in floating point: without it, a delta of exactly 1pp
would pass ``delta < 1pp`` and ``0.97 - 0.96`` would fail ``delta <= 1pp``; counts over a few
thousand images differ by far more than this."""


def holds(op: str, compared: float, limit: float) -> bool:
    """``compared <op> limit`` with :data:`EQUAL_TOLERANCE` (a value that close is the bound: it
    holds ``<=`` / ``>=``, not ``<`` / ``>``); a NaN never holds a bound."""
    if math.isnan(compared):
        return False
    if math.isfinite(compared) and math.isfinite(limit) and abs(compared - limit) <= EQUAL_TOLERANCE * max(1.0, abs(limit)):
        compared = limit
    return bool(_OPS[op](compared, limit))


def threshold(bound: Bound) -> float:
    """The number the compared quantity is held against: the amount, or 0 against another quantizer."""
    return 0.0 if bound.ref is not None else float(bound.amount)


def _upper(bound: Bound) -> bool:
    return bound.op in ("<=", "<")


def margin(bound: Bound, compared: float) -> float:
    """Room left between ``compared`` and the bound, in the bound's unit (negative: violated)."""
    thr = threshold(bound)
    return thr - compared if _upper(bound) else compared - thr


def level_label(level: float) -> str:
    """``0.95 -> "95%"``, ``0.995 -> "99.5%"``."""
    return f"{100 * level:.1f}".rstrip("0").rstrip(".") + "%"


def format_number(x: float, unit: str, *, signed: bool) -> str:
    """A number in the bound's unit for display (no unit suffix): 2 decimals for ``%`` and
    ``pp``, 4 significant digits otherwise; ``+inf`` / ``-inf`` as such."""
    if math.isinf(x):
        return "+inf" if x > 0 else "-inf"
    sign = "+" if signed else ""
    return f"{x:{sign}.2f}" if unit in ("%", "pp") else f"{x:{sign}.4g}"


def format_interval(interval: tuple[float, float] | None, level: float, unit: str, *, signed: bool = True, of: str = "") -> str:
    """``"[95% CI +11.40, +14.90]"`` (numbers in the bound's unit; ``of="the difference"`` gives
    ``"[95% CI of the difference ...]"``); ``""`` without an interval."""
    if interval is None:
        return ""
    lo, hi = (format_number(v, unit, signed=signed) for v in interval)
    return f"[{level_label(level)} CI{' of ' + of if of else ''} {lo}, {hi}]"


def samples_factor(bound: Bound, compared: float, interval: tuple[float, float]) -> float | None:
    """About how many times the samples would move the interval off the bound (``(h / d)**2``,
    see the module docstring); ``None`` when the point estimate is on the bound."""
    thr = threshold(bound)
    lo, hi = interval
    d = abs(compared - thr)
    if d == 0 or not math.isfinite(d):
        return None
    h = (hi - compared) if compared < thr else (compared - lo)
    if not math.isfinite(h):
        return None
    return max(1.0, (h / d) ** 2)


def _samples_text(factor: float | None, n: Mapping[str, int] | None) -> str:
    if factor is None:
        return "more samples alone would not decide it (the estimate sits on the bound)"
    text = f"about {factor:.1f}x the samples would likely decide it"
    if n:
        now = ", ".join(f"{math.ceil(factor * k):,} {d} instead of {k:,}" for d, k in n.items())
        text += f" ({now})"
    return text


def judge(
    bound: Bound,
    compared: float,
    interval: tuple[float, float] | None,
    confidence: float | None,
    *,
    n: Mapping[str, int] | None = None,
    unit: str | None = None,
) -> Evidence:
    """The outcome of a check whose quantity is ``compared`` (point) with ``interval`` (at level
    ``confidence``), both in the bound's unit; see the module docstring.

    ``n``: samples per resampled set, for the "how many more samples" hint. ``unit``: the unit
    the numbers are in, for the explanation (default: the bound's).

    >>> b = Bound("delta", "<=", 12, "%")
    >>> judge(b, 13.1, (11.4, 14.9), None).outcome    # the point decides without confidence
    'failed'
    >>> judge(b, 13.1, (12.4, 14.9), 0.95).outcome
    'failed'
    >>> e = judge(b, 13.1, (11.4, 14.9), 0.95)
    >>> e.outcome, e.factor is not None
    ('inconclusive', True)
    """
    def ok(x: float, limit: float) -> bool:
        return holds(bound.op, x, limit)

    thr = threshold(bound)
    room = margin(bound, compared)
    if confidence is None or math.isnan(compared):  # a NaN estimate holds no bound, whatever its interval
        return Evidence("passed" if ok(compared, thr) else "failed", room)
    u = unit or ("abs" if bound.ref is not None else bound.unit)
    shown = f"{level_label(confidence)}"
    if interval is None:
        return Evidence("inconclusive", room, f"no interval to show it with {shown} confidence")
    lo, hi = interval
    worst, best = (hi, lo) if _upper(bound) else (lo, hi)
    if ok(worst, thr):
        return Evidence("passed", room)
    if not ok(best, thr):
        return Evidence("failed", room)
    inside, beyond = abs(thr - best), abs(worst - thr)
    suffix = {"%": "%", "pp": "pp"}.get(u, "")
    factor = samples_factor(bound, compared, interval)
    if math.isfinite(lo) and math.isfinite(hi):
        more = _samples_text(factor, n)
    else:
        more = "the interval has an infinite end (see the note), so more samples may not decide it"
    where = f"0 (as much as {bound.ref})" if bound.ref is not None else f"{format_number(thr, u, signed=False)}{suffix}"
    explanation = (
        f"the {shown} interval straddles the bound {where}, reaching {format_number(beyond, u, signed=False)}{suffix} "
        f"beyond it and {format_number(inside, u, signed=False)}{suffix} inside; {more}"
    )
    return Evidence("inconclusive", room, explanation, factor)


__all__ = ["EQUAL_TOLERANCE", "Evidence", "Outcome", "format_interval", "format_number", "holds", "judge", "level_label", "margin", "samples_factor", "threshold"]
