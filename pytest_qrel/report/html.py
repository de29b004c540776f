"""The HTML report: one self-contained file (inline CSS, no scripts, no external assets).

The work is split in three steps that later code can reuse one by one:

* :func:`build_context` turns verdicts and unit metrics into plain view objects (grouped per
  suite and model, quantizers ordered, deltas signed so that positive means *worse*);
* :func:`render_html` renders a template of ``templates/`` with that context;
* :func:`render_report` writes the result atomically (temp file in the same folder, ``os.replace``).

A model whose quantizer names show more than one method (``W4A4``, ``W4A4-repq``, ``W4A4-qat-lsq``)
also gets a methods x bit configs table (top-1, NLL, ECE, mean AUROC; fitted temperatures beside
``+temperature`` rows), as the appendix tables of the CLIP quantization paper.

A model whose units carry spectral metrics (``UnitMetrics.spectral``) gets a "Feature spectrum"
table (rows = spectral metrics, columns = quantizers) and an RSE heatmap per quantizer
(:mod:`pytest_qrel.report.spectral`).

A model with covariate-shifted labelled sets (``UnitMetrics.shifted``) gets a "Covariate shift"
table per ID metric, and one with pairs (``UnitMetrics.pairs``) a "Spurious correlations" table per
pair metric (``vulnerability``): rows are the sets or pairs, columns the quantizers (as OOD tables).

Every string that comes from a user (suite, model, quantizer, dataset names, check texts,
messages, meta values) is autoescaped by Jinja2. Only objects already wrapped in
:class:`markupsafe.Markup` (SVG plots, extra sections produced by trusted code) are inserted as is.

Values are stored as fractions in the library; the ``pct`` / ``num`` / ``signed`` filters turn them
into display strings. A missing value renders as an em dash.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..results import UnitMetrics, Verdict

__all__ = [
    "FAILING_OUTCOMES",
    "OUTCOMES",
    "build_context",
    "environment",
    "overall_status",
    "render_html",
    "render_report",
]

TEMPLATES_DIR = Path(__file__).with_name("templates")

#: Every outcome, in the order the report counts them.
OUTCOMES: tuple[str, ...] = ("passed", "failed", "xfailed", "xpassed", "skipped", "error", "not run", "inconclusive")
#: Outcomes that do not fail the gate. Anything else (failed, error, xpassed = a strict xfail
#: that unexpectedly passed, or an outcome this module does not know) fails it.
NON_FAILING_OUTCOMES = frozenset({"passed", "xfailed", "skipped"})
FAILING_OUTCOMES: tuple[str, ...] = ("failed", "error", "xpassed", "not run", "inconclusive")

MISSING = "\u2014"  # em dash
MINUS = "\u2212"  # typographic minus

#: In-distribution metrics shown first, in this order; any other ``UnitMetrics.id`` key follows.
ID_METRICS: tuple[str, ...] = ("top1", "nll", "ece")
#: OOD metrics with a table of their own, in this order; others go into a collapsed block.
OOD_METRICS: tuple[str, ...] = ("auroc", "aupr_out", "fpr_at_95_tpr")
#: Quantizer names that denote the full-precision reference (compared case-insensitively).
FP32_NAMES = frozenset({"fp32", "float32"})


@dataclass(frozen=True)
class MetricStyle:
    """How a metric is displayed: its label, whether it is a fraction shown as a percentage,
    and its direction (``None``: unknown, so no delta is shown)."""

    label: str
    percent: bool
    higher_is_better: bool | None


# Display labels only; direction and unit come from the metric registry, so they cannot drift.
METRIC_LABELS: dict[str, str] = {
    "top1": "Top-1 accuracy",
    "nll": "NLL",
    "ece": "ECE",
    "auroc": "AUROC",
    "aupr_out": "AUPR-out",
    "aupr_in": "AUPR-in",
    "fpr_at_95_tpr": "FPR@95",
    "vulnerability": "Vulnerability",
    "spectral_error": "Spectral error (RSE)",
    "spectral_error_high": "Spectral error, high band",
}
#: Display formats of metrics whose values are too small for the default 3 decimals.
METRIC_FORMATS: dict[str, str] = {"spectral_error": ".4g", "spectral_error_high": ".4g"}

SCORE_LABELS: dict[str, str] = {
    "msp": "MSP",
    "energy": "Energy",
    "maxlogit": "MaxLogit",
    "mcm": "MCM",
    "neglabel": "NegLabel",
    "genneg": "GenNeg",
}


def metric_style(metric: str | None) -> MetricStyle:
    if metric is None:
        return MetricStyle("", False, None)
    from ..metrics import METRICS

    if metric not in METRICS:
        return MetricStyle(metric, False, None)
    meta = METRICS.meta(metric)
    return MetricStyle(METRIC_LABELS.get(metric, metric), bool(meta["fraction"]), bool(meta["higher_is_better"]))


def metric_label(metric: str | None, unit: bool = True) -> str:
    """``"Top-1 accuracy (%)"``, ``"NLL"``; unknown metrics keep their name."""
    style = metric_style(metric)
    return f"{style.label} (%)" if unit and style.percent else style.label


def score_label(score: str | None) -> str:
    if not score:
        return ""
    return SCORE_LABELS.get(score, score)


def signed_delta(metric: str, fp32: float | None, value: float | None) -> float | None:
    """Delta of ``value`` against ``fp32`` signed so that positive means worse; ``None`` when
    either is missing or the metric's direction is unknown."""
    from ..evaluate import signed_delta as _signed

    hib = metric_style(metric).higher_is_better
    if hib is None or _missing(fp32) or _missing(value):
        return None
    return _signed(fp32, value, higher_is_better=hib)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------- filters


def _missing(x: Any) -> bool:
    if x is None:
        return True
    try:
        return math.isnan(float(x))
    except (TypeError, ValueError):
        return True


def pct(x: Any, digits: int = 2, symbol: bool = True) -> str:
    """A fraction as a percentage: ``0.82700 -> "82.70%"``; missing -> em dash."""
    if _missing(x):
        return MISSING
    text = f"{float(x) * 100:.{digits}f}"
    return f"{text}%" if symbol else text


def num(x: Any, digits: int = 3) -> str:
    """A plain number with fixed decimals: ``0.7331 -> "0.733"``; missing -> em dash."""
    if _missing(x):
        return MISSING
    return f"{float(x):.{digits}f}"


def signed(x: Any, digits: int = 2, unit: str = "") -> str:
    """A number with an explicit sign (typographic minus): ``"+0.11pp"``, ``"\u22120.05"``;
    a value that rounds to zero reads ``"\u00b10.00"``."""
    if _missing(x):
        return MISSING
    value = float(x)
    text = f"{abs(value):.{digits}f}"
    if float(text) == 0.0:
        sign = "\u00b1"
    else:
        sign = "+" if value > 0 else MINUS
    return f"{sign}{text}{unit}"


def fmt_metric(x: Any, metric: str | None, symbol: bool = True) -> str:
    """A metric value for display: percentages (2 decimals) for fractions, 3 decimals else."""
    if metric_style(metric).percent:
        return pct(x, 2, symbol)
    if metric in METRIC_FORMATS and not _missing(x):
        return format(float(x), METRIC_FORMATS[metric])
    return num(x, 3)


def fmt_delta(x: Any, metric: str | None, unit: bool = True) -> str:
    """A delta (metric unit, positive = worse): percentage points (``"pp"``) for fractions."""
    if metric_style(metric).percent:
        return signed(None if _missing(x) else float(x) * 100, 2, "pp" if unit else "")
    return signed(x, 3)


def metric_direction(metric: str | None) -> bool | None:
    """True: higher is better; False: lower is better; None: unknown."""
    return metric_style(metric).higher_is_better


def delta_class(x: Any, metric: str | None = None) -> str:
    """CSS class of a delta: ``worse`` / ``better`` / ``same`` (by its displayed rounding)."""
    if _missing(x):
        return "same"
    scale, digits = (100.0, 2) if metric_style(metric).percent else (1.0, 3)
    rounded = round(float(x) * scale, digits)
    if rounded > 0:
        return "worse"
    if rounded < 0:
        return "better"
    return "same"


def fmt_info(x: Any) -> str:
    """A methods/info value: floats with 4 significant digits, containers flattened."""
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, float):
        return MISSING if math.isnan(x) else f"{x:.4g}"
    if isinstance(x, Mapping):
        return ", ".join(f"{k}={fmt_info(v)}" for k, v in x.items())
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt_info(v) for v in x)
    return str(x)


def dash(x: Any) -> Any:
    """The value itself, or an em dash when it is ``None`` or an empty string."""
    return MISSING if x is None or x == "" else x


FILTERS = {
    "pct": pct,
    "num": num,
    "signed": signed,
    "fmt_metric": fmt_metric,
    "fmt_delta": fmt_delta,
    "delta_class": delta_class,
    "fmt_info": fmt_info,
    "metric_label": metric_label,
    "score_label": score_label,
    "dash": dash,
}


@lru_cache(maxsize=None)
def environment(templates_dir: str | None = None) -> Environment:
    """The Jinja2 environment of the report (autoescaping everything, strict undefined)."""
    env = Environment(
        loader=FileSystemLoader(templates_dir or str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(FILTERS)
    env.filters.update(short_label=short_label, fmt_temperature=fmt_temperature)
    env.globals["metric_direction"] = metric_direction
    return env


# ----------------------------------------------------------------------------------- view model


@dataclass
class Cell:
    """One value of a table, its signed delta vs FP32 (positive = worse) and the failing checks
    that point at it."""

    value: float | None
    delta: float | None = None
    failing: list[str] = field(default_factory=list)
    note: str = ""  # e.g. "mean over 4 of 5 datasets"
    best: bool = False  # best quantized value of its column (methods table)


@dataclass
class Row:
    label: str
    metric: str
    cells: list[Cell]
    is_mean: bool = False


@dataclass
class OODTable:
    score: str
    metric: str
    rows: list[Row]


@dataclass
class SetTable:
    """One metric over labelled sets: rows = shifted sets or pairs, columns = quantizers."""

    metric: str
    rows: list[Row]


@dataclass
class ModelSection:
    suite: str
    model: str
    anchor: str
    quantizers: list[str]
    fp32: str | None
    id_rows: list[Row]
    ood_scores: list[str]
    ood_tables: list[OODTable]  # the OOD_METRICS, per score
    ood_extra_tables: list[OODTable]  # any other OOD metric (aupr_in, ...)
    info: list[tuple[str, dict[str, Any]]]  # (quantizer, info) for units with info
    counts: dict[str, int]
    n_failing: int
    plots: list[Any] = field(default_factory=list)
    methods_table: "MethodsTable | None" = None  # only with more than one quantization method
    shift_tables: list[SetTable] = field(default_factory=list)  # per ID metric, on the shifted sets
    pair_tables: list[SetTable] = field(default_factory=list)  # per pair metric (vulnerability)
    spectral_rows: list[Row] = field(default_factory=list)  # per spectral metric, cells per quantizer
    spectral_maps: list[Any] = field(default_factory=list)  # report.spectral.SpectralMap per quantizer


@dataclass
class SuiteSection:
    name: str
    models: list[ModelSection]


def is_fp32(quantizer: str) -> bool:
    return quantizer.strip().lower() in FP32_NAMES


def is_failing(outcome: str) -> bool:
    return outcome not in NON_FAILING_OUTCOMES


def overall_status(verdicts: Iterable[Verdict]) -> str:
    """``"FAIL"`` if any verdict failed, errored or unexpectedly passed; ``"INCOMPLETE"`` if some
    check was skipped (not verified); else ``"PASS"``."""
    vs = list(verdicts)
    if any(is_failing(v.outcome) for v in vs):
        return "FAIL"
    return "INCOMPLETE" if any(v.outcome == "skipped" for v in vs) else "PASS"


def count_outcomes(verdicts: Iterable[Verdict]) -> dict[str, int]:
    """Counts per outcome, every known outcome present (zero or more), unknown ones appended."""
    counts = dict.fromkeys(OUTCOMES, 0)
    for v in verdicts:
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
    return counts


def verdict_location(v: Verdict) -> str:
    """``suite / model / quantizer / dataset [score]`` (used when a verdict has no nodeid)."""
    parts = [p for p in (v.suite, v.model, v.quantizer, v.dataset) if p]
    where = " / ".join(parts)
    return f"{where} [{v.score}]" if v.score else where


def _as_verdict(v: Verdict | Mapping[str, Any]) -> Verdict:
    return v if isinstance(v, Verdict) else Verdict.from_dict(dict(v))


def _as_unit(u: UnitMetrics | Mapping[str, Any]) -> UnitMetrics:
    return u if isinstance(u, UnitMetrics) else UnitMetrics.from_dict(dict(u))


def order_quantizers(units: Iterable[UnitMetrics]) -> list[str]:
    """Quantizer names in order of first appearance, FP32 first when present."""
    seen: list[str] = []
    for u in units:
        if u.quantizer not in seen:
            seen.append(u.quantizer)
    return [q for q in seen if is_fp32(q)] + [q for q in seen if not is_fp32(q)]


def _ordered_union(lists: Iterable[Iterable[str]]) -> list[str]:
    out: list[str] = []
    for items in lists:
        for item in items:
            if item not in out:
                out.append(item)
    return out


def _mean(values: Sequence[float | None]) -> tuple[float | None, int]:
    present = [float(v) for v in values if not _missing(v)]
    return (sum(present) / len(present) if present else None), len(present)


def _failing_index(
    verdicts: Sequence[Verdict], side_sets: Iterable[tuple[str, str]] = ()
) -> dict[tuple, list[str]]:
    """Failing check texts keyed by the table cell they point at.

    ID cells: ``(suite, model, quantizer, metric, None, None)``; OOD cells:
    ``(suite, model, quantizer, metric, score, dataset)``; cells of the ``side_sets``
    (``(suite, shifted set or pair)``): ``(suite, model, quantizer, metric, None, dataset)``.
    """
    side = set(side_sets)
    index: dict[tuple, list[str]] = {}
    for v in verdicts:
        if not is_failing(v.outcome):
            continue
        text = f"{v.outcome}: {v.check}" if v.check else v.outcome
        if v.score or (v.suite, v.dataset) in side:
            key = (v.suite, v.model, v.quantizer, v.metric, v.score or None, v.dataset)
        else:
            key = (v.suite, v.model, v.quantizer, v.metric, None, None)
        index.setdefault(key, []).append(text)
    return index


# ------------------------------------------------------------------------ methods x bit configs

#: Metrics of the methods table, in column order; ``auroc`` is the mean over the OOD sets of the
#: first score.
METHOD_METRICS: tuple[str, ...] = ("top1", "nll", "ece", "auroc")
_BITS = re.compile(r"(?:^|[-_])([Ww]\d+[Aa]\d+)(?=$|[-_])")
#: Row label of quantizers whose name is only a bit config (``W8A8``) when no method is known.
BASE_METHOD = "base"
#: Column labels of the methods table (units are in its legend).
SHORT_LABELS: dict[str, str] = {"top1": "Top-1"}


def short_label(metric: str) -> str:
    return SHORT_LABELS.get(metric, metric_label(metric, unit=False))


def fmt_temperature(x: Any) -> str:
    """A fitted temperature: 3 decimals (one per seed, comma-separated, for a list)."""
    if isinstance(x, (list, tuple)):
        return ", ".join(fmt_temperature(v) for v in x)
    if isinstance(x, (int, float)) and not isinstance(x, bool):
        return num(x, 3)
    return fmt_info(x)


@dataclass
class MethodGroup:
    """The cells of one row under one bit config (one quantizer)."""

    quantizer: str
    cells: list[Cell]  # one per METHOD_METRICS entry
    temperature: Any = None  # fitted T (``UnitMetrics.info["temperature"]``), when present


@dataclass
class MethodRow:
    label: str  # "repq", "qat-lsq", "FP32"; post-hoc steps in ``posthoc``
    posthoc: str  # "" or "+temperature" (every step, with its "+")
    groups: list[MethodGroup | None]  # one per bit config, None where the suite has no such quantizer
    is_fp32: bool = False
    method: str = ""  # the registered method (``methods=``), when it differs from ``label``

    @property
    def quantizers(self) -> list[str]:
        return [g.quantizer for g in self.groups if g is not None]


@dataclass
class MethodsTable:
    """Methods x bit configs, as the appendix tables of the CLIP quantization paper: rows are
    quantization methods (post-hoc variants right below their base), column groups are the bit
    configs parsed from the quantizer names, each with top-1, NLL, ECE and mean AUROC."""

    bits: list[str]
    metrics: list[str]
    score: str | None  # the score of the AUROC column
    n_ood: int  # OOD sets the AUROC mean runs over
    rows: list[MethodRow]
    has_temperature: bool


def split_quantizer_name(name: str) -> tuple[str, str, str]:
    """``"W4A4-qat-lsq+temperature"`` -> ``("W4A4", "qat-lsq", "+temperature")``.

    The bit config is the first ``W<w>A<a>`` token of the name (separated by ``-`` or ``_``);
    the method is what is left of the name before any post-hoc step (``""`` for a bare ``W8A8``).
    A name without a bit config is its own method, under the bit config ``""``.
    """
    base, plus, steps = name.partition("+")
    posthoc = plus + steps
    match = _BITS.search(base)
    if match is None:
        return "", base, posthoc
    method = (base[: match.start(1)] + "-" + base[match.end(1):]).strip("-_")
    method = re.sub(r"[-_]{2,}", "-", method)
    return match.group(1).upper(), method, posthoc


def _methods_table(
    suite: str,
    model: str,
    by_q: Mapping[str, UnitMetrics],
    quantizers: Sequence[str],
    fp32: str | None,
    failing: Mapping[tuple, list[str]],
    methods: Mapping[Any, str],
) -> MethodsTable | None:
    """The methods table of one model, or None when its quantizer names show fewer than two
    methods (``W8A8``, ``W4A4``: one; ``W4A4``, ``W4A4-repq``: two)."""
    parsed = {q: split_quantizer_name(q) for q in quantizers if not is_fp32(q.partition("+")[0])}
    if len({method for _, method, _ in parsed.values()}) < 2:
        return None

    def known_method(q: str) -> str:
        base = q.partition("+")[0]
        return str(methods.get((suite, base), methods.get(base, "")))

    bits = _ordered_union([[b for b, _, _ in parsed.values()]])
    # The suite's first score: quantized units list scores in suite order (a stored FP32 baseline
    # may have them sorted by name), so they come first.
    scores = _ordered_union([by_q[q].ood for q in parsed] + [u.ood for u in by_q.values()])
    score = scores[0] if scores else None
    ood_sets = _ordered_union(by_q[q].ood.get(score, {}) for q in quantizers) if score else []

    def values(q: str) -> list[tuple[float | None, str]]:
        unit = by_q[q]
        out: list[tuple[float | None, str]] = [(unit.id.get(m), "") for m in METHOD_METRICS if m != "auroc"]
        per_set = unit.ood.get(score, {}) if score else {}
        mean, n = _mean([per_set.get(d, {}).get("auroc") for d in ood_sets])
        note = "" if n == len(ood_sets) or mean is None else f"mean over {n} of {len(ood_sets)} OOD sets"
        out.append((mean, note))
        return out

    base_values = values(fp32) if fp32 else [(None, "")] * len(METHOD_METRICS)

    def group(q: str, reference: bool = False) -> MethodGroup:
        cells = []
        for metric, (value, note), (base, base_note) in zip(METHOD_METRICS, values(q), base_values):
            delta = None
            if not reference and not note and not base_note:
                delta = signed_delta(metric, base, value)
            if metric == "auroc":
                keys = [(suite, model, q, metric, score, d) for d in ("mean(ood)", "mean")]
            else:
                keys = [(suite, model, q, metric, None, None)]
            cells.append(Cell(value, delta, [t for k in keys for t in failing.get(k, [])], note))
        return MethodGroup(q, cells, by_q[q].info.get("temperature"))

    rows: list[MethodRow] = []
    if fp32:
        rows.append(MethodRow(fp32, "", [group(fp32, reference=True)] * len(bits), is_fp32=True))
        for q in quantizers:  # FP32+temperature etc.: one value, repeated under every bit config
            if q != fp32 and is_fp32(q.partition("+")[0]):
                _, plus, steps = q.partition("+")
                rows.append(MethodRow(fp32, plus + steps, [group(q)] * len(bits), is_fp32=True))

    # Methods in order of first appearance, each followed by its post-hoc variants. Two quantizers
    # that read the same (method, bits) -- "W8A8-x" and "x-W8A8" -- get rows of their own.
    order = _ordered_union([[m for _, m, _ in parsed.values()]])
    method_rows: list[MethodRow] = []
    for method in order:
        variants = _ordered_union([[p for _, m, p in parsed.values() if m == method]])
        for posthoc in sorted(variants, key=lambda p: p != ""):
            mine: list[MethodRow] = []
            for q, (b, m, p) in parsed.items():
                if (m, p) != (method, posthoc):
                    continue
                row = next((r for r in mine if r.groups[bits.index(b)] is None), None)
                if row is None:
                    label = method or known_method(q) or BASE_METHOD
                    row = MethodRow(label, posthoc, [None] * len(bits))
                    known = known_method(q)
                    row.method = known if known and known != label else ""
                    mine.append(row)
                row.groups[bits.index(b)] = group(q)
            method_rows += mine
    rows += method_rows
    _mark_best(method_rows, len(bits))
    has_t = any(g is not None and g.temperature is not None for r in rows for g in r.groups)
    return MethodsTable(bits, list(METHOD_METRICS), score, len(ood_sets), rows, has_t)


def _mark_best(rows: Sequence[MethodRow], n_bits: int) -> None:
    """Flag the best value (as displayed; ties all flagged) of every column among quantized rows."""
    for b in range(n_bits):
        for i, metric in enumerate(METHOD_METRICS):
            cells = [r.groups[b].cells[i] for r in rows if r.groups[b] is not None]
            shown = {id(c): fmt_metric(c.value, metric, False) for c in cells if not _missing(c.value)}
            if len(shown) < 2:
                continue
            pick = max if metric_direction(metric) else min
            best = pick(float(v) for v in shown.values())
            for c in cells:
                c.best = id(c) in shown and float(shown[id(c)]) == best


def _model_section(
    suite: str,
    model: str,
    anchor: str,
    units: list[UnitMetrics],
    global_order: list[str],
    verdicts: list[Verdict],
    failing: dict[tuple, list[str]],
    methods: Mapping[Any, str] | None = None,
) -> ModelSection:
    by_q: dict[str, UnitMetrics] = {}
    for u in units:  # one unit per quantizer; a later duplicate wins
        by_q[u.quantizer] = u
    quantizers = [q for q in global_order if q in by_q]
    fp32 = next((q for q in quantizers if is_fp32(q)), None)

    # In-distribution rows: top1, nll, ece, then any other metric found.
    id_metrics = list(ID_METRICS) + [
        m for m in _ordered_union(u.id for u in units) if m not in ID_METRICS
    ]
    id_rows = []
    for metric in id_metrics:
        base = by_q[fp32].id.get(metric) if fp32 else None
        cells = []
        for q in quantizers:
            value = by_q[q].id.get(metric)
            delta = None if q == fp32 else signed_delta(metric, base, value)
            cells.append(Cell(value, delta, failing.get((suite, model, q, metric, None, None), [])))
        id_rows.append(Row(metric_label(metric), metric, cells))

    tables = partial(_set_rows, suite, model, quantizers, fp32, failing)

    # OOD tables: one per (score, metric), rows = datasets (+ mean), columns = quantizers.
    scores = _ordered_union(u.ood for u in units)
    ood_tables: list[OODTable] = []
    ood_extra: list[OODTable] = []
    for score in scores:
        per_score = {q: by_q[q].ood.get(score, {}) for q in quantizers}
        for metric, rows in tables(per_score, OOD_METRICS, score, mean=True).items():
            (ood_tables if metric in OOD_METRICS else ood_extra).append(
                OODTable(score, metric, rows)
            )
    # Covariate shift and pairs: one table per metric, rows = sets / pairs, columns = quantizers.
    shifted = tables({q: by_q[q].shifted for q in quantizers}, ID_METRICS)
    pairs = tables({q: by_q[q].pairs for q in quantizers}, ("vulnerability",))

    from .spectral import spectral_maps, spectral_rows

    spectral = [
        Row(metric_label(metric), metric, [Cell(value, None, fails) for value, fails in cells])
        for metric, cells in spectral_rows(suite, model, by_q, quantizers, failing)
    ]

    mine = [v for v in verdicts if v.suite == suite and v.model == model]
    counts = count_outcomes(mine)
    return ModelSection(
        suite=suite,
        model=model,
        anchor=anchor,
        quantizers=quantizers,
        fp32=fp32,
        id_rows=id_rows,
        ood_scores=scores,
        ood_tables=ood_tables,
        ood_extra_tables=ood_extra,
        info=[(q, dict(by_q[q].info)) for q in quantizers if by_q[q].info],
        counts=counts,
        n_failing=sum(1 for v in mine if is_failing(v.outcome)),
        methods_table=_methods_table(suite, model, by_q, quantizers, fp32, failing, methods or {}),
        shift_tables=[SetTable(metric, rows) for metric, rows in shifted.items()],
        pair_tables=[SetTable(metric, rows) for metric, rows in pairs.items()],
        spectral_rows=spectral,
        spectral_maps=spectral_maps(by_q, quantizers) if spectral else [],
    )


def _set_rows(
    suite: str,
    model: str,
    quantizers: Sequence[str],
    fp32: str | None,
    failing: Mapping[tuple, list[str]],
    per_q: Mapping[str, Mapping[str, Mapping[str, float]]],
    first: Sequence[str],
    score: str | None = None,
    mean: bool = False,
) -> dict[str, list[Row]]:
    """The rows of one table per metric found in ``per_q`` (``{quantizer: {set: {metric: v}}}``),
    ``first`` metrics first: a row per set (+ a ``mean`` row over several sets with ``mean``), a
    cell per quantizer with its signed delta vs FP32. Cells are keyed for failing checks by
    ``(suite, model, quantizer, metric, score, set)``."""
    # Sets in suite order: quantized units list them so, a stored FP32 baseline may sort them.
    suite_order = sorted(quantizers, key=lambda q: q == fp32)
    datasets = _ordered_union(per_q[q] for q in suite_order)
    found = _ordered_union(m for q in suite_order for m in per_q[q].values())
    metrics = [m for m in first if m in found] + [m for m in found if m not in first]
    out: dict[str, list[Row]] = {}
    for metric in metrics:

        def value_of(q: str, ds: str, metric: str = metric) -> float | None:
            return per_q[q].get(ds, {}).get(metric)

        rows = []
        for ds in datasets:
            base = value_of(fp32, ds) if fp32 else None
            cells = [
                Cell(
                    value_of(q, ds),
                    None if q == fp32 else signed_delta(metric, base, value_of(q, ds)),
                    failing.get((suite, model, q, metric, score, ds), []),
                )
                for q in quantizers
            ]
            rows.append(Row(ds, metric, cells))
        if mean and len(datasets) > 1:
            means = {q: _mean([value_of(q, ds) for ds in datasets]) for q in quantizers}
            base_mean, base_n = means[fp32] if fp32 else (None, 0)
            cells = []
            for q in quantizers:
                value, n = means[q]
                complete = n == len(datasets)
                note = "" if complete or value is None else (
                    f"mean over {n} of {len(datasets)} datasets"
                )
                delta = None
                if q != fp32 and complete and base_n == len(datasets):
                    delta = signed_delta(metric, base_mean, value)
                key = (suite, model, q, metric, score, "mean")
                cells.append(Cell(value, delta, failing.get(key, []), note))
            rows.append(Row("mean", metric, cells, is_mean=True))
        out[metric] = rows
    return out


def build_context(
    verdicts: Sequence[Verdict | Mapping[str, Any]],
    units: Sequence[UnitMetrics | Mapping[str, Any]],
    *,
    title: str = "pytest-qrel reliability audit",
    meta: Mapping[str, Any] | None = None,
    extra_sections: Sequence[Mapping[str, Any]] | None = None,
    plots: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None = None,
    methods: Mapping[Any, str] | None = None,
) -> dict[str, Any]:
    """Everything the templates read, as plain objects.

    ``extra_sections``: ``[{"id": "...", "title": "...", "html": Markup(...)}]`` appended after the
    per-model results. ``plots``: ``{(suite, model): [{"title": "...", "svg": Markup(...)}]}`` shown
    in each model section (the ``plots`` block). Plain strings there are escaped, not inserted.
    ``methods``: quantizer name -> quantization method (``{"W8A8": "minmax"}``, or keyed by
    ``(suite, quantizer)``), used as row labels of the methods table; without it the method is
    read from the name (``W4A4-repq`` -> ``repq``, a bare ``W4A4`` -> ``base``). That table
    (methods x bit configs) is shown for a model whose quantizers use more than one method.
    """
    vs = [_as_verdict(v) for v in verdicts]
    us = [_as_unit(u) for u in units]
    failing_index = _failing_index(vs, {(u.suite, d) for u in us for d in (*u.shifted, *u.pairs)})
    global_order = order_quantizers(us)

    grouped: dict[str, dict[str, list[UnitMetrics]]] = {}
    for u in us:
        grouped.setdefault(u.suite, {}).setdefault(u.model, []).append(u)

    suites: list[SuiteSection] = []
    n = 0
    for suite, models in grouped.items():
        sections = []
        for model, model_units in models.items():
            n += 1
            section = _model_section(
                suite, model, f"model-{n}", model_units, global_order, vs, failing_index, methods
            )
            section.plots = list((plots or {}).get((suite, model), []))
            sections.append(section)
        suites.append(SuiteSection(suite, sections))

    failing = [v for v in vs if is_failing(v.outcome)]
    # failed first, then error, then xpassed, then anything unknown; stable inside a group
    rank = {o: i for i, o in enumerate(FAILING_OUTCOMES)}
    failing.sort(key=lambda v: rank.get(v.outcome, len(rank)))
    return {
        "title": title,
        "status": overall_status(vs),
        "counts": count_outcomes(vs),
        "total": len(vs),
        "verdicts": vs,
        "failing": failing,
        "suites": suites,
        "n_units": len(us),
        "meta": dict(meta or {}),
        "extra_sections": list(extra_sections or []),
        "anchors": {(s.suite, s.model): s.anchor for suite in suites for s in suite.models},
        "failing_outcomes": FAILING_OUTCOMES,
        "location": verdict_location,
        "missing": MISSING,
    }


def render_html(
    verdicts: Sequence[Verdict | Mapping[str, Any]],
    units: Sequence[UnitMetrics | Mapping[str, Any]],
    *,
    title: str = "pytest-qrel reliability audit",
    meta: Mapping[str, Any] | None = None,
    extra_sections: Sequence[Mapping[str, Any]] | None = None,
    plots: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None = None,
    methods: Mapping[Any, str] | None = None,
    template: str = "report.html.j2",
) -> str:
    """The report as an HTML string (see :func:`build_context` for the arguments)."""
    context = build_context(
        verdicts, units, title=title, meta=meta, extra_sections=extra_sections, plots=plots,
        methods=methods,
    )
    return environment().get_template(template).render(context)


def render_report(
    verdicts: Sequence[Verdict | Mapping[str, Any]],
    units: Sequence[UnitMetrics | Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    title: str = "pytest-qrel reliability audit",
    meta: Mapping[str, Any] | None = None,
    extra_sections: Sequence[Mapping[str, Any]] | None = None,
    plots: Mapping[tuple[str, str], Sequence[Mapping[str, Any]]] | None = None,
    methods: Mapping[Any, str] | None = None,
) -> Path:
    """Write the self-contained HTML report to ``path`` and return it.

    Parent folders are created. The file is written to a temporary file in the same folder,
    fsynced and moved into place with :func:`os.replace`, so a reader never sees half a report
    and a failure leaves no temporary file behind.

    ``meta`` holds run information shown in the footer (suites and their paths, conventions,
    package versions, created timestamp, command line); nested dicts and lists are fine.
    """
    text = render_html(
        verdicts, units, title=title, meta=meta, extra_sections=extra_sections, plots=plots,
        methods=methods,
    )
    from ..io import atomic_write_text

    return atomic_write_text(Path(path), text)


