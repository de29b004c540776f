"""Paired bootstrap intervals of check deltas, and the decision with evidence. Pure numpy.

What the engine calls::

    from pytest_qrel.stats import IntervalRequest, paired_intervals, judge

    results = paired_intervals([IntervalRequest(...), ...], resamples=1000, level=0.95, seed=0)
    evidence = judge(bound, results[0].compared, results[0].compared_ci, confidence=0.95, n=results[0].n)

Modules (one job each): :mod:`.resample` draws reproducible paired resamples as counts per
sample; :mod:`.weighted` computes every metric on many resamples at once from those counts;
:mod:`.bootstrap` plans the per-side values a set of checks needs and summarises them into
intervals; :mod:`.delong` is the analytic AUROC cross-check; :mod:`.decision` turns an interval
and a bound into passed / failed / inconclusive with a one-line explanation.
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
from .resample import resample_counts, resample_indices

__all__ = [
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
    "judge",
    "paired_interval",
    "paired_intervals",
    "percentile_interval",
    "resample_counts",
    "resample_indices",
    "samples_factor",
]
