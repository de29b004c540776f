"""The suite's top-level ``report:`` and ``references:`` keys, and what a suite declares that
nothing reads.

``report:`` (:class:`~pytest_qrel.spec.schema.ReportSpec`) takes three forms::

    report: all                       # every quantizer, computed and shown without a bound
    report: [W4A8, W8A4]              # those quantizers
    report:
      units: all                      # or a list, or absent (no report-only unit)
      ood_mean: [textures, sun]       # the OOD sets the report's means average (default: all)

Each listed quantizer becomes, for every model, one *report-only* item
(``suite.yaml::model::W4A8::report-only``): it computes the unit over every dataset of the suite
(the ID set, every OOD and shifted set), delivers its record to the report, and passes unless the
unit errors (a missing ID set skips it, as it skips checks). A unit that checks also read is
computed once for both; ``report: all`` therefore also makes every unit cover every dataset, so
that the report's tables and figures have a value for each (model, quantizer, dataset).

``references:`` names shipped reference sets or files (a name, a path relative to the suite
file, or a list; :func:`pytest_qrel.references.load_references`), loaded and validated here;
the report shows their values beside the measured ones.

:func:`unread_declarations` lists what a suite declares but no planned item reads (a quantizer
no check names, an OOD set no check averages): the plugin warns about each at collection, and
``--qrel-strict`` makes it an error.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import QrelError, SpecError, UnknownNameError
from .quantizer_ref import base_of
from .schema import REPORT_ONLY, CheckSpec, NoBound, ReportSpec

if TYPE_CHECKING:
    from .plan import PlannedCheck
    from .schema import Suite

__all__ = ["parse_references", "parse_report", "unread_declarations"]

_REPORT_FIX = "write 'report: all', 'report: [W4A8, W8A4]' or 'report: {units: all, ood_mean: [<set>, ...]}'"


def _names(ctx: Any, raw: Any, node: Any, key: Any, field: str, known: list[str], what: str, *, allow_all: bool) -> tuple[str, ...]:
    """A list of names from ``known`` (``all``: every one, when ``allow_all``), each once."""
    if allow_all and raw == "all":
        return tuple(known)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not raw or not all(isinstance(x, str) for x in raw):
        raise ctx.err(f"'{field}' must be {'all or ' if allow_all else ''}a non-empty list of {what} names", node=node, key=key,
                      field=field, fix=_REPORT_FIX)
    for i, name in enumerate(raw):
        if name not in known:
            where = {"node": raw, "key": i} if hasattr(raw, "line_of") else {"node": node, "key": key}
            raise ctx.err(str(UnknownNameError(what, name, known)), **where, field=f"{field}[{i}]", fix=f"use one of {', '.join(known)}")
    if len(set(raw)) != len(raw):
        raise ctx.err(f"'{field}' names a {what} twice", node=node, key=key, field=field, fix="list each once")
    return tuple(raw)


def parse_report(ctx: Any, doc: Any, quantizers: list[str], ood: list[str]) -> ReportSpec:
    """``doc['report']`` as a :class:`ReportSpec` (``ctx``: the loader's context, for located errors)."""
    if doc.get("report") is None:
        return ReportSpec()
    raw = doc["report"]
    units_raw, ood_raw, node, ukey = raw, None, doc, "report"
    if isinstance(raw, dict):
        ctx.unknown_keys(raw, ("units", "ood_mean"), "report")
        units_raw, ood_raw, node, ukey = raw.get("units"), raw.get("ood_mean"), raw, "units"
    units: tuple[str, ...] = ()
    if units_raw is not None:
        if not quantizers:
            raise ctx.err("'report' names units but the suite has no quantizers", node=node, key=ukey, field="report",
                          fix="define quantizers under 'quantizers:'")
        units = _names(ctx, units_raw, node, ukey, "report" if node is doc else "report.units", quantizers, "quantizer", allow_all=True)
    mean: tuple[str, ...] | None = None
    if ood_raw is not None:
        if not ood:
            raise ctx.err("'report.ood_mean' names OOD sets but the suite has none", node=node, key="ood_mean", field="report.ood_mean",
                          fix="add sets under 'datasets: ood:' or drop ood_mean")
        mean = tuple(n for n in ood if n in _names(ctx, ood_raw, node, "ood_mean", "report.ood_mean", ood, "OOD dataset", allow_all=False))
    where = ctx.loc(node, ukey if ukey in node else None)
    checks = tuple(CheckSpec(metric=REPORT_ONLY, bound=NoBound(), quantizers=(q,), text=f"{q} {REPORT_ONLY}", where=where) for q in units)
    return ReportSpec(units=units, ood_mean=mean, checks=checks)


def parse_references(ctx: Any, doc: Any) -> tuple[str, ...]:
    """``doc['references']``: names and paths, each loaded now so a bad file fails at collection."""
    raw = doc.get("references")
    if raw is None:
        return ()
    items = [raw] if isinstance(raw, str) else raw
    fix = "write e.g. 'references: kuang_wong_2025' or a list of shipped names and YAML / CSV files (docs/references.md)"
    if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
        raise ctx.err("'references' must be a name, a path or a non-empty list of them", node=doc, key="references", field="references", fix=fix)
    from ..references import load_references

    for i, item in enumerate(items):
        where = {"node": items, "key": i} if hasattr(items, "line_of") else {"node": doc, "key": "references"}
        try:
            load_references(item, base_dir=ctx.path.parent)
        except UnknownNameError as exc:
            raise ctx.err(str(exc), **where, field="references", fix=fix) from None
        except SpecError as exc:
            if exc.file is not None:  # a problem inside the reference file: its own location
                raise
            raise ctx.err(exc.problem, **where, field="references", fix=exc.fix or fix) from None
        except QrelError as exc:
            raise ctx.err(str(exc), **where, field="references", fix=fix) from None
    return tuple(items)


def unread_declarations(suite: "Suite", planned: Iterable["PlannedCheck"]) -> list[str]:
    """What ``suite`` declares and no planned item reads, one sentence each (empty: nothing).

    Read means: a model any item runs on; a quantizer an item evaluates or compares with
    (``delta(W4A4)``); a dataset an item's value depends on (``mean(...)`` members, pairs'
    sets). Report-only units read every dataset."""
    planned = list(planned)
    models = {p.model for p in planned}
    quantizers = {base_of(q) for p in planned for q in p.quantizers_read}  # W4A4@13+temperature reads W4A4
    datasets = {d for p in planned for d in p.datasets}
    fix = "add a check that reads it, or list it under 'report:' to compute and show it without a bound"
    out = [f"model '{m}' is declared but no check reads it ({fix})" for m in suite.models if m not in models]
    out += [f"quantizer '{q}' is declared but no check reads it, so it never runs ({fix})" for q in suite.quantizers if q not in quantizers]
    for kind, names in (("OOD", suite.ood_datasets), ("shifted", suite.shifted_datasets)):
        out += [f"{kind} dataset '{d}' is declared but no check reads it ({fix}, e.g. 'report: all')" for d in names if d not in datasets]
    return out
