"""The small plot data a unit record carries (:attr:`pytest_qrel.results.UnitMetrics.curves`).

Pure numpy (scikit-learn for the curves); computed once from the per-sample arrays when a unit
runs, so the report draws figures without re-running anything. Everything returned is plain
Python (lists of floats rounded to :data:`DECIMALS` decimals), small enough for JSON and xdist.

- :func:`reliability_bins`: the 15 equal-width confidence bins of :func:`pytest_qrel.metrics.ece`
  (same edges, same rule for a confidence on an edge), with the count, accuracy and mean confidence
  of each bin; the ECE is ``sum(count * |accuracy - confidence|) / sum(count)``.
- :func:`roc_points`: the ROC curve with **ID as the positive class** and the score as the decision
  value (higher = more ID): ``tpr`` is the share of ID samples accepted, ``fpr`` the share of OOD
  samples accepted, as in :func:`pytest_qrel.metrics.auroc` and ``fpr_at_95_tpr``.
- :func:`pr_points`: the precision-recall curve with **OOD as the positive class** (decision value
  ``-score``), as :func:`pytest_qrel.metrics.aupr_out`.
- :func:`unit_curves`: all of them for one unit, from its :data:`SampleArrays`.

Curves are thinned to at most ``max_points`` points (default :data:`MAX_POINTS`) by
:func:`simplify`, which keeps the first and last point and, greedily, the points farthest from the
polyline kept so far (Ramer-Douglas-Peucker with a point budget), so corners survive and straight
runs collapse.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .ranking import precision_recall_curve, roc_curve

__all__ = [
    "DECIMALS",
    "MAX_POINTS",
    "N_BINS",
    "SampleArrays",
    "pr_points",
    "reliability_bins",
    "roc_points",
    "simplify",
    "unit_curves",
]

N_BINS = 15
"""Confidence bins of the reliability diagram: the same as the default of :func:`metrics.ece`."""
MAX_POINTS = 100
"""Points kept per ROC / PR curve."""
DECIMALS = 4
"""Decimals kept of every stored coordinate (plot data only; metrics are computed unrounded)."""

SampleArrays = Mapping[str, Mapping[str, np.ndarray]]
"""``{dataset: {field: array}}``: ``correct`` (bool), ``confidence`` (max softmax probability),
``score.<s>`` (float, higher = more in-distribution), ... (see the project's HELPER notes)."""


def _vector(x: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    arr = np.asarray(x, dtype=dtype)
    if arr.ndim != 1 or arr.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
    if dtype is np.float64 and not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def _rounded(values: np.ndarray) -> list[float]:
    return [float(v) for v in np.round(np.asarray(values, dtype=np.float64), DECIMALS)]


def reliability_bins(confidence: Any, correct: Any, n_bins: int = N_BINS) -> dict[str, list[Any]]:
    """Equal-width confidence bins as :func:`pytest_qrel.metrics.ece` uses them.

    Args:
        confidence: (N,) max softmax probability of each sample, in [0, 1].
        correct: (N,) whether the arg-max was the label (bool or 0/1).
        n_bins: number of bins on [0, 1] (edges ``np.linspace(0, 1, n_bins + 1)``; every bin is
            ``[e_k, e_k+1)`` except the last, ``[e_n-1, 1]``).

    Returns:
        ``{"edges": [n_bins + 1], "count": [n_bins] ints, "accuracy": [n_bins], "confidence":
        [n_bins]}``; accuracy and mean confidence of an empty bin are ``None``.
    """
    conf = _vector(confidence, "confidence")
    hit = _vector(correct, "correct", dtype=np.float64)
    if conf.shape != hit.shape:
        raise ValueError(f"confidence has {conf.shape[0]} entries but correct has {hit.shape[0]}")
    if conf.min() < 0 or conf.max() > 1:
        raise ValueError(f"confidence must lie in [0, 1]; found [{conf.min():g}, {conf.max():g}]")
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges) - 1, 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins)
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=hit, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc, mean_conf = acc_sum / count, conf_sum / count
    return {
        "edges": _rounded(edges),
        "count": [int(c) for c in count],
        "accuracy": [None if c == 0 else float(round(a, DECIMALS)) for a, c in zip(acc, count)],
        "confidence": [None if c == 0 else float(round(m, DECIMALS)) for m, c in zip(mean_conf, count)],
    }


def simplify(x: Any, y: Any, max_points: int = MAX_POINTS) -> tuple[np.ndarray, np.ndarray]:
    """At most ``max_points`` points of the polyline ``(x, y)``, shape kept (see the module doc).

    The first and last point are always kept; with ``max_points >= len(x)`` nothing is dropped.
    Distances are measured perpendicular to the chord in (x, y) units, so the axes should share a
    scale (ROC and PR curves live in [0, 1] x [0, 1]).
    """
    px = np.asarray(x, dtype=np.float64)
    py = np.asarray(y, dtype=np.float64)
    n = px.shape[0]
    if max_points < 2:
        raise ValueError(f"max_points must be at least 2, got {max_points}")
    if n <= max_points:
        return px, py
    keep = np.zeros(n, dtype=bool)
    keep[0] = keep[-1] = True

    def farthest(lo: int, hi: int) -> tuple[float, int]:
        if hi - lo < 2:
            return 0.0, -1
        dx, dy = px[hi] - px[lo], py[hi] - py[lo]
        sx, sy = px[lo + 1 : hi] - px[lo], py[lo + 1 : hi] - py[lo]
        norm = float(np.hypot(dx, dy))
        dist = np.abs(dx * sy - dy * sx) / norm if norm > 0 else np.hypot(sx, sy)
        i = int(np.argmax(dist))
        return float(dist[i]), lo + 1 + i

    heap: list[tuple[float, int, int, int]] = []
    d, i = farthest(0, n - 1)
    if i >= 0:
        heap.append((-d, i, 0, n - 1))
    kept = 2
    while heap and kept < max_points:
        neg, i, lo, hi = heapq.heappop(heap)
        if -neg <= 0.0:
            break  # the rest is collinear with what is kept
        keep[i] = True
        kept += 1
        for a, b in ((lo, i), (i, hi)):
            d, j = farthest(a, b)
            if j >= 0:
                heapq.heappush(heap, (-d, j, a, b))
    return px[keep], py[keep]


def _ood_inputs(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    s_id = _vector(id_scores, "id_scores")
    s_ood = _vector(ood_scores, "ood_scores")
    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones(s_id.shape[0], dtype=np.int64), np.zeros(s_ood.shape[0], dtype=np.int64)])
    return scores, is_id


def roc_points(id_scores: Any, ood_scores: Any, max_points: int = MAX_POINTS) -> dict[str, list[float]]:
    """``{"fpr": [...], "tpr": [...]}`` from (0, 0) to (1, 1), ID positive (see the module doc).

    ``sklearn.metrics.roc_curve(is_id, score)`` (collinear points dropped), then :func:`simplify`.
    """
    scores, is_id = _ood_inputs(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(is_id, scores, drop_intermediate=True)
    fpr, tpr = simplify(fpr, tpr, max_points)
    return {"fpr": _rounded(fpr), "tpr": _rounded(tpr)}


def pr_points(id_scores: Any, ood_scores: Any, max_points: int = MAX_POINTS) -> dict[str, list[float]]:
    """``{"recall": [...], "precision": [...]}``, **OOD positive**, decision value ``-score``.

    ``sklearn.metrics.precision_recall_curve(is_ood, -score)`` (recall decreasing from 1 to 0; the
    last point is sklearn's (recall 0, precision 1)), then :func:`simplify`.
    """
    scores, is_id = _ood_inputs(id_scores, ood_scores)
    precision, recall, _ = precision_recall_curve(1 - is_id, -scores)
    recall, precision = simplify(recall, precision, max_points)
    return {"recall": _rounded(recall), "precision": _rounded(precision)}


def unit_curves(
    arrays: SampleArrays,
    id_set: str,
    ood_sets: Sequence[str] = (),
    scores: Sequence[str] = (),
    *,
    max_points: int = MAX_POINTS,
    n_bins: int = N_BINS,
) -> dict[str, Any]:
    """The :attr:`UnitMetrics.curves` of one unit from its per-sample arrays.

    ``arrays[id_set]`` must hold ``confidence`` and ``correct`` (for the reliability bins) and
    ``score.<s>`` for each score; ``arrays[d]["score.<s>"]`` for each OOD set ``d``. Fields that
    are absent are skipped (no reliability without ``confidence``; no curve for a missing score).

    Returns ``{"reliability": {...,"dataset": id_set}, "roc": {score: {set: {...}}},
    "pr": {score: {set: {...}}}}`` (keys present only when there is data).
    """
    if id_set not in arrays:
        raise ValueError(f"no per-sample arrays for the ID set '{id_set}' (have: {', '.join(arrays) or 'none'})")
    ident = arrays[id_set]
    out: dict[str, Any] = {}
    if "confidence" in ident and "correct" in ident:
        out["reliability"] = {**reliability_bins(ident["confidence"], ident["correct"], n_bins), "dataset": id_set}
    roc: dict[str, dict[str, Any]] = {}
    pr: dict[str, dict[str, Any]] = {}
    for s in scores:
        key = f"score.{s}"
        if key not in ident:
            continue
        for d in ood_sets:
            if d not in arrays or key not in arrays[d]:
                continue
            roc.setdefault(s, {})[d] = roc_points(ident[key], arrays[d][key], max_points)
            pr.setdefault(s, {})[d] = pr_points(ident[key], arrays[d][key], max_points)
    if roc:
        out["roc"], out["pr"] = roc, pr
    return out
