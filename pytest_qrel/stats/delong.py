"""DeLong's analytic interval for a linear combination of paired AUROCs (a cross-check of the bootstrap).

DeLong, DeLong & Clarke-Pearson (1988): the AUROC is a two-sample U-statistic, so it is
asymptotically normal with a variance estimated from its *structural components*. For ID scores
``x`` (m samples) and OOD scores ``y`` (n samples), with ``psi(x, y) = 1`` if ``x > y``, 1/2 if
equal, 0 otherwise (ID positive, higher score = more ID, as :func:`pytest_qrel.metrics.auroc`)::

    V10_i = mean_j psi(x_i, y_j)      (one per ID sample)
    V01_j = mean_i psi(x_i, y_j)      (one per OOD sample)

computed in O((m + n) log(m + n)) from sorted positions (Sun & Xu 2014). A combination
``sum_t c_t AUROC_t`` of AUROCs that share samples (quantized and FP32 scores of the same images;
several OOD sets sharing one ID set; several seeds) has variance
``Var(sum_t c_t V10_t) / m + sum_k Var(sum_t c_t V01_t on set k) / n_k``, each component
summed over the terms on the same samples. The interval is ``estimate +/- z * se``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


def structural_components(id_scores: np.ndarray, ood_scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """``(auroc, V10 (m,), V01 (n,))`` of one score pair."""
    x = np.asarray(id_scores, dtype=np.float64)
    y = np.asarray(ood_scores, dtype=np.float64)
    ys, xs = np.sort(y), np.sort(x)
    v10 = (np.searchsorted(ys, x, "left") + np.searchsorted(ys, x, "right")) / (2.0 * y.size)
    v01 = (2.0 * x.size - np.searchsorted(xs, y, "left") - np.searchsorted(xs, y, "right")) / (2.0 * x.size)
    return float(v10.mean()), v10, v01


@dataclass(frozen=True)
class DeLongResult:
    """``estimate`` of the combination, its standard error ``se`` and the ``level`` interval."""

    estimate: float
    se: float
    low: float
    high: float
    level: float


def delong_interval(terms: Sequence[tuple[float, np.ndarray, np.ndarray, str]], level: float = 0.95) -> DeLongResult:
    """Interval of ``sum_t coef_t * AUROC(id_t, ood_t)``.

    ``terms``: ``(coef, id_scores, ood_scores, ood_set)``; every ``id_scores`` holds the same ID
    samples in the same order (paired), and terms with the same ``ood_set`` name the same OOD
    samples in the same order.

    Raises:
        ValueError: a set has fewer than 2 samples (no variance estimate).
    """
    if not terms:
        raise ValueError("no AUROC terms")
    pieces = []
    for coef, x, y, key in terms:
        _, v10, v01 = structural_components(x, y)
        pieces.append((coef, v10, v01, key))
    return delong_from_components(pieces, level)


def delong_from_components(pieces: Sequence[tuple[float, np.ndarray, np.ndarray, str]], level: float = 0.95) -> DeLongResult:
    """:func:`delong_interval` from ``(coef, V10, V01, ood_set)`` per term (the AUROC is ``mean(V10)``)."""
    m = pieces[0][1].shape[0]
    d10 = np.zeros(m)
    d01: dict[str, np.ndarray] = {}
    estimate = 0.0
    for coef, v10, v01, key in pieces:
        if v10.shape[0] != m:
            raise ValueError("every term must score the same ID samples")
        estimate += coef * float(v10.mean())
        d10 += coef * v10
        if key in d01 and d01[key].shape != v01.shape:
            raise ValueError(f"OOD set '{key}' has different sizes across terms")
        d01[key] = d01.get(key, np.zeros_like(v01)) + coef * v01
    sizes = [m, *(v.shape[0] for v in d01.values())]
    if min(sizes) < 2:
        raise ValueError("DeLong's variance needs at least 2 samples in every set")
    var = float(np.var(d10, ddof=1)) / m + sum(float(np.var(v, ddof=1)) / v.shape[0] for v in d01.values())
    se = float(np.sqrt(max(var, 0.0)))
    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return DeLongResult(estimate, se, estimate - z * se, estimate + z * se, level)


def delong_auroc_delta(
    id_a: np.ndarray, ood_a: np.ndarray, id_b: np.ndarray, ood_b: np.ndarray, level: float = 0.95
) -> DeLongResult:
    """Interval of ``AUROC(a) - AUROC(b)`` for two score sets on the same ID and OOD samples."""
    return delong_interval([(1.0, id_a, ood_a, "ood"), (-1.0, id_b, ood_b, "ood")], level)


__all__ = ["DeLongResult", "delong_auroc_delta", "delong_from_components", "delong_interval", "structural_components"]
