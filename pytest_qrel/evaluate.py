"""Check x quantized value x FP32 value -> Verdict. Pure arithmetic; never runs a model.

Delta convention (the one rule everything else follows): ``delta`` is how much *worse* the
quantized model is than FP32, so positive means worse for every metric:

- higher-is-better metrics (top1, auroc, aupr_in, aupr_out): ``delta = FP32 - quantized``
- lower-is-better metrics (nll, ece, fpr_at_95_tpr): ``delta = quantized - FP32``

Bounds: ``%`` is relative to the FP32 value (``delta / |FP32|``), ``pp`` is absolute percentage points
(``100 * delta``, fraction metrics only), a bare number is absolute in the metric's own unit. An
improvement (negative delta) therefore passes every non-negative ``delta <=`` bound. If FP32 is 0, a
relative delta is 0 when the values are equal and +/-infinity otherwise.
"""

from __future__ import annotations

import math
import operator

from .results import Verdict
from .spec.plan import PlannedCheck
from .spec.schema import Bound

_OPS = {"<=": operator.le, "<": operator.lt, ">=": operator.ge, ">": operator.gt}


def signed_delta(fp32: float, value: float, *, higher_is_better: bool) -> float:
    """Worsening of ``value`` relative to ``fp32`` in the metric's unit; positive = worse."""
    return fp32 - value if higher_is_better else value - fp32


def relative(delta: float, fp32: float) -> float:
    """``delta / |fp32|`` as a fraction (0.12 = 12%), with the FP32 = 0 convention of the module doc."""
    if fp32 == 0:
        return 0.0 if delta == 0 else math.copysign(math.inf, delta)
    return delta / abs(fp32)


def format_value(value: float | None, *, fraction: bool) -> str:
    """Display form: fractions as percentages, other metrics with 4 significant decimals."""
    if value is None:
        return "n/a"
    return f"{100 * value:.2f}%" if fraction else f"{value:.4f}"


def compare(
    bound: Bound, fp32: float | None, value: float, *, higher_is_better: bool, ref_value: float | None = None
) -> tuple[bool, float | None, str]:
    """Apply ``bound``; returns (passed, delta in metric units or None, the compared quantity for display).

    With ``bound.ref``, ``ref_value`` is the other quantizer's value and the comparison is of the two
    deltas (or values) in the metric's own unit.
    """
    op = _OPS[bound.op]
    if bound.ref is not None:
        if ref_value is None or (bound.kind == "delta" and fp32 is None):
            raise ValueError("a bound against another quantizer needs its value (and FP32 for deltas)")
        if bound.kind == "value":
            return bool(op(value, ref_value)), None, f"{value:.4g} vs {bound.ref} {ref_value:.4g}"
        delta = signed_delta(fp32, value, higher_is_better=higher_is_better)  # type: ignore[arg-type]
        ref_delta = signed_delta(fp32, ref_value, higher_is_better=higher_is_better)  # type: ignore[arg-type]
        return bool(op(delta, ref_delta)), delta, f"{delta:+.4g} vs {bound.ref} {ref_delta:+.4g}"
    if bound.kind == "value":
        shown = 100 * value if bound.unit == "%" else value
        display = f"{shown:.2f}%" if bound.unit == "%" else f"{shown:.4g}"
        delta = None if fp32 is None else signed_delta(fp32, value, higher_is_better=higher_is_better)
        return bool(op(shown, bound.amount)), delta, display
    if fp32 is None:
        raise ValueError("a delta bound needs an FP32 value")
    delta = signed_delta(fp32, value, higher_is_better=higher_is_better)
    if bound.unit == "%":
        shown = 100 * relative(delta, fp32)
        display = f"{shown:+.2f}%"
    elif bound.unit == "pp":
        shown = 100 * delta
        display = f"{shown:+.2f}pp"
    else:
        shown = delta
        display = f"{shown:+.4g}"
    return bool(op(shown, bound.amount)), delta, display


def decide(
    planned: PlannedCheck,
    value: float,
    fp32: float | None,
    *,
    higher_is_better: bool,
    fraction: bool,
    ref_value: float | None = None,
) -> Verdict:
    """The :class:`Verdict` of ``planned`` given the quantized ``value``, the ``fp32`` value and, for
    bounds against another quantizer, that quantizer's ``ref_value``."""
    check = planned.check
    passed, delta, display = compare(check.bound, fp32, value, higher_is_better=higher_is_better, ref_value=ref_value)
    metric = f"{check.metric}({planned.score})" if planned.score else check.metric
    what = f"{planned.model} {planned.quantizer} {metric} on {planned.dataset}"
    numbers = f"FP32 {format_value(fp32, fraction=fraction)}, {planned.quantizer} {format_value(value, fraction=fraction)}"
    if check.bound.ref is not None:
        numbers += f", {check.bound.ref} {format_value(ref_value, fraction=fraction)}, {check.bound.kind} {display}"
    elif check.bound.kind == "delta":
        numbers += f", delta {display}"
    verb = "within" if passed else "violates"
    message = f"{what}: {numbers} {verb} {check.bound}"
    expect_fail = check.expect == "fail"
    outcome = ("xpassed" if passed else "xfailed") if expect_fail else ("passed" if passed else "failed")
    return Verdict(
        suite=planned.suite.name,
        model=planned.model,
        quantizer=planned.quantizer,
        dataset=planned.dataset,
        metric=check.metric,
        score=planned.score,
        check=check.text,
        bound=str(check.bound),
        fp32=fp32,
        value=value,
        delta=delta,
        delta_display=display if check.bound.kind == "delta" or check.bound.ref else "",
        passed=passed,
        expect_fail=expect_fail,
        outcome=outcome,
        message=message,
    )
