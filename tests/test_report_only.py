"""Nothing declared is silently skipped: what no check reads is named at collection (an error under
--qrel-strict), and ``report:`` computes units without a bound, as visible items whose records
reach the report."""

from __future__ import annotations

import json
import textwrap

import pytest

from pytest_qrel import load_suite, plan
from pytest_qrel.errors import SpecError
from pytest_qrel.spec.report_keys import unread_declarations

SUITE = ("--qrel-suite", "suites/mini.yaml")
ONLY_W8A8 = '- "W8A8 top1 delta <= 2pp"\n'


def test_a_declared_quantizer_no_check_reads_warns_at_collection_and_strict_makes_it_an_error(pytester, write_suite):
    write_suite(ONLY_W8A8)
    result = pytester.runpytest(*SUITE, "--co", "-q")
    assert result.ret == 0
    result.stdout.fnmatch_lines([
        "*QrelUnreadWarning: suites/mini.yaml: quantizer 'W4A4' is declared but no check reads it, so it never runs*report:*",
        "*QrelUnreadWarning: suites/mini.yaml: OOD dataset 'digits89' is declared but no check reads it*",
    ])
    strict = pytester.runpytest(*SUITE, "--co", "-q", "--qrel-strict")
    assert strict.ret != 0
    out = strict.stdout.str()
    assert out.count("quantizer 'W4A4' is declared but no check reads it") == 1 and "Traceback" not in out
    strict.stdout.fnmatch_lines(["*suites/mini.yaml: quantizer 'W4A4' is declared but no check reads it*"])


def test_report_only_unit_is_an_item_computed_once_and_shown_in_the_report(pytester, write_suite):
    path = write_suite(ONLY_W8A8)
    path.write_text(path.read_text() + "report: [W4A4]\n")
    collected = pytester.runpytest(*SUITE, "--co", "-q", "-p", "no:randomly")
    assert collected.ret == 0 and "QrelUnreadWarning" not in collected.stdout.str()  # W4A4 and both OOD sets are read now
    assert [line for line in collected.stdout.lines if line.startswith("suites/")] == [
        "suites/mini.yaml::vit::W8A8::top1 on digits delta<=2pp",
        "suites/mini.yaml::vit::W4A4::report-only",
    ]
    result = pytester.runpytest(*SUITE, "--qrel-update-baselines", "--qrel-report", "reports/mini.html", "--qrel-results", "reports/mini.json")
    result.assert_outcomes(passed=2)
    results = json.loads((pytester.path / "reports/mini.json").read_text())["results"]
    units = {u["quantizer"]: u for u in results["units"]}
    assert {"FP32", "W8A8", "W4A4"} <= set(units)
    w4a4 = units["W4A4"]  # computed over every set of the suite, its mean over both OOD sets
    assert set(w4a4["ood"]["msp"]) == {"digits89", "noise"} and "top1" in w4a4["id"]
    assert w4a4["ood_mean"]["msp"]["auroc"] == pytest.approx((w4a4["ood"]["msp"]["digits89"]["auroc"] + w4a4["ood"]["msp"]["noise"]["auroc"]) / 2)
    (verdict,) = [v for v in results["verdicts"] if v["quantizer"] == "W4A4"]
    assert verdict["outcome"] == "passed" and verdict["bound"] == "no bound" and "digits89" in verdict["message"]
    html = (pytester.path / "reports/mini.html").read_text()
    assert "W4A4" in html and "report-only" in html
    # A report-only item judges nothing: not a check, nor a passed one, in any count (pytest_qrel.policy's tally).
    assert results["planned"] == {"mini": 1}
    result.stdout.fnmatch_lines(["mini: 1 check: 1 passed + 1 report-only item", "qrel: PASS: All 1 check verified: 1 passed."])
    md = (pytester.path / "reports/mini.md").read_text().splitlines()
    assert md[2] == "**All 1 check verified: 1 passed.**" and md[4].startswith("1 check: 1 passed + 1 report-only item \u2014 ")
    assert '<p class="tally">1 check: 1 passed + 1 report-only item</p>' in html and "All checks (1 + 1 report-only)" in html


def _suite(tmp_path, extra: str):
    path = tmp_path / "s.yaml"
    path.write_text(textwrap.dedent("""\
        version: 1
        name: s
        models: {vit: {source: "embedded:digits_vit"}}
        datasets:
          id: {name: digits, source: "embedded:digits"}
          ood: [{name: noise, source: "embedded:noise"}, {name: digits89, source: "embedded:digits89"}]
        quantizers: {W8A8: {method: minmax}, W4A4: {method: minmax}}
        checks: ["W8A8 top1 delta <= 2pp"]
        """) + extra)
    return path


@pytest.mark.parametrize("extra, fragment", [
    ("report: [W4A8]\n", "s.yaml:9: field 'report[0]': unknown quantizer 'W4A8'"),
    ("report: {units: all, ood_mean: [noize]}\n", "field 'report.ood_mean[0]': unknown OOD dataset 'noize'; did you mean 'noise'"),
    ("report: {units: all, mean: [noise]}\n", "field 'report.mean'"),
    ("report: 3\n", "'report' must be all or a non-empty list of quantizer names"),
    ("references: kuang_wong_2024\n", "field 'references': unknown reference set 'kuang_wong_2024'; did you mean 'kuang_wong_2025'"),
    ("references: missing.csv\n", "field 'references'"),
])
def test_bad_report_and_references_keys_are_one_located_line(tmp_path, extra, fragment):
    with pytest.raises(SpecError) as err:
        load_suite(_suite(tmp_path, extra))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_report_all_and_ood_mean(tmp_path):
    suite = load_suite(_suite(tmp_path, "report: {units: all, ood_mean: [digits89]}\n"))
    assert suite.report.units == ("W8A8", "W4A4") and suite.mean_sets == ["digits89"]
    planned = plan(suite)
    assert [p.name for p in planned if p.quantizer == "W4A4"] == ["report-only"]
    assert unread_declarations(suite, planned) == []
    assert unread_declarations(load_suite(_suite(tmp_path, "")), plan(load_suite(_suite(tmp_path, "")))) == [
        "quantizer 'W4A4' is declared but no check reads it, so it never runs (add a check that reads it, or list it under "
        "'report:' to compute and show it without a bound)",
        *(f"OOD dataset '{d}' is declared but no check reads it (add a check that reads it, or list it under 'report:' to "
          "compute and show it without a bound, e.g. 'report: all')" for d in ("noise", "digits89")),
    ]


def test_a_quantizer_read_through_a_post_hoc_variant_is_read(tmp_path):
    """``W4A4+temperature`` reads W4A4: its post-hoc step does not make W4A4 unread."""
    text = _suite(tmp_path, "").read_text()
    text = text.replace('checks: ["W8A8 top1 delta <= 2pp"]', 'checks: ["W8A8 top1 delta <= 2pp", "W4A4+temperature ece value <= 0.5"]')
    (tmp_path / "s.yaml").write_text(text)
    suite = load_suite(tmp_path / "s.yaml")
    assert not [line for line in unread_declarations(suite, plan(suite)) if "quantizer" in line]
