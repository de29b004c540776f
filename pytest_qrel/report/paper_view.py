"""Suite-level tables: the ViT paper's Table 1 layout, and published reference values beside the
measured ones.

- **Models x bit configurations** (Kuang & Wong, Table 1's layout): one row per model, a column
  group per ID metric (top-1, NLL), in each the FP32 column then every bit configuration in the
  order the units come; each cell the mean over calibration seeds with its sample standard
  deviation (± over seeds) and the change against FP32. Shown for a suite with quantized units
  whose ID metrics were recorded.
- **Beside the published values** (suite ``references:``): one row per (model, quantizer) with a
  published value, a column group per (metric, dataset, kind) with the measured value, the
  published one and the difference *measured - published* (in the metric's display unit: points
  for fractions, nats for NLL); the table cites the sources (``"Kuang & Wong, Table 1"``) and the
  papers. A published *delta* (FP32 -> quantizer, positive = worse) is compared with the measured
  delta relative to FP32 (``relative: true``) or in points (``false``); where the source does not
  say which, both measured forms are shown and no difference is taken. A published value matched
  to the suite's quantizer by method, its bit width unpublished (``bits_note``, set by
  :func:`pytest_qrel.references.suite_references`, which holds every matching rule), shows that
  note beside the published number, in HTML and Markdown.

The reference values come matched to the suite's names in ``RunResults.run["references"]``
(:func:`pytest_qrel.suite_report.report_run_info`); the numbers from :class:`~pytest_qrel.summary.ModelSummary`.
:func:`reference_markdown` writes the comparison as Markdown for the CI summary.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .. import display
from ..results import MetricInfo, UnitMetrics
from ..spec.schema import MEAN_OOD
from ..summary import ID, ModelSummary, union
from .format import MISSING, fmt_value
from .objects import Block, Cell, Column, Row, Table, TableBuilder

__all__ = ["comparisons", "reference_markdown", "suite_blocks"]

TABLE1_METRICS: tuple[str, ...] = ("top1", "nll")
"""The ID metrics of the models x bit configurations table (Table 1: top-1 and NLL)."""


def _quantized(ms: ModelSummary) -> dict[str, UnitMetrics]:
    """The model's quantized units without post-hoc steps by bit configuration (first one wins)."""
    out: dict[str, UnitMetrics] = {}
    for u in ms.units:
        if u.method and u.bits_label and not u.posthoc:
            out.setdefault(u.bits_label, u)
    return out


def table1_block(b: TableBuilder, models: Sequence[ModelSummary]) -> Block | None:
    """Models x bit configurations (Table 1's layout), or None without quantized ID metrics."""
    by_model = [(ms, _quantized(ms)) for ms in models]
    bits = union(list(q) for _, q in by_model)
    metrics = [m for m in TABLE1_METRICS if any(m in u.id for ms, _ in by_model for u in ms.units)]
    if not bits or not metrics or not any(ms.reference for ms, _ in by_model):
        return None
    ref_label = next(ms.reference.quantizer for ms, _ in by_model if ms.reference)
    columns = [Column(x, ref=i == 0, group_start=i == 0) for _ in metrics for i, x in enumerate([ref_label, *bits])]
    groups = [(f"{b.info(m).label} {b.arrow(m)}" + (f" ({display.value_unit(b.info(m))})" if display.value_unit(b.info(m)) else ""),
               len(bits) + 1) for m in metrics]
    rows = []
    for ms, quantized in by_model:
        cells: list[Cell] = []
        for m in metrics:
            cells.append(b.cell(ms, ms.reference, "id", m) if ms.reference else Cell(empty=True))
            cells += [b.cell(ms, quantized[x], "id", m) if x in quantized else Cell(empty=True) for x in bits]
        rows.append(Row(ms.model, cells))
    table = Table(b.new_id("t"), "Models \u00d7 bit configurations (ID test split)", columns, rows, rowhead="Model", groups=groups,
                  css="table1")
    legend = ("The layout of Kuang & Wong's Table 1: each cell the mean over the calibration seeds \u00b1 their sample standard "
              "deviation, and its change against FP32 (+ is worse). " + b.delta_legend(next(ms.reference for ms, _ in by_model if ms.reference), metrics))
    return Block(b.new_id("b"), "Models \u00d7 bit configurations (in-distribution)", [table], legend)


@dataclass(frozen=True)
class Comparison:
    """One published value beside the measured one; texts already formatted."""

    model: str
    quantizer: str
    column: str  # "Top-1 (%)", "AUPR-out (MSP) delta, mean(ood)"
    measured: str
    published: str
    difference: str
    source: str
    note: str = ""
    bits_note: str = ""  # "bit width not stated by the paper": matched by method, at every bit width


def _column(info: MetricInfo, ref: Mapping[str, Any], id_name: str) -> str:
    unit = display.value_unit(info)
    label = info.label + (f" ({display.score_label(ref['score'])})" if ref.get("score") else "")
    where = "" if ref["dataset"] in (id_name, ID) else (" \u00b7 mean of the OOD sets" if ref["dataset"] == MEAN_OOD else f" \u00b7 {ref['dataset']}")
    if ref.get("kind") == "delta":
        return f"{label} change{where}"
    return label + (f" ({unit})" if unit else "") + where


def _signed(x: float, decimals: int) -> str:
    return f"{x:+.{decimals}f}".replace("-", "\u2212")


def _compare(info: MetricInfo, ms: ModelSummary, ref: Mapping[str, Any], id_name: str) -> Comparison:
    id_name = str(ref.get("id_dataset") or id_name)  # the value's scenario's ID set
    kind = "id" if ref["dataset"] == id_name else "ood"
    n = ms.number(ref["quantizer"], kind, ref["metric"], ref.get("score"), ID if kind == "id" else ref["dataset"])
    scale = 100.0 if info.fraction else 1.0
    column, note = _column(info, ref, id_name), ref.get("note") or ""
    if ref.get("kind") == "delta":
        published = f"{ref['published']} {'%' if ref.get('relative') else 'pp' if ref.get('relative') is False else '% (relative or points: not stated)'}"
        published += f" ({ref['bits_note']})" if ref.get("bits_note") else ""
        rel = n.delta_percent
        pts = None if n.delta is None else scale * n.delta
        if ref.get("relative") is True:
            measured, diff = ("" if rel is None else f"{_signed(rel, 1)} %"), (None if rel is None else rel - 100.0 * ref["value"])
        elif ref.get("relative") is False:
            measured, diff = ("" if pts is None else f"{_signed(pts, 2)} pp"), (None if pts is None else pts - scale * ref["value"])
        else:
            parts = [f"{_signed(rel, 1)} %" if rel is not None else "", f"{_signed(pts, 2)} pp" if pts is not None else ""]
            measured, diff = " / ".join(p for p in parts if p), None
        return Comparison(ms.model, ref["quantizer"], column, measured or MISSING, published,
                          MISSING if diff is None else _signed(diff, 2), ref["source"], note, ref.get("bits_note") or "")
    value = n.value
    measured = fmt_value(info, value)
    if n.spread is not None:
        measured += " \u00b1" + display.format_number(info, n.spread)
    diff = None if value is None else scale * (value - float(ref["value"]))
    decimals = 2 if info.fraction else 3
    published = str(ref["published"]) + (f" ({ref['bits_note']})" if ref.get("bits_note") else "")
    return Comparison(ms.model, ref["quantizer"], column, measured, published, MISSING if diff is None else _signed(diff, decimals),
                      ref["source"], note, ref.get("bits_note") or "")


def comparisons(b: TableBuilder, suite: str, models: Sequence[ModelSummary], run: Mapping[str, Any]) -> tuple[list[Comparison], dict[str, Any]]:
    """Every published value of ``suite``'s references with its measured counterpart, in model
    then quantizer order, and the references' record (``sets``, ``sources``, ``papers``). A value
    whose model or quantizer has no unit in this run is left out (a run of a few units is not
    padded with rows of dashes: one light-QAT row of the CLIP paper matches 16 quantizers)."""
    record = (run.get("references") or {}).get(suite) or {}
    values = record.get("values") or []
    if not values:
        return [], record
    id_name = str(record.get("id_dataset") or "")
    order = {ms.model: (i, {u.quantizer: j for j, u in enumerate(ms.units)}) for i, ms in enumerate(models)}
    by_model = {ms.model: ms for ms in models}
    out = []
    for ref in sorted(values, key=lambda r: (order.get(r["model"], (99, {}))[0], order.get(r["model"], (99, {}))[1].get(r["quantizer"], 99))):
        ms = by_model.get(ref["model"])
        if ms is None or ref["quantizer"] not in order[ref["model"]][1]:  # not run here: no row of dashes
            continue
        out.append(_compare(b.info(ref["metric"]), ms, ref, id_name))
    return out, record


def _citation(record: Mapping[str, Any], found: Sequence[Comparison] = ()) -> str:
    sources = "; ".join(record.get("sources") or [])
    papers = "; ".join(record.get("papers") or [])
    out = f"Published values: {sources}" + (f" \u2014 {papers}" if papers else "") + f" (reference set: {', '.join(record.get('sets') or [])})."
    notes = list(dict.fromkeys(c.bits_note for c in found if c.bits_note))
    if notes:  # matched by method (pytest_qrel.references.suite_references)
        out += (f" A published value marked \u201c{notes[0]}\u201d is shown beside each of the suite's quantizers of that method, "
                "at every bit width.")
    return out


def reference_block(b: TableBuilder, suite: str, models: Sequence[ModelSummary], run: Mapping[str, Any]) -> Block | None:
    """The measured values beside the published ones (rows: model and quantizer)."""
    found, record = comparisons(b, suite, models, run)
    if not found:
        return None
    cols = list(dict.fromkeys(c.column for c in found))
    rows_keys = list(dict.fromkeys((c.model, c.quantizer) for c in found))
    cell = {(c.model, c.quantizer, c.column): c for c in found}
    columns = [Column(label, group_start=i == 0, title=title) for _ in cols
               for i, (label, title) in enumerate((("measured", "this run (mean \u00b1 std over seeds)"), ("published", ""),
                                                   ("difference", "measured \u2212 published")))]
    rows = []
    for model, quantizer in rows_keys:
        cells: list[Cell] = []
        for col in cols:
            c = cell.get((model, quantizer, col))
            if c is None:
                cells += [Cell(empty=True)] * 3
                continue
            cells += [Cell(text=c.measured), Cell(text=c.published, note=f"{c.source}" + (f": {c.note}" if c.note else "")), Cell(text=c.difference)]
        rows.append(Row(model, cells, sub=quantizer))
    table = Table(b.new_id("t"), f"Measured beside {'; '.join(record.get('sources') or [])}", columns, rows, rowhead="Model / quantizer",
                  groups=[(c, 3) for c in cols], css="references")
    legend = (_citation(record, found) + " Difference: measured \u2212 published, in points for percentages and in nats for NLL; a published "
              "change (FP32 \u2192 quantizer, + is worse) is compared with the measured change in the same form.")
    return Block(b.new_id("b"), "Beside the published values", [table], legend)


def suite_blocks(b: TableBuilder, suite: str, models: Sequence[ModelSummary], run: Mapping[str, Any]) -> list[Block]:
    """The suite-level blocks: Table 1's layout, then the reference comparison."""
    return [blk for blk in (table1_block(b, models), reference_block(b, suite, models, run)) if blk is not None]


def reference_markdown(b: TableBuilder, suite: str, models: Sequence[ModelSummary], run: Mapping[str, Any], escape: Any) -> list[str]:
    """The comparison as a Markdown table (``escape``: the summary's cell escaper); [] without references."""
    found, record = comparisons(b, suite, models, run)
    if not found:
        return []
    lines = ["", f"**{escape(suite)}: measured beside the published values.** {escape(_citation(record, found))}", "",
             "| Model | Quantizer | Quantity | Measured | Published | Difference |", "|---|---|---|---:|---:|---:|"]
    for c in found:
        lines.append(f"| {escape(c.model)} | {escape(c.quantizer)} | {escape(c.column)} | {escape(c.measured)} | {escape(c.published)} | {escape(c.difference)} |")
    return lines
