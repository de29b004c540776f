"""One error-to-verdict policy: ``pytest_qrel.run`` and the plugin's items agree on every error.

Both paths evaluate the same suite through an engine whose ``evaluate`` raises one error type per
check (and, for one check demanding confidence, returns an inconclusive verdict); each check's
outcome, message and stage must be the same from ``run()`` and from a pytest run, with and
without ``--qrel-strict``, under each inconclusive policy. Every error class of
:mod:`pytest_qrel.errors` has a row: a new one fails this test until it is given one.
"""

from __future__ import annotations

import re

import pytest

from pytest_qrel import errors, load_suite, run
from pytest_qrel.errors import QrelError
from pytest_qrel.plugin import PROP_PREFIX
from pytest_qrel.results import Verdict

# The check with bound "<= K pp" raises ERRORS[K].
ERRORS: dict[int, QrelError] = {
    1: errors.DataMissingError("dataset 'ghost': /nowhere/ghost does not exist (set QREL_DATA)"),
    2: errors.DataError("dataset 'digits': img_3.png is not an image"),
    3: errors.ModelError("model 'vit': checkpoint w.pt has no key 'head.weight'"),
    4: errors.UserCodeError("model 'vit' W8A8: forward raised RuntimeError: boom", stage="forward"),
    5: errors.NumericsError("model 'vit' W8A8 on 'digits': 3 of 385 samples have non-finite logits"),
    6: errors.BaselineMissingError("no FP32 baseline for 'vit' (run pytest --qrel-suite s --qrel-update-baselines)"),
    7: errors.BaselineStaleError("the FP32 baseline of 'vit' is stale: weights changed (abc -> def)"),
    8: errors.SpecError("must be a number", file="suites/mini.yaml", line=3, field="bits", fix="write 8"),
    9: errors.UnknownNameError("score", "msq", ["msp", "energy"]),
    10: errors.QuantOptionError("alpha", "must be in (0, 1]", "write alpha: 0.5"),
    11: errors.SimulationError("W4A4: blocks.0.attn.qkv has 40 distinct values, more than 2^4"),
    12: errors.DeviceError("--qrel-device cuda: no CUDA device here"),
    13: errors.StorageError("cannot write baselines/mini: read-only file system", path="baselines/mini"),
    14: errors.BaselineError("baselines/mini/vit.json: its checksum does not match (edited by hand?)"),
}
INCONCLUSIVE = 20  # the bound of the check for which the engine returns an inconclusive verdict

CHECKS = "".join(f'- "W8A8 top1 delta <= {k}pp"\n' for k in ERRORS) + (
    f'- {{check: "W8A8 top1 delta <= {INCONCLUSIVE}pp", confidence: 0.95}}\n'
)


def _subclasses(cls: type) -> set[type]:
    return {sub for direct in cls.__subclasses__() for sub in {direct} | _subclasses(direct)}


def test_every_error_class_has_a_row():
    documented = {c for c in _subclasses(QrelError) if c.__module__ == errors.__name__}
    assert documented == {type(e) for e in ERRORS.values()}


class FakeEngine:
    """Raises the error of each check; an inconclusive verdict for the check demanding confidence."""

    device = "cpu"

    def __init__(self, **kwargs: object) -> None:
        pass

    def expect(self, planned: object) -> None:
        pass

    def take_new_records(self) -> list[object]:
        return []

    def evaluate(self, p) -> Verdict:
        k = int(re.search(r"<= (\d+)pp", p.check.text).group(1))
        if k in ERRORS:
            raise ERRORS[k]
        return Verdict(
            suite=p.suite.name, model=p.model, quantizer=p.quantizer, dataset=p.dataset, metric=p.check.metric, score=p.score,
            check=p.check.text, bound=str(p.check.bound), fp32=0.9, value=0.8, delta=0.1, delta_display="+10pp",
            passed=False, expect_fail=False, outcome="inconclusive", message="the interval straddles the bound",
            ci_level=0.95,
        )


def _key(check: str) -> int:
    return int(re.search(r"<= (\d+)pp", check).group(1))


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("policy", ["fail", "pass"])
def test_run_and_the_plugin_give_each_error_the_same_verdict(pytester, write_suite, monkeypatch, strict, policy):
    path = write_suite(CHECKS)
    # nothing declared that no check reads: --qrel-strict would refuse it at collection (test_report_only.py)
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not any(k in line for k in ("W4A4:", "name: digits89", "name: noise"))))
    from_api = {
        _key(v.check): (v.outcome, v.message, v.stage, v.passed)
        for v in run(load_suite(path), engine=FakeEngine(), strict=strict, inconclusive=policy)
    }
    monkeypatch.setattr("pytest_qrel.engine.Engine", FakeEngine)
    args = ["--qrel-suite", "suites/mini.yaml", "-p", "no:cacheprovider", "--qrel-inconclusive", policy]
    reprec = pytester.inline_run(*args, *(["--qrel-strict"] if strict else []))
    from_plugin, item_outcomes = {}, {}
    for report in reprec.getreports("pytest_runtest_logreport"):
        props = {k[len(PROP_PREFIX):]: v for k, v in report.user_properties if k.startswith(PROP_PREFIX)}
        if report.when == "call":
            key = _key(props["check"])
            from_plugin[key] = (props["outcome"], props["message"], props.get("stage", ""), props["passed"])
            item_outcomes[key] = report.outcome
    assert from_plugin == from_api and len(from_api) == len(ERRORS) + 1
    for k, error in ERRORS.items():
        expected = "skipped" if isinstance(error, errors.DataMissingError) and not strict else "error"
        assert from_api[k][0] == expected, (k, error)
        assert item_outcomes[k] == ("skipped" if expected == "skipped" else "failed")
    assert from_api[4][2] == "forward"  # user code: the stage it failed in
    assert from_api[INCONCLUSIVE][0] == "inconclusive" and from_api[INCONCLUSIVE][3] is (policy == "pass")
    assert item_outcomes[INCONCLUSIVE] == ("passed" if policy == "pass" else "failed")
