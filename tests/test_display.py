"""One display rule per metric: values, bounds, deltas and compared quantities in one unit."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pytest_qrel import display
from pytest_qrel.results import MetricInfo
from pytest_qrel.spec.schema import Bound

ECE = display.metric_info("ece")
TOP1 = display.metric_info("top1")
NLL = display.metric_info("nll")
RSE = display.metric_info("spectral_error")


def unit_of(text: str) -> str:
    """The unit suffix of a display string: "%", "pp", "nats" or ""."""
    m = re.search(r"(%|pp| nats)$", text)
    return m.group(1).strip() if m else ""


def test_metric_info_comes_from_the_registry() -> None:
    assert (TOP1.higher_is_better, TOP1.fraction, TOP1.unit) == (True, True, "")
    assert (NLL.higher_is_better, NLL.fraction, NLL.unit) == (False, False, "nats")
    assert (ECE.higher_is_better, ECE.fraction) == (False, True)
    assert RSE.fmt == ".4g" and RSE.kind == "spectral"
    infos = display.metric_infos()
    assert {"top1", "nll", "ece", "auroc", "aupr_out", "fpr_at_95_tpr", "spectral_error"} <= set(infos)
    assert infos["fpr_at_95_tpr"].label == "FPR@95"


def test_values_by_metric() -> None:
    assert display.format_value(TOP1, 0.979221) == "97.92%"
    assert display.format_value(NLL, 0.0463547) == "0.0464 nats"
    assert display.format_value(RSE, 0.00041206) == "0.0004121"
    assert display.format_value(ECE, 0.0225, unit=False) == "2.25"
    assert display.format_value(ECE, None) == "n/a" and display.format_value(ECE, float("nan"), missing="-") == "-"
    assert display.format_value(TOP1, -0.5, typographic=True) == "\u221250.00%"


@pytest.mark.parametrize(
    ("info", "bound", "text"),
    [
        (ECE, Bound("value", "<=", 0.022), "value <= 2.20%"),  # the bound in the value's unit, not 0.022
        (TOP1, Bound("value", ">=", 90, "%"), "value >= 90.00%"),
        (TOP1, Bound("delta", "<=", 1, "pp"), "delta <= 1.00pp"),
        (TOP1, Bound("delta", "<=", 0.01), "delta <= 1.00pp"),  # an absolute delta of a fraction is pp
        (NLL, Bound("delta", "<=", 10, "%"), "delta <= 10%"),
        (NLL, Bound("delta", "<=", 0.05), "delta <= 0.0500 nats"),
        (NLL, Bound("value", "<=", 0.2), "value <= 0.2000 nats"),
        (RSE, Bound("value", "<=", 0.002), "value <= 0.002"),
        (TOP1, Bound("delta", "<=", 0.0, ref="W4A4"), "delta <= delta(W4A4)"),
    ],
)
def test_bounds_read_in_the_values_unit(info: MetricInfo, bound: Bound, text: str) -> None:
    assert display.format_bound(info, bound) == text
    assert display.format_bound(info, bound, typographic=True) == text.replace("<=", "\u2264").replace(">=", "\u2265")


def test_value_bound_and_value_share_a_unit_for_every_metric() -> None:
    rng = np.random.default_rng(0)
    for name, info in display.metric_infos().items():
        for amount in rng.random(5):
            bound = Bound("value", "<=", float(amount))
            assert unit_of(display.format_bound(info, bound)) == unit_of(display.format_value(info, float(amount))), name


@pytest.mark.parametrize(
    ("info", "bound", "compared", "text"),
    [
        (ECE, Bound("value", "<=", 0.022), 0.02251, "2.25%"),
        (NLL, Bound("delta", "<=", 10, "%"), 2.123, "+2.12%"),
        (TOP1, Bound("delta", "<=", 1, "pp"), -0.52, "-0.52pp"),
        (TOP1, Bound("delta", "<=", 0.01), 0.013, "+1.30pp"),
        (NLL, Bound("delta", "<=", 0.05), 0.0123, "+0.0123 nats"),
        (TOP1, Bound("delta", "<=", 0.0, ref="W4A4"), 0.0052, "+0.52pp"),
    ],
)
def test_compared_quantity_in_the_bounds_unit(info: MetricInfo, bound: Bound, compared: float, text: str) -> None:
    assert display.format_compared(info, bound, compared) == text
    assert unit_of(text) == unit_of(display.format_bound(info, bound)) or bound.ref is not None


def test_deltas() -> None:
    assert display.format_delta(TOP1, 0.0174) == "+1.74pp"
    assert display.format_delta(NLL, 0.01) == "+0.0100 nats"
    assert display.format_delta(NLL, 0.01, unit="%", fp32=0.05) == "+20.00%"
    assert display.format_delta(NLL, 0.01, unit="%") == "n/a"  # relative needs FP32
    assert display.format_delta(TOP1, -0.0001, typographic=True) == "\u22120.01pp"
    assert display.format_delta(TOP1, 0.00001, typographic=True) == "\u00b10.00pp"  # reads as zero: no sign
    assert display.format_delta(TOP1, 0.01, symbol=False) == "+1.00"
    assert display.format_delta(NLL, 0.1, unit="%", fp32=0.0) == "+inf%"


def test_margins() -> None:
    assert display.format_margin(ECE, Bound("value", "<=", 0.022), -0.0005) == "-0.05pp"
    assert display.format_margin(TOP1, Bound("value", ">=", 90, "%"), 7.9) == "+7.90pp"
    assert display.format_margin(NLL, Bound("delta", "<=", 10, "%"), 7.88) == "+7.88%"
    assert display.format_margin(NLL, Bound("value", "<=", 0.2), 0.01) == "+0.0100 nats"


def test_score_labels() -> None:
    assert display.score_label("neglabel") == "NegLabel" and display.score_label("custom") == "custom"
    assert display.score_label(None) == ""
