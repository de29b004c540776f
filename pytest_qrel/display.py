"""One display rule per metric: how values, bounds, deltas and compared quantities read.

Inside the library every value is a fraction in [0, 1] (top-1, ECE, AUROC, AUPR, FPR@95) or a
natural unit (NLL in nats; the spectral errors are dimensionless). Humans read:

- **fraction metrics** as percentages with two decimals: ``0.97922 -> "97.92%"``;
- **NLL** in nats with four decimals: ``"0.0464 nats"``;
- **spectral errors** with four significant digits: ``"0.0004121"``;
- any other metric with four decimals, or with its :attr:`MetricInfo.fmt`.

A **bound** is written in the same unit as the value it constrains (``ece <= 0.022`` reads
``value <= 2.20%``, never ``0.022`` beside ``2.25%``). A **delta** is written in the bound's unit:
``%`` relative to FP32 (``"+22.09%"``), ``pp`` percentage points (``"+1.30pp"``); an absolute
delta of a fraction metric is shown in percentage points too (0.013 = ``"+1.30pp"``), an absolute
delta of any other metric in its own unit (``"+0.0123 nats"``). Without a bound (report tables) a
delta is in percentage points for fractions and in the metric's unit otherwise.

Deltas are signed so that positive means *worse* than FP32 (:mod:`pytest_qrel.deltas`); this module
only writes them.

The functions take a :class:`~pytest_qrel.results.MetricInfo` (what the report holds) and plain
numbers; :func:`metric_info` builds a ``MetricInfo`` from the metric registry for the engine.
Messages for terminals use ASCII (``-``); the report passes ``typographic=True`` for a true minus
sign (U+2212) and ``±`` on zero.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from .deltas import relative
from .results import MetricInfo

__all__ = [
    "METRIC_LABELS",
    "MISSING",
    "SCORE_LABELS",
    "BoundLike",
    "bound_unit",
    "delta_unit",
    "format_bound",
    "format_compared",
    "format_delta",
    "format_margin",
    "format_number",
    "format_value",
    "metric_info",
    "metric_infos",
    "score_label",
    "value_unit",
]

MISSING = "n/a"
"""What a missing value (``None`` or NaN) reads in messages; the report uses an em dash."""

MINUS = "\u2212"

#: Display labels; a metric without one shows its name.
METRIC_LABELS: dict[str, str] = {
    "top1": "Top-1",
    "nll": "NLL",
    "ece": "ECE",
    "auroc": "AUROC",
    "aupr_out": "AUPR-out",
    "aupr_in": "AUPR-in",
    "fpr_at_95_tpr": "FPR@95",
    "vulnerability": "Vulnerability",
    "spectral_error": "Spectral error (RSE)",
    "spectral_error_high": "Spectral error, high band",
}
#: Units of metrics that are not fractions.
METRIC_UNITS: dict[str, str] = {"nll": "nats"}
#: Format specs of metrics whose default (``.4f``) does not fit.
METRIC_FORMATS: dict[str, str] = {"spectral_error": ".4g", "spectral_error_high": ".4g"}

SCORE_LABELS: dict[str, str] = {
    "msp": "MSP",
    "energy": "Energy",
    "maxlogit": "MaxLogit",
    "mcm": "MCM",
    "neglabel": "NegLabel",
    "genneg": "GenNeg",
}


class BoundLike(Protocol):
    """What :func:`format_bound` reads of a bound (:class:`pytest_qrel.spec.schema.Bound`)."""

    @property
    def kind(self) -> str: ...  # "delta" | "value"

    @property
    def op(self) -> str: ...  # "<=", "<", ">=", ">"

    @property
    def amount(self) -> float: ...

    @property
    def unit(self) -> str: ...  # "%", "pp", "abs"

    @property
    def ref(self) -> str | None: ...


# ------------------------------------------------------------------------------------- metadata


def metric_info(name: str) -> MetricInfo:
    """The :class:`MetricInfo` of a registered metric (direction and fraction from the registry)."""
    from .metrics import METRICS

    meta = METRICS.meta(name)
    fraction = bool(meta["fraction"])
    return MetricInfo(
        name=name,
        label=METRIC_LABELS.get(name, meta.get("label", name)),
        higher_is_better=bool(meta["higher_is_better"]),
        fraction=fraction,
        unit="" if fraction else METRIC_UNITS.get(name, meta.get("unit", "")),
        kind=str(meta.get("kind", "id")),
        fmt=METRIC_FORMATS.get(name, meta.get("fmt", "")),
    )


def metric_infos(names: Iterable[str] | None = None) -> dict[str, MetricInfo]:
    """``{name: MetricInfo}`` of ``names`` (default: every registered metric)."""
    from .metrics import METRICS

    return {n: metric_info(n) for n in (METRICS.names() if names is None else names)}


def score_label(score: str | None) -> str:
    """``"msp" -> "MSP"``; unknown scores keep their name; ``None`` -> ``""``."""
    return SCORE_LABELS.get(score, score) if score else ""


# ------------------------------------------------------------------------------------ numbers


def _missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def _spec(info: MetricInfo) -> str:
    return info.fmt or (".2f" if info.fraction else ".4f")


def _signed(text_abs: str, negative: bool, *, typographic: bool) -> str:
    """Attach a sign to an already formatted magnitude; a magnitude that reads as zero gets
    ``±`` (typographic) or ``+``."""
    if float(text_abs) == 0.0:
        return ("\u00b1" if typographic else "+") + text_abs
    if negative:
        return (MINUS if typographic else "-") + text_abs
    return "+" + text_abs


def value_unit(info: MetricInfo) -> str:
    """The unit a value is displayed in: ``"%"`` for fractions, else :attr:`MetricInfo.unit`."""
    return "%" if info.fraction else info.unit


def delta_unit(info: MetricInfo) -> str:
    """The unit of a delta without a bound (report tables): ``"pp"`` for fractions, else the
    metric's own unit."""
    return "pp" if info.fraction else info.unit


def _with_unit(text: str, unit: str) -> str:
    if not unit:
        return text
    return f"{text}{unit}" if unit in ("%", "pp") else f"{text} {unit}"


def format_number(info: MetricInfo, x: Any, *, missing: str = MISSING, typographic: bool = False) -> str:
    """A value in its display unit without the unit: ``"97.92"`` (a fraction), ``"0.0464"`` (NLL)."""
    if _missing(x):
        return missing
    v = float(x) * (100.0 if info.fraction else 1.0)
    text = format(abs(v), _spec(info))
    return (MINUS if typographic else "-") + text if v < 0 and float(text) != 0 else text


def format_value(info: MetricInfo, x: Any, *, unit: bool = True, missing: str = MISSING, typographic: bool = False) -> str:
    """A metric value by the metric's display rule: ``"97.92%"``, ``"0.0464 nats"``, ``"0.0004121"``.

    ``unit=False`` leaves the unit out (for table cells whose header names it).
    """
    text = format_number(info, x, missing=missing, typographic=typographic)
    if text == missing or not unit:
        return text
    return _with_unit(text, value_unit(info))


def format_delta(
    info: MetricInfo,
    delta: Any,
    *,
    unit: str | None = None,
    fp32: Any = None,
    symbol: bool = True,
    missing: str = MISSING,
    typographic: bool = False,
) -> str:
    """A signed delta (metric unit, positive = worse) written in ``unit``.

    ``unit``: ``None`` (tables: pp for fractions, the metric's unit otherwise), ``"pp"``,
    ``"abs"`` (same as ``None``), or ``"%"`` (relative to ``fp32``, which is then required; a
    missing FP32 gives ``missing``). ``symbol=False`` leaves the unit out.
    """
    if _missing(delta):
        return missing
    d = float(delta)
    if unit == "%":
        if _missing(fp32):
            return missing
        shown, spec, suffix = 100.0 * relative(d, float(fp32)), ".2f", "%"
    elif unit == "pp" or (unit in (None, "abs") and info.fraction):
        shown, spec, suffix = 100.0 * d, ".2f", "pp"
    else:
        shown, spec, suffix = d, _spec(info), info.unit
    if math.isinf(shown):
        return ("+" if shown > 0 else (MINUS if typographic else "-")) + "inf" + (suffix if suffix == "%" else "")
    text = _signed(format(abs(shown), spec), shown < 0, typographic=typographic)
    return _with_unit(text, suffix) if symbol else text


def bound_unit(info: MetricInfo, bound: BoundLike) -> str:
    """The unit a bound (and the quantity it is applied to) is displayed in: ``"%"`` for relative
    deltas and for value bounds of fractions, ``"pp"`` for pp and absolute deltas of fractions,
    else the metric's own unit."""
    if bound.kind == "delta":
        if bound.unit == "%":
            return "%"
        return "pp" if (bound.unit == "pp" or info.fraction) else info.unit
    return value_unit(info)


def _amount_text(info: MetricInfo, bound: BoundLike, amount: float, *, signed: bool, typographic: bool) -> str:
    """``amount`` (in the bound's *written* unit) in the bound's display unit."""
    if bound.kind == "delta":
        if bound.unit == "%":
            shown, spec = amount, "g" if not signed else ".2f"
        elif bound.unit == "pp":
            shown, spec = amount, ".2f"
        elif info.fraction:
            shown, spec = 100.0 * amount, ".2f"
        else:
            shown, spec = amount, _spec(info)
    elif info.fraction:
        shown, spec = amount if bound.unit == "%" else 100.0 * amount, ".2f"
    else:
        shown, spec = amount, _spec(info)
    if math.isinf(shown):
        text = "inf"
        body = ("-" if shown < 0 else "+") + text if signed else text
    elif signed:
        body = _signed(format(abs(shown), spec), shown < 0, typographic=typographic)
    else:
        body = format(shown, spec)
        if typographic and body.startswith("-"):
            body = MINUS + body[1:]
    return _with_unit(body, bound_unit(info, bound))


def format_bound(info: MetricInfo, bound: BoundLike, *, typographic: bool = False) -> str:
    """The bound in the value's display unit: ``ece <= 0.022`` -> ``"value <= 2.20%"``;
    ``top1 delta <= 0.01`` -> ``"delta <= 1.00pp"``; ``nll delta <= 10%`` -> ``"delta <= 10%"``
    (relative to FP32); ``nll delta <= 0.05`` -> ``"delta <= 0.0500 nats"``;
    ``delta <= delta(W4A4)`` -> ``"delta <= delta(W4A4)"``."""
    op = {"<=": "\u2264", ">=": "\u2265"}.get(bound.op, bound.op) if typographic else bound.op
    if bound.ref is not None:
        return f"{bound.kind} {op} {bound.kind}({bound.ref})"
    return f"{bound.kind} {op} {_amount_text(info, bound, float(bound.amount), signed=False, typographic=typographic)}"


def format_compared(info: MetricInfo, bound: BoundLike, compared: Any, *, missing: str = MISSING, typographic: bool = False) -> str:
    """The quantity a bound was applied to (:attr:`Verdict.compared`, in the bound's *written*
    unit) in the bound's display unit: a delta signed (``"+22.09%"``, ``"+1.30pp"``), a value
    plain (``"2.25%"``). For bounds against another quantizer ``compared`` is in the metric's
    unit."""
    if _missing(compared):
        return missing
    c = float(compared)
    if bound.ref is not None:
        if bound.kind == "delta":
            return format_delta(info, c, typographic=typographic)
        return format_value(info, c, typographic=typographic)
    return _amount_text(info, bound, c, signed=bound.kind == "delta", typographic=typographic)


def format_margin(info: MetricInfo, bound: BoundLike, margin: Any, *, missing: str = MISSING, typographic: bool = False) -> str:
    """How far the compared quantity is from the bound (:attr:`Verdict.margin`, in the bound's
    written unit, positive = room left), signed, in the bound's display unit: ``"+4.10pp"`` (a gap
    between two percentages is in percentage points), ``"-0.30%"`` (relative deltas),
    ``"+0.0100 nats"``. For bounds against another quantizer the margin is a delta in the metric's unit."""
    if _missing(margin):
        return missing
    m = float(margin)
    if bound.ref is not None:
        return format_delta(info, m, typographic=typographic)
    if bound.kind == "delta" and bound.unit == "%":
        shown, spec, suffix = m, ".2f", "%"
    elif bound.unit in ("pp", "%"):
        shown, spec, suffix = m, ".2f", "pp"
    elif info.fraction:
        shown, spec, suffix = 100.0 * m, ".2f", "pp"
    else:
        shown, spec, suffix = m, _spec(info), info.unit
    if math.isinf(shown):
        return ("+" if shown > 0 else (MINUS if typographic else "-")) + "inf"
    return _with_unit(_signed(format(abs(shown), spec), shown < 0, typographic=typographic), suffix)


def format_ci(info: MetricInfo, bound: BoundLike, ci: Any, level: float, *, typographic: bool = False) -> str:
    """A confidence interval of the compared quantity (in the bound's written unit, like
    :attr:`Verdict.compared`) in the bound's display unit: ``"[95% CI +11.40%, +14.90%]"``;
    against another quantizer ``"[95% CI of the difference ...]"``; ``""`` without one."""
    if ci is None:
        return ""
    lo, hi = (format_compared(info, bound, x, typographic=typographic) for x in ci)
    label = f"{100 * level:.1f}".rstrip("0").rstrip(".") + "%"
    of = " of the difference" if bound.ref is not None else ""
    return f"[{label} CI{of} {lo}, {hi}]"


def infos_from(data: Mapping[str, Any]) -> dict[str, MetricInfo]:
    """``{name: MetricInfo}`` from plain dicts (``MetricInfo.to_dict`` output) or ``MetricInfo``s."""
    return {k: v if isinstance(v, MetricInfo) else MetricInfo(**v) for k, v in data.items()}
