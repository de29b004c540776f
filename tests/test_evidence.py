"""The decision with evidence (passed / failed / inconclusive), how verdicts show intervals, and the
suite keys that demand evidence."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from pytest_qrel.errors import SpecError
from pytest_qrel.evaluate import decide
from pytest_qrel.spec import load_suite, parse_shorthand, plan
from pytest_qrel.spec.schema import Bound
from pytest_qrel.stats import IntervalRequest, PairedInterval, format_interval, judge, paired_interval, samples_factor

# ------------------------------------------------------------------ judge


UPPER = Bound("delta", "<=", 12, "%")
LOWER = Bound("value", ">=", 85, "%")


@pytest.mark.parametrize(
    ("bound", "point", "interval", "outcome"),
    [
        (UPPER, 10.0, (9.0, 11.9), "passed"),
        (UPPER, 10.0, (9.0, 12.0), "passed"),  # <=: touching the bound is within
        (UPPER, 13.1, (12.1, 14.9), "failed"),
        (UPPER, 13.1, (11.4, 14.9), "inconclusive"),
        (UPPER, 11.0, (9.5, 12.5), "inconclusive"),
        (Bound("delta", "<", 12, "%"), 11.0, (10.0, 12.0), "inconclusive"),  # <: touching is not within
        (LOWER, 90.0, (86.0, 94.0), "passed"),
        (LOWER, 80.0, (78.0, 84.9), "failed"),
        (LOWER, 86.0, (83.0, 89.0), "inconclusive"),
        (Bound("delta", "<=", 0, "abs", ref="W4A4"), -0.02, (-0.03, -0.01), "passed"),
        (Bound("delta", "<=", 0, "abs", ref="W4A4"), -0.01, (-0.03, 0.01), "inconclusive"),
    ],
)
def test_judge_with_confidence(bound, point, interval, outcome):
    assert judge(bound, point, interval, 0.95).outcome == outcome


def test_without_confidence_the_point_decides():
    assert judge(UPPER, 11.0, (9.5, 12.5), None).outcome == "passed"
    assert judge(UPPER, 13.1, (11.4, 14.9), None).outcome == "failed"
    assert judge(UPPER, 13.1, None, None).outcome == "failed"


def test_confidence_without_an_interval_is_inconclusive():
    e = judge(UPPER, 1.0, None, 0.95)
    assert e.outcome == "inconclusive" and "no interval" in e.explanation


def test_margin_sign():
    assert judge(UPPER, 10.0, None, None).margin == pytest.approx(2.0)
    assert judge(UPPER, 13.0, None, None).margin == pytest.approx(-1.0)
    assert judge(LOWER, 90.0, None, None).margin == pytest.approx(5.0)


def test_inconclusive_explanation_says_how_far_and_how_many_samples():
    e = judge(UPPER, 13.1, (11.4, 14.9), 0.95, n={"digits": 385, "textures": 300})
    # half-width towards the bound: 13.1 - 11.4 = 1.7; distance 1.1 -> (1.7 / 1.1)**2 = 2.39x
    assert e.factor == pytest.approx((1.7 / 1.1) ** 2)
    assert "the 95% interval straddles the bound 12.00%, reaching 2.90% beyond it and 0.60% inside" in e.explanation
    assert "2.4x the samples" in e.explanation and "920 digits instead of 385" in e.explanation
    assert samples_factor(UPPER, 12.0, (11.0, 13.0)) is None
    on_bound = judge(UPPER, 12.0, (11.0, 13.0), 0.95)
    assert "would not decide it" in on_bound.explanation
    unbounded = judge(UPPER, 5.0, (1.0, float("inf")), 0.95)  # FP32 = 0 on some resamples
    assert unbounded.outcome == "inconclusive" and "infinite end" in unbounded.explanation


def test_samples_factor_matches_how_intervals_shrink():
    """Scaling N by the factor brings the interval's edge onto the bound: check on a mean."""
    rng = np.random.default_rng(0)
    x = rng.normal(0.5, 1.0, 400)  # point 0.5ish, bound 0.6: inconclusive at N = 400
    m, half = x.mean(), 1.96 * x.std(ddof=1) / np.sqrt(400)
    bound = Bound("delta", "<=", m + 0.4 * half, "abs")
    f = samples_factor(bound, m, (m - half, m + half))
    assert f == pytest.approx((1 / 0.4) ** 2)
    new_half = 1.96 * x.std(ddof=1) / np.sqrt(400 * f)
    assert m + new_half == pytest.approx(bound.amount)


def test_format_interval():
    assert format_interval((11.4, 14.9), 0.95, "%") == "[95% CI +11.40, +14.90]"
    assert format_interval((0.031, 0.0492), 0.99, "abs", signed=False) == "[99% CI 0.031, 0.0492]"
    assert format_interval((1.0, float("inf")), 0.95, "%") == "[95% CI +1.00, +inf]"
    assert format_interval(None, 0.95, "%") == ""


# ------------------------------------------------------------------ verdicts


SUITE = """\
version: 1
name: mini
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: noise, source: "embedded:noise"}
quantizers:
  W4A4: {method: minmax}
  W8A8: {method: minmax}
scores: [msp]
"""


def _planned(tmp_path: Path, check: str, extra: str = ""):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE + extra + "checks:\n  - " + check + "\n")
    return plan(load_suite(path))[0]


def _interval(compared_ci, level=0.95, delta_ci=(0.01, 0.02), n=None, note=""):
    return PairedInterval(
        metric="aupr_out", kind="delta", unit="%", level=level, resamples=1000, seed=0, value=0.8, fp32=0.9,
        ref_value=None, delta=0.1, compared=11.1, delta_ci=delta_ci, compared_ci=compared_ci, n=n or {"digits": 385, "noise": 300},
        note=note, delta_draws=None, compared_draws=None,
    )


def test_verdict_without_interval_is_unchanged(tmp_path):
    p = _planned(tmp_path, '"W4A4 aupr_out(msp) delta <= 12%"')
    v = decide(p, 0.7869, 0.9, higher_is_better=True, fraction=True)
    assert v.outcome == "failed" and v.ci_display == "" and v.delta_ci is None
    assert v.message == "vit W4A4 aupr_out(msp) on noise: FP32 90.00%, W4A4 78.69%, delta +12.57% violates delta <= 12%"
    assert v.compared == pytest.approx(100 * (0.9 - 0.7869) / 0.9) and v.margin == pytest.approx(12 - v.compared)


def test_verdict_shows_the_interval_and_the_point_decides(tmp_path):
    p = _planned(tmp_path, '"W4A4 aupr_out(msp) delta <= 12%"')
    v = decide(p, 0.7869, 0.9, higher_is_better=True, fraction=True, interval=_interval((11.4, 14.9)))
    assert v.outcome == "failed"  # the point estimate (+12.57%) decides: no confidence demanded
    assert "delta +12.57% [95% CI +11.40%, +14.90%] violates delta <= 12%" in v.message
    assert v.ci_display == "[95% CI +11.40%, +14.90%]" and v.ci_level == 0.95 and v.ci_resamples == 1000 and v.ci_seed == 0
    assert v.delta_ci == [0.01, 0.02] and v.confidence is None


def test_verdict_with_confidence_can_be_inconclusive(tmp_path):
    p = _planned(tmp_path, '"W4A4 aupr_out(msp) delta <= 12% with 95% confidence"')
    assert p.check.confidence == 0.95
    v = decide(p, 0.7869, 0.9, higher_is_better=True, fraction=True, interval=_interval((11.4, 14.9)))
    assert v.outcome == "inconclusive" and v.passed is False and v.confidence == 0.95
    assert "delta +12.57% [95% CI +11.40%, +14.90%] is inconclusive for delta <= 12% at 95% confidence: the 95% interval straddles" in v.message
    assert "instead of 300" in v.message
    passed = decide(p, 0.8, 0.9, higher_is_better=True, fraction=True, interval=_interval((9.0, 11.5)))
    assert passed.outcome == "passed" and passed.message.endswith("within delta <= 12% with 95% confidence")
    failed = decide(p, 0.7, 0.9, higher_is_better=True, fraction=True, interval=_interval((12.5, 30.0)))
    assert failed.outcome == "failed"


def test_expected_failure_with_confidence(tmp_path):
    p = _planned(tmp_path, '{check: "W4A4 aupr_out(msp) delta <= 1%", expect: fail, confidence: 0.95}')
    assert decide(p, 0.7, 0.9, higher_is_better=True, fraction=True, interval=_interval((12.0, 30.0))).outcome == "xfailed"
    assert decide(p, 0.7, 0.9, higher_is_better=True, fraction=True, interval=_interval((-1.0, 30.0))).outcome == "inconclusive"


def test_confidence_without_interval_is_inconclusive(tmp_path):
    p = _planned(tmp_path, '"W4A4 aupr_out(msp) delta <= 12% with 95% confidence"')
    v = decide(p, 0.8, 0.9, higher_is_better=True, fraction=True)
    assert v.outcome == "inconclusive" and "no interval" in v.message


def test_interval_is_re_summarised_at_the_demanded_level(tmp_path):
    """A check demanding 99% gets the 99% percentiles of the same resamples."""
    rng = np.random.default_rng(1)
    s_id, s_ood = rng.normal(1, 1, 500), rng.normal(0, 1, 300)
    fp32 = {"digits": {"score.msp": s_id}, "noise": {"score.msp": s_ood}}
    q = {"digits": {"score.msp": s_id + rng.normal(0, 0.5, 500)}, "noise": {"score.msp": s_ood + rng.normal(0, 0.5, 300)}}
    p = _planned(tmp_path, '"W4A4 auroc(msp) delta <= 2pp with 99% confidence"')
    res = paired_interval(IntervalRequest("auroc", ("noise",), (q,), fp32, score="msp", id_dataset="digits", bound=p.check.bound))
    v = decide(p, res.value, res.fp32, higher_is_better=True, fraction=True, interval=res)
    assert v.ci_level == 0.99 and v.ci_display.startswith("[99% CI")
    lo, hi = np.quantile(res.compared_draws, [0.005, 0.995])
    assert v.ci_display == f"[99% CI {lo:+.2f}pp, {hi:+.2f}pp]"


def test_value_bound_and_note_in_message(tmp_path):
    p = _planned(tmp_path, '"W4A4 ece <= 0.05"')
    iv = _interval((0.031, 0.049), note="only 12 samples in digits: the interval is a rough guide")
    v = decide(p, 0.04, 0.03, higher_is_better=False, fraction=True, interval=iv)
    assert "[95% CI 3.10%, 4.90%] within value <= 5.00%" in v.message  # the value's unit throughout
    assert v.message.endswith("(only 12 samples in digits: the interval is a rough guide)") and v.ci_note


# ------------------------------------------------------------------ the spec


def test_shorthand_confidence():
    c = parse_shorthand("W4A4 aupr_out(msp) on mean(ood) delta <= 12% with 95% confidence")
    assert c.confidence == 0.95 and str(c.bound) == "delta<=12%"
    assert parse_shorthand("W4A4 top1 delta <= 1pp with 99.5% confidence").confidence == pytest.approx(0.995)
    assert parse_shorthand("W4A4 top1 delta <= delta(W8A8) with 90% confidence").confidence == pytest.approx(0.9)
    assert parse_shorthand("W4A4 top1 delta <= 1pp").confidence is None


def _load(tmp_path: Path, checks: str, extra: str = ""):
    path = tmp_path / "suite.yaml"
    path.write_text(SUITE + extra + "checks:\n" + textwrap.indent(textwrap.dedent(checks), "  "))
    return load_suite(path)


def test_structured_confidence_and_suite_default(tmp_path):
    suite = _load(
        tmp_path,
        """\
        - "W4A4 top1 delta <= 1pp"
        - "W4A4 nll delta <= 10% with 90% confidence"
        - {metric: ece, quantizers: [W4A4], value: {max: 0.05}, confidence: "99%"}
        - {check: "W4A4 auroc(msp) delta <= 2pp", confidence: null}
        """,
        extra="confidence: 0.95\ninconclusive: warn\nbootstrap: {resamples: 2000, seed: 7}\n",
    )
    assert [c.confidence for c in suite.checks] == [0.95, pytest.approx(0.9), pytest.approx(0.99), None]
    assert suite.confidence == 0.95 and suite.inconclusive == "warn"
    assert suite.bootstrap.resamples == 2000 and suite.bootstrap.seed == 7
    assert suite.checks[2].text.endswith("with 99% confidence")
    plain = _load(tmp_path, '- "W4A4 top1 delta <= 1pp"\n')
    assert plain.inconclusive == "fail" and plain.confidence is None and plain.checks[0].confidence is None
    assert plain.bootstrap.resamples == 1000 and plain.bootstrap.seed == 0


@pytest.mark.parametrize(
    ("checks", "extra", "field", "fragment"),
    [
        ('- {check: "W4A4 top1 delta <= 1pp", confidence: 95}\n', "", "checks[0].confidence", "write 0.95 or '95%'"),
        ('- {check: "W4A4 top1 delta <= 1pp", confidence: 1.5}\n', "", "checks[0].confidence", "between 0 and 1"),
        ('- {check: "W4A4 top1 delta <= 1pp with 95% confidence", confidence: 0.9}\n', "", "checks[0].confidence", "given twice"),
        ('- "W4A4 top1 delta <= 1pp with 150% confidence"\n', "", "checks[0]", "between 0 and 1"),
        ('- "W4A4 top1 delta <= 1pp"\n', "confidence: high\n", "confidence", "between 0 and 1"),
        ('- "W4A4 top1 delta <= 1pp"\n', "inconclusive: maybe\n", "inconclusive", "'inconclusive: fail'"),
        ('- "W4A4 top1 delta <= 1pp"\n', "bootstrap: {resamples: 5}\n", "bootstrap.resamples", "from 10 to 1000000"),
        ('- "W4A4 top1 delta <= 1pp"\n', "bootstrap: {samples: 5}\n", "bootstrap.samples", "did you mean 'resamples'"),
    ],
)
def test_bad_evidence_keys_name_file_line_field_and_fix(tmp_path, checks, extra, field, fragment):
    with pytest.raises(SpecError) as info:
        _load(tmp_path, checks, extra)
    msg = str(info.value)
    assert msg.startswith(str(tmp_path / "suite.yaml") + ":"), msg
    assert f"field '{field}'" in msg and fragment in msg, msg


# ------------------------------------------------------------------ from planned checks


def test_requests_from_planned_checks(tmp_path):
    """Datasets of each kind of check, seeds and reference arrays, and the suite's bootstrap settings."""
    from pytest_qrel.engine.samples import batch_arrays
    from pytest_qrel.stats import intervals_for, request_for

    path = tmp_path / "suite.yaml"
    path.write_text(
        SUITE.replace("    - {name: noise, source: \"embedded:noise\"}", "    - {name: noise, source: \"embedded:noise\"}\n    - {name: photos, source: \"embedded:photos\"}")
        + "bootstrap: {resamples: 50, seed: 3}\nchecks:\n"
        + '  - "W4A4 top1 delta <= 1pp"\n  - "W4A4 auroc(msp) on mean(ood) delta <= 1pp"\n  - "W4A4 fpr_at_95_tpr(msp) on noise delta <= delta(W8A8)"\n'
    )
    planned = plan(load_suite(path))
    rng = np.random.default_rng(0)
    sizes = {"digits": 200, "noise": 80, "photos": 60}

    def unit(noise):
        out = {}
        for d, n in sizes.items():
            logits = rng.normal(0, 1, (n, 8))
            labelled = d == "digits"
            out[d] = batch_arrays(logits, rng.integers(0, 8, n) if labelled else np.full(n, -1), labelled=labelled)
            out[d]["score.msp"] = logits.max(1) + noise * rng.normal(size=n)
        return out

    units = {"FP32": [unit(0.0)], "W4A4": [unit(0.3), unit(0.4)], "W8A8": [unit(0.1)]}
    calls = []

    def arrays_of(model, quantizer):
        calls.append((model, quantizer))
        return units[quantizer]

    reqs = [request_for(p, arrays_of) for p in planned]
    assert [r.datasets for r in reqs] == [("digits",), ("noise", "photos"), ("noise",)]
    assert reqs[1].id_dataset == "digits" and reqs[0].id_dataset is None
    assert len(reqs[1].quantized) == 2 and reqs[2].ref == tuple(units["W8A8"])
    results = intervals_for(planned, arrays_of)
    assert all(r is not None and r.resamples == 50 and r.seed == 3 for r in results)
    assert results[2].kind == "ref-delta" and results[1].n == {"digits": 200, "noise": 80, "photos": 60}
    assert ("vit", "FP32") in calls


def test_reference_bound_shows_the_interval_of_the_difference(tmp_path):
    p = _planned(tmp_path, '"W4A4 top1 delta <= delta(W8A8) with 95% confidence"', extra="")
    iv = PairedInterval(
        metric="top1", kind="ref-delta", unit="abs", level=0.95, resamples=1000, seed=0, value=0.88, fp32=0.9,
        ref_value=0.85, delta=0.02, compared=-0.03, delta_ci=(0.01, 0.03), compared_ci=(-0.045, 0.004), n={"digits": 385},
    )
    v = decide(p, 0.88, 0.90, higher_is_better=True, fraction=True, ref_value=0.85, interval=iv)
    assert "delta +2.00pp vs W8A8 +5.00pp [95% CI of the difference -4.50pp, +0.40pp]" in v.message
    assert v.outcome == "inconclusive" and "straddles the bound 0 (as much as W8A8), reaching 0.004 beyond" in v.message
