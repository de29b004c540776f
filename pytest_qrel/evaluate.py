"""Check x quantized value x FP32 value -> Verdict. Pure arithmetic; never runs a model.

Delta convention (:mod:`pytest_qrel.deltas`, the one rule everything else follows): ``delta`` is
how much *worse* the quantized model is than FP32, so positive means worse for every metric:

- higher-is-better metrics (top1, auroc, aupr_in, aupr_out): ``delta = FP32 - quantized``
- lower-is-better metrics (nll, ece, fpr_at_95_tpr): ``delta = quantized - FP32``

Bounds: ``%`` is relative to the FP32 value (``delta / |FP32|``), ``pp`` is absolute percentage points
(``100 * delta``, fraction metrics only), a bare number is absolute in the metric's own unit. An
improvement (negative delta) therefore passes every non-negative ``delta <=`` bound. If FP32 is 0, a
relative delta is 0 when the values are equal and +/-infinity otherwise.

Intervals (:mod:`pytest_qrel.stats`): :func:`decide` takes an optional
:class:`~pytest_qrel.stats.PairedInterval` of the check's quantity. Without a demanded
``confidence`` (the check's, or the suite's default) the point estimate decides exactly as
without an interval and the interval is only shown: ``... delta +13.10% [95% CI +11.40, +14.90]
violates delta<=12%``. With ``confidence`` the interval decides (non-inferiority, see
:mod:`pytest_qrel.stats.decision`): passed when it lies wholly within the bound, failed when
wholly beyond, otherwise ``inconclusive`` with a line saying by how much it straddles the bound
and about how many more samples would decide it. A check that demands confidence but has no
interval is inconclusive.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from .deltas import relative, signed_delta
from .display import format_bound, format_ci, format_compared, format_delta, format_margin, format_value, metric_info
from .policy import outcome_of
from .results import MetricInfo, Verdict
from .spec.plan import PlannedCheck
from .spec.schema import Bound

if TYPE_CHECKING:
    from .stats import PairedInterval

__all__ = ["compare", "compared_quantity", "decide", "relative", "signed_delta"]


def compared_quantity(
    bound: Bound, fp32: float | None, value: float, *, higher_is_better: bool, ref_value: float | None = None
) -> float:
    """The number ``bound`` is applied to, in its unit: the delta in ``%`` / ``pp`` / the metric's
    unit, the value (``%`` of a fraction metric or as is), or against another quantizer
    ``delta - ref_delta`` / ``value - ref_value`` (held against 0)."""
    if bound.ref is not None:
        if ref_value is None or (bound.kind == "delta" and fp32 is None):
            raise ValueError("a bound against another quantizer needs its value (and FP32 for deltas)")
        if bound.kind == "value":
            return value - ref_value
        return signed_delta(fp32, value, higher_is_better=higher_is_better) - signed_delta(  # type: ignore[arg-type]
            fp32, ref_value, higher_is_better=higher_is_better  # type: ignore[arg-type]
        )
    if bound.kind == "value":
        return 100 * value if bound.unit == "%" else value
    if fp32 is None:
        raise ValueError("a delta bound needs an FP32 value")
    delta = signed_delta(fp32, value, higher_is_better=higher_is_better)
    if bound.unit == "%":
        return 100 * relative(delta, fp32)
    return 100 * delta if bound.unit == "pp" else delta


def compare(
    bound: Bound, fp32: float | None, value: float, *, higher_is_better: bool, ref_value: float | None = None
) -> tuple[bool, float | None]:
    """Apply ``bound``: ``(passed, delta in the metric's unit or None)``. The bound is applied to
    :func:`compared_quantity`; against another quantizer (``bound.ref``) that is the difference of
    the two deltas (or values), held against 0."""
    compared = compared_quantity(bound, fp32, value, higher_is_better=higher_is_better, ref_value=ref_value)
    delta = None if fp32 is None else signed_delta(fp32, value, higher_is_better=higher_is_better)
    from .stats.decision import holds  # the one comparison: a value within float error of the bound is on it

    limit = 0.0 if bound.ref is not None else bound.amount
    return holds(bound.op, compared, float(limit)), delta


def decide(
    planned: PlannedCheck,
    value: float,
    fp32: float | None,
    *,
    higher_is_better: bool,
    fraction: bool,
    ref_value: float | None = None,
    interval: "PairedInterval | None" = None,
) -> Verdict:
    """The :class:`Verdict` of ``planned`` given the quantized ``value``, the ``fp32`` value and, for
    bounds against another quantizer, that quantizer's ``ref_value``.

    ``interval``: the paired bootstrap interval of the check's quantity
    (:func:`pytest_qrel.stats.paired_intervals` of the request built for ``planned``). It is shown
    in the message and recorded in the verdict's ``delta_ci`` / ``ci_*`` fields; it decides only
    when the check demands ``confidence`` (then at that level, from the same resamples).
    """
    from .stats.decision import judge

    check = planned.check
    bound = check.bound
    passed, delta = compare(bound, fp32, value, higher_is_better=higher_is_better, ref_value=ref_value)
    compared = compared_quantity(bound, fp32, value, higher_is_better=higher_is_better, ref_value=ref_value)
    confidence = getattr(check, "confidence", None)
    if interval is not None and confidence is not None and interval.level != confidence:
        interval = interval.at_level(confidence)
    ci = interval.compared_ci if interval is not None else None
    info = metric_info(check.metric)
    evidence = judge(bound, compared, ci, confidence, n=interval.n if interval is not None else None)
    if confidence is not None:
        passed = evidence.outcome == "passed"
    ci_display = format_ci(info, bound, ci, interval.level) if interval is not None else ""
    compared_display = format_compared(info, bound, compared)
    # One display rule per metric (pytest_qrel.display): values, deltas and the bound in one unit.
    numbers = _numbers(planned, info, fp32, value, ref_value, delta, compared_display, higher_is_better)
    message = _message(planned, info, numbers + (f" {ci_display}" if ci_display else ""), passed, confidence, evidence, interval)
    expect_fail = check.expect == "fail"
    # The one policy (the plugin applies the suite's inconclusive policy to ``passed`` later).
    outcome, _ = outcome_of(evidence.outcome, confidence=confidence, expect_fail=expect_fail)
    return Verdict(
        suite=planned.suite.name,
        model=planned.model,
        quantizer=planned.quantizer,
        dataset=planned.dataset,
        metric=check.metric,
        score=planned.score,
        check=check.text,
        bound=str(bound),
        fp32=fp32,
        value=value,
        delta=delta,
        delta_display=compared_display if bound.kind == "delta" or bound.ref else "",
        passed=passed,
        expect_fail=expect_fail,
        outcome=outcome,
        message=message,
        ci_display=ci_display,
        confidence=confidence,
        compared=_finite_or_none(compared),
        margin=_finite_or_none(evidence.margin),
        value_display=format_value(info, value),
        fp32_display=format_value(info, fp32) if fp32 is not None else "",
        bound_display=format_bound(info, bound),
        bound_amount=None if bound.ref is not None else float(bound.amount),
        reason=check.reason or "",
        ref_value=ref_value,
        compared_ci=list(ci) if ci is not None else None,
        source=str(check.where) if check.where else "",
        margin_display=format_margin(info, bound, evidence.margin) if evidence.margin is not None else "",
        **_interval_fields(interval),
    )


def _numbers(
    planned: PlannedCheck, info: MetricInfo, fp32: float | None, value: float, ref_value: float | None,
    delta: float | None, compared_display: str, higher_is_better: bool,
) -> str:
    """The numbers part of a verdict's message: ``"FP32 97.92%, W4A4 96.10%, delta +1.82pp"``; a
    runtime metric's (no FP32 value, value bounds only): ``"ORT 0.40 x FP32 (<what it compares
    against>)"``."""
    bound = planned.check.bound
    fp32_display = format_value(info, fp32, missing="n/a")
    numbers = f"FP32 {fp32_display}" if planned.quantizer == "FP32" else f"FP32 {fp32_display}, {planned.quantizer} {format_value(info, value)}"
    if fp32 is None and info.kind == "runtime":  # no FP32 value: say what the number is measured against
        from .runtimes.checks import compared_with

        numbers = f"{planned.quantizer} {format_value(info, value)} ({compared_with(planned.check.metric, planned.score)})"
    if bound.ref is not None:
        numbers += f", {bound.ref} {format_value(info, ref_value, missing='n/a')}"
        if bound.kind == "delta" and fp32 is not None and ref_value is not None:
            ref_delta = signed_delta(fp32, ref_value, higher_is_better=higher_is_better)
            numbers += f", delta {format_delta(info, delta)} vs {bound.ref} {format_delta(info, ref_delta)}"
    elif bound.kind == "delta":
        numbers += f", delta {compared_display}"
    return numbers


def _message(
    planned: PlannedCheck, info: MetricInfo, numbers: str, passed: bool, confidence: float | None, evidence: Any,
    interval: "PairedInterval | None",
) -> str:
    """The verdict's one line: what, the numbers, whether they are within the bound, and any note."""
    check = planned.check
    metric = f"{check.metric}({planned.score})" if planned.score else check.metric
    what = f"{planned.model} {planned.quantizer} {metric} on {planned.dataset}"
    if confidence is None:
        verb, tail = ("within" if passed else "violates"), ""
    else:
        decided = evidence.outcome != "inconclusive"
        verb = {"passed": "within", "failed": "violates", "inconclusive": "is inconclusive for"}[evidence.outcome]
        tail = f" with {_pct(confidence)} confidence" if decided else f" at {_pct(confidence)} confidence: {evidence.explanation}"
    note = interval.note if interval is not None else ""
    return f"{what}: {numbers} {verb} {format_bound(info, check.bound)}{tail}" + (f" ({note})" if note else "")


def _interval_fields(interval: "PairedInterval | None") -> dict[str, Any]:
    """The verdict's interval fields (``delta_ci``, ``ci_level``, ``ci_resamples``, ``ci_seed``, ``ci_note``)."""
    if interval is None:
        return {}
    return {
        "delta_ci": list(interval.delta_ci) if interval.delta_ci is not None else None,
        "ci_level": interval.level,
        "ci_resamples": interval.resamples,
        "ci_seed": interval.seed,
        "ci_note": interval.note,
    }


def _pct(level: float) -> str:
    from .stats.decision import level_label

    return level_label(level)


def _finite_or_none(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None
