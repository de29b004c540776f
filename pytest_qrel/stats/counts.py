"""Score intervals of top-1 from the paired counts: what the bootstrap cannot see.

A bootstrap resamples the samples it has. When the quantized model and FP32 disagree on no test
image (or on one or two), every resample gives the same top-1 delta and the percentile interval
has (almost) zero width: ``delta +0.00pp [95% CI +0.00pp, +0.00pp]`` on 100 images would let
``top1 delta <= 1pp with 95% confidence`` pass, although 100 images without a disagreement only
show that the models disagree on fewer than about 3.7% of images (the rule of three). Likewise a
model right on all 100 images has a bootstrap interval ``[100%, 100%]`` for its accuracy.

So a top-1 interval is the union of the bootstrap's and a score interval computed from the counts:

- one accuracy (``value`` bounds): Wilson's score interval of ``k`` right of ``n``;
- the difference of two paired accuracies (``delta``, ``delta(ref)``, ``value(ref)``): Tango's
  score interval for paired proportions (Tango 1998, Statistics in Medicine 17:891) from the four
  cells: both right, only the first right, only the second right, both wrong. It reads the
  disagreements (as McNemar's test does) and keeps its level with none of them, where a Wald or
  bootstrap interval collapses to a point.

With several calibration seeds, the cells are averaged over seeds (fractional counts); with
several datasets, the quantity is the mean of the per-dataset ones, and so are the interval's
ends. The union keeps the bootstrap where it is wider (many disagreements: the two agree closely)
and the score interval where the bootstrap collapses (few): ``benchmarks/coverage_edges.py``
measures both regimes. Plain numpy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np

__all__ = ["TopOneScore", "paired_cells", "tango_paired", "top1_score", "wilson", "widen"]


def _z(level: float) -> float:
    return NormalDist().inv_cdf(0.5 + level / 2.0)


def wilson(k: float, n: float, level: float) -> tuple[float, float]:
    """Wilson's two-sided score interval at ``level`` of a proportion ``k / n`` (``k`` may be fractional)."""
    if n <= 0:
        return (0.0, 1.0)
    z = _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(max(p * (1 - p) / n + z * z / (4 * n * n), 0.0)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def tango_paired(a: float, b: float, c: float, d: float, level: float) -> tuple[float, float]:
    """Tango's score interval (Tango 1998, Statistics in Medicine 17:891) at ``level`` of
    ``p1 - p2 = (b - c) / n`` for two paired proportions ``p1 = (a + b) / n``, ``p2 = (a + c) / n``:
    ``a`` both, ``b`` only the first, ``c`` only the second, ``d`` neither (``n = a + b + c + d``;
    counts may be fractional). The set of ``delta`` whose score statistic
    ``(b - c - n delta) / sqrt(n (2 q + delta (1 - delta)))`` (``q``: the restricted maximum
    likelihood estimate of the second-only cell) is within ``z``; its ends by bisection (the
    statistic falls as ``delta`` grows). With ``b = c = 0`` the upper end is about ``z^2 / n``."""
    n = a + b + c + d
    if n <= 0:
        return (-1.0, 1.0)
    z = _z(level)
    theta = (b - c) / n

    def statistic(delta: float) -> float:
        big_a, big_b, big_c = 2.0 * n, -b - c + (2.0 * n - b + c) * delta, -c * delta * (1.0 - delta)
        q = (math.sqrt(max(big_b * big_b - 4.0 * big_a * big_c, 0.0)) - big_b) / (2.0 * big_a)
        variance = n * (2.0 * q + delta * (1.0 - delta))
        if variance <= 0.0:
            return 0.0 if b - c - n * delta == 0 else math.copysign(math.inf, b - c - n * delta)
        return (b - c - n * delta) / math.sqrt(variance)

    def end(target: float, lo: float, hi: float) -> float:
        """The ``delta`` in ``[lo, hi]`` where the statistic crosses ``target`` (it falls from lo to hi)."""
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            if statistic(mid) > target:
                lo = mid
            else:
                hi = mid
        return 0.5 * (lo + hi)

    low = -1.0 if statistic(-1.0) <= z else end(z, -1.0, theta)
    high = 1.0 if statistic(1.0) >= -z else end(-z, theta, 1.0)
    return (low, high)


def paired_cells(first: Sequence[np.ndarray], second: Sequence[np.ndarray]) -> tuple[float, float, float, float]:
    """The four cells ``(a, b, c, d)`` of two paired correctness arrays, averaged over every pair of
    seeds (``first`` and ``second``: one boolean array per seed, in the same sample order)."""
    cells = np.zeros(4)
    for x in first:
        for y in second:
            x_, y_ = np.asarray(x, dtype=bool), np.asarray(y, dtype=bool)
            cells += [np.sum(x_ & y_), np.sum(x_ & ~y_), np.sum(~x_ & y_), np.sum(~x_ & ~y_)]
    cells /= len(first) * len(second)
    return (float(cells[0]), float(cells[1]), float(cells[2]), float(cells[3]))


@dataclass(frozen=True)
class TopOneScore:
    """The score intervals of one top-1 request, at any level (:meth:`delta`, :meth:`compared`).

    Per dataset (the request's quantity is the mean over them): ``value_cells`` the quantized
    model's right / total counts (seed-averaged), ``delta_cells`` the cells of FP32 (first) against
    the quantized model (second), ``ref_cells`` those of the pair the ``delta(ref)`` / ``value(ref)``
    quantity is the difference of (``ref_first``: the reference is the first proportion).
    ``kind`` / ``unit``: the bound's quantity (:class:`~.bootstrap.PairedInterval`); ``fp32``: FP32's
    point value, the denominator of a relative delta."""

    kind: str
    unit: str
    fp32: float | None
    value_cells: tuple[tuple[float, float], ...]
    delta_cells: tuple[tuple[float, float, float, float], ...] | None
    ref_cells: tuple[tuple[float, float, float, float], ...] | None

    def delta(self, level: float) -> tuple[float, float] | None:
        """The interval of ``FP32 - quantized`` (the top-1 delta, a fraction)."""
        if self.delta_cells is None:
            return None
        return _mean_interval([tango_paired(*cells, level) for cells in self.delta_cells])

    def compared(self, level: float) -> tuple[float, float] | None:
        """The interval of the bound's quantity in the bound's unit; None where no score interval applies."""
        if self.kind == "value":
            lo, hi = _mean_interval([wilson(k, n, level) for k, n in self.value_cells])
            return (100.0 * lo, 100.0 * hi) if self.unit == "%" else (lo, hi)
        if self.kind in ("ref-delta", "ref-value"):
            if self.ref_cells is None:
                return None
            return _mean_interval([tango_paired(*cells, level) for cells in self.ref_cells])
        delta = self.delta(level)
        if delta is None:
            return None
        if self.unit == "%":
            if not self.fp32:  # FP32 at 0: the relative delta's own rule (0 or infinite) decides
                return None
            return (100.0 * delta[0] / abs(self.fp32), 100.0 * delta[1] / abs(self.fp32))
        return (100.0 * delta[0], 100.0 * delta[1]) if self.unit == "pp" else delta


def _mean_interval(intervals: list[tuple[float, float]]) -> tuple[float, float]:
    return (float(np.mean([i[0] for i in intervals])), float(np.mean([i[1] for i in intervals])))


def top1_score(kind: str, unit: str, fp32_value: float | None, datasets: Sequence[str],
               quantized: Sequence[Any], fp32: Any, ref: Sequence[Any]) -> TopOneScore | None:
    """The :class:`TopOneScore` of a top-1 request (arrays as :class:`~.bootstrap.IntervalRequest`
    holds them: ``{dataset: {"correct": bool array}}`` per seed); None when a side lacks ``correct``."""
    try:
        q = [[np.asarray(s[d]["correct"], dtype=bool) for s in quantized] for d in datasets]
        f = [[np.asarray(fp32[d]["correct"], dtype=bool)] for d in datasets] if fp32 is not None else None
        r = [[np.asarray(s[d]["correct"], dtype=bool) for s in ref] for d in datasets] if ref else None
    except (KeyError, TypeError):
        return None
    value_cells = tuple((float(np.mean([x.sum() for x in qs])), float(len(qs[0]))) for qs in q)
    delta_cells = tuple(paired_cells(fs, qs) for fs, qs in zip(f, q)) if f is not None else None
    ref_cells = None
    if r is not None:
        # ref-delta = delta(q) - delta(ref) = acc(ref) - acc(q); ref-value = acc(q) - acc(ref)
        pairs = zip(r, q) if kind == "ref-delta" else zip(q, r)
        ref_cells = tuple(paired_cells(first, second) for first, second in pairs)
    return TopOneScore(kind, unit, fp32_value, value_cells, delta_cells, ref_cells)


def widen(ci: tuple[float, float] | None, other: tuple[float, float] | None) -> tuple[float, float] | None:
    """The union of two intervals; ``ci`` None (no interval: undefined draws) stays None."""
    if ci is None or other is None:
        return ci
    return (min(ci[0], other[0]), max(ci[1], other[1]))
