"""The report's view objects: tables of formatted cells, blocks of tables, figure specifications,
sections and the page. Plain data the templates print; :mod:`.view` fills them.

A table with more quantizer columns than :data:`MAX_COLUMNS` is transposed (:func:`fit`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from ..policy import NOT_VERIFIED
from ..results import MetricInfo, UnitMetrics
from ..summary import ID, ModelSummary
from .format import MISSING

__all__ = [
    "MAX_COLUMNS", "Block", "Cell", "CheckMark", "Column", "FigureSpec", "ModelView", "Page", "Row", "SuiteView", "Table",
    "TableBuilder", "VerdictRow", "fit",
]


@dataclass
class CheckMark:
    """One verdict shown inside the table cell it bounds."""

    outcome: str
    check: str
    shown: str  # the quantity compared, in the bound's unit
    bound: str
    ci: str
    nodeid: str
    failing: bool


@dataclass
class Cell:
    text: str = MISSING
    delta_text: str = ""
    delta_css: str = "n0"
    spread: str = ""  # "±0.12" over seeds
    checks: list[CheckMark] = field(default_factory=list)
    note: str = ""
    best: bool = False
    ref: bool = False
    empty: bool = False  # no value for this column at all (methods table gaps)
    sort: float | None = None

    @property
    def css(self) -> str:
        parts = []
        if self.ref:
            parts.append("ref")
        if any(c.failing for c in self.checks):
            parts.append("cell-fail")
        elif any(c.outcome == "xfailed" for c in self.checks):
            parts.append("cell-xfail")
        elif any(c.outcome in NOT_VERIFIED for c in self.checks):
            parts.append("cell-unverified")
        elif self.checks:
            parts.append("cell-pass")
        if self.best:
            parts.append("best")
        if self.empty:
            parts.append("empty-cell")
        return " ".join(parts)

    @property
    def title(self) -> str:
        lines = [f"{c.outcome}: {c.check} ({c.shown}{'; ' + c.ci if c.ci else ''})" for c in self.checks]
        if self.note:
            lines.append(self.note)
        return "; ".join(lines)


@dataclass
class Column:
    label: str
    ref: bool = False
    title: str = ""
    group_start: bool = False


@dataclass
class Row:
    label: str
    cells: list[Cell] = field(default_factory=list)
    kind: str = "data"  # "data" | "mean" | "group" (a heading row spanning the table)
    sub: str = ""  # a second, muted part of the label (post-hoc steps, units)
    title: str = ""


@dataclass
class Table:
    id: str
    caption: str
    columns: list[Column]
    rows: list[Row]
    rowhead: str = ""
    groups: list[tuple[str, int]] = field(default_factory=list)  # (label, colspan) above the columns
    css: str = ""
    sortable: bool = False


@dataclass
class Block:
    """A titled group of tables inside a model section (a collapsible <details>)."""

    id: str
    title: str
    tables: list[Table]
    legend: str = ""
    open: bool = True
    grid: bool = False  # tables side by side


@dataclass
class FigureSpec:
    """A figure to draw: ``kind`` names the drawer in :data:`pytest_qrel.report.figures.DRAWERS`."""

    kind: str
    id: str
    title: str
    caption: str
    data: dict[str, Any]
    svg: Any = None  # filled by the renderer


@dataclass
class VerdictRow:
    outcome: str
    where: str
    anchor: str
    nodeid: str
    check: str
    fp32: str
    value: str
    shown: str
    ci: str
    bound: str
    message: str
    reason: str
    css: str
    sort_margin: float | None
    rerun: str = ""  # the command that re-runs this check, its node id shell-quoted: pytest --qrel-suite suites/x.yaml 'suites/x.yaml::m::q::...'
    row_id: str = ""  # the row's HTML id in the failing / not-verified / expected tables (verdict_anchor)


@dataclass
class ModelView:
    suite: str
    model: str
    anchor: str
    units: list[str]
    counts: dict[str, int]
    n_failing: int
    n_unverified: int
    blocks: list[Block] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)
    diagnostics: list[FigureSpec] = field(default_factory=list)
    info: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SuiteView:
    name: str
    anchor: str
    models: list[ModelView]
    figures: list[FigureSpec] = field(default_factory=list)
    planned: int | None = None
    n_verdicts: int = 0
    blocks: list[Block] = field(default_factory=list)  # suite-wide tables (averages across scenarios)
    missing: int = 0  # planned checks of this suite without a verdict


@dataclass
class Page:
    title: str
    status: str
    headline: str
    unverified_line: str
    counts: dict[str, int]
    total: int
    planned: int | None
    missing_checks: int
    suites: list[SuiteView]
    failing: list[VerdictRow]
    expected: list[VerdictRow]
    unverified: list[VerdictRow]
    verdicts: list[VerdictRow]
    run: dict[str, Any]
    run_summary: list[tuple[str, str]]
    n_units: int
    toc: list[tuple[str, str, int]]  # (anchor, label, depth)
    tally: str = ""  # the run's count line (pytest_qrel.policy.RunVerdict.tally): checks, then report-only items
    report_only: int = 0  # report-only items (not checks: they judge nothing)


MAX_COLUMNS = 8
"""A table with more quantizer columns than this is transposed (quantizers become rows), so it
stays readable at 1400 px and on paper instead of scrolling or clipping."""


def fit(table: Table, rowhead: str = "Quantizer") -> Table:
    """``table`` as is, or transposed when it has more than :data:`MAX_COLUMNS` columns and no
    column groups: its rows become columns (a ``mean`` row a ``mean`` column) and back."""
    if len(table.columns) <= MAX_COLUMNS or table.groups or any(r.kind == "group" for r in table.rows):
        return table
    columns = [Column(r.label + (f" {r.sub}" if r.sub else ""), title=r.title, group_start=r.kind == "mean") for r in table.rows]
    rows = []
    for j, col in enumerate(table.columns):
        rows.append(Row(col.label, [r.cells[j] for r in table.rows], kind="ref" if col.ref else "data", title=col.title))
    return Table(table.id, table.caption, columns, rows, rowhead=rowhead, css=table.css + " transposed", sortable=True)


class TableBuilder(Protocol):
    """What the table and figure builders of :mod:`.methods_view`, :mod:`.runtime_view` and
    :mod:`.figspecs` use of the page builder (:class:`pytest_qrel.report.view._Builder`)."""

    def new_id(self, prefix: str) -> str: ...

    def info(self, metric: str) -> MetricInfo: ...

    def arrow(self, metric: str) -> str: ...

    def delta_legend(self, ref: UnitMetrics | None, metrics: list[str]) -> str: ...

    def cell(self, ms: ModelSummary, u: UnitMetrics, kind: str, metric: str, score: str | None = None, dataset: str = ID,
             *, is_ref: bool | None = None, best: bool = False) -> Cell: ...
