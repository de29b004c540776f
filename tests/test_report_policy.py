"""One pass/fail policy: the terminal summary, the HTML banner, the Markdown verdict, the junit XML
and ``qrel merge``'s exit code agree on every outcome, ``inconclusive`` under each policy included.

Each case is a real merge (``qrel merge --report --junitxml``) of a results file whose verdicts the
merge recomputes from their numbers: no model runs. The expectations are the table of
:mod:`pytest_qrel.policy`, written out here."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_qrel import load_suite, plan
from pytest_qrel.cli import main as qrel_main
from pytest_qrel.policy import OUTCOMES, Standing, run_verdict, standing
from pytest_qrel.results import Verdict
from pytest_qrel.shards import merge
from test_shards import edit, fake_results

SUITE = """\
version: 1
name: policy
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: noise, source: "embedded:noise"}
quantizers:
  W8A8: {method: minmax, calibration: {samples: 32}}
  W4A4: {method: minmax, calibration: {samples: 32}}
scores: [msp]
checks:
  - "W8A8 top1 delta <= 3pp"
  - check: "W4A4 top1 delta <= 1pp"
    expect: fail
    reason: "a known regression"
  - check: "W8A8 ece <= 0.2"
    confidence: 0.95
"""
FILE = "suites/policy.yaml"

# (case, policy) -> the target check's stored state, and what every output must say:
# (status, exit code, junit (failures, errors, skipped), not-verified line or "").
PASSES, XFAIL, TARGET = 0, 1, 2  # plan order of SUITE's checks
CASES = {
    ("passed", "fail"): ("PASS", 0, (0, 0, 1), ""),
    ("failed", "fail"): ("FAIL", 1, (1, 0, 1), ""),
    ("xpassed", "fail"): ("FAIL", 1, (1, 0, 0), ""),
    ("error", "fail"): ("FAIL", 1, (0, 1, 1), ""),
    ("not run", "fail"): ("FAIL", 1, (0, 1, 1), ""),
    ("skipped", "fail"): ("INCOMPLETE", 0, (0, 0, 2), "1 of 3 checks did not run or could not decide (1 skipped): not verified."),
    ("inconclusive", "fail"): ("FAIL", 1, (1, 0, 1), ""),
    ("inconclusive", "warn"): ("INCOMPLETE", 0, (0, 0, 1), "1 of 3 checks did not run or could not decide (1 inconclusive): not verified."),
    ("inconclusive", "pass"): ("INCOMPLETE", 0, (0, 0, 1), "1 of 3 checks did not run or could not decide (1 inconclusive): not verified."),
}


def results_file(root: Path, outcome: str) -> Path:
    """The results of SUITE where everything holds but ``outcome`` (a check's stored state)."""
    (root / "suites").mkdir(exist_ok=True)
    (root / FILE).write_text(SUITE)
    ids = [f"{FILE}::{p.model}::{p.quantizer}::{p.name}" for p in plan(load_suite(root / FILE))]
    values = {ids[XFAIL]: 0.01}  # top-1 0.05 -> 0.01: 4pp over a 1pp bound, as expected
    if outcome == "failed":
        values[ids[TARGET]] = 0.3  # ECE 30% against <= 20%
    if outcome == "xpassed":
        values[ids[XFAIL]] = 0.05  # the expected failure holds: a strict xfail fails the gate
    path = fake_results(root, "r.json", None, values=values, suite_file=FILE)

    def change(doc: dict) -> None:
        for v in doc["results"]["verdicts"]:
            if v["nodeid"] != ids[TARGET]:
                continue
            # decided with 95% confidence (stored without an interval, the check was inconclusive)
            v.update(compared_ci=[v["compared"] - 1e-6, v["compared"]], outcome="failed" if outcome == "failed" else "passed",
                     passed=outcome != "failed")
            if outcome == "inconclusive":
                v.update(compared_ci=[0.1, 0.3], outcome="inconclusive", passed=False)  # straddles 0.2
            elif outcome in ("skipped", "error", "not run"):
                v.update(value=None, compared=None, margin=None, outcome=outcome, passed=False, message=f"it was {outcome}")

    return edit(path, change)


@pytest.mark.parametrize(("outcome", "policy"), list(CASES))
def test_every_output_agrees_on_every_outcome(tmp_path: Path, capsys: pytest.CaptureFixture[str], outcome: str, policy: str) -> None:
    status, code, (failures, errors, skipped), not_verified = CASES[(outcome, policy)]
    path = results_file(tmp_path, outcome)
    out = tmp_path / "out"
    assert qrel_main(["merge", str(path), "--root", str(tmp_path), "--inconclusive", policy,
                      "--report", str(out / "r.html"), "--junitxml", str(out / "j.xml")]) == code
    printed = capsys.readouterr().out
    merged = merge([path], root=tmp_path, inconclusive=policy)
    assert [v.outcome for v in merged.verdicts][TARGET if outcome != "xpassed" else XFAIL] == outcome
    assert {v.nodeid for v in merged.verdicts if v.outcome == "xfailed"} <= {merged.verdicts[XFAIL].nodeid}

    # The terminal summary: the lines the plugin prints (and qrel merge with it).
    verdict = run_verdict(merged.verdicts, 3)
    lines = verdict.lines()
    assert lines[0].startswith(f"qrel: {status}: ") and all(line in printed.splitlines() for line in lines)
    assert (not_verified in lines[-1]) if not_verified else len(lines) == 1
    # The HTML banner.
    html = (out / "r.html").read_text(encoding="utf-8")
    assert f'data-status="{status}"' in html and html.count("data-status=") == 1
    assert verdict.headline in html and (not_verified in html if not_verified else "did not run or could not decide" not in html)
    # The Markdown verdict (written beside the report).
    md = (out / "r.md").read_text(encoding="utf-8")
    assert re.match(rf"## \S+ pytest-qrel: {status} \u2014 policy\n", md)
    assert f"**{verdict.headline}**" in md and (not_verified in md if not_verified else "not verified." not in md)
    # The junit counts, and each testcase where the gate fails.
    suite_el = ET.parse(out / "j.xml").find("testsuite")
    assert suite_el is not None
    assert (suite_el.get("failures"), suite_el.get("errors"), suite_el.get("skipped")) == (str(failures), str(errors), str(skipped))
    assert suite_el.get("tests") == "3"


def test_the_standing_of_every_outcome() -> None:
    """The table of pytest_qrel.policy: an inconclusive check blocks only where its policy did not
    let it pass; an outcome this version does not know blocks."""
    def v(outcome: str, passed: bool = False) -> Verdict:
        return Verdict("s", "m", "q", "d", "top1", None, "c", "b", None, None, None, "", passed, False, outcome, "")  # type: ignore[arg-type]

    expected = {"passed": Standing.VERIFIED, "xfailed": Standing.VERIFIED, "failed": Standing.BLOCKS, "xpassed": Standing.BLOCKS,
                "error": Standing.BLOCKS, "not run": Standing.BLOCKS, "skipped": Standing.NOT_VERIFIED,
                "inconclusive": Standing.BLOCKS}
    assert set(expected) == set(OUTCOMES)
    assert {o: standing(v(o, passed=o == "passed")) for o in OUTCOMES} == expected
    assert standing(v("inconclusive", passed=True)) is Standing.NOT_VERIFIED
    assert standing(v("mystery", passed=True)) is Standing.BLOCKS
    assert run_verdict([], None).status == "NO CHECKS" and run_verdict([], 2).status == "INCOMPLETE"
    missing = run_verdict([v("passed", True)], 4)
    assert missing.status == "INCOMPLETE" and missing.unverified_line == (
        "3 of 4 checks did not run or could not decide (3 planned without a result: not selected in this run, or not reached): not verified.")


def _v(outcome: str, passed: bool = False, metric: str = "top1") -> Verdict:
    return Verdict("s", "m", "q", "d", metric, None, "c", "b", None, None, None, "", passed, False, outcome, "")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("verdicts", "planned", "status", "code", "allowed"),
    [
        ([("skipped", False)] * 3, 3, "NOT VERIFIED", 1, 0),  # every check skipped: data missing
        ([("skipped", False), ("inconclusive", True)], 2, "NOT VERIFIED", 1, 0),  # undecided, let pass: verified nothing
        ([("skipped", False)], 4, "NOT VERIFIED", 1, 0),  # -k kept one check, and it was skipped
        ([("skipped", False), ("passed", True)], 2, "INCOMPLETE", 0, 0),  # one check verified
        ([("skipped", False), ("failed", False)], 2, "FAIL", 1, 1),  # the allowance never hides a failure
        ([], 3, "INCOMPLETE", 0, 0),  # checks deselected (-k): planned without a result, not skipped
        ([], None, "NO CHECKS", 1, 0),
        ([("passed", True), ("xfailed", False)], 2, "PASS", 0, 0),
    ],
)
def test_a_run_that_verifies_nothing_fails_the_gate_unless_allowed(verdicts, planned, status, code, allowed) -> None:
    """The one exit code (pytest's exit status and qrel merge's): pytest_qrel.policy's table."""
    verdict = run_verdict([_v(o, p) for o, p in verdicts], planned)
    assert verdict.status == status
    assert (verdict.exit_code(), verdict.exit_code(allow_nothing_verified=True)) == (code, allowed)


def test_report_only_items_are_not_checks_in_any_count() -> None:
    from pytest_qrel.policy import REPORT_ONLY, is_report_only
    from pytest_qrel.spec.schema import REPORT_ONLY as PLANNED_METRIC

    assert REPORT_ONLY == PLANNED_METRIC  # the policy recognises the verdicts the planner's items produce
    ro = [_v("passed", True, REPORT_ONLY)] * 6
    assert is_report_only(ro[0]) and not is_report_only(_v("passed", True))
    verdict = run_verdict([_v("passed", True)] * 75 + [_v("xfailed")] + ro, 76)
    assert (verdict.status, verdict.total, verdict.counts["passed"], verdict.n_report_only) == ("PASS", 76, 75, 6)
    assert verdict.tally == "76 checks: 75 passed, 1 xfailed + 6 report-only items"
    assert verdict.headline == "All 76 checks verified: 75 passed, 1 failed as expected (see Expected failures)."
    # A report-only item alone verifies nothing; one whose unit errored blocks (its pytest item fails).
    skipped = run_verdict([_v("skipped")] + ro, 1)
    assert (skipped.status, skipped.exit_code()) == ("NOT VERIFIED", 1)
    broken = run_verdict([_v("passed", True)] + ro[:5] + [_v("error", metric=REPORT_ONLY)], 1)
    assert (broken.status, broken.n_failing, broken.n_blocking, broken.exit_code()) == ("FAIL", 0, 1, 1)
    assert broken.tally == "1 check: 1 passed + 6 report-only items (1 error)"
    assert broken.headline == "1 of 6 report-only items block the release."
    assert run_verdict([_v("passed", True), _v("passed", True)], 5).tally == "2 checks (of 5 planned): 2 passed"
