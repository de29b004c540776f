"""The "averages across scenarios" table of a suite with scenarios (the CLIP paper averages its
numbers over ID scenarios): per model, rows = quantizers, columns = top-1, ECE, NLL and, per score,
the AUROC and FPR@95 each scenario averaged over its own OOD sets. Every number comes computed
(:class:`pytest_qrel.summary.ScenarioMeans`); this module only formats it."""

from __future__ import annotations

from .. import display
from ..summary import SCENARIO_ID_METRICS, SCENARIO_OOD_METRICS, ScenarioMeans
from .format import delta_class, fmt_delta, fmt_value
from .objects import Block, Cell, Column, Row, Table, TableBuilder

__all__ = ["scenario_blocks"]


def _cell(b: TableBuilder, sm: ScenarioMeans, quantizer: str, kind: str, metric: str, score: str | None, ref: bool) -> Cell:
    info = b.info(metric)
    n = sm.number(quantizer, kind, metric, score)
    c = Cell(text=fmt_value(info, n.value), ref=ref, sort=n.value)
    if n.delta is not None and not ref:
        c.delta_text = fmt_delta(info, n.delta)
        c.delta_css = delta_class(info, n)
    return c


def _table(b: TableBuilder, sm: ScenarioMeans) -> Table | None:
    columns: list[tuple[str, str, str | None]] = [("id", m, None) for m in SCENARIO_ID_METRICS]
    columns += [("ood", m, s) for s in sm.scores for m in SCENARIO_OOD_METRICS]
    columns = [c for c in columns if any((q, *c) in sm.numbers for q in sm.quantizers)]
    if not columns:
        return None
    heads = [Column(f"{b.info(m).label}{f' ({display.score_label(s)})' if s else ''} {b.arrow(m)}",
                    title="mean over the scenarios of the mean over each scenario's OOD sets" if s else "mean over the scenarios")
             for _, m, s in columns]
    rows = [Row(q, [_cell(b, sm, q, k, m, s, ref=i == 0) for k, m, s in columns]) for i, q in enumerate(sm.quantizers)]
    return Table(b.new_id("t"), f"{sm.model}: mean over {len(sm.scenarios)} scenarios ({', '.join(sm.scenarios)})", heads, rows,
                 rowhead="Quantizer", css="scenario-means", sortable=True)


def scenario_blocks(b: TableBuilder, means: list[ScenarioMeans]) -> list[Block]:
    """One block holding a table per model of the suite (none without scenarios)."""
    tables = [t for t in (_table(b, sm) for sm in means) if t is not None]
    if not tables:
        return []
    legend = ("Each number is the plain mean over the model's scenarios (each scenario: its own ID set, and the mean over its own "
              "OOD sets); a cell is empty unless every scenario has the value. Small numbers: the mean change against each "
              "scenario's FP32, signed so that + is worse.")
    return [Block(b.new_id("b"), "Averages across scenarios", tables, legend)]
