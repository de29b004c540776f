"""Metric conventions: OOD codebases disagree on which class is positive, how FPR@95 picks its ROC
point and how AUPR is integrated.

``conventions:`` in a suite picks one; every OOD metric not overridden by the convention keeps its
default definition from :mod:`pytest_qrel.metrics`. Scores are always higher = more in-distribution.
AUROC is the same under all of them. Each entry records, as registry metadata, the codebase it
reproduces and how it computes FPR@95 and AUPR (:func:`describe`; the README's table is this).

``hendrycks`` (default)
    AUPR = average precision (step-wise, ``sklearn.metrics.average_precision_score``), ``aupr_in``
    with ID positive and ``aupr_out`` with OOD positive: exactly what Hendrycks & Gimpel's baseline
    code, MCM's ``get_measures`` (its "AUPR" is ``aupr_in``) and NegLabel's ``evaluate_all``
    (``aupr_in`` and ``aupr_out``) compute. ``fpr_at_95_tpr`` is the textbook definition: ID is the
    positive class and the value is the share of OOD samples accepted at the first ROC point (in
    order of decreasing threshold) whose TPR reaches 0.95, i.e. the lowest FPR with TPR >= 0.95.
    No codebase we know computes exactly this FPR@95: MCM's and NegLabel's code differ from it (up
    to 0.14 on 100-sample sets, more with tied scores, ~0.002 at 5,000 x 5,000); use ``mcm_code`` to
    reproduce their numbers.
``mcm_code`` (MCM ``utils/detection_util.py`` and NegLabel ``mmcls/utils/ood_evaluate.py``, both
    ``fpr_and_fdr_at_recall``, the function of Hendrycks et al.'s outlier-exposure code)
    AUPR and AUROC as ``hendrycks``. ``fpr_at_95_tpr``: ID positive; over the ROC points from the
    highest threshold down to the first one at full recall, the point whose recall (TPR) is
    *nearest* 0.95 (a recall below 0.95 can win); when two recalls are equally near, the higher one;
    among the points at exactly that recall, the one with the highest FPR (except at recall 1, where
    only the first full-recall point is considered). Floating-point ties are resolved exactly as
    ``numpy.argmin`` over those codebases' reversed arrays does.
``openood`` (OpenOOD v1.5, ``openood/evaluators/metrics.py``)
    OOD is the positive class throughout. ``fpr_at_95_tpr`` is the share of ID samples flagged as OOD at
    the first ROC point (scikit-learn ``roc_curve`` with its default ``drop_intermediate=True``) where
    95% of OOD samples are caught. AUPR is the trapezoidal area under scikit-learn's precision-recall
    curve (``auc(recall, precision)``), not average precision.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .metric_inputs import check_not_degenerate, check_scores
from .registry import Registry
from .ranking import precision_recall_curve, roc_curve, trapezoid_auc

CONVENTIONS: Registry[dict[str, Callable[[Any, Any], float]]] = Registry("metric convention")
"""Convention name -> ``{metric name: fn(id_scores, ood_scores) -> float}`` overrides; metadata
``reproduces``, ``fpr_at_95_tpr`` and ``aupr`` (plain-text descriptions)."""

RECALL_LEVEL = 0.95


def _stack(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    s_id, s_ood = check_scores(id_scores, "id_scores"), check_scores(ood_scores, "ood_scores")
    check_not_degenerate(s_id, s_ood)  # every convention refuses all-equal scores, as the defaults do
    scores = np.concatenate([s_id, s_ood])
    is_ood = np.concatenate([np.zeros(len(s_id), np.int64), np.ones(len(s_ood), np.int64)])
    return scores, is_ood


def openood_fpr_at_95_tpr(id_scores: Any, ood_scores: Any) -> float:
    """Share of ID samples flagged as OOD when 95% of OOD samples are caught (OOD positive)."""
    scores, is_ood = _stack(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(is_ood, -scores)
    return float(fpr[np.argmax(tpr >= RECALL_LEVEL)])


def nearest_recall_fpr_at_95_tpr(id_scores: Any, ood_scores: Any) -> float:
    """FPR@95 as MCM's / NegLabel's ``fpr_and_fdr_at_recall``: the ROC point of recall nearest 0.95.

    ID is the positive class (``score >= t`` accepts a sample as ID). The ROC points are
    scikit-learn's ``roc_curve(..., drop_intermediate=False)`` (one per distinct score; its extra
    ``(0, 0)`` point dropped), up to the first with TPR 1. Among them the one minimising
    ``|TPR - 0.95|``; the search runs from full recall downwards, so the first minimum met is the
    higher recall and, at equal recall, the higher FPR. Fraction in [0, 1]; lower is better.
    """
    scores, is_ood = _stack(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(1 - is_ood, scores, drop_intermediate=False)
    fpr, tpr = fpr[1:], tpr[1:]  # one point per distinct score, decreasing threshold
    last = int(np.searchsorted(tpr, tpr[-1], side="left"))  # the first point at full recall
    dist = np.abs(tpr[: last + 1] - RECALL_LEVEL)
    return float(fpr[last - int(np.argmin(dist[::-1]))])


def _trapezoid_aupr(positive: np.ndarray, decision: np.ndarray) -> float:
    precision, recall, _ = precision_recall_curve(positive, decision)
    return trapezoid_auc(recall, precision)


def openood_aupr_in(id_scores: Any, ood_scores: Any) -> float:
    """Trapezoidal area under the precision-recall curve, ID positive."""
    scores, is_ood = _stack(id_scores, ood_scores)
    return _trapezoid_aupr(1 - is_ood, scores)


def openood_aupr_out(id_scores: Any, ood_scores: Any) -> float:
    """Trapezoidal area under the precision-recall curve, OOD positive."""
    scores, is_ood = _stack(id_scores, ood_scores)
    return _trapezoid_aupr(is_ood, -scores)


_AP = "average precision (step-wise): aupr_in ID positive, aupr_out OOD positive"

CONVENTIONS.add(
    "hendrycks",
    {},
    reproduces="AUROC and AUPR of Hendrycks & Gimpel's baseline, MCM (get_measures) and NegLabel (evaluate_all); "
               "FPR@95 is the textbook definition, which none of them computes exactly (see mcm_code)",
    fpr_at_95_tpr="ID positive; FPR at the first ROC point (decreasing threshold) with TPR >= 0.95",
    aupr=_AP,
)
CONVENTIONS.add(
    "mcm_code",
    {"fpr_at_95_tpr": nearest_recall_fpr_at_95_tpr},
    reproduces="MCM (utils/detection_util.py) and NegLabel (mmcls/utils/ood_evaluate.py) exactly: FPR@95, AUROC, "
               "AUPR (MCM's AUPR is aupr_in)",
    fpr_at_95_tpr="ID positive; fpr_and_fdr_at_recall: the ROC point with recall nearest 0.95 (ties: the higher "
                  "recall, then the highest FPR at that recall)",
    aupr=_AP,
)
CONVENTIONS.add(
    "openood",
    {"fpr_at_95_tpr": openood_fpr_at_95_tpr, "aupr_in": openood_aupr_in, "aupr_out": openood_aupr_out},
    reproduces="OpenOOD v1.5 (openood/evaluators/metrics.py, compute_all_metrics) exactly",
    fpr_at_95_tpr="OOD positive; share of ID samples flagged at the first ROC point where 95% of OOD is caught",
    aupr="trapezoidal area under scikit-learn's precision-recall curve: aupr_in ID positive, aupr_out OOD positive",
)


def describe(name: str) -> dict[str, str]:
    """``{"reproduces", "fpr_at_95_tpr", "aupr"}`` of convention ``name`` (for reports and docs).

    Raises:
        UnknownNameError: ``name`` is not a registered convention.
    """
    meta = CONVENTIONS.meta(name)
    return {key: str(meta.get(key, "")) for key in ("reproduces", "fpr_at_95_tpr", "aupr")}
