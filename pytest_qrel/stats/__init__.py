"""Paired bootstrap intervals of check deltas, and the decision with evidence. Pure numpy.

What the engine calls::

    from pytest_qrel.stats import intervals_for
    from pytest_qrel.evaluate import decide

    intervals = intervals_for(planned_checks, arrays_of)   # one paired_intervals call per suite
    verdict = decide(p, value, fp32, ..., interval=intervals[i])

or, one level down, ``paired_intervals([IntervalRequest(...), ...], resamples=1000, level=0.95,
seed=0)`` and ``judge(bound, r.compared, r.compared_ci, confidence, n=r.n)``.

Modules (one job each): :mod:`.resample` draws reproducible paired resamples as counts per
sample; :mod:`.weighted` computes every metric on many resamples at once from those counts;
:mod:`.bootstrap` plans the per-side values a set of checks needs and summarises them into
intervals; :mod:`.ece` builds ECE's intervals from estimators biased in known directions;
:mod:`.influence` and :mod:`.studentized` give AUPR its bootstrap-t interval; :mod:`.delong` is the
analytic AUROC cross-check; :mod:`.decision` turns an interval
and a bound into passed / failed / inconclusive with a one-line explanation; :mod:`.requests`
builds requests from planned checks and per-sample arrays.
"""

from .bootstrap import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    DEFAULT_SEED,
    IntervalRequest,
    PairedInterval,
    SampleArrays,
    paired_interval,
    paired_intervals,
    percentile_interval,
)
from .decision import Evidence, format_interval, judge, samples_factor
from .delong import DeLongResult, delong_auroc_delta, delong_interval
from .requests import ArraysOf, intervals_for, request_for
from .resample import resample_counts, resample_indices

__all__ = [
    "ArraysOf",
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "DeLongResult",
    "Evidence",
    "IntervalRequest",
    "PairedInterval",
    "SampleArrays",
    "delong_auroc_delta",
    "delong_interval",
    "format_interval",
    "intervals_for",
    "judge",
    "paired_interval",
    "paired_intervals",
    "percentile_interval",
    "request_for",
    "resample_counts",
    "resample_indices",
    "samples_factor",
]
