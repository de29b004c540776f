"""The report's view model: :class:`~pytest_qrel.results.RunResults` -> plain view objects.

Everything the templates print is decided here, from the records as given: which unit is the
FP32 reference (:attr:`UnitMetrics.is_reference`), its method and bit configuration (the record
fields, never the quantizer's name), the order of scores (``RunResults.scores``, the suite's order)
and how each metric reads (``RunResults.metrics``). Numbers are formatted by
:mod:`pytest_qrel.display` through :mod:`.format`; the only arithmetic is the signed delta of a
table cell against the FP32 column (:func:`pytest_qrel.display.worsening`, the checks' rule), the
spread over calibration seeds and the colour scale of figures.

Outcomes and the banner
    ``FAIL``: a check failed, errored, or a strict expected failure passed (``xpassed``).
    ``INCOMPLETE``: nothing failed, but some planned checks were not verified (skipped,
    inconclusive, ``not run``, or planned and missing: ``RunResults.planned``).
    ``PASS``: every planned check produced a verdict and each passed or failed as expected.
    ``NO CHECKS``: nothing was planned or run.

Figure specifications (:class:`FigureSpec`) carry plain data only; :mod:`.figures` draws them.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .. import display
from ..results import MetricInfo, RunResults, UnitMetrics, Verdict
from ..spec.schema import MEAN_OOD
from .format import MISSING, delta_class, fmt_delta, fmt_info, fmt_value, missing

__all__ = [
    "FAILING",
    "NOT_VERIFIED",
    "is_failing",
    "is_unverified",
    "OUTCOMES",
    "Page",
    "build_page",
    "overall_status",
]

from ..results import FAILING, NOT_VERIFIED, OUTCOMES, is_failing, is_unverified  # noqa: E402  (re-exported)

VERIFIED_OK: tuple[str, ...] = ("passed", "xfailed")

#: Display order of metrics; metrics not listed follow in the order the records give them.
ID_ORDER: tuple[str, ...] = ("top1", "nll", "ece")
OOD_ORDER: tuple[str, ...] = ("auroc", "aupr_out", "fpr_at_95_tpr")
#: OOD metrics in the "scores side by side" table (the CLIP paper's appendix layout).
SIDE_BY_SIDE: tuple[str, ...] = ("auroc", "fpr_at_95_tpr", "aupr_out")
METHOD_METRICS: tuple[str, ...] = ("top1", "nll", "ece")
ID_KEY = "\x00id"  # cell key of in-distribution metrics on the ID test set


# ------------------------------------------------------------------------------------ objects


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


# ------------------------------------------------------------------------------------ status


def overall_status(verdicts: Iterable[Verdict], planned: int | None = None) -> str:
    """``FAIL`` / ``INCOMPLETE`` / ``PASS`` / ``NO CHECKS`` (see the module docstring)."""
    vs = list(verdicts)
    if any(is_failing(v) for v in vs):
        return "FAIL"
    if not vs and not planned:
        return "NO CHECKS"
    if any(is_unverified(v) for v in vs) or (planned is not None and planned > len(vs)) or not vs:
        return "INCOMPLETE"
    return "PASS"


def count_outcomes(verdicts: Iterable[Verdict]) -> dict[str, int]:
    counts = dict.fromkeys(OUTCOMES, 0)
    for v in verdicts:
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
    return counts


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def headline(status: str, verdicts: Sequence[Verdict], planned: int | None) -> tuple[str, str]:
    """The banner's sentence and the "not verified" sentence ("" when everything was verified)."""
    counts = count_outcomes(verdicts)
    total = len(verdicts)
    n_fail = sum(1 for v in verdicts if is_failing(v))
    missing_n = max(0, (planned or 0) - total)
    of = planned if planned is not None and planned >= total else total
    unverified_counts: dict[str, int] = {}
    for v in verdicts:
        if is_unverified(v):
            unverified_counts[v.outcome] = unverified_counts.get(v.outcome, 0) + 1
    parts = [f"{n} {o}" for o, n in unverified_counts.items()]
    if missing_n:
        parts.append(f"{missing_n} planned without a result")
    n_unverified = sum(unverified_counts.values()) + missing_n
    unverified = ""
    if n_unverified:
        unverified = f"{n_unverified} of {of} checks did not run or could not decide ({', '.join(parts)}): not verified."
    if status == "FAIL":
        text = f"{n_fail} of {of} checks block the release."
    elif status == "NO CHECKS":
        text = "No checks were planned or run: nothing was verified."
    elif status == "INCOMPLETE":
        text = "No check failed, but the run did not verify everything."
    else:
        xf = counts.get("xfailed", 0)
        text = f"All {_plural(of, 'check')} verified: {counts.get('passed', 0)} passed"
        text += f", {xf} failed as expected (see Expected failures)." if xf else "."
    return text, unverified


# ------------------------------------------------------------------------------------ builder


class _Builder:
    def __init__(self, results: RunResults) -> None:
        self.r = results
        self.metrics = dict(results.metrics)
        self.verdicts = list(results.verdicts)
        self.units = list(results.units)
        self.unit_index = {(u.suite, u.model, u.quantizer): u for u in self.units}
        self._ids = 0
        self.anchors: dict[tuple[str, str], str] = {}
        # verdicts keyed by the cell they bound
        side = {(u.suite, d) for u in self.units for d in (*u.shifted, *u.pairs)}
        self.by_cell: dict[tuple, list[Verdict]] = {}
        for v in self.verdicts:
            if v.score:
                ds = v.dataset
            elif (v.suite, v.dataset) in side:
                ds = v.dataset
            else:
                ds = ID_KEY
            self.by_cell.setdefault((v.suite, v.model, v.quantizer, v.metric, v.score or None, ds), []).append(v)

    # -- helpers ---------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    def info(self, metric: str) -> MetricInfo:
        known = self.metrics.get(metric)
        if known is not None:
            return known
        return MetricInfo(name=metric, label=metric, higher_is_better=True, fraction=False, unit="")

    def known(self, metric: str) -> bool:
        return metric in self.metrics

    def header(self, metric: str, with_unit: bool = True) -> str:
        info = self.info(metric)
        unit = display.value_unit(info)
        return f"{info.label} ({unit})" if with_unit and unit else info.label

    def arrow(self, metric: str) -> str:
        if not self.known(metric):
            return ""
        return "\u2191" if self.info(metric).higher_is_better else "\u2193"

    def marks(self, key: tuple) -> list[CheckMark]:
        out = []
        for v in self.by_cell.get(key, []):
            out.append(self.mark(v))
        return out

    def mark(self, v: Verdict) -> CheckMark:
        info = self.info(v.metric)
        shown = v.delta_display or v.value_display or (fmt_value(info, v.value, unit=True) if v.value is not None else "")
        return CheckMark(
            outcome=v.outcome,
            check=v.check or v.bound,
            shown=shown,
            bound=v.bound_display or v.bound,
            ci=v.ci_display,
            nodeid=v.nodeid,
            failing=is_failing(v),
        )

    def cell(self, metric: str, value: Any, ref_value: Any, *, is_ref: bool, key: tuple | None, per_seed: Sequence[float] = ()) -> Cell:
        info = self.info(metric)
        c = Cell(text=fmt_value(info, value), ref=is_ref, sort=None if missing(value) else float(value))
        if not is_ref and self.known(metric):
            d = display.worsening(info, ref_value, value)
            if d is not None:
                c.delta_text = fmt_delta(info, d)
                c.delta_css = delta_class(info, d, ref_value)
        if len(per_seed) >= 2:
            sd = statistics.stdev(float(x) for x in per_seed)
            c.spread = "\u00b1" + display.format_number(info, sd)
            c.note = f"mean over {len(per_seed)} calibration seeds, \u00b1 sample standard deviation"
        if key is not None:
            c.checks = self.marks(key)
            if any(m.failing for m in c.checks):
                c.delta_css = "n0"  # the check decides the colour of a failing cell, not the delta
        return c

    # -- per model -------------------------------------------------------------------------
    def model_view(self, suite: str, model: str, units: list[UnitMetrics], anchor: str) -> ModelView:
        ref = next((u for u in units if u.is_reference), None)
        ordered = ([ref] if ref else []) + [u for u in units if u is not ref]
        mine = [v for v in self.verdicts if v.suite == suite and v.model == model]
        counts = count_outcomes(mine)
        view = ModelView(
            suite=suite,
            model=model,
            anchor=anchor,
            units=[u.quantizer for u in ordered],
            counts=counts,
            n_failing=sum(1 for v in mine if is_failing(v)),
            n_unverified=sum(1 for v in mine if is_unverified(v)),
        )
        columns = [Column(u.quantizer, ref=u is ref, title=self.unit_title(u)) for u in ordered]
        scores = self.scores(suite, ordered)

        methods = self.methods_block(suite, model, ordered, ref, scores)
        if methods:
            view.blocks.append(methods)
        view.blocks.append(self.id_block(suite, model, ordered, ref, columns))
        view.blocks += self.ood_blocks(suite, model, ordered, ref, columns, scores)
        view.blocks += self.set_blocks(suite, model, ordered, ref, columns)
        spectral = self.spectral_block(suite, model, ordered, ref, columns)
        if spectral:
            view.blocks.append(spectral)
        from .runtime_view import runtime_blocks

        view.blocks += runtime_blocks(self, suite, model, ordered)
        view.blocks = [b for b in view.blocks if b.tables]
        view.info = [(u.quantizer, "; ".join(f"{k} = {fmt_info(v)}" for k, v in u.info.items())) for u in ordered if u.info]

        from .figspecs import model_figures, rollout_figures

        view.figures = model_figures(self, suite, model, ordered, ref, scores, mine)
        view.diagnostics = rollout_figures(self, suite, model, ordered)
        return view

    def unit_title(self, u: UnitMetrics) -> str:
        if u.is_reference:
            return "the unquantized reference model"
        parts = [p for p in (u.method, u.bits_label) if p]
        if u.posthoc:
            parts.append("+" + "+".join(u.posthoc))
        if u.seeds:
            parts.append(f"seeds {', '.join(map(str, u.seeds))}")
        if u.calibration_samples:
            parts.append(f"{u.calibration_samples} calibration images")
        return " · ".join(parts)

    def scores(self, suite: str, units: Sequence[UnitMetrics]) -> list[str]:
        found = _union(u.ood for u in sorted(units, key=lambda u: u.is_reference))
        order = [s for s in self.r.scores.get(suite, []) if s in found]
        return order + [s for s in found if s not in order]

    def id_block(self, suite: str, model: str, units: list[UnitMetrics], ref: UnitMetrics | None, columns: list[Column]) -> Block:
        metrics = _ordered(ID_ORDER, _union(u.id for u in units))
        rows = []
        for metric in metrics:
            base = ref.id.get(metric) if ref else None
            cells = [
                self.cell(metric, u.id.get(metric), base, is_ref=u is ref, key=(suite, model, u.quantizer, metric, None, ID_KEY),
                          per_seed=u.per_seed.get(metric, ()))
                for u in units
            ]
            rows.append(Row(self.header(metric), cells, sub=self.arrow(metric)))
        table = fit(Table(self.new_id("t"), "In-distribution (ID test split)", columns, rows, rowhead="Metric", css="id-metrics"))
        legend = self.delta_legend(ref, metrics)
        return Block(self.new_id("b"), "In-distribution", [table] if rows else [], legend)

    def delta_legend(self, ref: UnitMetrics | None, metrics: Iterable[str]) -> str:
        if ref is None:
            return "No FP32 unit in this run: no deltas."
        units = []
        for m in metrics:
            if self.known(m):
                info = self.info(m)
                units.append(f"{info.label}: {display.delta_unit(info) or 'absolute'}")
        return (
            f"Small numbers: change against {ref.quantizer}, signed so that + is worse ({'; '.join(dict.fromkeys(units))}); "
            "colour depth grows with the size of the change. A cell bounded by a check shows the check's outcome and the quantity it bounded."
        )

    def ood_blocks(self, suite: str, model: str, units: list[UnitMetrics], ref: UnitMetrics | None,
                   columns: list[Column], scores: list[str]) -> list[Block]:
        if not scores:
            return []
        sets = _union(u.ood.get(s, {}) for s in scores for u in sorted(units, key=lambda u: u.is_reference))
        metrics = _ordered(OOD_ORDER, _union([[m for u in units for s in scores for per in u.ood.get(s, {}).values() for m in per]]))
        main = [m for m in metrics if m in OOD_ORDER] or metrics
        extra = [m for m in metrics if m not in main]
        blocks = []
        tables, extra_tables = [], []
        for score in scores:
            for metric in metrics:
                rows = []
                for d in sets:
                    base = ref.ood.get(score, {}).get(d, {}).get(metric) if ref else None
                    cells = [self.cell(metric, u.ood.get(score, {}).get(d, {}).get(metric), base, is_ref=u is ref,
                                       key=(suite, model, u.quantizer, metric, score, d)) for u in units]
                    rows.append(Row(d, cells))
                if len(sets) > 1:
                    base = ref.mean_ood(score).get(metric) if ref else None
                    cells = [self.cell(metric, u.mean_ood(score).get(metric), base, is_ref=u is ref,
                                       key=(suite, model, u.quantizer, metric, score, MEAN_OOD)) for u in units]
                    rows.append(Row("mean", cells, kind="mean", title="mean over the OOD sets"))
                caption = f"{self.header(metric)} {self.arrow(metric)} · {display.score_label(score)}"
                t = fit(Table(self.new_id("t"), caption, columns, rows, rowhead="OOD set", css="ood-metrics"))
                (tables if metric in main else extra_tables).append(t)
        many = len(scores) >= 3
        legend = "Values in %. Rows: OOD sets against the ID test split; “mean” averages over the sets. " + self.delta_legend(ref, metrics)
        blocks.append(Block(self.new_id("b"), "OOD detection by quantizer (one table per score and metric)", tables, legend, open=not many, grid=True))
        if extra_tables:
            blocks.append(Block(self.new_id("b"), "Other OOD metrics", extra_tables, legend, open=False, grid=True))
        if len(scores) >= 2:
            blocks.append(self.side_by_side(suite, model, units, ref, scores, sets, open_=many))
        return blocks

    def side_by_side(self, suite: str, model: str, units: list[UnitMetrics], ref: UnitMetrics | None,
                     scores: list[str], sets: list[str], open_: bool) -> Block:
        """The CLIP paper's appendix layout: a row per quantizer under each OOD set, the scores
        side by side (suite order), each with its metrics."""
        metrics = [m for m in SIDE_BY_SIDE if any(m in per for u in units for s in scores for per in u.ood.get(s, {}).values())]
        columns = []
        for s in scores:
            for i, m in enumerate(metrics):
                columns.append(Column(f"{self.info(m).label} {self.arrow(m)}", group_start=i == 0))
        groups = [(display.score_label(s), len(metrics)) for s in scores]
        rows = []
        row_sets = sets + ([MEAN_OOD] if len(sets) > 1 else [])
        for d in row_sets:
            label = "mean over the OOD sets" if d == MEAN_OOD else d
            rows.append(Row(label, [], kind="group"))

            def val(u: UnitMetrics, s: str, m: str, d: str = d) -> Any:
                return u.mean_ood(s).get(m) if d == MEAN_OOD else u.ood.get(s, {}).get(d, {}).get(m)

            for u in units:
                cells = []
                for s in scores:
                    for m in metrics:
                        base = val(ref, s, m) if ref else None
                        cells.append(self.cell(m, val(u, s, m), base, is_ref=u is ref, key=(suite, model, u.quantizer, m, s, d)))
                rows.append(Row(u.quantizer, cells, kind="mean" if d == MEAN_OOD else "data"))
        table = Table(self.new_id("t"), "Scores side by side", columns, rows, rowhead="OOD set / quantizer", groups=groups, css="side-by-side")
        legend = "Values in %. Scores in the suite's order; " + self.delta_legend(ref, metrics)
        return Block(self.new_id("b"), "OOD detection, scores side by side (per OOD set)", [table], legend, open=open_)

    def set_blocks(self, suite: str, model: str, units: list[UnitMetrics], ref: UnitMetrics | None, columns: list[Column]) -> list[Block]:
        out = []
        for attr, title, rowhead, first in (("shifted", "Covariate shift", "Shifted set", ID_ORDER), ("pairs", "Spurious correlations", "Pair", ())):
            per_u = {u.quantizer: getattr(u, attr) for u in units}
            sets = _union(per_u[u.quantizer] for u in sorted(units, key=lambda u: u.is_reference))
            if not sets:
                continue
            metrics = _ordered(first, _union([[m for q in per_u for per in per_u[q].values() for m in per]]))
            tables = []
            for metric in metrics:
                rows = []
                for d in sets:
                    base = per_u[ref.quantizer].get(d, {}).get(metric) if ref else None
                    cells = [self.cell(metric, per_u[u.quantizer].get(d, {}).get(metric), base, is_ref=u is ref,
                                       key=(suite, model, u.quantizer, metric, None, d)) for u in units]
                    rows.append(Row(d, cells))
                tables.append(fit(Table(self.new_id("t"), f"{self.header(metric)} {self.arrow(metric)}", columns, rows, rowhead=rowhead, css=f"{attr}-metrics")))
            legend = ("Rows: labelled sets in the ID label space. " if attr == "shifted" else
                      "Vulnerability = top-1(common) \u2212 top-1(counter); lower is better. ") + self.delta_legend(ref, metrics)
            out.append(Block(self.new_id("b"), title, tables, legend, grid=True))
        return out

    def spectral_block(self, suite: str, model: str, units: list[UnitMetrics], ref: UnitMetrics | None, columns: list[Column]) -> Block | None:
        metrics = _union(u.spectral for u in units)
        if not metrics:
            return None
        rows = []
        for metric in metrics:
            cells = [self.cell(metric, u.spectral.get(metric), None, is_ref=True if u is ref else False,
                               key=(suite, model, u.quantizer, metric, None, ID_KEY)) for u in units]
            for c in cells:
                c.delta_text = ""  # a distance from FP32 already: no delta
            rows.append(Row(self.header(metric), cells, sub=self.arrow(metric)))
        table = fit(Table(self.new_id("t"), "Feature spectrum (relative spectral error against FP32)", columns, rows, rowhead="Metric", css="spectral-metrics"))
        legend = ("Relative spectral error of the last block's patch-token feature map on the ID test split: the mean over "
                  "frequencies (and over the high-frequency band) of |S_q \u2212 S_FP32| / (|S_FP32| + 1e\u22128), S the mean |FFT2| "
                  "over images and channels. 0 = the FP32 spectrum; lower is better; four significant digits.")
        return Block(self.new_id("b"), "Feature spectrum", [table], legend)

    def methods_block(self, suite: str, model: str, units: list[UnitMetrics], ref: UnitMetrics | None, scores: list[str]) -> Block | None:
        """Methods x bit configurations (the CLIP paper's appendix tables), for a model whose
        quantized units use more than one method: rows = (method, post-hoc steps), column groups =
        bit configurations, each with top-1, NLL, ECE and the mean AUROC of the first score."""
        quantized = [u for u in units if u.method and u.bits_label]
        if len({u.method for u in quantized}) < 2:
            return None
        bits = _union([u.bits_label] for u in quantized)
        score = scores[0] if scores else None
        metrics = [m for m in METHOD_METRICS if any(m in u.id for u in units)]
        auroc = "auroc" if score and any("auroc" in u.mean_ood(score) for u in units) else None
        fitted = any(u.posthoc and u.info for u in units)
        per_group = len(metrics) + (1 if auroc else 0) + (1 if fitted else 0)
        columns: list[Column] = []
        for b in bits:
            for i, m in enumerate(metrics):
                columns.append(Column(f"{self.info(m).label} {self.arrow(m)}", group_start=i == 0))
            if auroc:
                columns.append(Column(f"AUROC {self.arrow('auroc')}", title=f"mean AUROC over the OOD sets, {display.score_label(score)} score", group_start=not metrics))
            if fitted:
                columns.append(Column("fitted", title="parameters fitted by post-hoc steps on the held-out ID split"))
        groups = [(b, per_group) for b in bits]

        def group_cells(u: UnitMetrics | None, is_ref: bool) -> list[Cell]:
            if u is None:
                return [Cell(empty=True) for _ in range(per_group)]
            cells = [self.cell(m, u.id.get(m), ref.id.get(m) if ref else None, is_ref=is_ref,
                               key=(suite, model, u.quantizer, m, None, ID_KEY), per_seed=u.per_seed.get(m, ())) for m in metrics]
            if auroc:
                base = ref.mean_ood(score).get("auroc") if ref else None
                cells.append(self.cell("auroc", u.mean_ood(score).get("auroc"), base, is_ref=is_ref, key=(suite, model, u.quantizer, "auroc", score, MEAN_OOD)))
            if fitted:
                cells.append(Cell(text=fmt_info(u.info) if (u.posthoc and u.info) else ""))
            return cells

        rows: list[Row] = []
        if ref is not None:
            rows.append(Row(ref.quantizer, group_cells(ref, True) * len(bits), title="same values under every bit configuration"))
            for u in units:
                if not u.method and u.posthoc:  # FP32 + post-hoc steps
                    rows.append(Row(ref.quantizer, group_cells(u, False) * len(bits), sub="+" + "+".join(u.posthoc)))
        method_rows: list[Row] = []
        for method in _union([u.method] for u in quantized):
            variants = _union([tuple(u.posthoc)] for u in quantized if u.method == method)
            for posthoc in sorted(variants, key=len):
                mine = [u for u in quantized if u.method == method and tuple(u.posthoc) == posthoc]
                # Two units of one (method, bits, post-hoc) -- different options -- get rows of their own.
                while mine:
                    taken: dict[str, UnitMetrics] = {}
                    rest = []
                    for u in mine:
                        if u.bits_label in taken:
                            rest.append(u)
                        else:
                            taken[u.bits_label] = u
                    cells = []
                    for b in bits:
                        cells += group_cells(taken.get(b), False)
                    row = Row(method, cells, sub="+" + "+".join(posthoc) if posthoc else "", title=", ".join(u.quantizer for u in taken.values()))
                    method_rows.append(row)
                    mine = rest
        _mark_best(method_rows, metrics + (["auroc"] if auroc else []), bits, per_group, self)
        rows += method_rows
        table = Table(self.new_id("t"), "Methods \u00d7 bit configurations", columns, rows, rowhead="Method", groups=groups, css="methods-table")
        legend = (f"Rows: quantization methods (post-hoc steps below their method); column groups: bit configurations. "
                  f"Top-1 and ECE in %, NLL in nats" + (f"; AUROC: {display.score_label(score)} score, mean over the OOD sets" if auroc else "") +
                  ". Bold: best quantized value of its column. " + self.delta_legend(ref, metrics))
        return Block(self.new_id("b"), "Methods \u00d7 bit configurations", [table], legend)

    # -- verdict rows ------------------------------------------------------------------------
    def verdict_row(self, v: Verdict) -> VerdictRow:
        info = self.info(v.metric)
        unit = self.unit_index.get((v.suite, v.model, v.quantizer))
        on_ref = unit.is_reference if unit is not None else False
        fp32 = MISSING if on_ref or v.fp32 is None else (v.fp32_display or fmt_value(info, v.fp32, unit=True))
        value = v.value_display or fmt_value(info, v.value, unit=True)
        shown = v.delta_display or v.value_display or ("" if v.value is None else fmt_value(info, v.value, unit=True))
        where = " / ".join(p for p in (v.suite, v.model, v.quantizer, v.dataset) if p)
        if v.score:
            where += f" [{display.score_label(v.score)}]"
        return VerdictRow(
            outcome=v.outcome,
            where=where,
            anchor=self.anchors.get((v.suite, v.model), ""),
            nodeid=v.nodeid,
            check=v.check,
            fp32=fp32,
            value=value,
            shown=shown or MISSING,
            ci=v.ci_display or MISSING,
            bound=v.bound_display or v.bound or MISSING,
            message=v.message,
            reason=v.reason,
            css=f"row-{v.outcome.replace(' ', '-')}",
            sort_margin=v.margin,
        )


def _mark_best(rows: Sequence[Row], metrics: Sequence[str], bits: Sequence[str], per_group: int, b: _Builder) -> None:
    """Bold the best quantized value of every column (as displayed; ties all bold)."""
    for g in range(len(bits)):
        for i, metric in enumerate(metrics):
            col = g * per_group + i
            cells = [r.cells[col] for r in rows if not r.cells[col].empty and r.cells[col].sort is not None]
            shown = {id(c): float(c.text.replace("\u2212", "-")) for c in cells if c.text != MISSING}
            if len(set(shown.values())) < 2:
                continue
            best = (max if b.info(metric).higher_is_better else min)(shown.values())
            for c in cells:
                c.best = shown.get(id(c)) == best


def _union(dicts: Iterable[Iterable[Any]]) -> list[Any]:
    out: list[Any] = []
    seen = set()
    for d in dicts:
        for k in d:
            if k not in seen:
                seen.add(k)
                out.append(k)
    return out


def _ordered(first: Sequence[str], found: Sequence[str]) -> list[str]:
    return [m for m in first if m in found] + [m for m in found if m not in first]


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


def build_page(results: RunResults, *, title: str = "pytest-qrel reliability audit") -> Page:
    """The whole page's view objects (figures as specifications; the renderer draws them)."""
    b = _Builder(results)
    grouped: dict[str, dict[str, list[UnitMetrics]]] = {}
    for u in b.units:
        grouped.setdefault(u.suite, {}).setdefault(u.model, []).append(u)
    for v in b.verdicts:  # a suite or model with verdicts but no unit record still gets a section
        grouped.setdefault(v.suite, {}).setdefault(v.model, [])
    n = 0
    for suite, models in grouped.items():
        for model in models:
            n += 1
            b.anchors[(suite, model)] = f"model-{n}"

    suites: list[SuiteView] = []
    toc: list[tuple[str, str, int]] = []
    for i, (suite, models) in enumerate(grouped.items(), start=1):
        sv = SuiteView(suite, f"suite-{i}", [], planned=results.planned.get(suite), n_verdicts=sum(1 for v in b.verdicts if v.suite == suite))
        for model, units in models.items():
            sv.models.append(b.model_view(suite, model, units, b.anchors[(suite, model)]))
        from .figspecs import suite_figures

        sv.figures = suite_figures(b, suite, models)
        suites.append(sv)

    vs = b.verdicts
    planned_total = sum(results.planned.values()) if results.planned else None
    status = overall_status(vs, planned_total)
    counts = count_outcomes(vs)
    text, unverified = headline(status, vs, planned_total)
    rank = {o: i for i, o in enumerate(FAILING)}
    failing = sorted((v for v in vs if is_failing(v)), key=lambda v: rank.get(v.outcome, len(rank)))
    run = dict(results.run)
    page = Page(
        title=title,
        status=status,
        headline=text,
        unverified_line=unverified,
        counts=counts,
        total=len(vs),
        planned=planned_total,
        missing_checks=max(0, (planned_total or 0) - len(vs)),
        suites=suites,
        failing=[b.verdict_row(v) for v in failing],
        expected=[b.verdict_row(v) for v in vs if v.outcome == "xfailed"],
        unverified=[b.verdict_row(v) for v in vs if is_unverified(v)],
        verdicts=[b.verdict_row(v) for v in vs],
        run=run,
        run_summary=_run_summary(run),
        n_units=len(b.units),
        toc=[],
    )
    toc.append(("verdict", "Verdict", 0))
    if page.failing:
        toc.append(("failing", f"Failing checks ({len(page.failing)})", 0))
    if page.unverified or page.missing_checks:
        toc.append(("not-verified", "Not verified", 0))
    if page.expected:
        toc.append(("expected", f"Expected failures ({len(page.expected)})", 0))
    toc.append(("all-checks", f"All checks ({len(vs)})", 0))
    for sv in suites:
        toc.append((sv.anchor, f"Suite {sv.name}", 0))
        for mv in sv.models:
            label = mv.model + (f" ({mv.n_failing} failing)" if mv.n_failing else "")
            toc.append((mv.anchor, label, 1))
    toc.append(("run-info", "Run info", 0))
    page.toc = toc
    return page


def _run_summary(run: Mapping[str, Any]) -> list[tuple[str, str]]:
    from .format import fmt_duration

    out = []
    if run.get("timestamp"):
        out.append(("started", str(run["timestamp"])))
    if run.get("duration_s") is not None:
        out.append(("duration", fmt_duration(run["duration_s"])))
    for key in ("host", "device"):
        if run.get(key):
            out.append((key, str(run[key])))
    versions = run.get("versions") or {}
    if versions.get("pytest-qrel"):
        out.append(("pytest-qrel", str(versions["pytest-qrel"])))
    return out
