"""The pytest layer end to end, with pytester on generated suites over the embedded model."""

from __future__ import annotations

import hashlib
import json
import re
import xml.etree.ElementTree as ET

import pytest

from pytest_qrel.engine.trace import read_trace
from pytest_qrel.plugin import STATE, unit_scope

SUITE = ("--qrel-suite", "suites/mini.yaml")


def update(pytester: pytest.Pytester, *extra: str) -> pytest.RunResult:
    result = pytester.runpytest(*SUITE, "--qrel-update-baselines", *extra)
    assert result.ret == 0, result.stdout.str()
    return result


def engine_of(reprec) -> object:
    return reprec.getcalls("pytest_sessionfinish")[0].session.config.stash[STATE].engine


def resign(path, record) -> None:
    """Write ``record`` back with a valid self digest: a baseline as an older writer made it."""
    from pytest_qrel.baselines import _SELF, _canonical

    record[_SELF] = hashlib.sha256(_canonical(record)).hexdigest()
    path.write_text(json.dumps(record))


def collected_ids(pytester: pytest.Pytester, *extra: str) -> list[str]:
    result = pytester.runpytest(*SUITE, "--co", "-q", "-p", "no:randomly", *extra)
    assert result.ret == 0, result.stdout.str()
    return [line for line in result.stdout.lines if line.startswith("suites/")]


def test_missing_baseline_fails_each_item_with_the_command(pytester, write_suite):
    write_suite()
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(errors=0, failed=5)
    result.stdout.fnmatch_lines(
        ["*no FP32 baseline at baselines/mini/vit.json; create it with: pytest --qrel-suite suites/mini.yaml --qrel-update-baselines"]
    )
    assert "Traceback" not in result.stdout.str()
    assert not (pytester.path / "baselines").exists()  # a plain run never writes baselines


def test_update_then_pass_and_ids(pytester, write_suite):
    write_suite()
    update(pytester)
    stored = json.loads((pytester.path / "baselines/mini/vit.json").read_text())
    assert stored["format_version"] == 3 and set(stored["fingerprint"]) == {"model", "datasets", "versions", "conventions"}
    assert (pytester.path / "baselines/mini" / stored["npz"]).is_file()
    assert collected_ids(pytester) == [  # grouped by unit, in the order the checks first name them
        "suites/mini.yaml::vit::W8A8::top1 on digits delta<=2pp",
        "suites/mini.yaml::vit::W8A8::ece on digits value<=0.5",
        "suites/mini.yaml::vit::W4A4::aupr_out(msp) on mean(ood) delta<=50%",
        "suites/mini.yaml::vit::W4A4::ece on digits value<=0.5",
        "suites/mini.yaml::vit::FP32::ece on digits value<=0.5",
    ]
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(passed=5)
    result.stdout.fnmatch_lines(["*mini: 5 checks: 5 passed*"])


def test_collect_only_exits_0_and_lists_the_ids(pytester, write_suite):
    write_suite()
    result = pytester.runpytest(*SUITE, "--co", "-q")
    assert result.ret == 0
    assert "no result arrived" not in result.stdout.str() and "did not run" not in result.stdout.str()
    result.stdout.fnmatch_lines(["5 tests collected*"])


HEAVY = ("torch", "timm", "pytest_qrel.engine", "pytest_qrel.report", "pytest_qrel.plugin.xdist_sched", "xdist.scheduler")
# Whether the interpreter tore itself down (an object's __del__ at module teardown) and whether the
# exit handlers ran: a qrel run skips the teardown (pytest_qrel.plugin.fast_exit), no other run does.
EXIT_PROBE = """
import atexit, os

class _TornDown:  # late in the teardown builtins are gone: keep what __del__ needs
    def __init__(self, path, touch):
        self.path, self.touch = path, touch

    def __del__(self):
        self.touch(self.path)

def _touch(path, _open=open):
    _open(path, "a").close()

_torn_down = _TornDown(os.path.abspath("torn_down"), _touch)
atexit.register(_touch, os.path.abspath("exit_handlers_ran"))

def _gc_state(path=os.path.abspath("gc_state")):  # objects frozen out of the collector, and whether it runs
    import gc
    with open(path, "w") as f:
        f.write(f"{gc.get_freeze_count()} {gc.isenabled()}")
"""
PROBE = EXIT_PROBE + f"""
import json, sys

def pytest_unconfigure(config):
    _gc_state()
    with open("loaded.json", "w") as f:
        json.dump([m for m in {HEAVY!r} if m in sys.modules], f)
"""


def test_collection_and_other_tests_import_no_torch_nor_engine(pytester, write_suite):
    """The plugin loads in every pytest run of a project that installs it: collecting a suite
    imports no torch, and a run of plain tests imports neither torch nor the engine (nor xdist's
    scheduler code without -n). Checked in a fresh process, after the session."""
    write_suite()
    pytester.makeconftest(PROBE)
    loaded = pytester.path / "loaded.json"
    result = pytester.runpytest_subprocess(*SUITE, "--co", "-q", "-p", "no:randomly")
    assert result.ret == 0 and json.loads(loaded.read_text()) == []
    pytester.makepyfile(test_plain="def test_ok():\n    assert True\n")
    result = pytester.runpytest_subprocess("test_plain.py", "-p", "no:randomly")
    assert result.ret == 0 and json.loads(loaded.read_text()) == []
    # not a qrel run: the interpreter exits as usual (no fast exit) and its collector is left alone
    assert (pytester.path / "torn_down").exists() and (pytester.path / "exit_handlers_ran").exists()
    assert (pytester.path / "gc_state").read_text() == "0 True"
    pytest.importorskip("xdist")
    result = pytester.runpytest_subprocess(*SUITE, "--co", "-q", "-n", "1", "-p", "no:randomly")
    assert result.ret == 0 and "pytest_qrel.plugin.xdist_sched" in json.loads(loaded.read_text())  # the probe sees it


def test_every_id_selects_exactly_that_check_when_pasted_back(pytester, write_suite):
    write_suite(
        """\
        - "W8A8 top1 delta <= 2pp"
        - "W4A4 aupr_out(msp) delta <= 50%"
        - "W4A4+temperature ece delta <= 50pp"
        """
    )
    ids = collected_ids(pytester)
    assert len(ids) == 4 and not any("[" in i for i in ids)
    for nodeid in ids:
        assert collected_ids(pytester, nodeid) == [nodeid]


def test_lf_reruns_exactly_the_failed_checks_and_sw_stops(pytester, write_suite):
    write_suite(
        """\
        - "W8A8 top1 delta <= 2pp"
        - "W4A4 top1 >= 1.5"
        - "W4A4 aupr_out(msp) delta <= 50%"
        - "W8A8 nll delta <= 0.0001%"
        """
    )
    pytester.runpytest(*SUITE, "--qrel-update-baselines")
    first = pytester.runpytest(*SUITE)
    first.assert_outcomes(passed=3, failed=2)
    again = pytester.runpytest(*SUITE, "--lf", "-q")
    again.assert_outcomes(failed=2, deselected=3)
    assert "known failures not in selected tests" not in again.stdout.str()
    stepped = pytester.runpytest(*SUITE, "--sw", "-q")
    stepped.assert_outcomes(failed=1, passed=1)  # stops at the first failure ...
    failed = [line for line in stepped.stdout.lines if line.startswith("FAILED ")]
    stepped = pytester.runpytest(*SUITE, "--sw", "-q")
    stepped.assert_outcomes(failed=1, deselected=1)  # ... and resumes from it
    assert [line for line in stepped.stdout.lines if line.startswith("FAILED ")] == failed


def test_deselect_and_k_do_not_report_missing_results(pytester, write_suite):
    write_suite()
    update(pytester)
    ids = collected_ids(pytester)
    result = pytester.runpytest(*SUITE, "--deselect", ids[0], "-k", "W4A4 or W8A8 or FP32")
    result.assert_outcomes(passed=4, deselected=1)
    out = result.stdout.str()
    assert "check(s) did not run" not in out and "no result arrived" not in out  # not an error, not 'not run'
    result.stdout.fnmatch_lines(["*mini: 4 checks (of 5 planned): 4 passed*"])
    # ... yet not the whole suite verified: the same status the report gives (pytest_qrel.policy)
    result.stdout.fnmatch_lines(["qrel: INCOMPLETE: *", "qrel: 1 of 5 checks did not run or could not decide (1 planned without a result: not selected in this run, or not reached)*"])


def test_junit_names_are_clean_and_carry_the_verdict(pytester, write_suite):
    write_suite()
    update(pytester)
    result = pytester.runpytest(*SUITE, "--qrel-report", "reports/mini.html", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=5)
    html = (pytester.path / "reports/mini.html").read_text()
    assert "PASS" in html and "W4A4" in html and "FP32" in html
    assert (pytester.path / "reports/mini.md").is_file()
    tree = ET.parse(pytester.path / "junit.xml")
    names = [(c.get("classname"), c.get("name")) for c in tree.iter("testcase")]
    assert ("suites.mini.yaml.vit.W8A8", "top1 on digits delta<=2pp") in names
    assert not any("]" in n or "[" in n for _, n in names)
    props = {p.get("name"): p.get("value") for p in tree.iter("property")}
    assert props["qrel.outcome"] == "passed" and "qrel.fp32" in props and "qrel.delta_display" in props


def test_failing_check_prints_one_line_with_numbers(pytester, write_suite):
    write_suite('- "W4A4 top1 >= 1.5"\n- "W4A4 nll delta <= 0.0001%"\n')
    pytester.runpytest(*SUITE, "--qrel-update-baselines")
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=2)
    out = result.stdout.str()
    # one display rule per metric: top1 in %, the bound 1.5 written as 150.00%; NLL in nats
    result.stdout.re_match_lines([r"vit W4A4 top1 on digits: FP32 \d+\.\d\d%, W4A4 \d+\.\d\d% \[95% CI \d+\.\d\d%, \d+\.\d\d%\] violates value >= 150\.00%"])
    result.stdout.re_match_lines([r"vit W4A4 nll on digits: FP32 0\.\d{4} nats, W4A4 0\.\d{4} nats, delta [+-]\d+\.\d\d% \[95% CI [+-]\d+\.\d\d%, [+-]\d+\.\d\d%\] violates delta <= 0\.0001%"])
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
    result.stdout.fnmatch_lines(["*XFAIL*top1 on digits value>=1.5*cannot reach 150%*"])
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
    resign(path, record)
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=5)
    result.stdout.fnmatch_lines(["*FP32 baseline baselines/mini/vit.json is stale: model.weights_sha256: 000000000000 -> *--qrel-update-baselines"])
    result.stdout.fnmatch_lines(["*datasets.noise.fingerprint: ffffffffffff -> *"])  # only the mean(ood) item reads noise


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: "{not json", "is not valid JSON"),
        (lambda t: t.replace('"top1": 0.', '"top1": 1.', 1), "was modified after it was written (its content digest does not match)"),
        (lambda t: t.replace('"top1": 0.9', '"top1": 0.8', 1), "was modified after it was written"),
        (lambda t: t.replace('"npz_sha256": "', '"npz_sha256": "0', 1), "was modified after it was written"),
    ],
)
def test_an_edited_baseline_is_refused_with_the_command(pytester, write_suite, edit, message):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    update(pytester)
    path = pytester.path / "baselines/mini/vit.json"
    text = path.read_text()
    assert edit(text) != text
    path.write_text(edit(text))
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*FP32 baseline baselines/mini/vit.json {message}*re-create it with: pytest --qrel-suite suites/mini.yaml --qrel-update-baselines"])
    assert "Traceback" not in result.stdout.str()


def test_a_torn_or_truncated_npz_is_refused(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    update(pytester)
    folder = pytester.path / "baselines/mini"
    npz = next(folder.glob("vit.*.npz"))
    npz.write_bytes(npz.read_bytes()[:100])
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([f"*baselines/mini/vit.json does not match {npz.name} (its digest differs*"])
    npz.unlink()
    result = pytester.runpytest(*SUITE)
    result.stdout.fnmatch_lines([f"*baselines/mini/vit.json names {npz.name}, which is missing*"])


def test_hand_edited_metrics_with_a_forged_digest_are_range_checked(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    update(pytester)
    path = pytester.path / "baselines/mini/vit.json"
    record = json.loads(path.read_text())
    record["metrics"]["id"]["top1"] = 1.5
    resign(path, record)
    result = pytester.runpytest(*SUITE)
    result.stdout.fnmatch_lines(["*holds metrics.id.top1 = 1.5, outside [[]0, 1[]] for a fraction metric*"])


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
    result.stderr.fnmatch_lines(["*--qrel-suite suites/nope.yaml: no such file (give the path of a suite YAML file)"])
    (pytester.path / "suites").mkdir()
    (pytester.path / "suites/photos.yaml").write_text("version: 1\n")
    result = pytester.runpytest("--qrel-suite", "suites/photo.yaml")  # a typo: the file beside it is suggested
    result.stderr.fnmatch_lines(["*--qrel-suite suites/photo.yaml: no such file; did you mean 'suites/photos.yaml'? (give the path*"])


@pytest.mark.parametrize(
    ("option", "existing", "message"),
    [
        (("--qrel-report", "suites/mini.yaml"), None,
         "--qrel-report suites/mini.yaml: the report must be an .html file (its Markdown summary is written beside it, as .md); "
         "give e.g. suites/mini.html"),
        (("--qrel-report", "r.md"), None,
         "--qrel-report r.md: the report must be an .html file (its Markdown summary is written beside it, as .md); give e.g. r.html"),
        (("--qrel-report", "index.html"), ("index.html", "<html><body>the team's page</body></html>"),
         "--qrel-report index.html: the report would overwrite index.html, an existing file that is not a pytest-qrel report; "
         "give another path, or move that file away"),
        (("--qrel-report", "notes.html"), ("notes.md", "# our notes\n"),
         "--qrel-report notes.html: its Markdown summary would overwrite notes.md, an existing file that is not a pytest-qrel "
         "summary; give another path, or move that file away"),
        (("--qrel-report", "out.html"), ("out.html/", ""), "--qrel-report out.html: out.html is a folder; give the path of an .html file"),
        (("--qrel-results", "suites/mini.yaml"), None,
         "--qrel-results suites/mini.yaml: suites/mini.yaml exists and is not a pytest-qrel results file; give another path, "
         "or move that file away"),
        (("--qrel-report-url", "https://ci.example/r.html"), None,
         "--qrel-report-url https://ci.example/r.html: the links it sets are in the report's Markdown summary: add --qrel-report PATH"),
        (("--qrel-report", "r.html", "--qrel-report-url", "https://ci.example/r.html#top"), None,
         "--qrel-report-url https://ci.example/r.html#top: the links add '#<row anchor>' to the address: give it without its "
         "fragment (https://ci.example/r.html)"),
    ],
)
def test_report_and_results_never_overwrite_what_is_not_ours(pytester, write_suite, option, existing, message):
    suite = write_suite('- "W8A8 top1 delta <= 2pp"\n')
    before = suite.read_bytes()
    if existing:
        name, text = existing
        if name.endswith("/"):
            (pytester.path / name).mkdir()
        else:
            (pytester.path / name).write_text(text)
    result = pytester.runpytest(*SUITE, *option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert [line for line in result.stderr.lines if line.strip()] == [f"ERROR: {message}"]
    assert suite.read_bytes() == before
    if existing and not existing[0].endswith("/"):
        assert (pytester.path / existing[0]).read_text() == existing[1]


def test_a_report_of_ours_may_be_overwritten(pytester, write_suite):
    from pytest_qrel.results import RunResults
    from pytest_qrel.shards import write_report

    write_suite('- "W8A8 top1 delta <= 50pp"\n')
    write_report(RunResults(), pytester.path / "r/mini.html")  # a report and summary as a run writes them
    assert '<meta name="generator" content="pytest-qrel">' in (pytester.path / "r/mini.html").read_text()
    result = pytester.runpytest(*SUITE, "--qrel-report", "r/mini.html", "--co", "-q")
    assert result.ret == 0, result.stderr.str()


def test_qrel_suite_collects_only_suites_and_glob_collects_by_path(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    pytester.makepyfile(test_other="def test_other():\n    assert True\n")
    result = pytester.runpytest(*SUITE, "--collect-only", "-q")
    assert "test_other" not in result.stdout.str()
    result = pytester.runpytest("suites/mini.yaml", "--collect-only", "-q")  # qrel_suite_glob: suites/*.yaml
    result.stdout.fnmatch_lines(["suites/mini.yaml::vit::W8A8::top1 on digits delta<=2pp"])
    (pytester.path / "elsewhere.yaml").write_text("a: 1\n")
    result = pytester.runpytest("--collect-only", "-q")
    assert "elsewhere.yaml" not in result.stdout.str() and "test_other" in result.stdout.str()


def test_dash_k_selects_by_quantizer_and_the_report_runs_no_other_unit(pytester, write_suite, monkeypatch, tmp_path):
    write_suite()
    update(pytester)
    trace = tmp_path / "trace.tsv"
    monkeypatch.setenv("PYTEST_QREL_TRACE", str(trace))
    result = pytester.runpytest(*SUITE, "-k", "W4A4", "--qrel-report", "r/mini.html", "-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, deselected=3)
    events = read_trace(trace)
    assert {e[4] for e in events if e[1] in ("forward", "quantize")} == {"W4A4"}  # W8A8 never ran, not even for the report
    assert (pytester.path / "r/mini.html").is_file()


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
    engine = engine_of(reprec)
    # FP32 runs once per dataset to write the baseline (plus the held-out split for FP32+temperature);
    # each quantizer once per dataset.
    expected = {("mini", "vit", q, d): 1 for q in ("FP32", "W8A8", "W4A4") for d in ("digits", "digits89", "noise")}
    assert dict(engine.forward_passes) == {**expected, ("mini", "vit", "FP32", "heldout"): 1}
    assert engine.units.quantizations == {"W8A8": 1, "W4A4": 1}
    # every unit was released after its last check: no quantized module and no per-sample arrays left
    assert engine.live_units() == 0 and engine.live_modules() == 0 and engine.loader.live_models() == 0
    reprec = pytester.inline_run(*SUITE, "-p", "no:cacheprovider")
    reprec.assertoutcome(passed=len(reprec.getreports("pytest_runtest_logreport")) // 3)
    assert dict(engine_of(reprec).forward_passes) == {("mini", "vit", q, d): 1 for q in ("W8A8", "W4A4") for d in ("digits", "digits89", "noise")}


def test_disk_cache_is_reused_and_a_corrupt_entry_recomputed(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    pytester.inline_run(*SUITE, "--qrel-update-baselines")
    reprec = pytester.inline_run(*SUITE)
    engine = engine_of(reprec)
    assert sum(engine.forward_passes.values()) == 0 and sum(engine.cache_hits.values()) == 1
    entries = list((pytester.path / ".pytest_cache/d/qrel/outputs").rglob("*.npz"))
    assert entries
    for entry in entries:
        data = bytearray(entry.read_bytes())
        data[len(data) // 2] ^= 0xFF  # one flipped byte
        entry.write_bytes(bytes(data))
    result = pytester.runpytest(*SUITE)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(["pytest-qrel: cache entry *.npz is * it is recomputed"])
    assert "Traceback" not in result.stdout.str() and "BadZipFile" not in result.stdout.str()


def test_an_altered_but_valid_cache_entry_is_not_trusted(pytester, write_suite):
    import numpy as np

    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    pytester.inline_run(*SUITE, "--qrel-update-baselines")
    for entry in (pytester.path / ".pytest_cache/d/qrel/outputs").rglob("*.npz"):
        with np.load(entry) as z:
            arrays = {k: z[k] for k in z.files}
        if "correct" in arrays:
            arrays["correct"] = np.zeros_like(arrays["correct"])  # a W8A8 that got nothing right
            np.savez(entry, **arrays)
    reprec = pytester.inline_run(*SUITE)
    reprec.assertoutcome(passed=1)  # recomputed, not read as 0% top-1


@pytest.mark.parametrize(
    ("unit", "scope"),
    [
        (("vit", "W4A4"), "suites/mini.yaml::vit::W4A4"),
        (("vit", "W8A8+temperature"), "suites/mini.yaml::vit::W8A8"),
        (("vit", "W8A8"), "suites/mini.yaml::vit::W8A8"),
    ],
)
def test_unit_scope_keeps_posthoc_and_compared_units_together(pytester, write_suite, unit, scope):
    write_suite('- "W8A8+temperature ece delta <= 1pp"\n- "W4A4 top1 delta <= 1pp"\n- "W8A8 nll delta <= 1%"\n')
    config = pytester.parseconfigure(*SUITE)
    nodeid = f"suites/mini.yaml::{unit[0]}::{unit[1]}::some check"
    assert unit_scope(nodeid, config) == scope
    assert unit_scope("tests/test_x.py::test_a[1-2]", config) == "tests/test_x.py::test_a[1-2]"


def test_xdist_gives_the_serial_verdicts_and_runs_each_unit_once(pytester, write_suite, monkeypatch, tmp_path):
    pytest.importorskip("xdist")
    write_suite(
        """\
        - "all top1 delta <= 0.5pp"
        - "all aupr_out delta <= 1%"
        - "all ece <= 0.03"
        - "W8A8+temperature ece delta <= 5pp"
        - "W4A4 top1 delta <= delta(W8A8)"
        """
    )
    pytester.runpytest(*SUITE, "--qrel-update-baselines")  # some checks fail on purpose

    def verdicts(*extra: str) -> dict[str, str]:
        pytester.runpytest(*SUITE, "--junitxml", "junit.xml", *extra)
        tree = ET.parse(pytester.path / "junit.xml")
        out = {}
        for case in tree.iter("testcase"):
            props = {p.get("name"): p.get("value") for p in case.iter("property")}
            out[(case.get("classname"), case.get("name"))] = (props.get("qrel.outcome"), props.get("qrel.value"))
        return out

    serial = verdicts("-p", "no:cacheprovider")
    trace = tmp_path / "trace.tsv"
    monkeypatch.setenv("PYTEST_QREL_TRACE", str(trace))
    parallel = verdicts("-n", "2", "-p", "no:cacheprovider")
    assert serial and parallel == serial
    events = read_trace(trace)
    quantized = [e[2:5] for e in events if e[1] == "quantize"]
    assert sorted(quantized) == [("mini", "vit", "W4A4"), ("mini", "vit", "W8A8")]  # once each across workers
    passes = [e[2:6] for e in events if e[1] == "forward"]
    assert len(passes) == len(set(passes)) and ("mini", "vit", "W8A8", "heldout") in passes
    # the FP32 reproduction probe: once per model per run (two workers checking one model share it:
    # test_store_evidence.py)
    assert [e[2:6] for e in events if e[1] == "reproduce"] == [("mini", "vit", "FP32", "digits")]


def test_missing_data_skips_with_the_path_unless_strict(pytester, write_suite, monkeypatch):
    monkeypatch.delenv("QREL_TEST_NOWHERE", raising=False)
    path = write_suite('- "W8A8 top1 delta <= 2pp"\n- "W8A8 auroc(msp) on ghost delta <= 5pp"\n')
    path.write_text(path.read_text().replace(
        '- {name: noise, source: "embedded:noise"}',
        '- {name: noise, source: "embedded:noise"}\n    - {name: ghost, source: "imagefolder:${QREL_TEST_NOWHERE}/ood"}',
    ))
    # nothing declared that no check reads: --qrel-strict would refuse it at collection (test_report_only.py)
    path.write_text("".join(line for line in path.read_text().splitlines(keepends=True)
                            if not any(k in line for k in ("W4A4:", "name: digits89", "name: noise"))))
    result = pytester.runpytest(*SUITE, "--qrel-update-baselines", "-rs")
    # the baseline is written for the data that exists; only the check reading 'ghost' is skipped
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines(["SKIPPED [[]1[]] suites/mini.yaml:*dataset 'ghost'*QREL_TEST_NOWHERE, which is not set*"])
    result.stdout.fnmatch_lines(["NOT VERIFIED: 1 check(s) skipped: *QREL_TEST_NOWHERE*"])
    assert "ghost" not in json.loads((pytester.path / "baselines/mini/vit.json").read_text())["fingerprint"]["datasets"]
    result = pytester.runpytest(*SUITE, "--qrel-strict")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*QREL_TEST_NOWHERE*"])


def test_a_run_that_verifies_nothing_fails_unless_allowed(pytester, write_suite, monkeypatch):
    monkeypatch.delenv("QREL_TEST_NOWHERE", raising=False)
    path = write_suite('- "W8A8 top1 delta <= 2pp"\n')
    path.write_text(path.read_text().replace('source: "embedded:digits"', 'source: "imagefolder:${QREL_TEST_NOWHERE}/val"'))
    result = pytester.runpytest(*SUITE, "--qrel-report", "r/x.html")
    result.assert_outcomes(skipped=1)
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines(["ERROR: no check produced a verdict: all 1 were skipped because data is missing*--qrel-allow-skip-all*"])
    assert "PASS" not in (pytester.path / "r/x.md").read_text().splitlines()[0]
    result = pytester.runpytest(*SUITE, "--qrel-allow-skip-all")
    assert result.ret == 0


def test_x_stops_early_and_the_report_says_what_did_not_run(pytester, write_suite):
    write_suite('- "W4A4 top1 >= 1.5"\n- "W8A8 top1 delta <= 2pp"\n- "W4A4 ece <= 0.5"\n')
    pytester.runpytest(*SUITE, "--qrel-update-baselines")
    result = pytester.runpytest(*SUITE, "-x", "--qrel-report", "r/x.html", "--qrel-report-url", "https://ci.example/run/7/x.html")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["ERROR: 2 check(s) did not run, e.g. *; the run is marked failed"])
    summary = (pytester.path / "r/x.md").read_text()
    assert "FAIL" in summary.splitlines()[0] and "not run" in summary
    # the summary's links point where CI publishes the report (--qrel-report-url), at the failing row
    assert "](https://ci.example/run/7/x.html#v-" in summary and "](x.html#" not in summary


MODEL = '''
import os, sys
import torch
from pytest_qrel.models import load_model
{on_import}

class Wrapped(torch.nn.Module):
    def __init__(self, vit):
        super().__init__()
        self.vit = vit  # the shipped, trained ViT: FP32 is well above chance
        self.num_classes = 8

    def forward(self, x):
        out = self.vit(x)
        {on_forward}
        return out

def build():
    {on_build}
    loaded = load_model("embedded:digits_vit")
    return Wrapped(loaded.module), loaded.preprocess, "the shipped digits ViT, wrapped"
'''

PY_SUITE = """\
version: 1
name: py
models:
  m: {source: "python:model.py:build"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood: [{name: noise, source: "embedded:noise"}]
quantizers:
  W8A8: {method: minmax, calibration: {samples: 16}}
checks:
  - "W8A8 top1 >= 0"
  - "W8A8 auroc(msp) >= 0"
"""


def write_model(pytester: pytest.Pytester, on_import: str = "", on_forward: str = "pass", on_build: str = "pass") -> None:
    (pytester.path / "suites").mkdir(exist_ok=True)
    (pytester.path / "suites/py.yaml").write_text(PY_SUITE)
    (pytester.path / "suites/model.py").write_text(MODEL.format(on_import=on_import, on_forward=on_forward, on_build=on_build))


@pytest.mark.parametrize(
    ("where", "code", "stage", "what"),
    [
        ("on_import", "sys.exit(0)", "loading the model", "SystemExit(0) (the code called sys.exit)"),
        ("on_import", "sys.exit(3)", "loading the model", "SystemExit(3)"),
        ("on_build", "raise RuntimeError('no GPU here')", "build(**options) with options {}", "RuntimeError: no GPU here"),
        ("on_forward", "if os.environ.get('QREL_BOOM') and not torch.is_grad_enabled(): raise ZeroDivisionError('boom')", "the forward pass", "ZeroDivisionError: boom"),
    ],
)
def test_user_code_that_exits_or_raises_is_an_error_naming_model_and_stage(pytester, monkeypatch, where, code, stage, what):
    write_model(pytester, **{where: code})
    monkeypatch.setenv("QREL_BOOM", "1")
    result = pytester.runpytest_subprocess("--qrel-suite", "suites/py.yaml", "--qrel-update-baselines", "--qrel-report", "r/py.html")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED, out
    assert "Traceback" not in out and "INTERNALERROR" not in out
    assert "model 'm'" in out and f"{stage} raised {what}" in out
    summary = (pytester.path / "r/py.md").read_text()
    assert "FAIL" in summary.splitlines()[0]


# Imported only when a run asks for what they do: the report (matplotlib, Jinja2), the project's own
# test helpers; never scikit-learn (the ranking metrics are pytest_qrel.ranking, the embedded digits
# are read from its data file) nor scipy.stats, which it imports.
UNUSED_BY_A_RUN = ("matplotlib", "jinja2", "pytest_qrel.report", "sklearn", "scipy.stats", "scipy.io", "tests", "tinyvit", "reportdata")
RUN_PROBE = EXIT_PROBE + f"""
import json, sys

def pytest_unconfigure(config):
    _gc_state()
    with open("loaded.json", "w") as f:
        json.dump([m for m in ("torch", "pytest_qrel.engine", *{UNUSED_BY_A_RUN!r}) if m in sys.modules], f)
"""


def test_nan_logits_fail_naming_model_quantizer_dataset_and_count(pytester, monkeypatch):
    write_model(pytester, on_forward="if os.environ.get('QREL_NAN'): out = out.clone(); out[::3] = float('nan')")
    monkeypatch.delenv("QREL_NAN", raising=False)
    pytester.makeconftest(RUN_PROBE)
    result = pytester.runpytest_subprocess("--qrel-suite", "suites/py.yaml", "--qrel-update-baselines")
    assert result.ret == 0, result.stdout.str()
    # A whole run without --qrel-report (cold start): the process that ran the checks imported
    # torch and the engine, and nothing it did not use; it ran its exit handlers and skipped the
    # interpreter's teardown (pytest_qrel.plugin.fast_exit).
    assert json.loads((pytester.path / "loaded.json").read_text()) == ["torch", "pytest_qrel.engine"]
    assert (pytester.path / "exit_handlers_ran").exists() and not (pytester.path / "torn_down").exists()
    # the objects alive after the first check were frozen out of the collector, which runs again (plugin/gc_hold.py)
    frozen, enabled = (pytester.path / "gc_state").read_text().split()
    assert int(frozen) > 100_000 and enabled == "True"
    (pytester.path / "exit_handlers_ran").unlink()
    monkeypatch.setenv("QREL_NAN", "1")
    result = pytester.runpytest_subprocess("--qrel-suite", "suites/py.yaml", "--qrel-report", "r/py.html", "-p", "no:cacheprovider")
    out = result.stdout.str()
    assert result.ret == pytest.ExitCode.TESTS_FAILED and "INTERNALERROR" not in out and "Traceback" not in out
    assert (pytester.path / "exit_handlers_ran").exists() and not (pytester.path / "torn_down").exists()
    # the NaN comes from the model's own forward, so the FP32 reproduction check (the first pass of the run) finds it
    result.stdout.re_match_lines([
        r".*the FP32 reproduction check on the first 32 'digits' test images: model 'm' FP32 on 'digits': 11 of 32 samples have "
        r"non-finite logits \(11 with NaN, 0 with inf; first at sample 0\) \(fix: the FP32 model itself produces them.*"
    ])
    assert (pytester.path / "r/py.html").is_file()


def test_progress_lines_unless_quiet_and_worker_status_files(pytester, write_suite):
    write_suite('- "W8A8 top1 delta <= 2pp"\n- "W4A4 ece <= 0.5"\n')
    pytester.runpytest(*SUITE, "--qrel-update-baselines", "-p", "no:cacheprovider")
    result = pytester.runpytest(*SUITE, "-p", "no:cacheprovider")  # not a terminal: one line per unit
    result.stdout.re_match_lines([r"qrel: vit W8A8: 1 passes, 385 images in \d+\.\d s", r"qrel: vit W4A4: 1 passes, 385 images in \d+\.\d s"])
    # each unit line is followed by the suite file's name again: no item letter stands alone on a line
    assert not [line for line in result.outlines if re.fullmatch(r"[.FEsxX]+(\s+\[\s*\d+%\])?", line.strip())], result.outlines
    quiet = pytester.runpytest(*SUITE, "-q", "-p", "no:cacheprovider")
    assert "qrel: vit" not in quiet.stdout.str()
    pytest.importorskip("xdist")
    parallel = pytester.inline_run(*SUITE, "-n", "2")  # workers report what they are on through status files
    parallel.assertoutcome(passed=2)
    # each worker's workeroutput names the device it ran on (read in pytest_testnodedown)
    devices = parallel.getcalls("pytest_sessionfinish")[0].session.config.stash[STATE].worker_devices
    assert sorted(devices) == ["gw0", "gw1"] and len(set(devices.values())) == 1
    status = list((pytester.path / ".pytest_cache/d/qrel-status").rglob("gw*.json"))
    lines = [json.loads(p.read_text())["line"] for p in status]
    assert lines and all(line.startswith("qrel: vit W") for line in lines)


INCONCLUSIVE = """\
- {check: "W4A4 fpr_at_95_tpr(energy) on mean(ood) delta <= {bound}pp", confidence: 0.95}
- "W8A8 top1 delta <= 2pp"
"""


@pytest.mark.slow
def test_an_inconclusive_check_fails_by_default_and_the_policy_can_pass_it(pytester, write_suite):
    # The demo's W4A4 energy FPR@95 worsens by about +3pp with a 95% interval of several pp around
    # it: a bound inside the interval can be neither shown to hold nor shown to be violated.
    path = write_suite(INCONCLUSIVE.replace("{bound}", "50"))
    pytester.runpytest(*SUITE, "--qrel-update-baselines")
    ids = collected_ids(pytester)
    probe = pytester.runpytest(*SUITE, "--junitxml", "j.xml")
    case = next(c for c in ET.parse(pytester.path / "j.xml").iter("testcase") if "fpr_at_95_tpr" in c.get("name"))
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    low, high = (float(x) for x in props["qrel.delta_ci"].strip("[]").split(","))
    assert probe.ret == 0 and 100 * low < 100 * high < 50  # far inside the bound: passed with evidence
    bound = round(50 * (low + high), 2)  # the interval's midpoint, in pp: it straddles the bound
    path.write_text(path.read_text().replace("delta <= 50pp", f"delta <= {bound}pp"))
    result = pytester.runpytest(*SUITE, "--qrel-report", "r/x.html")
    assert result.ret == pytest.ExitCode.TESTS_FAILED
    result.stdout.fnmatch_lines([f"*is inconclusive for delta <= {bound:.2f}pp at 95% confidence: the 95% interval straddles*samples*"])
    result.stdout.fnmatch_lines(["mini: 2 checks: 1 inconclusive, 1 passed"])
    summary = (pytester.path / "r/x.md").read_text()
    assert summary.splitlines()[0].endswith("FAIL \u2014 mini") or "FAIL" in summary.splitlines()[0]
    assert "inconclusive" in summary and ids[0].split("::")[-1].split(" ")[0] in summary
    warned = pytester.runpytest(*SUITE, "--qrel-inconclusive", "warn", "--qrel-report", "r/w.html")
    assert warned.ret == 0
    warned.stdout.fnmatch_lines(["*QrelInconclusiveWarning*"])
    assert "INCOMPLETE" in (pytester.path / "r/w.md").read_text().splitlines()[0]  # not verified, not a failure
    path.write_text(path.read_text().replace("checks:", "inconclusive: pass\nchecks:"))
    assert pytester.runpytest(*SUITE).ret == 0


class FakeNode:
    """An xdist worker as the scheduler sees it: the item indexes sent to it, whether it was shut down."""

    def __init__(self, name: str) -> None:
        import types

        self.gateway, self.shutting_down, self.sent = types.SimpleNamespace(id=name), False, []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent.extend(indexes)

    def shutdown(self) -> None:
        self.shutting_down = True


def test_a_worker_that_finishes_a_unit_takes_one_more_unit_not_two(pytester):
    # A unit's first check does all its work and the rest finish at once; the scheduler must not
    # let that burst of completions hand one worker every remaining unit (4 units on 2 workers
    # ran 3 + 1 with xdist's threshold of two pending items).

    from pytest_qrel.plugin.xdist_sched import UnitScheduling

    sizes = {"A": 4, "B": 3, "C": 2, "D": 2}  # xdist queues the larger scopes first
    collection = [f"none.yaml::m::{u}::check{k}" for u, n in sizes.items() for k in range(n)]
    sched = UnitScheduling(pytester.parseconfig("-p", "xdist", "--tx", "2*popen"))
    gw0, gw1 = FakeNode("gw0"), FakeNode("gw1")
    for node in (gw0, gw1):
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()

    def units(node: FakeNode) -> set[str]:
        return {collection[i].split("::")[2] for i in node.sent}

    assert units(gw0) == {"A"} and units(gw1) == {"B"}
    for index in [i for i in gw1.sent]:  # gw1 finishes B: all three checks in a burst
        sched.mark_test_complete(gw1, index)
    assert units(gw1) == {"B", "C"}  # one more unit, D stays queued
    for index in gw0.sent[:3]:
        sched.mark_test_complete(gw0, index)
    assert units(gw0) == {"A", "D"}
    assert not sched.workqueue


def test_scenario_units_go_to_the_worker_that_owns_their_quantizer_and_models_are_not_revisited(pytester):
    # Two backbones x two scenarios x four quantizers: a worker owns the quantizers it takes first
    # (its memo then serves them in the other scenario), finishes a scenario model before the next
    # and never returns to a model it left (each model is loaded once per worker); a model of a
    # suite without scenarios stays in the queue's order.

    from pytest_qrel.plugin.xdist_sched import UnitScheduling, affinity_group

    models = ["a@s1", "a@s2", "b@s1", "b@s2"]
    collection = [f"none.yaml::{m}::{q}::check{k}" for m in models for q in ("Q1", "Q2", "Q3", "Q4+temperature") for k in range(2)]
    sched = UnitScheduling(pytester.parseconfig("-p", "xdist", "--tx", "2*popen"))
    nodes = [FakeNode("gw0"), FakeNode("gw1")]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    done: set[int] = set()
    turns = iter([0, 1, 1, 0, 1, 1, 1, 0] * 8)  # uneven speeds: the next unit is not simply the other worker's
    while sched.has_pending:
        turn = next(turns)
        node = nodes[turn] if any(i not in done for i in nodes[turn].sent) else nodes[1 - turn]
        first = next(i for i in node.sent if i not in done)
        unit = collection[first].rsplit("::", 1)[0]
        for i in [i for i in node.sent if i not in done and collection[i].startswith(unit + "::")]:
            done.add(i)
            sched.mark_test_complete(node, i)
    assert len(done) == len(collection)
    units = {n.gateway.id: list(dict.fromkeys(collection[i].rsplit("::", 1)[0] for i in n.sent)) for n in nodes}
    owner_of = {}
    for name, seq in units.items():
        assert seq, name  # both workers had work
        for unit in seq:
            assert owner_of.setdefault(affinity_group(unit), name) == name, (unit, units)
        order = [unit.split("::")[1] for unit in seq]
        visited = list(dict.fromkeys(order))
        assert order == sorted(order, key=visited.index), order  # a model is never met again once left
    assert affinity_group("none.yaml::a@s2::Q4+temperature") == "none.yaml::a::Q4"
    assert affinity_group("none.yaml::a::Q1") == "none.yaml::a::Q1" != affinity_group("none.yaml::b::Q1")


def test_a_crashed_workers_unit_goes_to_a_worker_that_has_collected(pytester):
    # The check a dying worker was running is named; its unit's unfinished checks are queued
    # again; a replacement still collecting gets nothing before its collection arrives (xdist
    # re-schedules every node when one goes down: that raised KeyError on a collecting one).

    from pytest_qrel.plugin.xdist_sched import UnitScheduling

    collection = [f"none.yaml::m::{u}::check{k}" for u in "ABC" for k in range(2)]
    sched = UnitScheduling(pytester.parseconfig("-p", "xdist", "--tx", "2*popen"))
    gw0, gw1 = FakeNode("gw0"), FakeNode("gw1")
    for node in (gw0, gw1):
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    assert [collection[i] for i in gw0.sent] == ["none.yaml::m::A::check0", "none.yaml::m::A::check1"]
    sched.mark_test_complete(gw0, gw0.sent[0])
    replacement = FakeNode("gw2")
    sched.add_node(replacement)
    assert sched.remove_node(gw0) == "none.yaml::m::A::check1"  # the check it was running
    assert replacement.sent == [] and sched.has_pending and not sched.tests_finished
    sched.add_node_collection(replacement, collection)
    sched.schedule()
    assert {collection[i].split("::")[2] for i in replacement.sent} == {"A"}
    assert [collection[i] for i in replacement.sent] == ["none.yaml::m::A::check1"]  # not the finished one


def test_the_controller_reads_worker_status_under_xdists_run_id(pytester):
    # Workers name their status folder after xdist's testrunuid; the controller learns it from
    # pytest_configure_node (the run's own id would be another folder, and no line would show).
    import types

    pytest.importorskip("xdist")
    from pytest_qrel.plugin.progress import status_dir
    from pytest_qrel.plugin.xdist_sched import XdistController

    config = pytester.parseconfigure("-p", "xdist", "-n", "2")
    worker = types.SimpleNamespace(cache=config.cache, workerinput={"workerid": "gw0", "testrunuid": "abc123"}, stash=pytest.Stash())
    XdistController(config).pytest_configure_node(node=types.SimpleNamespace(workerinput=worker.workerinput))
    assert status_dir(config) == status_dir(worker) and status_dir(config).name == "abc123"
