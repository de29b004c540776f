"""The methods x bit configurations table (the CLIP paper's appendix tables), for a model whose
quantized units use more than one method: rows = (method, post-hoc steps), column groups = bit
configurations, each with top-1, NLL, ECE and the mean AUROC of the first score (and the fitted
parameters of post-hoc steps). The best quantized value of each column is bold
(:attr:`pytest_qrel.summary.ModelSummary.best`)."""

from __future__ import annotations

from dataclasses import dataclass

from .. import display
from ..results import UnitMetrics
from ..spec.schema import MEAN_OOD
from ..summary import METHOD_METRICS, ModelSummary, union
from .format import fmt_info
from .objects import Block, Cell, Column, Row, Table, TableBuilder

__all__ = ["methods_block"]


@dataclass(frozen=True)
class _Layout:
    """The columns of one bit configuration's group."""

    metrics: list[str]  # ID metrics shown
    score: str | None  # the score of the AUROC column (None: no such column)
    fitted: bool  # a column with the parameters post-hoc steps fitted

    @property
    def width(self) -> int:
        return len(self.metrics) + (1 if self.score else 0) + (1 if self.fitted else 0)


def _layout(ms: ModelSummary) -> _Layout:
    units = ms.units
    score = ms.scores[0] if ms.scores else None
    with_auroc = score is not None and any("auroc" in u.mean_ood(score) for u in units)
    return _Layout(metrics=[m for m in METHOD_METRICS if any(m in u.id for u in units)], score=score if with_auroc else None,
                   fitted=any(u.posthoc and u.info for u in units))


def _columns(b: TableBuilder, layout: _Layout, bits: list[str]) -> list[Column]:
    columns: list[Column] = []
    for _ in bits:
        columns += [Column(f"{b.info(m).label} {b.arrow(m)}", group_start=i == 0) for i, m in enumerate(layout.metrics)]
        if layout.score:
            columns.append(Column(f"AUROC {b.arrow('auroc')}", title=f"mean AUROC over the OOD sets, {display.score_label(layout.score)} score",
                                  group_start=not layout.metrics))
        if layout.fitted:
            columns.append(Column("fitted", title="parameters fitted by post-hoc steps on the held-out ID split"))
    return columns


def _group_cells(b: TableBuilder, ms: ModelSummary, layout: _Layout, u: UnitMetrics | None, *, is_ref: bool = False) -> list[Cell]:
    """The cells of ``u`` under one bit configuration (empty cells where it has no unit)."""
    if u is None:
        return [Cell(empty=True) for _ in range(layout.width)]
    cells = [b.cell(ms, u, "id", m, is_ref=is_ref, best=True) for m in layout.metrics]
    if layout.score:
        cells.append(b.cell(ms, u, "ood", "auroc", layout.score, MEAN_OOD, is_ref=is_ref, best=True))
    if layout.fitted:
        cells.append(Cell(text=fmt_info(u.info) if (u.posthoc and u.info) else ""))
    return cells


def _reference_rows(b: TableBuilder, ms: ModelSummary, layout: _Layout, bits: list[str]) -> list[Row]:
    """FP32 (the same values under every bit configuration) and FP32 with post-hoc steps."""
    ref = ms.reference
    if ref is None:
        return []
    rows = [Row(ref.quantizer, _group_cells(b, ms, layout, ref, is_ref=True) * len(bits), title="same values under every bit configuration")]
    for u in ms.units:
        if not u.method and u.posthoc:
            rows.append(Row(ref.quantizer, _group_cells(b, ms, layout, u) * len(bits), sub="+" + "+".join(u.posthoc)))
    return rows


def _method_rows(b: TableBuilder, ms: ModelSummary, layout: _Layout, bits: list[str], quantized: list[UnitMetrics]) -> list[Row]:
    """A row per (method, post-hoc steps); two units of one (method, bits, post-hoc) -- different
    options -- get rows of their own."""
    rows: list[Row] = []
    for method in union([u.method] for u in quantized):
        variants = union([tuple(u.posthoc)] for u in quantized if u.method == method)
        for posthoc in sorted(variants, key=len):
            mine = [u for u in quantized if u.method == method and tuple(u.posthoc) == posthoc]
            while mine:
                taken: dict[str, UnitMetrics] = {}
                rest = []
                for u in mine:
                    if u.bits_label in taken:
                        rest.append(u)
                    else:
                        taken[u.bits_label] = u
                cells = [c for bl in bits for c in _group_cells(b, ms, layout, taken.get(bl))]
                rows.append(Row(method, cells, sub="+" + "+".join(posthoc) if posthoc else "", title=", ".join(u.quantizer for u in taken.values())))
                mine = rest
    return rows


def methods_block(b: TableBuilder, ms: ModelSummary) -> Block | None:
    """The methods table's block, or ``None`` for a model whose quantized units use one method."""
    quantized = [u for u in ms.units if u.method and u.bits_label]
    if len({u.method for u in quantized}) < 2:
        return None
    bits = union([u.bits_label] for u in quantized)
    layout = _layout(ms)
    rows = _reference_rows(b, ms, layout, bits) + _method_rows(b, ms, layout, bits, quantized)
    groups = [(bl, layout.width) for bl in bits]
    table = Table(b.new_id("t"), "Methods \u00d7 bit configurations", _columns(b, layout, bits), rows, rowhead="Method", groups=groups,
                  css="methods-table")
    auroc = f"; AUROC: {display.score_label(layout.score)} score, mean over the OOD sets" if layout.score else ""
    legend = (f"Rows: quantization methods (post-hoc steps below their method); column groups: bit configurations. "
              f"Top-1 and ECE in %, NLL in nats{auroc}. Bold: best quantized value of its column. " + b.delta_legend(ms.reference, layout.metrics))
    return Block(b.new_id("b"), "Methods \u00d7 bit configurations", [table], legend)
