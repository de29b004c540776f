"""A unit's (or the FP32 baseline's) metrics as a table with one typed accessor.

The stored form is the nested dict every baseline file and outputs record holds::

    {"id": {metric: v}, "ood": {score: {ood set: {metric: v}}}, "shifted": {set: {metric: v}},
     "pairs": {pair: {metric: v}}, "spectral": {metric: v}, "runtime": {...}}

Callers never walk it: they build a :class:`MetricQuery` (what one check reads: the metric, its
kind, the datasets, the score) once, and :meth:`MetricsTable.value` answers it. Which section a
metric kind reads is one entry of :data:`READERS`; a new kind is one reader, not another ``if``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .spec.plan import PlannedCheck

__all__ = ["READERS", "MetricQuery", "MetricsTable"]


@dataclass(frozen=True)
class MetricQuery:
    """What one check reads from a metrics table.

    ``kind``: the metric's registered kind (``id``, ``ood``, ``pair``, ``spectral``, ``runtime``).
    ``dataset``: the check's dataset as planned (an ID / shifted set, an OOD set or ``mean(ood)``,
    a pair name). ``sets``: the datasets whose values make the check's value: the OOD sets averaged
    for ``mean(...)``, ``(common, counter)`` for a pair, else ``(dataset,)``. ``labelled_section``:
    ``"id"`` when the dataset is the ID test set, else ``"shifted"``. ``score``: the OOD score (for
    runtime metrics: the simulated quantizer compared with). ``label``: ``"<model> <quantizer>"``
    for messages."""

    metric: str
    kind: str
    dataset: str
    sets: tuple[str, ...]
    labelled_section: str
    score: str | None
    label: str

    @classmethod
    def of(cls, p: PlannedCheck) -> MetricQuery:
        from .metrics import METRICS
        from .spec.schema import mean_members

        suite, kind = p.suite, METRICS.meta(p.check.metric)["kind"]
        if kind == "pair":
            sets = tuple(suite.pairs[p.dataset])
        elif kind == "ood":
            sets = tuple(mean_members(p.dataset, list(suite.ood_datasets)) or [p.dataset])
        else:
            sets = (p.dataset,)
        section = "id" if p.dataset == suite.id_dataset.name else "shifted"
        return cls(p.check.metric, kind, p.dataset, sets, section, p.score, f"{p.model} {p.quantizer}")

    @property
    def per_sample(self) -> bool:
        """Whether the metric has a per-sample form (a bootstrap interval); spectral and runtime
        metrics are computed from whole spectra or a runtime audit instead."""
        return self.kind not in ("spectral", "runtime")


def _labelled(table: MetricsTable, q: MetricQuery) -> float:
    section = table.data["id"] if q.labelled_section == "id" else table.data["shifted"][q.dataset]
    return float(section[q.metric])


def _ood(table: MetricsTable, q: MetricQuery) -> float:
    from .errors import NumericsError

    for d in q.sets:  # a degenerate (score, set) has no metrics, only the reason why
        if (q.score, d) in table.errors:
            raise NumericsError(table.errors[(q.score, d)])  # type: ignore[index]  # score is set for OOD kinds
    return float(np.mean([table.data["ood"][q.score][d][q.metric] for d in q.sets]))


def _pair(table: MetricsTable, q: MetricQuery) -> float:
    return float(table.data["pairs"][q.dataset][q.metric])


def _spectral(table: MetricsTable, q: MetricQuery) -> float:
    return float(table.data["spectral"][q.metric])


def _runtime(table: MetricsTable, q: MetricQuery) -> float:
    from .runtimes.checks import runtime_value

    return runtime_value(dict(table.data), q.metric, q.score, q.label)


READERS: dict[str, Callable[[MetricsTable, MetricQuery], float]] = {
    "id": _labelled, "ood": _ood, "pair": _pair, "spectral": _spectral, "runtime": _runtime,
}
"""Metric kind -> how its value is read from a table (raises KeyError where the table lacks it)."""


@dataclass(frozen=True)
class MetricsTable:
    """``data``: the nested metrics dict (see the module docstring); ``errors``: ``(score, OOD set)
    -> why that pair has no metrics`` (scores that cannot be ranked), raised as a NumericsError
    by the checks that read it."""

    data: Mapping[str, Any]
    errors: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def value(self, q: MetricQuery) -> float:
        """The value ``q`` asks for. Raises KeyError for a metric, set or score the table lacks."""
        return READERS[q.kind](self, q)
