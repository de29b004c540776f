"""Binary ranking curves (ROC, precision-recall) and their areas, equal to scikit-learn's.

Why not ``sklearn.metrics``: importing scikit-learn costs about a second and a half of a cold run
(scipy.stats and its whole utility stack), more than the demo audit's forward passes, for five
functions of a few array operations each. These follow ``sklearn.metrics`` (1.3 to 1.9) exactly,
unweighted, one positive label: the same sort, the same distinct-threshold points, float64
running sums and the same arithmetic in the same order, so the values are the same floats
(``tests/test_ranking.py`` compares them with scikit-learn on tied and untied scores of many
sizes). scikit-learn stays a dependency: the tests use it as the reference, and the embedded
``digits`` data set is its file.

Conventions: ``positive`` is a 0/1 (or bool) vector, 1 = the positive class; ``decision`` is a
float vector, higher = more positive. Both classes must be present (the metric functions refuse
degenerate inputs before calling these).
"""

from __future__ import annotations

from typing import Any

import numpy as np

# numpy 2 renamed trapz (which newer versions drop) to trapezoid; the project supports numpy >= 1.24.
_trapezoid = getattr(np, "trapezoid", None) or getattr(np, "trapz")  # noqa: B009


def binary_clf_curve(positive: Any, decision: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fps, tps, thresholds)``: false and true positive counts (float64) when every sample
    with ``decision >= threshold`` is called positive, one point per distinct decision value in
    decreasing order (scikit-learn's ``_binary_clf_curve``)."""
    pos = np.asarray(positive).astype(np.float64).ravel()
    score = np.asarray(decision).ravel()
    order = np.argsort(score, kind="stable")[::-1]
    score, pos = score[order], pos[order]
    # The last index of each run of equal scores, then the last sample.
    last = np.r_[np.flatnonzero(np.diff(score)), pos.size - 1]
    tps = np.cumsum(pos, dtype=np.float64)[last]
    fps = 1 + last.astype(np.float64) - tps
    return fps, tps, score[last]


def roc_curve(positive: Any, decision: Any, *, drop_intermediate: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(fpr, tpr, thresholds)`` from (0, 0), threshold ``inf``, to (1, 1), as
    ``sklearn.metrics.roc_curve``; ``drop_intermediate`` drops the points collinear with both
    neighbours (those where neither count changes its step)."""
    fps, tps, thresholds = binary_clf_curve(positive, decision)
    if drop_intermediate and fps.shape[0] > 2:
        keep = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        fps, tps, thresholds = fps[keep], tps[keep], thresholds[keep]
    tps = np.r_[0.0, tps]
    fps = np.r_[0.0, fps]
    thresholds = np.r_[np.inf, thresholds.astype(np.float64)]
    return fps / fps[-1], tps / tps[-1], thresholds


def precision_recall_curve(positive: Any, decision: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(precision, recall, thresholds)`` with recall decreasing to a last point (recall 0,
    precision 1), as ``sklearn.metrics.precision_recall_curve`` (no point dropped)."""
    fps, tps, thresholds = binary_clf_curve(positive, decision)
    called = tps + fps
    precision = np.divide(tps, called, out=np.zeros_like(tps), where=called != 0)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0], thresholds[::-1]


def trapezoid_auc(x: np.ndarray, y: np.ndarray) -> float:
    """Trapezoidal area under ``y(x)`` for ``x`` monotonic either way (``sklearn.metrics.auc``)."""
    dx = np.diff(x)
    if np.any(dx < 0) and not np.all(dx <= 0):
        raise ValueError(f"x is neither increasing nor decreasing: {x}")
    direction = -1.0 if np.any(dx < 0) else 1.0
    return float(direction * _trapezoid(y, x))


def roc_auc(positive: Any, decision: Any) -> float:
    """Area under the ROC curve (``sklearn.metrics.roc_auc_score`` of a binary target)."""
    fpr, tpr, _ = roc_curve(positive, decision, drop_intermediate=True)
    return trapezoid_auc(fpr, tpr)


def average_precision(positive: Any, decision: Any) -> float:
    """Step-wise average precision, ``sum_k (R_k - R_{k-1}) P_k``
    (``sklearn.metrics.average_precision_score`` of a binary target)."""
    precision, recall, _ = precision_recall_curve(positive, decision)
    return float(-np.sum(np.diff(recall) * precision[:-1]))
