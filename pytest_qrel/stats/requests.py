"""From planned checks and per-sample arrays to interval requests: the glue the engine calls.

``arrays_of(model, quantizer)`` is the engine's accessor: it returns the per-sample arrays
(:data:`~pytest_qrel.stats.bootstrap.SampleArrays`) of that unit, one mapping per calibration
seed (a list of one for single-seed quantizers), with post-hoc steps already applied
(``W8A8+temperature``: the temperature fitted once on the held-out split); for ``"FP32"`` the
stored baseline's arrays (``FP32+temperature`` likewise from the baseline's variant). Every
mapping must hold the datasets the check reads, with the samples in the same order as the
baseline's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..metric_table import MetricQuery
from ..spec.plan import PlannedCheck
from ..spec.schema import FP32, REPORT_ONLY
from .bootstrap import IntervalRequest, PairedInterval, SampleArrays, paired_intervals

ArraysOf = Callable[[str, str], Sequence[SampleArrays]]
"""``arrays_of(model, quantizer) -> [SampleArrays per seed]``."""


def request_for(planned: PlannedCheck, arrays_of: ArraysOf) -> IntervalRequest | None:
    """The :class:`IntervalRequest` of one planned check (``None`` for metrics without per-sample
    form, such as the spectral and runtime ones)."""
    if planned.check.metric == REPORT_ONLY:  # a report-only unit: no quantity, no interval
        return None
    query = MetricQuery.of(planned)
    if not query.per_sample:
        return None
    suite, bound = planned.suite, planned.check.bound
    fp32 = list(arrays_of(planned.model, FP32))[0]
    return IntervalRequest(
        metric=planned.check.metric,
        datasets=query.sets,
        quantized=tuple(arrays_of(planned.model, planned.quantizer)),
        fp32=fp32,
        ref=tuple(arrays_of(planned.model, bound.ref)) if bound.ref is not None else (),
        score=planned.score,
        id_dataset=suite.id_dataset.name if query.kind == "ood" else None,
        conventions=suite.conventions,
        bound=bound,
    )


def intervals_for(planned: Sequence[PlannedCheck], arrays_of: ArraysOf) -> list[PairedInterval | None]:
    """Intervals of many planned checks (e.g. every check of a unit, or of a run), one
    :func:`paired_intervals` call per suite so that each dataset is resampled once, with the
    suite's ``bootstrap: {resamples, seed}``; ``None`` where a check has no per-sample form."""
    out: list[PairedInterval | None] = [None] * len(planned)
    by_suite: dict[int, list[int]] = {}
    requests: dict[int, IntervalRequest] = {}
    for i, p in enumerate(planned):
        req = request_for(p, arrays_of)
        if req is not None:
            requests[i] = req
            by_suite.setdefault(id(p.suite), []).append(i)
    for members in by_suite.values():
        boot = planned[members[0]].suite.bootstrap
        results = paired_intervals([requests[i] for i in members], resamples=boot.resamples, seed=boot.seed)
        for i, r in zip(members, results):
            out[i] = r
    return out


__all__ = ["ArraysOf", "intervals_for", "request_for"]
