"""The pytest layer end to end, with pytester on generated suites over the embedded model."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET

import pytest

from pytest_qrel.plugin import STATE, unit_scope

SUITE = ("--qrel-suite", "suites/mini.yaml")


def update(pytester: pytest.Pytester, *extra: str) -> pytest.RunResult:
    result = pytester.runpytest(*SUITE, "--qrel-update-baselines", *extra)
    assert result.ret == 0, result.stdout.str()
    return result


def engine_of(reprec) -> object:
    return reprec.getcalls("pytest_sessionfinish")[0].session.config.stash[STATE].engine


def test_missing_baseline_fails_each_item_with_the_command(pytester, write_suite):
    write_suite()
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines(
        ["*no FP32 baseline at baselines/mini/vit.json; create it with: pytest --qrel-suite suites/mini.yaml --qrel-update-baselines"]
    )
    assert "Traceback" not in result.stdout.str()
    assert not (pytester.path / "baselines").exists()  # a plain run never writes baselines


def test_update_then_pass_and_ids(pytester, write_suite):
    write_suite()
    update(pytester)
    stored = json.loads((pytester.path / "baselines/mini/vit.json").read_text())
    assert stored["format_version"] == 1 and set(stored["fingerprint"]) == {"model", "datasets", "versions", "conventions"}
    assert (pytester.path / "baselines/mini/vit.npz").is_file()
    result = pytester.runpytest(*SUITE, "--collect-only", "-q")
    result.stdout.fnmatch_lines(
        [
            "suites/mini.yaml::vit[[]W8A8-digits[]]::top1 delta<=2pp",
            "suites/mini.yaml::vit[[]W4A4-mean(ood)[]]::aupr_out(msp) delta<=50%",
            "suites/mini.yaml::vit[[]FP32-digits[]]::ece value<=0.5",
        ]
    )
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*mini: 5 checks: 5 passed*"])


def test_failing_check_prints_one_line_with_numbers(pytester, write_suite):
    write_suite('- "W4A4 top1 >= 1.5"\n- "W4A4 nll delta <= 0.0001%"\n')
    pytester.runpytest(*SUITE, "--qrel-update-baselines")
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    result.stdout.re_match_lines([r"vit W4A4 top1 on digits: FP32 \d+\.\d\d%, W4A4 \d+\.\d\d% violates value>=1\.5"])
    result.stdout.re_match_lines([r"vit W4A4 nll on digits: FP32 0\.\d{4}, W4A4 0\.\d{4}, delta [+-]\d+\.\d\d% violates delta<=0\.0001%"])
    assert "Traceback" not in out and "def runtest" not in out


def test_expect_fail_is_a_strict_xfail(pytester, write_suite):
    write_suite(
        """\
        - {check: "W4A4 top1 >= 1.5", expect: fail, reason: "cannot reach 150%"}
        - {check: "W8A8 top1 >= 0", expect: fail}
        """
    )
    pytester.runpytest(*SUITE, "--qrel-update-baselines")
    result = pytester.runpytest(*SUITE, "-rxX")
    result.assert_outcomes(xfailed=1, failed=1)
    result.stdout.fnmatch_lines(["*XFAIL*top1 value>=1.5*cannot reach 150%*"])
    result.stdout.fnmatch_lines(["*[[]XPASS(strict)[]] expected to fail: W8A8 top1 >= 0*"])


def test_expect_fail_does_not_hide_a_missing_baseline(pytester, write_suite):
    write_suite('- {check: "W4A4 top1 >= 1.5", expect: fail}\n')
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=1)  # an error is not the expected failure
    result.stdout.fnmatch_lines(["*no FP32 baseline*"])


def test_stale_fingerprint_names_what_changed(pytester, write_suite):
    write_suite()
    update(pytester)
    path = pytester.path / "baselines/mini/vit.json"
    record = json.loads(path.read_text())
    record["fingerprint"]["model"]["weights_sha256"] = "0" * 64
    record["fingerprint"]["datasets"]["noise"]["fingerprint"] = "f" * 64
    path.write_text(json.dumps(record))
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines(["*FP32 baseline baselines/mini/vit.json is stale: model.weights_sha256: 000000000000 -> *--qrel-update-baselines"])
    result.stdout.fnmatch_lines(["*datasets.noise.fingerprint: ffffffffffff -> *"])  # only the mean(ood) item reads noise


def test_corrupt_baseline_gets_a_clear_message(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    update(pytester)
    (pytester.path / "baselines/mini/vit.json").write_text("{not json")
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*FP32 baseline baselines/mini/vit.json is corrupt*regenerate it with*"])


def test_bad_spec_is_one_line_collection_error_and_touches_nothing(pytester, write_suite):
    write_suite('- "W8A8 top2 delta <= 1pp"\n')
    result = pytester.runpytest(*SUITE, "--qrel-update-baselines")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    out = result.stdout.str()
    assert "suites/mini.yaml:15: field 'checks[0]': unknown metric 'top2'; did you mean 'top1'?" in out
    assert "(fix: use one of the known metrics)" in out
    assert "Traceback" not in out
    assert not (pytester.path / "baselines").exists()


def test_missing_suite_file_is_a_usage_error(pytester):
    result = pytester.runpytest("--qrel-suite", "suites/nope.yaml")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qrel-suite suites/nope.yaml: no such file*"])


def test_qrel_suite_collects_only_suites_and_glob_collects_by_path(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    update(pytester)
    result = pytester.runpytest(*SUITE, "--collect-only", "-q")
    assert "test_other" not in result.stdout.str()
    result = pytester.runpytest("suites/mini.yaml", "--collect-only", "-q")  # qrel_suite_glob: suites/*.yaml
    result.stdout.fnmatch_lines(["suites/mini.yaml::vit*top1 delta<=2pp"])
    (pytester.path / "elsewhere.yaml").write_text("a: 1\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert "elsewhere.yaml" not in result.stdout.str() and "test_other" in result.stdout.str()


def test_dash_k_selects_by_quantizer(pytester, write_suite):
    write_suite()
    update(pytester)
    result = pytester.runpytest(*SUITE, "-k", "W4A4")
    result.assert_outcomes(passed=2, deselected=3)


def test_each_unit_runs_forward_once_per_run(pytester, write_suite):
    write_suite(
        """\
        - "all top1 delta <= 2pp"
        - "all nll delta <= 100%"
        - "all ece <= 0.5"
        - "all auroc >= 0.5"
        - "all aupr_out delta <= 100%"
        - "all fpr_at_95_tpr on mean(ood) delta <= 50pp"
        """
    )
    reprec = pytester.inline_run(*SUITE, "--qrel-update-baselines", "-p", "no:cacheprovider")
    passes = engine_of(reprec).forward_passes
    # FP32 runs once per dataset to write the baseline (plus the held-out split for FP32+temperature);
    # each quantizer once per dataset.
    expected = {("mini", "vit", q, d): 1 for q in ("FP32", "W8A8", "W4A4") for d in ("digits", "digits89", "noise")}
    assert dict(passes) == {**expected, ("mini", "vit", "FP32", "heldout"): 1}
    reprec = pytester.inline_run(*SUITE, "-p", "no:cacheprovider")
    reprec.assertoutcome(passed=len(reprec.getreports("pytest_runtest_logreport")) // 3)
    passes = engine_of(reprec).forward_passes
    assert dict(passes) == {("mini", "vit", q, d): 1 for q in ("W8A8", "W4A4") for d in ("digits", "digits89", "noise")}


def test_disk_cache_is_reused_and_a_corrupt_entry_recomputed(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    pytester.inline_run(*SUITE, "--qrel-update-baselines")
    reprec = pytester.inline_run(*SUITE)
    engine = engine_of(reprec)
    assert sum(engine.forward_passes.values()) == 0 and sum(engine.cache_hits.values()) == 1
    for entry in (pytester.path / ".pytest_cache/d/qrel").rglob("*.npz"):
        entry.write_bytes(b"garbage")
    reprec = pytester.inline_run(*SUITE)
    reprec.assertoutcome(passed=1)
    assert sum(engine_of(reprec).forward_passes.values()) == 1


def test_report_and_junit_properties(pytester, write_suite):
    write_suite()
    update(pytester)
    result = pytester.runpytest(*SUITE, "--qrel-report", "reports/mini.html", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=5)
    html = (pytester.path / "reports/mini.html").read_text()
    assert "PASS" in html and "W4A4" in html and "FP32" in html
    assert (pytester.path / "reports/mini.md").is_file()
    tree = ET.parse(pytester.path / "junit.xml")
    props = {p.get("name"): p.get("value") for p in tree.iter("property")}
    assert props["qrel.outcome"] == "passed" and "qrel.fp32" in props and "qrel.delta_display" in props


@pytest.mark.parametrize(
    ("nodeid", "scope"),
    [
        ("suites/d.yaml::vit[W4A4-textures]::aupr_out(msp) delta<=12%", "suites/d.yaml::vit[W4A4]"),
        ("suites/d.yaml::vit[W8A8-qat-lsq+temperature-mean(ood)]::ece delta<=0", "suites/d.yaml::vit[W8A8-qat-lsq+temperature]"),
        ("tests/test_x.py::test_a[1-2]", "tests/test_x.py::test_a[1-2]"),
    ],
)
def test_unit_scope(nodeid, scope):
    assert unit_scope(nodeid) == scope


def test_xdist_gives_the_serial_verdicts(pytester, write_suite):
    pytest.importorskip("xdist")
    write_suite(
        """\
        - "all top1 delta <= 0.5pp"
        - "all aupr_out delta <= 1%"
        - "all ece <= 0.03"
        """
    )
    pytester.runpytest(*SUITE, "--qrel-update-baselines")  # some checks fail on purpose

    def verdicts(*extra: str) -> dict[str, str]:
        pytester.runpytest(*SUITE, "--junitxml", "junit.xml", *extra)
        tree = ET.parse(pytester.path / "junit.xml")
        out = {}
        for case in tree.iter("testcase"):
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            out[case.get("name")] = (props.get("qrel.outcome"), props.get("qrel.value"))
        return out

    serial = verdicts("-p", "no:cacheprovider")
    parallel = verdicts("-n", "2", "-p", "no:cacheprovider")
    assert serial and parallel == serial


def test_missing_data_skips_with_the_path_unless_strict(pytester, write_suite, monkeypatch):
    monkeypatch.delenv("QREL_TEST_NOWHERE", raising=False)
    path = write_suite('- "W8A8 top1 delta <= 2pp"\n- "W8A8 auroc(msp) on ghost delta <= 5pp"\n')
    path.write_text(path.read_text().replace(
        '- {name: noise, source: "embedded:noise"}',
        '- {name: noise, source: "embedded:noise"}\n    - {name: ghost, source: "imagefolder:${QREL_TEST_NOWHERE}/ood"}',
    ))
    result = pytester.runpytest(*SUITE, "--qrel-update-baselines", "-rs")
    # the baseline is written for the data that exists; only the check reading 'ghost' is skipped
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] suites/mini.yaml:*dataset 'ghost'*QREL_TEST_NOWHERE, which is not set*"])
    assert "ghost" not in json.loads((pytester.path / "baselines/mini/vit.json").read_text())["fingerprint"]["datasets"]
    result = pytester.runpytest(*SUITE, "--qrel-strict")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*QREL_TEST_NOWHERE*"])
