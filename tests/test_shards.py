"""Shards: a deterministic partition of the units, results files, and their merge into one run."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_qrel import load_suite, plan
from pytest_qrel.cli import main as qrel_main
from pytest_qrel.results import RunResults
from pytest_qrel.shards import MergeError, assign, merge
from pytest_qrel.spec.plan import scopes

SUITE = """\
version: 1
name: sharded
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: digits89, source: "embedded:digits89"}
    - {name: noise, source: "embedded:noise"}
quantizers:
  W8A8: {method: minmax, calibration: {samples: 32}}
  W6A6: {method: minmax, calibration: {samples: 32}}
  W4A8: {method: minmax, calibration: {samples: 32}}
  W4A4: {method: minmax, calibration: {samples: 32}}
  W4A4-s: {method: minmax, weight_bits: 4, act_bits: 4, calibration: {samples: 16, seeds: [0, 1]}}
scores: [msp]
checks:
  - "all top1 delta <= 3pp"
  - "all ece <= 0.2"
  - "W4A4 aupr_out on mean(ood) delta <= 50%"
  - "W4A8 nll delta <= delta(W4A4)"
  - "W8A8+temperature ece delta <= 5pp"
"""


def write(tmp: Path) -> Path:
    (tmp / "suites").mkdir(exist_ok=True)
    path = tmp / "suites" / "sharded.yaml"
    path.write_text(SUITE)
    return path


@pytest.mark.parametrize("n", [1, 2, 3, 7])
def test_shards_partition_the_plan_by_scope_deterministically(tmp_path, n):
    planned = plan(load_suite(write(tmp_path)))
    member = [assign(planned, k, n) for k in range(1, n + 1)]
    for i in range(len(planned)):  # every check in exactly one shard
        assert sum(m[i] for m in member) == 1
    scope = scopes(planned)
    for m in member:  # all checks of one scope (a unit and what compares with it) in one shard
        kept = {scope[(p.model, p.quantizer)] for p, keep in zip(planned, m) if keep}
        dropped = {scope[(p.model, p.quantizer)] for p, keep in zip(planned, m) if not keep}
        assert not kept & dropped
    again = [assign(plan(load_suite(write(tmp_path))), k, n) for k in range(1, n + 1)]
    assert again == member  # every machine computes the same partition from the suite alone
    if n == 2:  # the cost estimate spreads the work: neither shard is empty
        assert all(any(m) for m in member)


def results_of(pytester, *args: str) -> dict[str, tuple]:
    out = {}
    for case in ET.parse(pytester.path / "junit.xml").iter("testcase"):
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        out[f"{case.get('classname')}::{case.get('name')}"] = (props.get("qrel.outcome"), props.get("qrel.value"))
    return out


def test_two_shards_merged_equal_the_serial_run(pytester, tmp_path):
    write(pytester.path)
    suite = ("--qrel-suite", "suites/sharded.yaml", "-p", "no:cacheprovider")
    pytester.runpytest(*suite, "--qrel-update-baselines")
    serial = pytester.runpytest(*suite, "--qrel-results", "serial.json", "--junitxml", "junit.xml")
    serial_junit = results_of(pytester)
    n_planned = len(plan(load_suite(pytester.path / "suites/sharded.yaml")))
    outcomes, shard_runs = [], []
    for k in (1, 2):  # shard 2 without --qrel-results: its default place, which the run prints
        r = pytester.runpytest(*suite, "--qrel-shard", f"{k}/2", *(["--qrel-results", "shard-1.json"] if k == 1 else []))
        outcomes.append(r.parseoutcomes())
        shard_runs.append(r)
    r.stdout.fnmatch_lines(["results: reports/qrel-shard-2-of-2.json (no --qrel-results given: the default for a shard)"])
    (pytester.path / "reports/qrel-shard-2-of-2.json").rename(pytester.path / "shard-2.json")
    assert sum(o.get("deselected", 0) for o in outcomes) == n_planned  # each check deselected in exactly one shard
    # A shard's plan is its own checks: its summary and results count them, not the other shard's
    # (which would read "N checks planned without a result"); its file still lists the whole plan for the merge.
    for k, r, o in zip((1, 2), shard_runs, outcomes):
        own = n_planned - o["deselected"]
        doc = json.loads((pytester.path / f"shard-{k}.json").read_text())
        assert doc["results"]["planned"] == {"sharded": own} and len(doc["plan"]["sharded"]) == n_planned
        shard_verdict = RunResults.from_dict(doc["results"]).verdict()
        assert (shard_verdict.planned, shard_verdict.total, shard_verdict.missing) == (own, own, 0)
        assert shard_verdict.status == ("FAIL" if o.get("failed") else "PASS")
        assert shard_verdict.lines()[0] in r.stdout.lines  # e.g. "qrel: PASS: All 9 checks verified: 9 passed."
        r.stdout.fnmatch_lines([f"sharded: {own} checks: *"])
        assert "planned" not in r.stdout.str()
    merged_dir = pytester.path / "merged"
    code = qrel_main(["merge", str(pytester.path / "shard-1.json"), str(pytester.path / "shard-2.json"),
                      "--report", str(merged_dir / "r.html"), "--junitxml", str(merged_dir / "j.xml")])
    assert code == serial.ret  # both pass, or both fail for the same checks
    # The plugin's terminal summary says what qrel merge, its report and its junit say (one policy).
    status_line = merge([pytester.path / "serial.json"]).verdict().lines()[0]
    assert status_line in serial.stdout.lines and status_line.startswith("qrel: ")
    notes: list[str] = []
    merged = merge([pytester.path / "shard-1.json", pytester.path / "shard-2.json"], notes=notes)
    one = merge([pytester.path / "serial.json"], notes=notes)
    assert notes == []  # recomputing every verdict from its numbers gives what the engine decided
    assert [v.nodeid for v in merged.verdicts] == [v.nodeid for v in one.verdicts]
    assert [(v.outcome, v.value, v.delta_ci) for v in merged.verdicts] == [(v.outcome, v.value, v.delta_ci) for v in one.verdicts]
    assert {(u.model, u.quantizer) for u in merged.units} == {(u.model, u.quantizer) for u in one.units}
    assert merged.planned == one.planned == {"sharded": n_planned}  # the merge counts the whole suite
    assert merged.verdict().lines() == one.verdict().lines()
    assert (merged_dir / "r.html").is_file() and (merged_dir / "r.md").read_text().startswith("## ")
    junit = {f"{c.get('classname')}::{c.get('name')}" for c in ET.parse(merged_dir / "j.xml").iter("testcase")}
    assert junit == set(serial_junit)


SUITE_FILE = "suites/sharded.yaml"


def fake_results(root: Path, name: str, shard: tuple[int, int] | None, *, values: dict[str, float] | None = None,
                 suite_file: str = SUITE_FILE) -> Path:
    """A results file for ``shard`` of the suite at ``root/suite_file`` without running a model:
    each check of the shard decided by the engine's own :func:`pytest_qrel.evaluate.decide` on
    made-up numbers (FP32 = value = reference = 0.05 passes every check of SUITE; ``values``
    gives a check, by node id, another value)."""
    from pytest_qrel.display import metric_info
    from pytest_qrel.evaluate import decide
    from pytest_qrel.results import RunResults
    from pytest_qrel.runinfo import file_sha256
    from pytest_qrel.shards import planned_ids, write_results

    suite = load_suite(root / suite_file)
    planned = plan(suite)
    mine = assign(planned, *shard) if shard else [True] * len(planned)
    verdicts = []
    for pc, keep in zip(planned, mine):
        if not keep:
            continue
        nodeid = f"{suite_file}::{pc.model}::{pc.quantizer}::{pc.name}"
        info = metric_info(pc.check.metric)
        v = decide(pc, (values or {}).get(nodeid, 0.05), 0.05, higher_is_better=info.higher_is_better, fraction=info.fraction,
                   ref_value=0.05 if pc.check.bound.ref else None)
        v.nodeid = nodeid
        verdicts.append(v)
    run = {"suites": [{"name": suite.name, "path": suite_file, "sha256": file_sha256(root / suite_file)}],
           "shard": list(shard) if shard else None}
    return write_results(RunResults(verdicts=verdicts, run=run), root / name, plan_ids={suite.name: planned_ids(suite, suite_file)})


def edit(path: Path, change) -> Path:
    doc = json.loads(path.read_text())
    change(doc)
    path.write_text(json.dumps(doc))
    return path


def ids_of(root: Path) -> list[str]:
    from pytest_qrel.shards import planned_ids

    return planned_ids(load_suite(root / SUITE_FILE), SUITE_FILE)


def shard_ids(root: Path, k: int, n: int) -> list[str]:
    planned = plan(load_suite(root / SUITE_FILE))
    return [i for i, keep in zip(ids_of(root), assign(planned, k, n)) if keep]


def test_merge_of_consistent_shards_recomputes_the_same_verdicts(tmp_path):
    write(tmp_path)
    paths = [fake_results(tmp_path, f"s{k}.json", (k, 3)) for k in (1, 2, 3)]
    notes: list[str] = []
    merged = merge(paths, root=tmp_path, notes=notes)
    assert notes == []
    assert [v.nodeid for v in merged.verdicts] == ids_of(tmp_path)  # plan order, from the suite on disk
    assert {v.outcome for v in merged.verdicts} == {"passed"}
    assert merged.planned == {"sharded": len(ids_of(tmp_path))}


def _move_first_verdict(doc):  # a verdict of shard 2 pasted into shard 1's file
    doc["results"]["verdicts"].append(doc["results"]["verdicts"][0] | {"nodeid": "MOVED"})


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("a.json", (1, 2)), ("b.json", (1, 2))], "shard 1/2 appears twice: {tmp}/a.json and {tmp}/b.json"),
        ([("a.json", (1, 3)), ("b.json", (2, 3))], "shard(s) 3/3 missing: give every shard's results file"),
        ([("a.json", (1, 2)), ("b.json", None)], "results files mix different --qrel-shard N (or unsharded runs): "),
    ],
)
def test_merge_refuses_incomplete_or_duplicated_shards(tmp_path, files, message):
    write(tmp_path)
    paths = [fake_results(tmp_path, name, shard) for name, shard in files]
    with pytest.raises(MergeError) as err:
        merge(paths, root=tmp_path)
    assert str(err.value).startswith(message.format(tmp=tmp_path))


def test_merge_refuses_a_check_twice_missing_or_in_the_wrong_shard(tmp_path):
    write(tmp_path)
    one, two = fake_results(tmp_path, "a.json", (1, 2)), fake_results(tmp_path, "b.json", (2, 2))
    first_of_two = shard_ids(tmp_path, 2, 2)[0]
    both = json.loads(two.read_text())["results"]["verdicts"][0]
    twice = edit(one, lambda d: d["results"]["verdicts"].append(both))  # shard 2's verdict pasted into shard 1's file
    with pytest.raises(MergeError) as err:
        merge([twice, two], root=tmp_path)
    assert str(err.value) == f"{twice}: shard 1/2 has a verdict for {first_of_two}, which is in shard 2/2"
    fake_results(tmp_path, "a.json", (1, 2))
    dropped = edit(two, lambda d: d["results"]["verdicts"].pop(0))
    with pytest.raises(MergeError) as err:
        merge([one, dropped], root=tmp_path)
    assert str(err.value) == f"1 planned check(s) have no result in any file, e.g. {first_of_two}"
    unsharded = fake_results(tmp_path, "all.json", None)
    again = fake_results(tmp_path, "again.json", None)
    with pytest.raises(MergeError) as err:
        merge([unsharded, again], root=tmp_path)
    assert str(err.value) == f"check {ids_of(tmp_path)[0]} is in two results files: {unsharded} and {again}"


def test_merge_refuses_shards_of_different_suite_versions(tmp_path):
    write(tmp_path)
    a = fake_results(tmp_path, "a.json", (1, 2))
    (tmp_path / SUITE_FILE).write_text(SUITE.replace("ece <= 0.2", "ece <= 0.25"))
    b = fake_results(tmp_path, "b.json", (2, 2))
    with pytest.raises(MergeError, match=r"different versions of suite\(s\) sharded \(suite SHA-256 differs\)"):
        merge([a, b], root=tmp_path)


def test_merge_reads_the_suites_where_it_runs_and_checks_their_hash(tmp_path):
    write(tmp_path)
    paths = [fake_results(tmp_path, f"s{k}.json", (k, 2)) for k in (1, 2)]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    with pytest.raises(MergeError) as err:
        merge(paths, root=elsewhere)
    assert str(err.value) == (
        f"suite 'sharded': {elsewhere}/{SUITE_FILE} (named by {paths[0]}) does not exist here; "
        "run qrel merge in the folder the shards ran in, or give it with --root"
    )
    (tmp_path / SUITE_FILE).write_text(SUITE + "  - \"all top1 delta <= 4pp\"\n")  # a check added after the shards ran
    with pytest.raises(MergeError) as err:
        merge(paths, root=tmp_path)
    assert str(err.value).startswith(f"suite 'sharded': {tmp_path}/{SUITE_FILE} is not the file the shards ran (SHA-256 ")
    assert str(err.value).endswith(f"in {paths[0]}); re-run the shards with this suite, or merge where that version is")


def test_an_edited_verdict_is_recomputed_from_its_numbers(tmp_path, capsys, monkeypatch):
    """A shard whose failing verdict was edited to passed: 'qrel merge' says failed, exit 1."""
    write(tmp_path)
    monkeypatch.chdir(tmp_path)
    top1 = next(i for i in shard_ids(tmp_path, 1, 2) if "::top1 " in i)
    one = fake_results(tmp_path, "s1.json", (1, 2), values={top1: 0.01})  # top1 0.05 -> 0.01: delta 4pp > 3pp
    two = fake_results(tmp_path, "s2.json", (2, 2))
    assert qrel_main(["merge", str(one), str(two)]) == 1
    capsys.readouterr()

    def forge(doc):
        for v in doc["results"]["verdicts"]:
            if v["nodeid"] == top1:
                v.update(outcome="passed", passed=True, message="forged: within delta<=3pp")

    edit(one, forge)
    assert qrel_main(["merge", str(one), str(two), "--junitxml", "j.xml"]) == 1
    out, err = capsys.readouterr()
    n = len(ids_of(tmp_path))
    assert err.splitlines() == [
        f"qrel merge: WARNING: {one}: 1 stored verdict(s) do not follow from their numbers and were recomputed, "
        f"e.g. {top1}: said passed, its numbers give failed"
    ]
    assert out.splitlines()[0] == f"qrel merge: 2 results file(s), {n} checks: 1 failed, {n - 1} passed"
    assert out.splitlines()[-1].startswith(f"FAIL: 1 check(s) block the release, e.g. {top1}: forged: within delta<=3pp "
                                           "[qrel merge: the numbers in s1.json give failed (4 against delta<=3pp)")
    failures = [c.get("name") for c in ET.parse(tmp_path / "j.xml").iter("testcase") if c.find("failure") is not None]
    assert failures == [top1.rsplit("::", 1)[1]]


def test_numbers_edited_to_pass_make_an_error(tmp_path):
    write(tmp_path)
    top1 = next(i for i in shard_ids(tmp_path, 1, 2) if "::top1 " in i)
    one = fake_results(tmp_path, "s1.json", (1, 2), values={top1: 0.01})

    def forge(doc):  # the failing verdict's value edited to a passing one, its outcome left failed
        for v in doc["results"]["verdicts"]:
            if v["nodeid"] == top1:
                v.update(value=0.05, compared=0.0)

    edit(one, forge)
    merged = merge([one, fake_results(tmp_path, "s2.json", (2, 2))], root=tmp_path)
    v = next(v for v in merged.verdicts if v.nodeid == top1)
    assert (v.outcome, v.passed) == ("error", False)
    assert v.message == ("s1.json said failed, but its numbers give passed (0 against delta<=3pp): "
                         "the file was edited or written by another pytest-qrel; re-run it")


def test_an_emptied_plan_with_its_failing_verdict_deleted_is_refused(tmp_path):
    write(tmp_path)
    top1 = ids_of(tmp_path)[0]
    res = fake_results(tmp_path, "all.json", None, values={top1: 0.01})

    def forge(doc):
        doc["plan"] = {}
        doc["results"]["verdicts"] = [v for v in doc["results"]["verdicts"] if v["nodeid"] != top1]

    edit(res, forge)
    with pytest.raises(MergeError) as err:
        merge([res], root=tmp_path)
    n = len(ids_of(tmp_path))
    assert str(err.value) == (
        f"{res}: its plan of suite 'sharded' (0 checks) is not the suite's ({n} checks in {tmp_path}/{SUITE_FILE}): "
        "an edited file, or another version of the suite; re-run the shard"
    )
    edit(res, lambda d: d.update(plan={"sharded": ids_of(tmp_path)}))  # the plan restored: the deleted verdict is missing
    with pytest.raises(MergeError, match=r"^1 planned check\(s\) have no result in any file, e.g. "):
        merge([res], root=tmp_path)
    edit(res, lambda d: d["results"]["run"].update(suites=[]))  # the suite removed as well
    with pytest.raises(MergeError, match=r"^the results files name no suite"):
        merge([res], root=tmp_path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.update(format="something else"), "{p}: not a pytest-qrel results file (write one with --qrel-results)"),
        (lambda d: d.pop("results"), "{p}: no 'results' section (a truncated or edited results file; re-run the shard)"),
        (lambda d: d["results"]["verdicts"][0].pop("outcome"),
         "{p}: results.verdicts[0] lacks field(s) outcome (a truncated or edited results file; re-run the shard)"),
        (lambda d: d["results"]["verdicts"].__setitem__(0, {"nodeid": "x"}),
         "{p}: results.verdicts[0] lacks field(s) bound, check, dataset, delta, delta_display, expect_fail, fp32, message, metric, "
         "model, outcome, passed, quantizer, score, suite, value (a truncated or edited results file; re-run the shard)"),
        (lambda d: d["results"]["verdicts"][0].update(value="0.9"),
         "{p}: results.verdicts[0] field 'value' is '0.9', not a number (a truncated or edited results file; re-run the shard)"),
        (lambda d: d["results"]["verdicts"][0].update(outcome="green"),
         "{p}: results.verdicts[0] outcome 'green' is not one of passed, failed, xfailed, xpassed, skipped, error, inconclusive, "
         "not run (a truncated or edited results file; re-run the shard)"),
        (lambda d: d.update(shard=[3, 2]), "{p}: 'shard' is [3, 2], not [K, N] with 1 <= K <= N (a truncated or edited results file; re-run the shard)"),
        (lambda d: d.update(version=1), "{p}: results format version 1; this pytest-qrel reads 2: re-run the shard with this version"),
    ],
)
def test_qrel_merge_input_errors_are_one_line(tmp_path, capsys, change, message):
    write(tmp_path)
    p = edit(fake_results(tmp_path, "a.json", None), change)
    assert qrel_main(["merge", str(p), "--root", str(tmp_path)]) == 2
    assert capsys.readouterr().err.splitlines() == [f"qrel merge: error: {message.format(p=p)}"]


def test_qrel_merge_truncated_file_and_bad_output_paths_are_one_line(tmp_path, capsys):
    write(tmp_path)
    good = fake_results(tmp_path, "a.json", None)
    cut = tmp_path / "cut.json"
    cut.write_text(good.read_text()[:500])
    assert qrel_main(["merge", str(cut), "--root", str(tmp_path)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"qrel merge: error: {cut}: not valid JSON (") and err[0].endswith(
        "); a truncated file? re-run the shard")
    (tmp_path / "out").mkdir()
    cases = {
        str(tmp_path / "out"): f"--report {tmp_path}/out: the report must be an .html file (its Markdown summary is written "
                               f"beside it, as .md); give e.g. {tmp_path}/out.html",
        str(tmp_path / "r.md"): f"--report {tmp_path}/r.md: the report must be an .html file (its Markdown summary is written "
                                f"beside it, as .md); give e.g. {tmp_path}/r.html",
        str(tmp_path / SUITE_FILE): f"--report {tmp_path}/{SUITE_FILE}: the report must be an .html file (its Markdown summary is "
                                    f"written beside it, as .md); give e.g. {tmp_path}/suites/sharded.html",
    }
    (tmp_path / "dir.html").mkdir()
    cases[str(tmp_path / "dir.html")] = f"--report {tmp_path}/dir.html: {tmp_path}/dir.html is a folder; give the path of an .html file"
    for report, message in cases.items():
        assert qrel_main(["merge", str(good), "--root", str(tmp_path), "--report", report]) == 2
        assert capsys.readouterr().err.splitlines() == [f"qrel merge: error: {message}"]
    for extra, message in (
        (["--report-url", "https://ci.example/r.html"],
         "--report-url https://ci.example/r.html: the links it sets are in the report's Markdown summary: add --report PATH"),
        (["--report", str(tmp_path / "ok.html"), "--report-url", "https://ci.example/r.html#x"],
         "--report-url https://ci.example/r.html#x: the links add '#<row anchor>' to the address: give it without its fragment "
         "(https://ci.example/r.html)"),
    ):
        assert qrel_main(["merge", str(good), "--root", str(tmp_path), *extra]) == 2
        assert capsys.readouterr().err.splitlines() == [f"qrel merge: error: {message}"]
    assert not (tmp_path / "ok.html").exists()
    assert load_suite(tmp_path / SUITE_FILE).name == "sharded"  # untouched


def test_junit_follows_the_inconclusive_policy(tmp_path):
    """An inconclusive check the suite lets pass is a passing testcase; under 'fail' a failure."""
    from pytest_qrel.shards import write_junit

    write(tmp_path)
    for policy, expected in (("warn", None), ("fail", "failure")):
        (tmp_path / SUITE_FILE).write_text(SUITE.replace("scores: [msp]", f"scores: [msp]\nconfidence: 0.95\ninconclusive: {policy}"))
        res = fake_results(tmp_path, "all.json", None)
        top1 = ids_of(tmp_path)[0]

        def straddle(doc, top1=top1, policy=policy):  # every interval within its bound, but top1's straddles its 3pp
            for v in doc["results"]["verdicts"]:
                v.update(compared_ci=[v["compared"] - 1e-6, v["compared"]], outcome="passed", passed=True)
                if v["nodeid"] == top1:
                    v.update(compared_ci=[1.0, 5.0], outcome="inconclusive", passed=policy != "fail")

        edit(res, straddle)
        merged = merge([res], root=tmp_path)
        v = next(v for v in merged.verdicts if v.nodeid == top1)
        assert (v.outcome, v.passed) == ("inconclusive", policy != "fail")
        write_junit(merged, tmp_path / "j.xml")
        case = next(c for c in ET.parse(tmp_path / "j.xml").iter("testcase") if c.get("name") == top1.rsplit("::", 1)[1])
        assert [child.tag for child in case if child.tag != "properties"] == ([expected] if expected else [])
        suite_el = ET.parse(tmp_path / "j.xml").find("testsuite")
        assert suite_el.get("failures") == ("1" if expected else "0")


def test_an_empty_shard_writes_results_that_merge_accepts(pytester, write_suite, monkeypatch):
    """A suite with one unit group over 2 shards: shard 2 has nothing to run. It exits 0 with
    one line and writes a results file (by default under reports/ when --qrel-results is not
    given), and qrel merge accepts it with shard 1's."""
    write_suite('- "W8A8 top1 delta <= 2pp"\n- "W8A8 ece <= 0.5"\n')
    result = pytester.runpytest("--qrel-suite", "suites/mini.yaml", "--qrel-shard", "2/2", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines([
        "qrel: shard 2/2 has no units of mini (1 unit group(s) for 2 shards): nothing to run; its results file says so, for qrel merge",
        "results: reports/qrel-shard-2-of-2.json (no --qrel-results given: the default for a shard)",
    ])
    doc = json.loads((pytester.path / "reports/qrel-shard-2-of-2.json").read_text())
    assert doc["shard"] == [2, 2] and doc["results"]["verdicts"] == [] and doc["note"].startswith("shard 2/2 has no units")
    assert doc["results"]["planned"] == {"mini": 0}  # none of the suite's checks is this shard's
    assert doc["plan"] == {"mini": [
        "suites/mini.yaml::vit::W8A8::top1 on digits delta<=2pp", "suites/mini.yaml::vit::W8A8::ece on digits value<=0.5"]}
    # shard 1 (made up here, without running the model) and the empty shard 2 merge into one passing run
    from pytest_qrel.display import metric_info
    from pytest_qrel.evaluate import decide
    from pytest_qrel.results import RunResults
    from pytest_qrel.runinfo import file_sha256
    from pytest_qrel.shards import write_results

    suite = load_suite(pytester.path / "suites/mini.yaml")
    verdicts = []
    for pc, nodeid in zip(plan(suite), doc["plan"]["mini"]):
        info = metric_info(pc.check.metric)
        verdicts.append(decide(pc, 0.1, 0.1, higher_is_better=info.higher_is_better, fraction=info.fraction))
        verdicts[-1].nodeid = nodeid
    run = {"suites": [{"name": "mini", "path": "suites/mini.yaml", "sha256": file_sha256(pytester.path / "suites/mini.yaml")}],
           "shard": [1, 2]}
    write_results(RunResults(verdicts=verdicts, run=run), pytester.path / "s1.json", plan_ids=doc["plan"])
    monkeypatch.chdir(pytester.path)
    assert qrel_main(["merge", "s1.json", "reports/qrel-shard-2-of-2.json"]) == 0


def test_shard_option_is_validated(pytester):
    (pytester.path / "s.yaml").write_text(textwrap.dedent(SUITE))
    result = pytester.runpytest("--qrel-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qrel-shard 3/2: K must be between 1 and N*"])


@pytest.mark.slow
def test_an_empty_shard_under_xdist_writes_results_too(pytester, write_suite):
    """Under -n the controller collects nothing: it plans the suite itself to know the shard is empty."""
    pytest.importorskip("xdist")
    write_suite('- "W8A8 top1 delta <= 2pp"\n')
    result = pytester.runpytest_subprocess("--qrel-suite", "suites/mini.yaml", "--qrel-shard", "2/2", "--qrel-results", "s2.json",
                                           "-n", "2", "-p", "no:cacheprovider")
    assert result.ret == 0, result.stdout.str()
    result.stdout.fnmatch_lines(["qrel: shard 2/2 has no units of mini (1 unit group(s) for 2 shards): nothing to run; *", "results: s2.json"])
    doc = json.loads((pytester.path / "s2.json").read_text())
    assert doc["shard"] == [2, 2] and doc["plan"] == {"mini": ["suites/mini.yaml::vit::W8A8::top1 on digits delta<=2pp"]}
    assert doc["results"]["planned"] == {"mini": 0}  # the controller plans the shard too


def _status_of(report: Path) -> tuple[str, str, str]:
    """``(data-status, headline, tally)`` of an HTML report's banner, and the Markdown summary's title must agree."""
    html = report.read_text(encoding="utf-8")
    status = html.split('data-status="', 1)[1].split('"', 1)[0]
    headline = html.split('<p class="headline">', 1)[1].split("</p>", 1)[0]
    tally = html.split('<p class="tally">', 1)[1].split("</p>", 1)[0]
    title = report.with_suffix(".md").read_text(encoding="utf-8").splitlines()[0]
    assert f": {status} \u2014 " in title, title
    return status, headline, tally


def test_a_run_that_verifies_nothing_exits_alike_serially_and_merged(pytester, monkeypatch, capsys):
    """Every check skipped (the ID set behind an unset variable: data missing on this machine).
    The serial run and the merge of its two shards give one status, headline and exit code, all
    from pytest_qrel.policy: 1 by default, 0 where the user accepts a run that verifies nothing.
    Each shard exits 0: whether the run verified anything is the merge's call (the shards together)."""
    monkeypatch.delenv("QREL_TEST_NOWHERE", raising=False)
    path = write(pytester.path)
    path.write_text(SUITE.replace('source: "embedded:digits"}', 'source: "imagefolder:${QREL_TEST_NOWHERE}/val"}'))
    n = len(ids_of(pytester.path))
    # (no:unraisableexception: its gc.collect() at each session's end, over this process's heap, is most of a skipped run's time)
    suite = ("--qrel-suite", SUITE_FILE, "-p", "no:cacheprovider", "-p", "no:randomly", "-p", "no:unraisableexception")
    serial = pytester.runpytest(*suite, "--qrel-report", "serial/r.html")
    serial.assert_outcomes(skipped=n)
    shards = [pytester.runpytest(*suite, "--qrel-shard", f"{k}/2", "--qrel-results", f"s{k}.json") for k in (1, 2)]
    assert [r.ret for r in shards] == [0, 0]  # a shard leaves "did the run verify anything" to the merge
    shards[0].stdout.fnmatch_lines(["qrel: shard 1/2 verified no check; whether the run did is qrel merge's verdict*"])
    capsys.readouterr()
    monkeypatch.chdir(pytester.path)
    merged = qrel_main(["merge", "s1.json", "s2.json", "--report", "merged/r.html"])
    printed = capsys.readouterr().out.splitlines()
    assert serial.ret == merged == 1
    assert _status_of(pytester.path / "serial/r.html") == _status_of(pytester.path / "merged/r.html") == (
        "NOT VERIFIED", f"No check was verified: each of the {n} checks that ran was skipped or could not decide.",
        f"{n} checks: {n} skipped")
    status = merge([Path("s1.json"), Path("s2.json")]).verdict().lines()
    assert status[0] == "qrel: NOT VERIFIED: " + _status_of(pytester.path / "merged/r.html")[1]
    assert all(line in serial.stdout.lines and line in printed for line in status)
    assert printed[0] == f"qrel merge: 2 results file(s), {n} checks: {n} skipped"
    serial.stdout.fnmatch_lines([f"sharded: {n} checks: {n} skipped", "ERROR: no check produced a verdict: all * were skipped*--qrel-allow-skip-all*"])
    assert printed[-1].startswith("NOT VERIFIED: no check was verified;") and "--allow-skip-all" in printed[-1]
    # Accepted (as a run's --qrel-allow-skip-all is: tests/test_plugin.py), it exits 0 and still says what the run was.
    assert qrel_main(["merge", "s1.json", "s2.json", "--allow-skip-all"]) == 0
    assert capsys.readouterr().out.splitlines()[1:] == status
