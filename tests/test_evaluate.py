"""Delta signs, units and bounds: the arithmetic every verdict rests on."""

from __future__ import annotations

import math

import pytest

from pytest_qrel.evaluate import compare, relative, signed_delta
from pytest_qrel.spec.schema import Bound


def test_delta_is_positive_when_worse_for_both_directions():
    assert signed_delta(0.90, 0.85, higher_is_better=True) == pytest.approx(0.05)  # accuracy dropped
    assert signed_delta(0.30, 0.40, higher_is_better=False) == pytest.approx(0.10)  # NLL rose
    assert signed_delta(0.90, 0.95, higher_is_better=True) < 0  # improvement is negative
    assert signed_delta(0.30, 0.20, higher_is_better=False) < 0


def test_report_numbers_follow_the_same_delta_rule():
    """The report's numbers (pytest_qrel.summary) use the checks' rule: + is worse, in the
    metric's unit, with the relative size in percent of |FP32|; none without FP32 or a direction."""
    from pytest_qrel.display import metric_info
    from pytest_qrel.summary import number

    top1, ece = metric_info("top1"), metric_info("ece")
    assert number(top1, 0.97, 0.98).delta == pytest.approx(0.01)  # lower accuracy: worse
    assert number(ece, 0.03, 0.02).delta == pytest.approx(0.01)  # higher ECE: worse
    n = number(ece, 0.02, 0.04)
    assert n.delta == pytest.approx(-0.02) and n.delta_percent == pytest.approx(-50.0)
    assert number(top1, 0.5, None).delta is None and number(None, 0.5, 0.6).delta is None
    assert number(ece, 0.5, 0.0).delta_percent is None  # no relative size against an FP32 of 0
    spread = number(top1, 0.5, 0.6, per_seed=[0.48, 0.50, 0.52])
    assert spread.spread == pytest.approx(0.02) and spread.seeds == 3 and number(top1, 0.5, per_seed=[0.5]).spread is None


@pytest.mark.parametrize(
    ("bound", "fp32", "value", "metric", "passed", "display"),
    [
        (Bound("delta", "<=", 12, "%"), 0.50, 0.45, "top1", True, "+10.00%"),
        (Bound("delta", "<=", 12, "%"), 0.50, 0.43, "top1", False, "+14.00%"),
        (Bound("delta", "<=", 1, "pp"), 0.97, 0.965, "top1", True, "+0.50pp"),
        (Bound("delta", "<=", 1, "pp"), 0.97, 0.955, "top1", False, "+1.50pp"),
        (Bound("delta", "<=", 0.05, "abs"), 0.20, 0.26, "ece", False, "+6.00pp"),  # a fraction: shown in pp
        (Bound("delta", "<=", 0, "abs"), 0.05, 0.04, "ece", True, "-1.00pp"),  # ECE improved: passes
        (Bound("delta", "<=", 0, "%"), 0.05, 0.05, "ece", True, "+0.00%"),
        (Bound("value", "<=", 0.05, "abs"), None, 0.04, "ece", True, "4.00%"),  # the value in its own unit
        (Bound("value", ">=", 90, "%"), 0.97, 0.89, "top1", False, "89.00%"),
        (Bound("delta", "<=", 0.05, "abs"), 0.30, 0.40, "nll", False, "+0.1000 nats"),
    ],
)
def test_compare(bound, fp32, value, metric, passed, display):
    from pytest_qrel.display import format_compared, metric_info
    from pytest_qrel.evaluate import compared_quantity

    info = metric_info(metric)
    ok, delta = compare(bound, fp32, value, higher_is_better=info.higher_is_better)
    assert ok is passed
    compared = compared_quantity(bound, fp32, value, higher_is_better=info.higher_is_better)
    assert format_compared(info, bound, compared) == display


def test_improvement_always_passes_nonnegative_delta_bounds():
    for unit in ("%", "pp", "abs"):
        for amount in (0, 0.5, 5):
            assert compare(Bound("delta", "<=", amount, unit), 0.8, 0.9, higher_is_better=True)[0]
            assert compare(Bound("delta", "<=", amount, unit), 0.4, 0.3, higher_is_better=False)[0]


def test_relative_with_zero_fp32():
    assert relative(0.0, 0.0) == 0.0
    assert relative(0.1, 0.0) == math.inf
    assert relative(-0.1, 0.0) == -math.inf


def test_delta_bound_needs_fp32():
    with pytest.raises(ValueError):
        compare(Bound("delta", "<=", 1, "%"), None, 0.5, higher_is_better=True)


def test_compare_against_another_quantizers_delta():
    bound = Bound("delta", "<=", 0, "abs", ref="W4A4")
    # accuracy: FP32 0.90, candidate 0.88 (delta +0.02), reference 0.85 (delta +0.05): candidate loses less
    ok, delta = compare(bound, 0.90, 0.88, higher_is_better=True, ref_value=0.85)
    assert ok and delta == pytest.approx(0.02)
    assert not compare(bound, 0.90, 0.84, higher_is_better=True, ref_value=0.85)[0]
    # NLL (lower is better): candidate 0.5 vs reference 0.4 from FP32 0.3 -> candidate is worse
    assert not compare(bound, 0.3, 0.5, higher_is_better=False, ref_value=0.4)[0]
    with pytest.raises(ValueError):
        compare(bound, 0.9, 0.88, higher_is_better=True)
