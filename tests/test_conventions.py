"""Both metric conventions reproduce their reference formulas on the same scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pytest_qrel.conventions import CONVENTIONS
from pytest_qrel.metrics import compute_ood_metrics


def scores(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    # rounded so there are ties, as real MSP scores have
    return np.round(rng.normal(1.0, 1.0, 400), 1), np.round(rng.normal(0.0, 1.0, 300), 1)


def brute_fpr(pos: np.ndarray, neg: np.ndarray) -> float:
    """FPR at the first threshold (descending) where >= 95% of positives score >= it."""
    for t in np.sort(np.unique(np.concatenate([pos, neg])))[::-1]:
        if np.mean(pos >= t) >= 0.95:
            return float(np.mean(neg >= t))
    return 1.0


def trapezoid_pr(pos: np.ndarray, neg: np.ndarray) -> float:
    """Trapezoidal area under precision(recall), thresholds at every distinct score (descending)."""
    points = [(0.0, 1.0)]
    for t in np.sort(np.unique(np.concatenate([pos, neg])))[::-1]:
        tp, fp = np.sum(pos >= t), np.sum(neg >= t)
        points.append((tp / len(pos), tp / (tp + fp)))
    r, p = np.array(points).T
    return float(np.sum(np.diff(r) * (p[1:] + p[:-1]) / 2))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hendrycks_is_average_precision_and_id_positive_fpr(seed):
    s_id, s_ood = scores(seed)
    m = compute_ood_metrics(s_id, s_ood, conventions="hendrycks")
    is_ood = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))]
    assert m["aupr_out"] == pytest.approx(average_precision_score(is_ood, -np.r_[s_id, s_ood]))
    assert m["fpr_at_95_tpr"] == pytest.approx(brute_fpr(s_id, s_ood))  # ID positive


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_openood_is_trapezoid_aupr_and_ood_positive_fpr(seed):
    s_id, s_ood = scores(seed)
    m = compute_ood_metrics(s_id, s_ood, conventions="openood")
    assert m["fpr_at_95_tpr"] == pytest.approx(brute_fpr(-s_ood, -s_id))  # OOD positive: ID samples flagged
    assert m["aupr_out"] == pytest.approx(trapezoid_pr(-s_ood, -s_id), abs=1e-9)
    assert m["aupr_in"] == pytest.approx(trapezoid_pr(s_id, s_ood), abs=1e-9)
    hend = compute_ood_metrics(s_id, s_ood, conventions="hendrycks")
    assert m["auroc"] == pytest.approx(hend["auroc"])  # same under both
    assert m["fpr_at_95_tpr"] != pytest.approx(hend["fpr_at_95_tpr"])  # and they do differ here


def test_conventions_registry():
    assert CONVENTIONS.names() == ["hendrycks", "openood"]
