"""Spreading a suite over machines: shard assignment, results files, and their merge.

``pytest --qrel-suite S --qrel-shard K/N --qrel-results shard-K.json`` runs shard K of N: the
scopes of the plan (:func:`pytest_qrel.spec.plan.scopes`: units that must run together, with all
their checks) are spread over N shards by a deterministic longest-processing-time rule on an
estimated cost, so every machine computes the same partition from the suite alone. Each shard
writes a results file: its verdicts, the report's unit records, run metadata, the number of
checks planned for this shard (``results.planned``: what the shard's own summary and report count
against) and the suite's SHA-256 and full list of planned node ids (``plan``: what the merge
checks against; it counts the whole suite's planned checks itself). A shard that gets no units (a suite with fewer units
than shards) writes one too, with no verdicts, so the merge knows it ran.

``qrel merge shard-*.json --report R.html`` trusts no outcome stored in the files:

- the suites are read from disk where the merge runs (the paths in the files, relative to
  ``root``) and must have the SHA-256 the shards recorded; the plan comes from them, and each
  file's stored plan must equal it;
- no shard is missing or given twice, each verdict is in the shard the partition gives it, and
  every planned check is present exactly once;
- every verdict is recomputed from its numbers (``fp32``, ``value``, ``ref_value``,
  ``compared_ci``) and the suite's bound, confidence, ``expect:`` and ``inconclusive:`` policy
  through the one policy (:func:`pytest_qrel.policy.outcome_of`). A stored outcome the numbers
  do not give is replaced (by the recomputed failure, or by an error when the numbers pass but
  the file said otherwise) and named in a note;

then it writes one report (and junit XML) and exits with the one policy's exit code
(:meth:`pytest_qrel.policy.RunVerdict.exit_code`, as pytest does for a run). Every problem with
the inputs is one :class:`MergeError` line naming the file.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

from .errors import QrelError
from .policy import OUTCOMES, is_failing, junit_result, outcome_of
from .output_paths import read_head, report_path_problem
from .results import RunResults, UnitMetrics, Verdict
from .spec.plan import PlannedCheck, scopes
from .spec.quantizer_ref import base_of
from .spec.schema import FP32, REPORT_ONLY

RESULTS_FORMAT = "pytest-qrel-results"
#: 2: verdicts carry ``ref_value`` and ``compared_ci`` (what the merge recomputes them from).
RESULTS_VERSION = 2
_RESULTS_MARKER = f'"format": "{RESULTS_FORMAT}"'


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
    from .runinfo import calibration_drawn, describe_device, run_info
    from .runtimes.identity import run_info_identities

    baselines = {f"{u.suite}/{u.model}": u.baseline for u in units if u.baseline}
    runtimes = run_info_identities(units)  # runtime units: artifact hashes, runtime versions, provider, threads
    run = run_info(
        suites, start=started, end=time.time(), device=describe_device(device) if device else None, baselines=baselines,
        command=command, extra={"shard": list(shard) if shard else None, **({"runtimes": runtimes} if runtimes else {})},
        drawn=calibration_drawn(units),
    )
    from .suite_report import fill_ood_means, report_run_info

    fill_ood_means(units, suites)  # the report's means over exactly the suite's mean sets
    run.update(report_run_info(suites))
    ordered = sorted(units, key=lambda u: (u.suite, u.model, not u.is_reference, base_of(u.quantizer) != FP32))
    return RunResults(
        verdicts=verdicts, units=ordered, metrics=metric_infos(),
        scores={s.name: list(s.scores) for s in suites}, run=run, planned=dict(planned),
    )


def planned_check_count(planned: Iterable[PlannedCheck]) -> int:
    """The checks among ``planned``: what ``RunResults.planned`` and the run's counts hold. A
    report-only item (suite ``report:``) is planned like a check but judges nothing, so it is not
    one (:func:`pytest_qrel.policy.is_report_only`)."""
    return sum(p.check.metric != REPORT_ONLY for p in planned)


def planned_counts(planned: Sequence[PlannedCheck], shard: tuple[int, int] | None = None) -> dict[str, int]:
    """``{suite name: checks}`` of ``planned`` (:func:`planned_check_count`), or of the part of it
    shard ``K/N`` is given (:func:`assign` over the whole of ``planned``, as the merge partitions
    it): what a shard's run and its results file count as planned. Every suite of ``planned`` has
    an entry (0 where the shard got none of its checks)."""
    mine = assign(planned, *shard) if shard is not None else [True] * len(planned)
    counts = dict.fromkeys((p.suite.name for p in planned), 0)
    for p, keep in zip(planned, mine):
        counts[p.suite.name] += keep and p.check.metric != REPORT_ONLY
    return counts


def planned_ids(suite: Any, file: str) -> list[str]:
    """Every node id of ``suite`` (its file written as ``file`` in node ids)."""
    from .spec.plan import plan

    return [f"{file}::{p.model}::{p.quantizer}::{p.name}" for p in plan(suite)]


# ------------------------------------------------------------------------------------ output paths
def results_path_problem(path: Path) -> str | None:
    """Why a results file cannot be written to ``path``: a folder, or an existing file that is
    not a pytest-qrel results file (never overwritten); ``None``: it can."""
    path = Path(path)
    if path.is_dir():
        return f"{path} is a folder; give the path of a .json file"
    if path.exists() and _RESULTS_MARKER not in read_head(path, 4096):
        return f"{path} exists and is not a pytest-qrel results file; give another path, or move that file away"
    return None


def default_results_path(shard: tuple[int, int]) -> Path:
    """Where a shard run without ``--qrel-results`` writes its results (relative to the rootdir)."""
    k, n = shard
    return Path("reports") / f"qrel-shard-{k}-of-{n}.json"


# ------------------------------------------------------------------------------------ results files
def write_results(
    results: RunResults, path: Path, *, plan_ids: dict[str, list[str]] | None = None, note: str = ""
) -> Path:
    """Write ``results`` as a results file (see the module docstring); ``note`` says something
    about the run a reader should know (a shard that had no units)."""
    from .io import atomic_write_text

    doc = {
        "format": RESULTS_FORMAT,
        "version": RESULTS_VERSION,
        "shard": results.run.get("shard"),
        "plan": plan_ids or {},
        "results": results.to_dict(),
    }
    if note:
        doc["note"] = note
    return atomic_write_text(path, json.dumps(doc, indent=1, sort_keys=True, allow_nan=True) + "\n")


_REQUIRED = {f.name for f in fields(Verdict) if f.default is MISSING and f.default_factory is MISSING}
_NUMBER_FIELDS = ("fp32", "value", "delta", "compared", "margin", "ref_value", "ci_level", "confidence", "bound_amount")
_STRING_FIELDS = ("suite", "model", "quantizer", "dataset", "metric", "check", "bound", "message", "outcome")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _verdict_problem(raw: Any) -> str | None:
    """What is wrong with one stored verdict (``None``: it is well formed)."""
    if not isinstance(raw, dict):
        return f"is a {type(raw).__name__}, not a mapping"
    missing = sorted(n for n in _REQUIRED | {"nodeid"} if n not in raw)
    if missing:
        return f"lacks field(s) {', '.join(missing)}"
    if not isinstance(raw["nodeid"], str) or raw["nodeid"].count("::") < 3:
        return f"has no node id (nodeid {raw['nodeid']!r})"
    for name in _STRING_FIELDS:
        if not isinstance(raw.get(name), str):
            return f"field {name!r} is {raw.get(name)!r}, not text"
    if raw["outcome"] not in OUTCOMES:
        return f"outcome {raw['outcome']!r} is not one of {', '.join(OUTCOMES)}"
    for name in _NUMBER_FIELDS:
        if raw.get(name) is not None and not _is_number(raw[name]):
            return f"field {name!r} is {raw[name]!r}, not a number"
    if not isinstance(raw.get("passed"), bool):
        return f"field 'passed' is {raw.get('passed')!r}, not true or false"
    ci = raw.get("compared_ci")
    if ci is not None and not (isinstance(ci, list) and len(ci) == 2 and all(_is_number(x) for x in ci)):
        return f"field 'compared_ci' is {ci!r}, not [low, high]"
    return None


def _load(path: Path) -> Any:
    """The JSON document at ``path`` (:class:`MergeError` naming the file when it cannot be read)."""
    if path.is_dir():
        raise MergeError(f"{path}: is a folder, not a results file")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise MergeError(f"{path}: not a pytest-qrel results file (not UTF-8 text)") from None
    except OSError as exc:
        raise MergeError(f"{path}: cannot read results file ({exc.strerror or exc})") from None
    except ValueError as exc:
        raise MergeError(f"{path}: not valid JSON ({exc}); a truncated file? re-run the shard") from None


_EDITED = "(a truncated or edited results file; re-run the shard)"


def _results_problem(results: Any) -> str | None:
    """What is wrong with a results file's ``results`` section (``None``: what the merge reads is well formed)."""
    if not isinstance(results, dict):
        return "no 'results' section"
    for key, kind in (("verdicts", list), ("units", list), ("run", dict)):
        if not isinstance(results.get(key, kind()), kind):
            return f"'results.{key}' is not a {kind.__name__}"
    for i, raw in enumerate(results.get("verdicts", [])):
        problem = _verdict_problem(raw)
        if problem:
            return f"results.verdicts[{i}] {problem}"
    for i, raw in enumerate(results.get("units", [])):
        if not isinstance(raw, dict) or not all(isinstance(raw.get(k), str) for k in ("suite", "model", "quantizer")):
            return f"results.units[{i}] is not a unit record"
    suites = results.get("run", {}).get("suites") or []
    if not isinstance(suites, list) or not all(
        isinstance(x, dict) and all(isinstance(x.get(k), str) for k in ("name", "path", "sha256")) for x in suites
    ):
        return "'results.run.suites' does not list the suites' name, path and SHA-256"
    return None


def _plan_and_shard_problem(doc: dict[str, Any]) -> str | None:
    """What is wrong with a results file's ``plan`` and ``shard`` (``None``: nothing)."""
    plan = doc.get("plan")
    if not isinstance(plan, dict) or not all(isinstance(v, list) and all(isinstance(i, str) for i in v) for v in plan.values()):
        return "'plan' is not a mapping of suite names to node ids"
    shard = doc.get("shard")
    if shard is not None and not (
        isinstance(shard, list) and len(shard) == 2 and all(isinstance(x, int) and not isinstance(x, bool) for x in shard)
        and 1 <= shard[0] <= shard[1]
    ):
        return f"'shard' is {shard!r}, not [K, N] with 1 <= K <= N"
    return None


def read_results(path: Path) -> dict[str, Any]:
    """A results file, checked for everything the merge reads; :class:`MergeError` names the
    file and what is wrong in one line."""
    path = Path(path)
    doc = _load(path)
    if not isinstance(doc, dict) or doc.get("format") != RESULTS_FORMAT:
        raise MergeError(f"{path}: not a pytest-qrel results file (write one with --qrel-results)")
    if doc.get("version") != RESULTS_VERSION:
        raise MergeError(f"{path}: results format version {doc.get('version')!r}; this pytest-qrel reads {RESULTS_VERSION}: "
                         "re-run the shard with this version")
    problem = _results_problem(doc.get("results")) or _plan_and_shard_problem(doc)
    if problem:
        raise MergeError(f"{path}: {problem} {_EDITED}")
    return doc


# ------------------------------------------------------------------------------------ merge
def _suites_on_disk(docs: list[tuple[Path, dict[str, Any]]], root: Path, given: Sequence[Path]) -> dict[str, Any]:
    """``{suite name: Suite}`` of every suite the files name, loaded from disk and checked
    against the SHA-256 the shards recorded (``given``: the suites the merge must cover)."""
    from .runinfo import file_sha256
    from .spec import load_suite

    recorded: dict[str, tuple[str, str, Path]] = {}  # name -> (path, sha256, the file that said so)
    hashes: dict[str, set[str]] = {}
    for p, d in docs:
        for info in d["results"].get("run", {}).get("suites") or []:
            hashes.setdefault(info["name"], set()).add(info["sha256"])
            recorded.setdefault(info["name"], (info["path"], info["sha256"], p))
    changed = [name for name, h in hashes.items() if len(h) > 1]
    if changed:
        raise MergeError(f"results come from different versions of suite(s) {', '.join(sorted(changed))} (suite SHA-256 differs); re-run all shards")
    if not recorded:
        raise MergeError("the results files name no suite (run.suites is empty: an edited file?); re-run the shards")
    suites: dict[str, Any] = {}
    for name, (where, sha, p) in sorted(recorded.items()):
        file = Path(where) if Path(where).is_absolute() else root / where
        if not file.is_file():
            raise MergeError(
                f"suite '{name}': {file} (named by {p}) does not exist here; run qrel merge in the folder the shards ran in, "
                "or give it with --root"
            )
        here = file_sha256(file)
        if here != sha:
            raise MergeError(
                f"suite '{name}': {file} is not the file the shards ran (SHA-256 {str(here)[:12]}... here, {sha[:12]}... in {p}); "
                "re-run the shards with this suite, or merge where that version is"
            )
        suite = load_suite(file)
        if suite.name != name:
            raise MergeError(f"suite '{name}': {file} now defines suite '{suite.name}' (named by {p})")
        suites[name] = suite
    if given:
        wanted = {load_suite(g).name: g for g in given}
        extra = sorted(set(suites) - set(wanted))
        lacking = sorted(set(wanted) - set(suites))
        if lacking:
            raise MergeError(f"no results file has suite '{lacking[0]}' ({wanted[lacking[0]]}); give every shard's results file")
        if extra:
            raise MergeError(f"the results files have suite '{extra[0]}', which --suite does not name")
    return suites


def _file_part(name: str, suite: Any, docs: list[tuple[Path, dict[str, Any]]], root: Path) -> str:
    """How node ids of suite ``name`` write its file (``suites/x.yaml``): as the files' own ids
    do, else the suite's path relative to ``root``."""
    seen: set[str] = set()
    for _, d in docs:
        seen.update(i.split("::", 1)[0] for i in (d.get("plan") or {}).get(name, []))
        seen.update(v["nodeid"].split("::", 1)[0] for v in d["results"].get("verdicts", []) if v["suite"] == name)
    if len(seen) > 1:
        raise MergeError(f"suite '{name}' appears under several file names in the node ids ({', '.join(sorted(seen))})")
    if seen:
        return seen.pop()
    path = Path(suite.path)
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return path.as_posix()


def recompute(v: Verdict, p: PlannedCheck, *, inconclusive: str, source: str = "the results file") -> tuple[Verdict, str]:
    """``v`` decided again from its numbers and ``p``'s bound through the one policy
    (:func:`pytest_qrel.policy.outcome_of`), and a note (``""``: nothing changed).

    A verdict without a value keeps ``skipped`` / ``error`` / ``not run`` (nothing to decide
    from); any other outcome without a value becomes an error. An ``error`` or ``not run`` is
    never turned into a pass. When the stored outcome differs from the recomputed one, the
    recomputed failure replaces it; if the numbers pass but the file said otherwise, the check
    is an error (the numbers or the outcome were edited)."""
    from dataclasses import replace

    from .display import metric_info
    from .evaluate import compared_quantity
    from .stats.decision import judge

    check, bound = p.check, p.check.bound
    if check.metric == REPORT_ONLY:  # a report-only unit: no number, no bound to decide again
        return replace(v), ""
    stored, out = v.outcome, replace(v)
    out.expect_fail = check.expect == "fail"
    if v.value is None or stored in ("error", "not run"):
        if stored in ("skipped", "error", "not run"):
            out.passed = False
            return out, ""
        out.outcome, out.passed = "error", False
        out.message = f"{source} says {stored} but gives no value for this check (an edited file?); re-run it"
        return out, f"{v.nodeid}: said {stored} without a value"
    needs_fp32 = bound.kind == "delta"
    if (needs_fp32 and v.fp32 is None) or (bound.ref is not None and v.ref_value is None):
        out.outcome, out.passed = "error", False
        what = "the FP32 value" if needs_fp32 and v.fp32 is None else f"the value of {bound.ref}"
        out.message = f"{source} lacks {what} this check's bound needs (an edited file?); re-run it"
        return out, f"{v.nodeid}: lacks {what}"
    info = metric_info(check.metric)
    compared = compared_quantity(bound, v.fp32, float(v.value), higher_is_better=info.higher_is_better, ref_value=v.ref_value)
    confidence = getattr(check, "confidence", None)
    ci = tuple(v.compared_ci) if v.compared_ci else None
    evidence = judge(bound, compared, ci, confidence)  # type: ignore[arg-type]
    outcome, passed = outcome_of(evidence.outcome, confidence=confidence, expect_fail=out.expect_fail, inconclusive=inconclusive)
    edited_numbers = v.compared is not None and math.isfinite(compared) and not math.isclose(
        v.compared, compared, rel_tol=1e-9, abs_tol=1e-12
    )
    out.outcome, out.passed = outcome, passed
    out.compared = compared if math.isfinite(compared) else None
    out.margin = evidence.margin if math.isfinite(evidence.margin) else None
    if outcome == stored and not edited_numbers:
        return out, ""  # the same decision (a pure inconclusive-policy difference included)
    said = f"said {stored}" + (f" with {v.compared:.6g} against its bound" if edited_numbers else "")
    if is_failing(out):
        out.message = (f"{v.message} [qrel merge: the numbers in {source} give {outcome} ({compared:.6g} against "
                       f"{bound}); the file {said}]")
    else:
        out.outcome, out.passed = "error", False
        out.message = (f"{source} {said}, but its numbers give {outcome} ({compared:.6g} against {bound}): "
                       "the file was edited or written by another pytest-qrel; re-run it")
    return out, f"{v.nodeid}: {said}, its numbers give {outcome}"


def _shard_count(docs: list[tuple[Path, dict[str, Any]]]) -> int | None:
    """N of ``--qrel-shard K/N`` when the files are shards (``None``: unsharded runs), after
    checking that each of the N shards is given exactly once."""
    shards: list[tuple[Path, list[int]]] = [(p, d.get("shard") or []) for p, d in docs]
    if not any(s for _, s in shards):
        return None
    ns = {s[1] for _, s in shards if s}
    if len(ns) != 1 or any(not s for _, s in shards):
        raise MergeError("results files mix different --qrel-shard N (or unsharded runs): " + ", ".join(f"{p} ({s})" for p, s in shards))
    n_shards = ns.pop()
    seen: dict[int, Path] = {}
    for p, s in shards:
        if s[0] in seen:
            raise MergeError(f"shard {s[0]}/{n_shards} appears twice: {seen[s[0]]} and {p}")
        seen[s[0]] = p
    missing = [k for k in range(1, n_shards + 1) if k not in seen]
    if missing:
        raise MergeError(f"shard(s) {', '.join(f'{k}/{n_shards}' for k in missing)} missing: give every shard's results file")
    return n_shards


def _plan(
    on_disk: dict[str, Any], docs: list[tuple[Path, dict[str, Any]]], root: Path
) -> tuple[dict[str, PlannedCheck], dict[str, list[str]]]:
    """The plan from the suites on disk (``{node id: check}`` and ``{suite: node ids}``), after
    checking that each file's stored plan is it."""
    from .spec.plan import plan

    planned: dict[str, PlannedCheck] = {}
    plan_ids: dict[str, list[str]] = {}
    for name, suite in on_disk.items():
        file = _file_part(name, suite, docs, root)
        checks = plan(suite)
        plan_ids[name] = [f"{file}::{c.model}::{c.quantizer}::{c.name}" for c in checks]
        planned.update(zip(plan_ids[name], checks))
    for p, d in docs:
        stored = d.get("plan") or {}
        for info in d["results"].get("run", {}).get("suites") or []:
            name = info["name"]
            if set(stored.get(name, [])) != set(plan_ids[name]):
                have = len(stored.get(name, []))
                raise MergeError(
                    f"{p}: its plan of suite '{name}' ({have} checks) is not the suite's ({len(plan_ids[name])} checks in "
                    f"{on_disk[name].path}): an edited file, or another version of the suite; re-run the shard"
                )
    return planned, plan_ids


def _shard_of(planned: dict[str, PlannedCheck], n_shards: int | None) -> dict[str, int]:
    """``{node id: the shard the partition gives it}`` (empty for unsharded runs)."""
    shard_of: dict[str, int] = {}
    if n_shards is not None:
        ids, checks = list(planned), list(planned.values())
        for number in range(1, n_shards + 1):
            shard_of.update({i: number for i, keep in zip(ids, assign(checks, number, n_shards)) if keep})
    return shard_of


def _recomputed_verdicts(
    docs: list[tuple[Path, dict[str, Any]]], planned: dict[str, PlannedCheck], shard_of: dict[str, int],
    n_shards: int | None, inconclusive: str | None,
) -> tuple[dict[str, Verdict], dict[Path, list[str]]]:
    """Every stored verdict, each in its place (planned, once, in its shard) and recomputed
    (:func:`recompute`); and per file the notes of verdicts the recomputation changed."""
    verdicts: dict[str, Verdict] = {}
    where: dict[str, Path] = {}
    changed: dict[Path, list[str]] = {}
    for p, d in docs:
        k: int | None = (d.get("shard") or [None])[0]
        for raw in d["results"].get("verdicts", []):
            v = Verdict.from_dict(raw)
            if v.nodeid not in planned:
                raise MergeError(f"{p}: has a verdict for {v.nodeid}, which the suite does not plan (an edited file?)")
            if v.nodeid in verdicts:
                raise MergeError(f"check {v.nodeid} is in two results files: {where[v.nodeid]} and {p}")
            if k is not None and shard_of.get(v.nodeid) != k:
                raise MergeError(f"{p}: shard {k}/{n_shards} has a verdict for {v.nodeid}, which is in shard {shard_of.get(v.nodeid)}/{n_shards}")
            pc = planned[v.nodeid]
            v, note = recompute(v, pc, inconclusive=inconclusive or pc.suite.inconclusive, source=p.name)
            if note:
                changed.setdefault(p, []).append(note)
            verdicts[v.nodeid], where[v.nodeid] = v, p
    return verdicts, changed


def _units(docs: list[tuple[Path, dict[str, Any]]]) -> list[UnitMetrics]:
    """The unit records of all files (the first of each (suite, model, quantizer)), FP32 first per model."""
    units: dict[tuple[str, str, str], UnitMetrics] = {}
    for _, d in docs:
        for raw in d["results"].get("units", []):
            try:
                u = UnitMetrics.from_dict(raw)
            except TypeError as exc:
                raise MergeError(f"a unit record of {raw.get('suite')}/{raw.get('model')} cannot be read ({exc})") from None
            units.setdefault((u.suite, u.model, u.quantizer), u)
    return sorted(units.values(), key=lambda u: (u.suite, u.model, base_of(u.quantizer) != FP32))


def merge(
    paths: Sequence[Path],
    *,
    root: Path | None = None,
    suites: Sequence[Path] = (),
    inconclusive: str | None = None,
    notes: list[str] | None = None,
) -> RunResults:
    """One complete run from results files; :class:`MergeError` names what is wrong.

    ``root``: the folder the suite paths in the files are relative to (default: the current
    one). ``suites``: suite files the merge must cover, no more and no less (default: those the
    files name). ``inconclusive``: the policy for inconclusive checks (default: each suite's
    ``inconclusive:``). ``notes`` receives one line per file whose stored verdicts the
    recomputation changed."""
    if not paths:
        raise MergeError("no results files given")
    root = Path(root) if root is not None else Path.cwd()
    docs = [(Path(p), read_results(Path(p))) for p in paths]
    on_disk = _suites_on_disk(docs, root, suites)
    n_shards = _shard_count(docs)
    planned, plan_ids = _plan(on_disk, docs, root)
    verdicts, changed = _recomputed_verdicts(docs, planned, _shard_of(planned, n_shards), n_shards, inconclusive)
    if notes is not None:
        for p, lines in changed.items():
            notes.append(f"{p}: {len(lines)} stored verdict(s) do not follow from their numbers and were recomputed, e.g. {lines[0]}")
    planned_all = [i for ids in plan_ids.values() for i in ids]
    absent = [i for i in planned_all if i not in verdicts]
    if absent:
        raise MergeError(f"{len(absent)} planned check(s) have no result in any file, e.g. {absent[0]}")
    units = _units(docs)
    try:
        first = RunResults.from_dict(docs[0][1]["results"])
    except (TypeError, ValueError, AttributeError) as exc:
        raise MergeError(f"{docs[0][0]}: its run records cannot be read ({exc}); re-run the shard") from None
    run = dict(first.run)
    run["shards"] = [d["results"].get("run", {}) for _, d in docs]
    run["shard"] = None
    return RunResults(
        verdicts=[verdicts[i] for i in planned_all], units=units,
        metrics=first.metrics, scores=first.scores, run=run,
        planned={name: planned_check_count(planned[i] for i in ids) for name, ids in plan_ids.items()},
    )


def failing(results: RunResults) -> list[Verdict]:
    """The verdicts that block the release (:func:`pytest_qrel.policy.is_failing`); ``qrel merge``
    exits with :meth:`pytest_qrel.policy.RunVerdict.exit_code` of :meth:`RunResults.verdict`
    (1 when there is one, or when no check was verified)."""
    return [v for v in results.verdicts if is_failing(v)]


# ------------------------------------------------------------------------------------ outputs
def write_report(results: RunResults, path: Path, *, report_url: str | None = None) -> Path:
    """The HTML report and its Markdown summary (``.md`` beside it, :func:`pytest_qrel.report.render_report`;
    ``report_url``: where the summary's links point); a path that :func:`report_path_problem` rejects
    is a :class:`MergeError`."""
    from .report import render_report

    problem = report_path_problem(Path(path))
    if problem:
        raise MergeError(f"{path}: {problem}")
    return render_report(results, path, report_url=report_url)


def write_junit(results: RunResults, path: Path) -> Path:
    """A junit XML file of the verdicts (one testcase per check, the verdict as properties).

    Each testcase is what :func:`pytest_qrel.policy.junit_result` says: failed or errored exactly
    where the gate fails (an inconclusive check the suite's policy let pass is a passing testcase,
    as in pytest's own junit XML; ``error`` / ``not run`` are errors); skipped and expected
    failures are skipped."""
    import xml.etree.ElementTree as ET

    from .io import atomic_write_bytes

    cases = results.verdicts
    kinds = [junit_result(v) for v in cases]
    suite_el = ET.Element(
        "testsuite", name="pytest-qrel", tests=str(len(cases)), failures=str(kinds.count("failure")),
        errors=str(kinds.count("error")), skipped=str(kinds.count("skipped")),
    )
    for v, k in zip(cases, kinds):
        classname, _, name = v.nodeid.rpartition("::")
        case = ET.SubElement(suite_el, "testcase", classname=classname.replace("/", ".").replace("::", "."), name=name or v.check)
        props = ET.SubElement(case, "properties")
        for key, value in v.to_dict().items():
            if value not in (None, "", []):
                ET.SubElement(props, "property", name=f"qrel.{key}", value=str(value))
        if k == "failure":
            ET.SubElement(case, "failure", message=v.message).text = v.message
        elif k == "error":
            ET.SubElement(case, "error", message=v.message).text = v.message
        elif k == "skipped":
            ET.SubElement(case, "skipped", message=v.message)
    top = ET.Element("testsuites")
    top.append(suite_el)
    doc = ET.ElementTree(top)
    import io as _io

    buf = _io.BytesIO()
    doc.write(buf, encoding="utf-8", xml_declaration=True)
    return atomic_write_bytes(path, buf.getvalue())
