"""Covariate shift: ID metrics on labelled shifted sets, shift detection, and vulnerability of pairs."""

from __future__ import annotations

import textwrap

import pytest

from pytest_qrel import Engine, load_suite, plan
from pytest_qrel.errors import SpecError

SUITE = """\
name: shift
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: noise_ood, source: "shift:gaussian_noise/5", options: {of: "embedded:digits", as_ood: true}}
  shifted:
    - {name: digits_noise, source: "shift:gaussian_noise/5", options: {of: "embedded:digits"}}
    - {name: digits_blur, source: "shift:gaussian_blur/3", options: {of: "embedded:digits"}}
  pairs:
    noisy_bg: {common: digits, counter: digits_noise}
quantizers:
  W4A4: {method: minmax, calibration: {samples: 32}}
scores: [msp]
checks:
%s
"""


def write(tmp_path, checks: str, body: str = SUITE):
    path = tmp_path / "s.yaml"
    path.write_text(body % textwrap.indent(textwrap.dedent(checks), "  "))
    return path


def test_id_metrics_under_shift_vulnerability_and_shift_detection(tmp_path):
    suite = load_suite(write(tmp_path, """\
        - "W4A4 top1 on shifted delta <= 100pp"
        - "all ece on digits_noise <= 1"
        - "W4A4 vulnerability delta <= 100pp"
        - "W4A4 auroc(msp) on noise_ood delta <= 100pp"
        """))
    planned = plan(suite)
    assert [(p.quantizer, p.dataset) for p in planned[:2]] == [("W4A4", "digits_noise"), ("W4A4", "digits_blur")]
    engine = Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    verdicts = [engine.evaluate(p) for p in planned]
    assert all(v.passed for v in verdicts), [v.message for v in verdicts]
    clean = engine.samples(suite, "vit", "W4A4", "digits")
    noisy = engine.samples(suite, "vit", "W4A4", "digits_noise")
    assert (noisy["label"] == clean["label"]).all()  # a shifted set keeps its labels
    acc_clean, acc_noisy = clean["correct"].mean(), noisy["correct"].mean()
    assert acc_noisy < acc_clean  # severity-5 noise costs accuracy
    vuln = next(v for v in verdicts if v.metric == "vulnerability")
    assert vuln.value == pytest.approx(acc_clean - acc_noisy)
    stored = engine.baseline(suite, "vit").metrics
    assert set(stored["shifted"]) == {"digits_noise", "digits_blur"} and "vulnerability" in stored["pairs"]["noisy_bg"]
    shifted_acc = next(v for v in verdicts if v.dataset == "digits_noise" and v.metric == "top1")
    assert shifted_acc.value == pytest.approx(acc_noisy)
    units = {u.quantizer: u for u in engine.report_units()}
    assert units["W4A4"].pairs["noisy_bg"]["vulnerability"] == pytest.approx(acc_clean - acc_noisy)


@pytest.mark.parametrize(
    ("checks", "fragment"),
    [
        ('- "W4A4 top1 on noise_ood delta <= 1pp"\n', "is measured on labelled sets (digits, digits_noise, digits_blur), not 'noise_ood'"),
        ('- "W4A4 vulnerability on nowhere delta <= 1pp"\n', "unknown pair 'nowhere'"),
    ],
)
def test_bad_shift_checks(tmp_path, checks, fragment):
    with pytest.raises(SpecError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        load_suite(write(tmp_path, checks))


def test_pair_members_must_be_labelled_sets(tmp_path):
    body = SUITE.replace("counter: digits_noise", "counter: noise_ood")
    with pytest.raises(SpecError, match="'counter' must name the ID set or a shifted set"):
        load_suite(write(tmp_path, "[]\n", body))
