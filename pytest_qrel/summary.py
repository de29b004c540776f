"""Every number the report shows, computed from a :class:`~pytest_qrel.results.RunResults` before
anything is rendered. :mod:`pytest_qrel.report` only formats what this module hands it.

:func:`summarize` builds a :class:`RunSummary`: the run's verdict under the one policy
(:func:`pytest_qrel.policy.run_verdict`) and, per (suite, model), a :class:`ModelSummary` holding

- its units, the FP32 reference first (:attr:`UnitMetrics.is_reference`), and its scores in the
  suite's order;
- a :class:`Number` for every metric of every unit: the value, its **delta** against the reference
  unit signed so that positive means worse (:func:`pytest_qrel.deltas.signed_delta`, the checks'
  rule) in the metric's unit, that delta relative to the reference in percent, and for multi-seed
  quantizers the sample standard deviation over calibration seeds;
- the **best** quantized value of each bit configuration (methods tables: ties as displayed all
  count as best);
- each check's **margin share**: its margin to the bound as a share of the bound, clipped to
  [-1, 1] (checks against another quantizer or a zero bound are scaled by the largest margin of
  their column); and the colour scale of the spectral error maps.

Cell keys are ``(quantizer, kind, metric, score, dataset)``: ``kind`` is ``"id"`` (dataset ``""``,
the ID test split), ``"ood"`` (a score and an OOD set, or :data:`~pytest_qrel.spec.schema.MEAN_OOD`),
``"shifted"`` / ``"pairs"`` (a labelled set) or ``"spectral"`` (no delta: already a distance from FP32).
A metric missing from :attr:`RunResults.metrics` has no delta (its direction is unknown).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .deltas import signed_delta
from .display import format_number
from .policy import RunVerdict, run_verdict
from .results import MetricInfo, RunResults, UnitMetrics, Verdict
from .spec.schema import MEAN_OOD

__all__ = ["ID", "METHOD_METRICS", "CellKey", "ModelSummary", "Number", "RunSummary", "ScenarioMeans", "info_of", "scenario_means", "summarize"]

ID = ""
"""The dataset of a cell on the ID test split."""
#: ID metrics of the methods tables (with the mean AUROC of the first score).
METHOD_METRICS: tuple[str, ...] = ("top1", "nll", "ece")

CellKey = tuple[str, str, str, "str | None", str]


@dataclass(frozen=True)
class Number:
    """One number of a table, with everything the report shows beside it already computed.

    ``value`` in the metric's unit (``None``: missing); ``delta`` against the reference unit,
    positive = worse, in the metric's unit (``None`` on the reference itself, without a
    reference value or for a metric of unknown direction); ``delta_percent`` that delta as a
    percentage of ``|reference|`` (``None`` when the reference is 0); ``spread`` the sample
    standard deviation over ``seeds`` calibration seeds (``None`` for fewer than two)."""

    value: float | None = None
    delta: float | None = None
    delta_percent: float | None = None
    spread: float | None = None
    seeds: int = 0


MISSING_NUMBER = Number()


def _float(x: Any) -> float | None:
    """``x`` as a float, ``None`` when missing (``None``, NaN or not a number)."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def info_of(metrics: Mapping[str, MetricInfo], metric: str) -> MetricInfo:
    """How ``metric`` reads; a metric the results do not describe reads as a plain number."""
    known = metrics.get(metric)
    if known is not None:
        return known
    return MetricInfo(name=metric, label=metric, higher_is_better=True, fraction=False, unit="")


def number(info: MetricInfo | None, value: Any, reference: Any = None, per_seed: Sequence[float] = ()) -> Number:
    """The :class:`Number` of ``value`` against ``reference`` (``info=None``: no delta)."""
    v, ref = _float(value), _float(reference)
    delta = percent = None
    if info is not None and v is not None and ref is not None:
        delta = signed_delta(ref, v, higher_is_better=info.higher_is_better)
        percent = None if ref == 0 else 100.0 * delta / abs(ref)
    spread = statistics.stdev(float(x) for x in per_seed) if len(per_seed) >= 2 else None
    return Number(value=v, delta=delta, delta_percent=percent, spread=spread, seeds=len(per_seed))


def union(groups: Iterable[Iterable[Any]]) -> list[Any]:
    """The distinct items of ``groups`` in first-seen order."""
    return list(dict.fromkeys(k for g in groups for k in g))


@dataclass
class ModelSummary:
    """Everything computed for one (suite, model): see the module docstring."""

    suite: str
    model: str
    units: list[UnitMetrics]
    reference: UnitMetrics | None
    scores: list[str]
    verdicts: list[Verdict]
    verdict: RunVerdict
    numbers: dict[CellKey, Number] = field(default_factory=dict)
    best: set[CellKey] = field(default_factory=set)
    margin_shares: list[float | None] = field(default_factory=list)
    spectral_vmax: float | None = None
    census_percent: dict[str, dict[str, float]] = field(default_factory=dict)

    def number(self, quantizer: str, kind: str, metric: str, score: str | None = None, dataset: str = ID) -> Number:
        """The :class:`Number` of a cell (an empty one when the unit has no such value)."""
        return self.numbers.get((quantizer, kind, metric, score, dataset), MISSING_NUMBER)

    def is_best(self, quantizer: str, kind: str, metric: str, score: str | None = None, dataset: str = ID) -> bool:
        return (quantizer, kind, metric, score, dataset) in self.best


@dataclass
class RunSummary:
    """The run's verdict and a :class:`ModelSummary` per (suite, model), in the order the records
    give them (suites first seen, then models; a model with verdicts but no unit record too)."""

    results: RunResults
    verdict: RunVerdict
    models: list[ModelSummary]
    suites: dict[str, RunVerdict]  # per suite, against its planned checks
    scenario_means: list["ScenarioMeans"] = field(default_factory=list)
    """Per (suite, model) of a suite with scenarios: averages across its scenarios (:func:`scenario_means`)."""

    def model(self, suite: str, model: str) -> ModelSummary:
        return next(m for m in self.models if (m.suite, m.model) == (suite, model))

    def info(self, metric: str) -> MetricInfo:
        return info_of(self.results.metrics, metric)


# ------------------------------------------------------------------------------------ building


class _Numbers:
    """Fills :attr:`ModelSummary.numbers` of one model."""

    def __init__(self, metrics: Mapping[str, MetricInfo], ref: UnitMetrics | None) -> None:
        self.metrics, self.ref = metrics, ref
        self.out: dict[CellKey, Number] = {}

    def put(self, u: UnitMetrics, key: tuple[str, str, str | None, str], values: Mapping[str, Any],
            ref_values: Mapping[str, Any], per_seed: Mapping[str, Sequence[float]] | None = None) -> None:
        kind, _, score, dataset = key
        for metric, value in values.items():
            delta_info = self.metrics.get(metric) if (u is not self.ref and kind != "spectral") else None
            seeds = (per_seed or {}).get(metric, ())
            self.out[(u.quantizer, kind, metric, score, dataset)] = number(delta_info, value, ref_values.get(metric), seeds)

    def unit(self, u: UnitMetrics) -> None:
        ref = self.ref
        self.put(u, ("id", "", None, ID), u.id, ref.id if ref else {}, u.per_seed)
        self.put(u, ("spectral", "", None, ID), u.spectral, {})
        for score in union([u.ood, u.ood_mean]):
            for dataset, values in u.ood.get(score, {}).items():
                base = ref.ood.get(score, {}).get(dataset, {}) if ref else {}
                self.put(u, ("ood", "", score, dataset), values, base)
            self.put(u, ("ood", "", score, MEAN_OOD), u.mean_ood(score), ref.mean_ood(score) if ref else {})
        for kind in ("shifted", "pairs"):
            for dataset, values in getattr(u, kind).items():
                base = getattr(ref, kind).get(dataset, {}) if ref else {}
                self.put(u, (kind, "", None, dataset), values, base)


def _best(summary: ModelSummary, metrics: Mapping[str, MetricInfo]) -> set[CellKey]:
    """Cells holding the best quantized value of their bit configuration, as displayed (several
    on a tie; none where every candidate displays the same)."""
    quantized = [u for u in summary.units if u.method and u.bits_label]
    score = summary.scores[0] if summary.scores else None
    columns: list[tuple[str, str, str | None, str]] = [("id", m, None, ID) for m in METHOD_METRICS]
    if score is not None:
        columns.append(("ood", "auroc", score, MEAN_OOD))
    best: set[CellKey] = set()
    for bits in union([u.bits_label] for u in quantized):
        for kind, metric, s, dataset in columns:
            info = info_of(metrics, metric)
            shown: dict[CellKey, float] = {}
            for u in quantized:
                key = (u.quantizer, kind, metric, s, dataset)
                value = summary.numbers.get(key, MISSING_NUMBER).value
                if u.bits_label == bits and value is not None:
                    shown[key] = float(format_number(info, value))
            if len(set(shown.values())) < 2:
                continue
            top = (max if info.higher_is_better else min)(shown.values())
            best.update(k for k, v in shown.items() if v == top)
    return best


def margin_shares(verdicts: Sequence[Verdict]) -> list[float | None]:
    """Each verdict's margin as a share of its bound, clipped to [-1, 1] (``None``: no margin).

    The share is ``margin / |bound_amount|``; a check against another quantizer or with a zero
    bound is scaled by the largest ``|margin|`` of the checks on the same (metric, score, dataset)."""
    column = [(v.metric, v.score or None, v.dataset) for v in verdicts]
    margins = [_float(v.margin) for v in verdicts]
    col_max: dict[tuple[str, str | None, str], float] = {}
    for col, m in zip(column, margins):
        if m is not None:
            col_max[col] = max(col_max.get(col, 0.0), abs(m))
    out: list[float | None] = []
    for v, col, m in zip(verdicts, column, margins):
        if m is None:
            out.append(None)
            continue
        amount = _float(v.bound_amount)
        scale = abs(amount) if amount else (col_max[col] or 1.0)
        out.append(max(-1.0, min(1.0, m / scale)))
    return out


def census_percent(u: UnitMetrics) -> dict[str, float]:
    """A runtime unit's multiply-accumulates by how they compute, in percent of all (int8,
    weight-only, float); ``{}`` without a census."""
    census = (u.runtime or {}).get("census")
    if not census:
        return {}
    macs = census["macs"]
    total = sum(macs.values()) or 1.0
    return {k: 100 * macs[k] / total for k in ("int8", "weight_only", "float") if k in macs}


def _scores(results: RunResults, suite: str, units: Sequence[UnitMetrics]) -> list[str]:
    """The scores of ``units``: the suite's order first, then any other found (quantized units' first)."""
    found = union(u.ood for u in sorted(units, key=lambda u: u.is_reference))
    order = [s for s in results.scores.get(suite, []) if s in found]
    return order + [s for s in found if s not in order]


def summarize_model(results: RunResults, suite: str, model: str, units: Sequence[UnitMetrics]) -> ModelSummary:
    """The :class:`ModelSummary` of ``units`` (one suite and model) and their verdicts."""
    ref = next((u for u in units if u.is_reference), None)
    ordered = ([ref] if ref else []) + [u for u in units if u is not ref]
    mine = [v for v in results.verdicts if v.suite == suite and v.model == model]
    summary = ModelSummary(suite=suite, model=model, units=ordered, reference=ref, scores=_scores(results, suite, ordered),
                           verdicts=mine, verdict=run_verdict(mine))
    numbers = _Numbers(results.metrics, ref)
    for u in ordered:
        numbers.unit(u)
    summary.numbers = numbers.out
    summary.best = _best(summary, results.metrics)
    summary.margin_shares = margin_shares(mine)
    maps = [u.spectral_map for u in ordered if u.spectral_map and u.spectral_map[0]]
    summary.spectral_vmax = max(float(v) for m in maps for row in m for v in row) if maps else None
    summary.census_percent = {u.quantizer: census_percent(u) for u in ordered if census_percent(u)}
    return summary


def summarize(results: RunResults) -> RunSummary:
    """The :class:`RunSummary` of ``results``: every number the report shows."""
    grouped: dict[str, dict[str, list[UnitMetrics]]] = {}
    for u in results.units:
        grouped.setdefault(u.suite, {}).setdefault(u.model, []).append(u)
    for v in results.verdicts:  # a suite or model with verdicts but no unit record still gets a section
        grouped.setdefault(v.suite, {}).setdefault(v.model, [])
    models = [summarize_model(results, suite, model, units) for suite, by_model in grouped.items() for model, units in by_model.items()]
    suites = {s: run_verdict([v for v in results.verdicts if v.suite == s], results.planned.get(s)) for s in grouped}
    return RunSummary(results=results, verdict=results.verdict(), models=models, suites=suites,
                      scenario_means=scenario_means(models))


# ------------------------------------------------------------------------------------ scenarios

SCENARIO_ID_METRICS: tuple[str, ...] = ("top1", "ece", "nll")
"""ID metrics averaged across scenarios (the CLIP paper's accuracy / calibration columns)."""
SCENARIO_OOD_METRICS: tuple[str, ...] = ("auroc", "fpr_at_95_tpr")
"""OOD metrics averaged across scenarios, each a scenario's mean over its own OOD sets."""


@dataclass
class ScenarioMeans:
    """One model's averages across the scenarios of its suite (:mod:`pytest_qrel.spec.scenarios`).

    ``numbers[(quantizer, kind, metric, score)]``: ``kind`` ``"id"`` (the scenario's ID test split)
    or ``"ood"`` (the scenario's mean over its OOD sets, ``score`` set); the :class:`Number`'s
    ``value`` and ``delta`` (positive = worse, against each scenario's FP32) are plain means over
    ``scenarios``, ``delta_percent`` the mean of the per-scenario relative deltas. A cell is left
    out unless *every* scenario of the model has it, so an average never mixes scenario counts."""

    suite: str
    model: str  # without the scenario: "vit_b32_openai"
    scenarios: list[str]
    quantizers: list[str]
    scores: list[str]
    numbers: dict[tuple[str, str, str, "str | None"], Number] = field(default_factory=dict)

    def number(self, quantizer: str, kind: str, metric: str, score: str | None = None) -> Number:
        return self.numbers.get((quantizer, kind, metric, score), MISSING_NUMBER)


def _mean(xs: Sequence[float | None]) -> float | None:
    return None if not xs or any(x is None for x in xs) else float(statistics.fmean(x for x in xs if x is not None))


def _scenario_number(ms: ModelSummary, quantizer: str, kind: str, metric: str, score: str | None) -> Number | None:
    """One scenario's number: the ID cell, or the mean over *all* the scenario's OOD sets (one set
    counts: a near-OOD pair such as ImageNet-10 / ImageNet-20 has a single OOD set)."""
    if kind == "id":
        return ms.numbers.get((quantizer, "id", metric, None, ID))
    ref = ms.reference
    sets = list(ref.ood.get(score or "", {})) if ref is not None else []
    if not sets:
        return None
    found = [ms.numbers.get((quantizer, "ood", metric, score, d)) for d in sets]
    if any(n is None or n.value is None for n in found):
        return None
    numbers = [n for n in found if n is not None]
    assert ref is not None
    ref_mean = _mean([ms.numbers.get((ref.quantizer, "ood", metric, score, d), MISSING_NUMBER).value for d in sets])
    delta = _mean([n.delta for n in numbers])
    percent = None if delta is None or not ref_mean else 100.0 * delta / abs(ref_mean)
    return Number(value=_mean([n.value for n in numbers]), delta=delta, delta_percent=percent)


def scenario_means(models: Sequence[ModelSummary]) -> list[ScenarioMeans]:
    """The :class:`ScenarioMeans` of every model split over scenarios (names ``<model>@<scenario>``),
    in the order the models come; none for a suite without scenarios."""
    from .spec.scenarios import split_scenario

    groups: dict[tuple[str, str], list[tuple[str, ModelSummary]]] = {}
    for ms in models:
        base, scenario = split_scenario(ms.model)
        if scenario is not None:
            groups.setdefault((ms.suite, base), []).append((scenario, ms))
    out = []
    for (suite, base), members in groups.items():
        quantizers = union([u.quantizer for u in ms.units] for _, ms in members)
        scores = union(ms.scores for _, ms in members)
        sm = ScenarioMeans(suite=suite, model=base, scenarios=[s for s, _ in members], quantizers=quantizers, scores=scores)
        cells: list[tuple[str, str, str | None]] = [("id", m, None) for m in SCENARIO_ID_METRICS]
        cells += [("ood", m, score) for score in scores for m in SCENARIO_OOD_METRICS]
        for q in quantizers:
            for kind, metric, score in cells:
                found = [_scenario_number(ms, q, kind, metric, score) for _, ms in members]
                if any(n is None or n.value is None for n in found):
                    continue
                numbers = [n for n in found if n is not None]
                sm.numbers[(q, kind, metric, score)] = Number(
                    value=_mean([n.value for n in numbers]), delta=_mean([n.delta for n in numbers]),
                    delta_percent=_mean([n.delta_percent for n in numbers]), seeds=0)
        out.append(sm)
    return out
