"""The report's view model: a :class:`~pytest_qrel.summary.RunSummary` -> the objects of :mod:`.objects`.

Every number comes computed from :func:`pytest_qrel.summary.summarize` (values, deltas against the
FP32 column, spreads over seeds, best-of-column marks, margin shares) and the run's status from the
one policy (:mod:`pytest_qrel.policy`); this module decides the layout and writes the numbers with
:mod:`.format`. It does no metric arithmetic, reads which unit is the FP32 reference, its method and
bit configuration from the record fields (never the quantizer's name), the order of scores from
``RunResults.scores`` and how each metric reads from ``RunResults.metrics``.

Outcomes and the banner (:func:`pytest_qrel.policy.run_verdict`)
    ``FAIL``: a check failed, errored, or a strict expected failure passed (``xpassed``).
    ``INCOMPLETE``: nothing failed, but some planned checks were not verified (skipped,
    inconclusive, ``not run``, or planned and missing: ``RunResults.planned``).
    ``NOT VERIFIED``: no check failed, and none was verified (each skipped or undecided).
    ``PASS``: every planned check produced a verdict and each passed or failed as expected.
    ``NO CHECKS``: nothing was planned or run.

Figure specifications (:class:`FigureSpec`) carry plain data only; :mod:`.figures` draws them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from .. import display
from ..policy import is_failing, is_unverified, sort_failing
from ..results import MetricInfo, RunResults, UnitMetrics, Verdict
from ..spec.schema import MEAN_OOD
from ..summary import ID, ModelSummary, RunSummary, info_of, summarize, union
from .format import MISSING, delta_class, fmt_delta, fmt_info, fmt_value
from .objects import Block, Cell, CheckMark, Column, ModelView, Page, Row, SuiteView, Table, VerdictRow, fit

__all__ = ["Page", "build_page"]

#: Display order of metrics; metrics not listed follow in the order the records give them.
ID_ORDER: tuple[str, ...] = ("top1", "nll", "ece")
OOD_ORDER: tuple[str, ...] = ("auroc", "aupr_out", "fpr_at_95_tpr")
#: OOD metrics in the "scores side by side" table (the CLIP paper's appendix layout).
SIDE_BY_SIDE: tuple[str, ...] = ("auroc", "fpr_at_95_tpr", "aupr_out")
ID_KEY = "\x00id"  # verdict key of in-distribution metrics on the ID test set


class _Builder:
    """Builds the tables, blocks and verdict rows of a page from a :class:`RunSummary`."""

    def __init__(self, summary: RunSummary) -> None:
        self.summary = summary
        self.r = summary.results
        self.metrics = dict(self.r.metrics)
        self.verdicts = list(self.r.verdicts)
        self.units = list(self.r.units)
        self.unit_index = {(u.suite, u.model, u.quantizer): u for u in self.units}
        self._ids = 0
        self.anchors: dict[tuple[str, str], str] = {}
        # verdicts keyed by the cell they bound
        side = {(u.suite, d) for u in self.units for d in (*u.shifted, *u.pairs)}
        self.by_cell: dict[tuple[Any, ...], list[Verdict]] = {}
        for v in self.verdicts:
            ds = v.dataset if (v.score or (v.suite, v.dataset) in side) else ID_KEY
            self.by_cell.setdefault((v.suite, v.model, v.quantizer, v.metric, v.score or None, ds), []).append(v)

    # -- helpers ---------------------------------------------------------------------------
    def new_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids}"

    def info(self, metric: str) -> MetricInfo:
        return info_of(self.metrics, metric)

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

    def scores(self, suite: str, model: str) -> list[str]:
        return self.summary.model(suite, model).scores

    def mark(self, v: Verdict) -> CheckMark:
        info = self.info(v.metric)
        shown = v.delta_display or v.value_display or (fmt_value(info, v.value, unit=True) if v.value is not None else "")
        return CheckMark(outcome=v.outcome, check=v.check or v.bound, shown=shown, bound=v.bound_display or v.bound,
                         ci=v.ci_display, nodeid=v.nodeid, failing=is_failing(v))

    def cell(self, ms: ModelSummary, u: UnitMetrics, kind: str, metric: str, score: str | None = None, dataset: str = ID,
             *, is_ref: bool | None = None, best: bool = False) -> Cell:
        """The cell of ``u``'s ``metric`` (a :class:`~pytest_qrel.summary.Number`, formatted) with
        the checks that bound it; ``best``: bold it when it is the best of its bit configuration."""
        info = self.info(metric)
        n = ms.number(u.quantizer, kind, metric, score, dataset)
        c = Cell(text=fmt_value(info, n.value), ref=u is ms.reference if is_ref is None else is_ref, sort=n.value)
        if n.delta is not None:
            c.delta_text = fmt_delta(info, n.delta)
            c.delta_css = delta_class(info, n)
        if n.spread is not None:
            c.spread = "\u00b1" + display.format_number(info, n.spread)
            c.note = f"mean over {n.seeds} calibration seeds, \u00b1 sample standard deviation"
        c.best = best and ms.is_best(u.quantizer, kind, metric, score, dataset)
        check_key = (ms.suite, ms.model, u.quantizer, metric, score, ID_KEY if kind in ("id", "spectral") else dataset)
        c.checks = [self.mark(v) for v in self.by_cell.get(check_key, [])]
        if any(m.failing for m in c.checks):
            c.delta_css = "n0"  # the check decides the colour of a failing cell, not the delta
        return c

    def delta_legend(self, ref: UnitMetrics | None, metrics: Iterable[str]) -> str:
        if ref is None:
            return "No FP32 unit in this run: no deltas."
        units = [f"{self.info(m).label}: {display.delta_unit(self.info(m)) or 'absolute'}" for m in metrics if self.known(m)]
        return (
            f"Small numbers: change against {ref.quantizer}, signed so that + is worse ({'; '.join(dict.fromkeys(units))}); "
            "colour depth grows with the size of the change. A cell bounded by a check shows the check's outcome and the quantity it bounded."
        )

    # -- per model -------------------------------------------------------------------------
    def model_view(self, ms: ModelSummary, anchor: str) -> ModelView:
        from .figspecs import model_figures, rollout_figures
        from .methods_view import methods_block
        from .runtime_view import runtime_blocks

        units = ms.units
        view = ModelView(suite=ms.suite, model=ms.model, anchor=anchor, units=[u.quantizer for u in units],
                         counts=ms.verdict.counts, n_failing=ms.verdict.n_blocking, n_unverified=ms.verdict.n_unverified)
        columns = [Column(u.quantizer, ref=u is ms.reference, title=self.unit_title(u)) for u in units]
        blocks = [methods_block(self, ms), self.id_block(ms, columns), *self.ood_blocks(ms, columns),
                  *self.set_blocks(ms, columns), self.spectral_block(ms, columns), *runtime_blocks(self, ms)]
        view.blocks = [b for b in blocks if b is not None and b.tables]
        view.info = [(u.quantizer, "; ".join(f"{k} = {fmt_info(v)}" for k, v in u.info.items())) for u in units if u.info]
        view.figures = model_figures(self, ms)
        view.diagnostics = rollout_figures(self, ms)
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

    def id_block(self, ms: ModelSummary, columns: list[Column]) -> Block:
        metrics = _ordered(ID_ORDER, union(u.id for u in ms.units))
        rows = [Row(self.header(m), [self.cell(ms, u, "id", m) for u in ms.units], sub=self.arrow(m)) for m in metrics]
        table = fit(Table(self.new_id("t"), "In-distribution (ID test split)", columns, rows, rowhead="Metric", css="id-metrics"))
        return Block(self.new_id("b"), "In-distribution", [table] if rows else [], self.delta_legend(ms.reference, metrics))

    def ood_blocks(self, ms: ModelSummary, columns: list[Column]) -> list[Block]:
        scores, units = ms.scores, ms.units
        if not scores:
            return []
        sets = union(u.ood.get(s, {}) for s in scores for u in sorted(units, key=lambda u: u.is_reference))
        metrics = _ordered(OOD_ORDER, union([[m for u in units for s in scores for per in u.ood.get(s, {}).values() for m in per]]))
        main = [m for m in metrics if m in OOD_ORDER] or metrics
        mean_label, mean_title = self.mean_row(ms.suite, sets)
        tables: list[Table] = []
        extra_tables: list[Table] = []
        for score in scores:
            for metric in metrics:
                rows = [Row(d, [self.cell(ms, u, "ood", metric, score, d) for u in units]) for d in sets]
                if len(sets) > 1:
                    rows.append(Row(mean_label, [self.cell(ms, u, "ood", metric, score, MEAN_OOD) for u in units], kind="mean",
                                    title=mean_title))
                caption = f"{self.header(metric)} {self.arrow(metric)} · {display.score_label(score)}"
                t = fit(Table(self.new_id("t"), caption, columns, rows, rowhead="OOD set", css="ood-metrics"))
                (tables if metric in main else extra_tables).append(t)
        many = len(scores) >= 3
        legend = (f"Values in %. Rows: OOD sets against the ID test split; “{mean_label}” averages over {mean_title[len('mean over '):]}. "
                  + self.delta_legend(ms.reference, metrics))
        blocks = [Block(self.new_id("b"), "OOD detection by quantizer (one table per score and metric)", tables, legend, open=not many, grid=True)]
        if extra_tables:
            blocks.append(Block(self.new_id("b"), "Other OOD metrics", extra_tables, legend, open=False, grid=True))
        if len(scores) >= 2:
            blocks.append(self.side_by_side(ms, sets, open_=many))
        return blocks

    def mean_row(self, suite: str, sets: Sequence[str]) -> tuple[str, str]:
        """The label and title of the "mean" row: the suite's mean sets (``report: {ood_mean}``),
        named when they are not all the sets shown."""
        chosen = (self.r.run.get("ood_mean") or {}).get(suite)
        if not chosen or set(chosen) >= set(sets):
            return "mean", "mean over the OOD sets"
        return f"mean of {len(chosen)}", f"mean over {', '.join(chosen)}"

    def side_by_side(self, ms: ModelSummary, sets: list[str], open_: bool) -> Block:
        """The CLIP paper's appendix layout: a row per quantizer under each OOD set, the scores
        side by side (suite order), each with its metrics."""
        scores, units = ms.scores, ms.units
        metrics = [m for m in SIDE_BY_SIDE if any(m in per for u in units for s in scores for per in u.ood.get(s, {}).values())]
        columns = [Column(f"{self.info(m).label} {self.arrow(m)}", group_start=i == 0) for s in scores for i, m in enumerate(metrics)]
        groups = [(display.score_label(s), len(metrics)) for s in scores]
        rows = []
        for d in sets + ([MEAN_OOD] if len(sets) > 1 else []):
            rows.append(Row(self.mean_row(ms.suite, sets)[1] if d == MEAN_OOD else d, [], kind="group"))
            for u in units:
                cells = [self.cell(ms, u, "ood", m, s, d) for s in scores for m in metrics]
                rows.append(Row(u.quantizer, cells, kind="mean" if d == MEAN_OOD else "data"))
        table = Table(self.new_id("t"), "Scores side by side", columns, rows, rowhead="OOD set / quantizer", groups=groups, css="side-by-side")
        legend = "Values in %. Scores in the suite's order; " + self.delta_legend(ms.reference, metrics)
        return Block(self.new_id("b"), "OOD detection, scores side by side (per OOD set)", [table], legend, open=open_)

    def set_blocks(self, ms: ModelSummary, columns: list[Column]) -> list[Block]:
        out = []
        units = ms.units
        for attr, title, rowhead, first in (("shifted", "Covariate shift", "Shifted set", ID_ORDER), ("pairs", "Spurious correlations", "Pair", ())):
            sets = union(getattr(u, attr) for u in sorted(units, key=lambda u: u.is_reference))
            if not sets:
                continue
            metrics = _ordered(first, union([[m for u in units for per in getattr(u, attr).values() for m in per]]))
            tables = []
            for metric in metrics:
                rows = [Row(d, [self.cell(ms, u, attr, metric, None, d) for u in units]) for d in sets]
                tables.append(fit(Table(self.new_id("t"), f"{self.header(metric)} {self.arrow(metric)}", columns, rows, rowhead=rowhead,
                                        css=f"{attr}-metrics")))
            legend = ("Rows: labelled sets in the ID label space. " if attr == "shifted" else
                      "Vulnerability = top-1(common) \u2212 top-1(counter); lower is better. ") + self.delta_legend(ms.reference, metrics)
            out.append(Block(self.new_id("b"), title, tables, legend, grid=True))
        return out

    def spectral_block(self, ms: ModelSummary, columns: list[Column]) -> Block | None:
        metrics = union(u.spectral for u in ms.units)
        if not metrics:
            return None
        # A distance from FP32 already: no delta (the summary records none for spectral numbers).
        rows = [Row(self.header(m), [self.cell(ms, u, "spectral", m) for u in ms.units], sub=self.arrow(m)) for m in metrics]
        table = fit(Table(self.new_id("t"), "Feature spectrum (relative spectral error against FP32)", columns, rows, rowhead="Metric", css="spectral-metrics"))
        legend = ("Relative spectral error of the last block's patch-token feature map on the ID test split: the mean over "
                  "frequencies (and over the high-frequency band) of |S_q \u2212 S_FP32| / (|S_FP32| + 1e\u22128), S the mean |FFT2| "
                  "over images and channels. 0 = the FP32 spectrum; lower is better; four significant digits.")
        return Block(self.new_id("b"), "Feature spectrum", [table], legend)

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
            outcome=v.outcome, where=where, anchor=self.anchors.get((v.suite, v.model), ""), nodeid=v.nodeid, check=v.check,
            fp32=fp32, value=value, shown=shown or MISSING, ci=v.ci_display or MISSING, bound=v.bound_display or v.bound or MISSING,
            message=v.message, reason=v.reason, css=f"row-{v.outcome.replace(' ', '-')}", sort_margin=v.margin,
            rerun=rerun_command(v.nodeid), row_id=verdict_anchor(v),
        )


def rerun_command(nodeid: str) -> str:
    """``pytest --qrel-suite <suite> '<node id>'``: the id shell-quoted (ids hold spaces, parentheses,
    ``<=``), pasteable as one argument in POSIX shells; empty without an id. ``--qrel-suite`` makes
    pytest read the suite wherever it lives (without it, only files matching ``qrel_suite_glob``,
    ``suites/*.yaml`` by default, are collected), as the terminal's ``re-run one:`` line does."""
    import shlex

    suite = nodeid.split("::", 1)[0]
    return f"pytest --qrel-suite {shlex.quote(suite)} {shlex.quote(nodeid)}" if nodeid else ""


def verdict_anchor(v: Verdict) -> str:
    """The HTML id of ``v``'s row in the report's failing / not-verified / expected tables, stable
    across renders of the same results (the Markdown summary links to it): ``v-`` and 12 hex
    digits of a hash of the node id (or of where the check ran, when it has none)."""
    import hashlib

    key = v.nodeid or "\0".join((v.suite, v.model, v.quantizer, v.dataset, v.score or "", v.check))
    return "v-" + hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


def _ordered(first: Sequence[str], found: Sequence[str]) -> list[str]:
    return [m for m in first if m in found] + [m for m in found if m not in first]


def build_page(results: RunResults, *, title: str = "pytest-qrel reliability audit") -> Page:
    """The whole page's view objects (figures as specifications; the renderer draws them)."""
    from .figspecs import suite_figures
    from .paper_view import suite_blocks

    summary = summarize(results)
    b = _Builder(summary)
    for n, ms in enumerate(summary.models, start=1):
        b.anchors[(ms.suite, ms.model)] = f"model-{n}"
    suites: list[SuiteView] = []
    for i, (suite, standing) in enumerate(summary.suites.items(), start=1):
        mine = [ms for ms in summary.models if ms.suite == suite]
        sv = SuiteView(suite, f"suite-{i}", [b.model_view(ms, b.anchors[(ms.suite, ms.model)]) for ms in mine],
                       planned=results.planned.get(suite), n_verdicts=standing.total, missing=standing.missing)
        sv.figures = suite_figures(b, suite, mine, mean_sets=(results.run.get("ood_mean") or {}).get(suite))
        from .scenario_view import scenario_blocks

        sv.blocks = [*suite_blocks(b, suite, mine, results.run), *scenario_blocks(b, [sm for sm in summary.scenario_means if sm.suite == suite])]
        suites.append(sv)
    vs, verdict = b.verdicts, summary.verdict
    run = dict(results.run)
    page = Page(
        title=title, status=verdict.status, headline=verdict.headline, unverified_line=verdict.unverified_line,
        counts=verdict.counts, total=verdict.total, planned=verdict.planned, missing_checks=verdict.missing, suites=suites,
        failing=[b.verdict_row(v) for v in sort_failing(vs)],
        expected=[b.verdict_row(v) for v in vs if v.outcome == "xfailed"],
        unverified=[b.verdict_row(v) for v in vs if is_unverified(v)],
        verdicts=[b.verdict_row(v) for v in vs],
        run=run, run_summary=_run_summary(run), n_units=len(b.units), toc=[],
        tally=verdict.tally, report_only=verdict.n_report_only,
    )
    page.toc = _toc(page)
    return page


def _toc(page: Page) -> list[tuple[str, str, int]]:
    """The table of contents: (anchor, label, depth)."""
    toc = [("verdict", "Verdict", 0)]
    if page.failing:
        toc.append(("failing", f"Failing checks ({len(page.failing)})", 0))
    if page.unverified or page.missing_checks:
        toc.append(("not-verified", "Not verified", 0))
    if page.expected:
        toc.append(("expected", f"Expected failures ({len(page.expected)})", 0))
    toc.append(("all-checks", f"All checks ({page.total}{f' + {page.report_only} report-only' if page.report_only else ''})", 0))
    for sv in page.suites:
        toc.append((sv.anchor, f"Suite {sv.name}", 0))
        toc += [(mv.anchor, mv.model + (f" ({mv.n_failing} failing)" if mv.n_failing else ""), 1) for mv in sv.models]
    toc.append(("run-info", "Run info", 0))
    return toc


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
