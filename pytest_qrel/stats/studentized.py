"""The studentized (bootstrap-t) interval, for metrics whose percentile interval under-covers.

Why: for AUPR the standard error of a delta moves with the delta itself across data sets (e.g. with
tied scores at the top of the ranking, a precision near 1 rests on the few negatives tied there;
fewer of them give both a higher AUPR and a smaller spread: the correlation between the estimate
and its bootstrap standard deviation was +0.2 to +0.5 across data sets in every setting tried). A
percentile interval then sits too close to the estimate on the side where the spread shrinks.

What: on every resample ``b`` the pivot ``t_b = (theta_b - theta) / se_b``, with ``se_b`` the
standard error *of that resample* from its own influence values (:mod:`.influence`, recomputed on
the resample: ``sum_i c_i D_i^2 - (sum_i c_i D_i)^2 / n`` per stratum, ``D`` the paired
difference of the sides' influence values of each sample, and for a quantity of several values
(a relative delta, means over seeds and OOD sets) their combination through its partial
derivatives on that resample). The interval is ``[theta - q(1 - a/2; t) se, theta - q(a/2; t)
se]`` with ``se`` the full data's: the percentile interval of the pseudo-draws ``theta - t_b se``
(:func:`pseudo_draws`), so :class:`.bootstrap.Bounds` and ``at_level`` work unchanged. Influence
values held fixed at the full data's (cheaper) helped less: they miss how the spread changes with
the data. Measured: on tied scores at n = 300 false passes 2.76% against the percentile's 3.16%;
without ties about 3.5% either way (docs/statistics.md).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

Quantity = Callable[[Mapping[str, np.ndarray | None]], np.ndarray]
"""``f({"q": values, "fp32": values, "ref": values}) -> values``, elementwise over resamples."""


def partials(f: Quantity, x: Mapping[str, np.ndarray | None]) -> dict[str, np.ndarray]:
    """``d f / d x[w]`` for every side ``w`` present, per resample (central differences)."""
    out = {}
    for w, v in x.items():
        if v is None:
            continue
        h = 1e-6 * np.maximum(1.0, np.abs(v))
        up, down = dict(x), dict(x)
        up[w], down[w] = v + h, v - h
        out[w] = (f(up) - f(down)) / (2 * h)
    return out


def variance(influence: Mapping[str, np.ndarray], counts: Mapping[str, np.ndarray]) -> np.ndarray:
    """``sum_strata [sum_i c_i D_i^2 - (sum_i c_i D_i)^2 / n]`` per resample: ``influence[d]`` and
    ``counts[d]`` are ``(n_d, rows)`` (counts may carry the two extra rows of a chunk)."""
    total = 0.0
    for d, D in influence.items():
        n = D.shape[0]
        c = counts[d][:n]
        cd = c * D
        total = total + (cd * D).sum(axis=0, dtype=np.float64) - cd.sum(axis=0, dtype=np.float64) ** 2 / n
    return np.maximum(np.asarray(total, dtype=np.float64), 0.0)


def pseudo_draws(point: float, draws: np.ndarray, se_draws: np.ndarray, se: float) -> np.ndarray | None:
    """``point - t_b se`` with ``t_b = (draws_b - point) / se_b``: their percentile interval is the
    bootstrap-t interval. ``None`` when a standard error is 0 or not finite (no pivot: the caller
    keeps the percentile interval)."""
    if not (np.isfinite(se) and se > 0) or not np.all(np.isfinite(draws)) or not np.all(se_draws > 0):
        return None
    return point - (draws - point) / se_draws * se


__all__ = ["Quantity", "partials", "pseudo_draws", "variance"]
