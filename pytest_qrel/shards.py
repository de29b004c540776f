"""Spreading a suite over machines: shard assignment, results files, and their merge.

``pytest --qrel-suite S --qrel-shard K/N --qrel-results shard-K.json`` runs shard K of N: the
scopes of the plan (:func:`pytest_qrel.spec.plan.scopes`: units that must run together, with all
their checks) are spread over N shards by a deterministic longest-processing-time rule on an
estimated cost, so every machine computes the same partition from the suite alone. Each shard
writes a results file: its verdicts, the report's unit records, run metadata, and the suite's
SHA-256 and full list of planned node ids. ``qrel merge shard-*.json --report R.html`` checks
that the files come from one suite, that no shard is missing or duplicated and that every planned
check is present exactly once, then writes one report (and junit XML) and exits non-zero on any
failure.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from .errors import QrelError
from .results import RunResults, UnitMetrics, Verdict, is_failing
from .spec.plan import PlannedCheck, scopes

RESULTS_FORMAT = "pytest-qrel-results"
RESULTS_VERSION = 1


class MergeError(QrelError):
    """Results files that cannot be merged into one complete run (names the files or checks)."""


# ------------------------------------------------------------------------------------ shards
def scope_cost(suite: Any, units: Iterable[tuple[str, str]], datasets: int) -> float:
    """A unit-count estimate of a scope's work: seeds x (datasets read + QAT steps x batch / 1000)."""
    cost = 0.0
    for _, base in units:
        spec = suite.quantizers.get(base)
        if spec is None:
            continue
        seeds = max(1, len(spec.calibration.seeds))
        train = 0.0
        if spec.method.startswith("qat"):
            train = float(spec.options.get("steps", 100)) * float(spec.options.get("batch_size", 100)) / 1000.0
        cost += seeds * (datasets + train)
    return cost


def assign(planned: Sequence[PlannedCheck], k: int, n: int) -> list[bool]:
    """For each planned check, whether it belongs to shard ``k`` of ``n`` (1-based).

    Scopes are sorted by decreasing cost (name breaks ties) and each goes to the least loaded
    shard (lowest number breaks ties): deterministic, and within one scope of the optimum's load.
    """
    scope_of: list[str] = []
    members: dict[str, tuple[Any, set[tuple[str, str]], set[str]]] = {}
    by_suite: dict[str, list[PlannedCheck]] = {}
    for p in planned:
        by_suite.setdefault(str(p.suite.path), []).append(p)
    suite_scopes = {path: scopes(ps) for path, ps in by_suite.items()}
    for p in planned:
        name = f"{p.suite.path}::{suite_scopes[str(p.suite.path)][(p.model, p.quantizer)]}"
        scope_of.append(name)
        entry = members.setdefault(name, (p.suite, set(), set()))
        entry[1].update(p.units)
        entry[2].update(p.datasets)
    costs = {name: scope_cost(suite, units, len(ds)) or 0.1 for name, (suite, units, ds) in members.items()}
    load = [0.0] * n
    shard_of: dict[str, int] = {}
    for name in sorted(costs, key=lambda s: (-costs[s], s)):
        i = min(range(n), key=lambda j: (load[j], j))
        load[i] += costs[name]
        shard_of[name] = i + 1
    return [shard_of[s] == k for s in scope_of]


# ------------------------------------------------------------------------------------ results
def run_results(
    verdicts: list[Verdict],
    units: list[UnitMetrics],
    *,
    suites: list[Any],
    planned: dict[str, int],
    started: float,
    command: str = "",
    device: str = "",
    shard: tuple[int, int] | None = None,
) -> RunResults:
    """Everything the report and a results file need, as plain data (run metadata from
    :func:`pytest_qrel.runinfo.run_info`, baseline fingerprints from the FP32 records)."""
    from .display import metric_infos
    from .runinfo import describe_device, run_info
    from .runtimes.identity import run_info_identities

    baselines = {f"{u.suite}/{u.model}": u.baseline for u in units if u.baseline}
    runtimes = run_info_identities(units)  # runtime units: artifact hashes, runtime versions, provider, threads
    run = run_info(
        suites, start=started, end=time.time(), device=describe_device(device) if device else None, baselines=baselines,
        command=command, extra={"shard": list(shard) if shard else None, **({"runtimes": runtimes} if runtimes else {})},
    )
    ordered = sorted(units, key=lambda u: (u.suite, u.model, not u.is_reference, u.quantizer.split("+")[0] != "FP32"))
    return RunResults(
        verdicts=verdicts, units=ordered, metrics=metric_infos(),
        scores={s.name: list(s.scores) for s in suites}, run=run, planned=dict(planned),
    )


def planned_ids(suite: Any, file: str) -> list[str]:
    """Every node id of ``suite`` (its file written as ``file`` in node ids)."""
    from .spec.plan import plan

    return [f"{file}::{p.model}::{p.quantizer}::{p.name}" for p in plan(suite)]


def write_results(results: RunResults, path: Path, *, plan_ids: dict[str, list[str]] | None = None) -> Path:
    """Write ``results`` as a results file (see the module docstring)."""
    from .io import atomic_write_text

    doc = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "shard": results.run.get("shard"),
        "plan": plan_ids or {},
        "results": results.to_dict(),
    }
    return atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=True) + "\n")


def read_results(path: Path) -> dict[str, Any]:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise MergeError(f"{path}: cannot read results file ({exc})") from None
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise MergeError(f"{path}: not a pytest-qrel results file (write one with --qrel-results)")
    if doc.get("version") != RESULTS_VERSION:
        raise MergeError(f"{path}: results format version {doc.get('version')!r}; this pytest-qrel reads {RESULTS_VERSION}")
    return doc


def merge(paths: Sequence[Path]) -> RunResults:
    """One complete run from shard results files; MergeError names what is wrong."""
    if not paths:
        raise MergeError("no results files given")
    docs = [(Path(p), read_results(Path(p))) for p in paths]
    hashes: dict[str, set[str]] = {}
    for p, d in docs:
        for info in d["results"].get("run", {}).get("suites") or []:
            hashes.setdefault(str(info.get("name")), set()).add(str(info.get("sha256")))
    changed = [name for name, h in hashes.items() if len(h) > 1]
    if changed:
        raise MergeError(f"results come from different versions of suite(s) {', '.join(sorted(changed))} (suite SHA-256 differs); re-run all shards")
    shards = [(p, d.get("shard")) for p, d in docs]
    if any(s for _, s in shards):
        ns = {s[1] for _, s in shards if s}
        if len(ns) != 1 or any(not s for _, s in shards):
            raise MergeError("results files mix different --qrel-shard N (or unsharded runs): " + ", ".join(f"{p} ({s})" for p, s in shards))
        n = ns.pop()
        seen: dict[int, Path] = {}
        for p, s in shards:
            if s[0] in seen:
                raise MergeError(f"shard {s[0]}/{n} appears twice: {seen[s[0]]} and {p}")
            seen[s[0]] = p
        missing = [k for k in range(1, n + 1) if k not in seen]
        if missing:
            raise MergeError(f"shard(s) {', '.join(f'{k}/{n}' for k in missing)} missing: give every shard's results file")
    plan_ids: dict[str, list[str]] = {}
    for _, d in docs:
        for name, ids in (d.get("plan") or {}).items():
            plan_ids.setdefault(name, list(ids))
    verdicts: dict[str, Verdict] = {}
    where: dict[str, Path] = {}
    for p, d in docs:
        for raw in d["results"].get("verdicts", []):
            v = Verdict.from_dict(raw)
            if v.nodeid in verdicts:
                raise MergeError(f"check {v.nodeid} is in two results files: {where[v.nodeid]} and {p}")
            verdicts[v.nodeid], where[v.nodeid] = v, p
    planned_all = [i for ids in plan_ids.values() for i in ids]
    absent = [i for i in planned_all if i not in verdicts]
    if absent:
        raise MergeError(f"{len(absent)} planned check(s) have no result in any file, e.g. {absent[0]}")
    units: dict[tuple[str, str, str], UnitMetrics] = {}
    for _, d in docs:
        for raw in d["results"].get("units", []):
            u = UnitMetrics.from_dict(raw)
            units.setdefault((u.suite, u.model, u.quantizer), u)
    first = RunResults.from_dict(docs[0][1]["results"])
    run = dict(first.run)
    run["shards"] = [d["results"].get("run", {}) for _, d in docs]
    run["shard"] = None
    planned = {name: len(ids) for name, ids in plan_ids.items()} or first.planned
    ordered_ids = planned_all or list(verdicts)
    return RunResults(
        verdicts=[verdicts[i] for i in ordered_ids], units=sorted(units.values(), key=lambda u: (u.suite, u.model, u.quantizer.split("+")[0] != "FP32")),
        metrics=first.metrics, scores=first.scores, run=run, planned=planned,
    )


def failing(results: RunResults) -> list[Verdict]:
    """The verdicts that block the release (:func:`pytest_qrel.results.is_failing`)."""
    return [v for v in results.verdicts if is_failing(v)]


# ------------------------------------------------------------------------------------ outputs
def write_report(results: RunResults, path: Path) -> Path:
    """The HTML report and its Markdown summary (``.md`` beside it)."""
    from .io import atomic_write_text
    from .report import render_markdown, render_report

    render_report(results, path)
    atomic_write_text(path.with_suffix(".md"), render_markdown(results, report_path=str(path)))
    return path


def write_junit(results: RunResults, path: Path) -> Path:
    """A junit XML file of the verdicts (one testcase per check, the verdict as properties)."""
    import xml.etree.ElementTree as ET

    from .io import atomic_write_bytes

    cases = results.verdicts
    suite_el = ET.Element(
        "testsuite", name="pytest-qrel", tests=str(len(cases)),
        failures=str(sum(v.outcome in ("failed", "xpassed", "inconclusive") for v in cases)),
        errors=str(sum(v.outcome in ("error", "not run") for v in cases)),
        skipped=str(sum(v.outcome in ("skipped", "xfailed") for v in cases)),
    )
    for v in cases:
        classname, _, name = v.nodeid.rpartition("::")
        case = ET.SubElement(suite_el, "testcase", classname=classname.replace("/", ".").replace("::", "."), name=name or v.check)
        props = ET.SubElement(case, "properties")
        for key, value in v.to_dict().items():
            if value not in (None, "", []):
                ET.SubElement(props, "property", name=f"qrel.{key}", value=str(value))
        if v.outcome in ("failed", "xpassed", "inconclusive"):
            ET.SubElement(case, "failure", message=v.message).text = v.message
        elif v.outcome in ("error", "not run"):
            ET.SubElement(case, "error", message=v.message).text = v.message
        elif v.outcome in ("skipped", "xfailed"):
            ET.SubElement(case, "skipped", message=v.message)
    doc = ET.ElementTree(ET.Element("testsuites"))
    doc.getroot().append(suite_el)
    import io as _io

    buf = _io.BytesIO()
    doc.write(buf, encoding="utf-8", xml_declaration=True)
    return atomic_write_bytes(path, buf.getvalue())
