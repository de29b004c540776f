"""Metric conventions: OOD codebases disagree on which class is positive and how AUPR is integrated.

``conventions:`` in a suite picks one; every OOD metric not overridden by the convention keeps its
default definition from :mod:`pytest_qrel.metrics`. Scores are always higher = more in-distribution.

``hendrycks`` (default; MCM, NegLabel and Hendrycks & Gimpel's baseline code)
    AUPR = average precision (step-wise). ``fpr_at_95_tpr``: ID is the positive class; the FPR is the
    share of OOD samples accepted at the first threshold where 95% of ID samples are accepted.
``openood`` (OpenOOD v1.5, ``openood/evaluators/metrics.py``)
    OOD is the positive class throughout. ``fpr_at_95_tpr`` is the share of ID samples flagged as OOD at
    the first ROC point (scikit-learn ``roc_curve`` with its default ``drop_intermediate=True``) where
    95% of OOD samples are caught. AUPR is the trapezoidal area under scikit-learn's precision-recall
    curve (``auc(recall, precision)``), not average precision. AUROC is the same under both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .metrics import check_scores
from .registry import Registry

CONVENTIONS: Registry[dict[str, Callable[[Any, Any], float]]] = Registry("metric convention")
"""Convention name -> ``{metric name: fn(id_scores, ood_scores) -> float}`` overrides."""


def _stack(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    s_id, s_ood = check_scores(id_scores, "id_scores"), check_scores(ood_scores, "ood_scores")
    scores = np.concatenate([s_id, s_ood])
    is_ood = np.concatenate([np.zeros(len(s_id), np.int64), np.ones(len(s_ood), np.int64)])
    return scores, is_ood


def openood_fpr_at_95_tpr(id_scores: Any, ood_scores: Any) -> float:
    """Share of ID samples flagged as OOD when 95% of OOD samples are caught (OOD positive)."""
    from sklearn.metrics import roc_curve

    scores, is_ood = _stack(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(is_ood, -scores)
    return float(fpr[np.argmax(tpr >= 0.95)])


def _trapezoid_aupr(positive: np.ndarray, decision: np.ndarray) -> float:
    from sklearn.metrics import auc, precision_recall_curve

    precision, recall, _ = precision_recall_curve(positive, decision)
    return float(auc(recall, precision))


def openood_aupr_in(id_scores: Any, ood_scores: Any) -> float:
    """Trapezoidal area under the precision-recall curve, ID positive."""
    scores, is_ood = _stack(id_scores, ood_scores)
    return _trapezoid_aupr(1 - is_ood, scores)


def openood_aupr_out(id_scores: Any, ood_scores: Any) -> float:
    """Trapezoidal area under the precision-recall curve, OOD positive."""
    scores, is_ood = _stack(id_scores, ood_scores)
    return _trapezoid_aupr(is_ood, -scores)


CONVENTIONS.add("hendrycks", {})
CONVENTIONS.add(
    "openood",
    {"fpr_at_95_tpr": openood_fpr_at_95_tpr, "aupr_in": openood_aupr_in, "aupr_out": openood_aupr_out},
)
