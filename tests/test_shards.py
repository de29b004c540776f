"""Shards: a deterministic partition of the units, results files, and their merge into one run."""

from __future__ import annotations

import json
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from pytest_qrel import load_suite, plan
from pytest_qrel.cli import main as qrel_main
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
    outcomes = []
    for k in (1, 2):
        r = pytester.runpytest(*suite, "--qrel-shard", f"{k}/2", "--qrel-results", f"shard-{k}.json")
        outcomes.append(r.parseoutcomes())
    assert sum(o.get("deselected", 0) for o in outcomes) == n_planned  # each check deselected in exactly one shard
    merged_dir = pytester.path / "merged"
    code = qrel_main(["merge", str(pytester.path / "shard-1.json"), str(pytester.path / "shard-2.json"),
                      "--report", str(merged_dir / "r.html"), "--junitxml", str(merged_dir / "j.xml")])
    assert code == serial.ret  # both pass, or both fail for the same checks
    merged = merge([pytester.path / "shard-1.json", pytester.path / "shard-2.json"])
    one = merge([pytester.path / "serial.json"])
    assert [v.nodeid for v in merged.verdicts] == [v.nodeid for v in one.verdicts]
    assert [(v.outcome, v.value, v.delta_ci) for v in merged.verdicts] == [(v.outcome, v.value, v.delta_ci) for v in one.verdicts]
    assert {(u.model, u.quantizer) for u in merged.units} == {(u.model, u.quantizer) for u in one.units}
    assert (merged_dir / "r.html").is_file() and (merged_dir / "r.md").read_text().startswith("## ")
    junit = {f"{c.get('classname')}::{c.get('name')}" for c in ET.parse(merged_dir / "j.xml").iter("testcase")}
    assert junit == set(serial_junit)


def _shard_file(tmp: Path, name: str, shard, verdict_ids: list[str], plan_ids: list[str], sha: str = "abc") -> Path:
    from pytest_qrel.results import RunResults, Verdict
    from pytest_qrel.shards import write_results

    vs = [Verdict("s", "m", "W8A8", "d", "top1", None, "c", "delta<=1pp", 0.9, 0.9, 0.0, "", True, False, "passed", "ok", nodeid=i)
          for i in verdict_ids]
    res = RunResults(verdicts=vs, run={"suites": [{"name": "s", "sha256": sha}], "shard": list(shard) if shard else None})
    return write_results(res, tmp / name, plan_ids={"s": plan_ids})


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("a.json", (1, 2), ["x"]), ("b.json", (1, 2), ["y"])], "shard 1/2 appears twice: {tmp}/a.json and {tmp}/b.json"),
        ([("a.json", (1, 3), ["x"]), ("b.json", (2, 3), ["y"])], "shard(s) 3/3 missing: give every shard's results file"),
        ([("a.json", (1, 2), ["x"]), ("b.json", (2, 2), ["x", "y"])], "check x is in two results files: {tmp}/a.json and {tmp}/b.json"),
        ([("a.json", (1, 2), ["x"]), ("b.json", (2, 2), [])], "1 planned check(s) have no result in any file, e.g. y"),
        ([("a.json", (1, 2), ["x"]), ("b.json", None, ["y"])], "results files mix different --qrel-shard N (or unsharded runs)"),
    ],
)
def test_merge_refuses_incomplete_or_duplicated_shards(tmp_path, files, message):
    paths = [_shard_file(tmp_path, name, shard, ids, ["x", "y"]) for name, shard, ids in files]
    with pytest.raises(MergeError, match=message.format(tmp=tmp_path).replace("(", r"\(").replace(")", r"\)").replace("/", "/")):
        merge(paths)


def test_merge_refuses_shards_of_different_suite_versions(tmp_path):
    a = _shard_file(tmp_path, "a.json", (1, 2), ["x"], ["x", "y"], sha="one")
    b = _shard_file(tmp_path, "b.json", (2, 2), ["y"], ["x", "y"], sha="two")
    with pytest.raises(MergeError, match=r"different versions of suite\(s\) s \(suite SHA-256 differs\)"):
        merge([a, b])


def test_qrel_merge_prints_one_line_and_exits_2_on_a_bad_file(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"format": "something else"}))
    assert qrel_main(["merge", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"qrel merge: error: {bad}: not a pytest-qrel results file (write one with --qrel-results)"]


def test_shard_option_is_validated(pytester):
    (pytester.path / "s.yaml").write_text(textwrap.dedent(SUITE))
    result = pytester.runpytest("--qrel-shard", "3/2")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--qrel-shard 3/2: K must be between 1 and N*"])
