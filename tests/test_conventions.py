"""Each metric convention reproduces the codebase it names, checked against re-implementations written
here from those codebases' behaviour, on tied and untied scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from pytest_qrel.conventions import CONVENTIONS
from pytest_qrel.metrics import compute_ood_metrics


def scores(seed: int, n_id: int = 400, n_ood: int = 300, *, ties: bool = True) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    s_id, s_ood = rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)
    if ties:  # rounded so there are ties, as real MSP scores have
        return np.round(s_id, 1), np.round(s_ood, 1)
    return s_id, s_ood


CASES = [(seed, n_id, n_ood, ties) for seed in (0, 1, 2) for (n_id, n_ood) in ((400, 300), (100, 100), (37, 61))
         for ties in (True, False)]


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


def mcm_fpr(pos: np.ndarray, neg: np.ndarray, level: float = 0.95) -> float:
    """MCM's / NegLabel's fpr_and_fdr_at_recall, from its behaviour: walk the distinct thresholds
    downwards until every positive is accepted; take the point whose recall is nearest ``level``;
    between equally near recalls the higher; among points at that recall the highest FPR."""
    points = []
    for t in sorted(set(pos.tolist()) | set(neg.tolist()), reverse=True):
        tp, fp = int(np.sum(pos >= t)), int(np.sum(neg >= t))
        points.append((tp / len(pos), fp / len(neg)))
        if tp == len(pos):
            break
    best = min(abs(r - level) for r, _ in points)
    recall = max(r for r, _ in points if abs(r - level) == best)
    return max(f for r, f in points if r == recall)


@pytest.mark.parametrize("seed,n_id,n_ood,ties", CASES)
def test_hendrycks_is_average_precision_and_id_positive_fpr(seed, n_id, n_ood, ties):
    s_id, s_ood = scores(seed, n_id, n_ood, ties=ties)
    m = compute_ood_metrics(s_id, s_ood, conventions="hendrycks")
    is_ood = np.r_[np.zeros(len(s_id)), np.ones(len(s_ood))]
    assert m["aupr_out"] == pytest.approx(average_precision_score(is_ood, -np.r_[s_id, s_ood]))
    assert m["fpr_at_95_tpr"] == pytest.approx(brute_fpr(s_id, s_ood))  # ID positive


@pytest.mark.parametrize("seed,n_id,n_ood,ties", CASES)
def test_openood_is_trapezoid_aupr_and_ood_positive_fpr(seed, n_id, n_ood, ties):
    s_id, s_ood = scores(seed, n_id, n_ood, ties=ties)
    m = compute_ood_metrics(s_id, s_ood, conventions="openood")
    assert m["fpr_at_95_tpr"] == pytest.approx(brute_fpr(-s_ood, -s_id))  # OOD positive: ID samples flagged
    assert m["aupr_out"] == pytest.approx(trapezoid_pr(-s_ood, -s_id), abs=1e-9)
    assert m["aupr_in"] == pytest.approx(trapezoid_pr(s_id, s_ood), abs=1e-9)
    hend = compute_ood_metrics(s_id, s_ood, conventions="hendrycks")
    assert m["auroc"] == pytest.approx(hend["auroc"])  # same under both
    if (seed, n_id, n_ood, ties) == (0, 400, 300, True):
        assert m["fpr_at_95_tpr"] != pytest.approx(hend["fpr_at_95_tpr"])  # and they do differ here


@pytest.mark.parametrize("seed,n_id,n_ood,ties", CASES)
def test_mcm_code_is_the_nearest_recall_point(seed, n_id, n_ood, ties):
    s_id, s_ood = scores(seed, n_id, n_ood, ties=ties)
    m = compute_ood_metrics(s_id, s_ood, conventions="mcm_code")
    assert m["fpr_at_95_tpr"] == mcm_fpr(s_id, s_ood)  # exactly: same float operations
    hend = compute_ood_metrics(s_id, s_ood, conventions="hendrycks")
    for key in ("auroc", "aupr_in", "aupr_out"):  # MCM / NegLabel: sklearn AUROC and average precision
        assert m[key] == hend[key]


def fpr_gap(n_id: int, seeds=range(12)) -> list[float]:
    """mcm_code - hendrycks FPR@95 on untied n_id x 100 sets."""
    out = []
    for seed in seeds:
        s_id, s_ood = scores(seed, n_id, 100, ties=False)
        out.append(compute_ood_metrics(s_id, s_ood, "mcm_code")["fpr_at_95_tpr"]
                   - compute_ood_metrics(s_id, s_ood, "hendrycks")["fpr_at_95_tpr"])
    return out


def test_mcm_code_differs_from_the_definition_both_ways():
    # 100 ID samples: recall 0.95 is reached exactly, and MCM takes the highest FPR at it
    gaps = fpr_gap(100)
    assert min(gaps) >= 0.0 and max(gaps) > 0.05
    # 37 ID samples: the nearest recall, 35/37 = 0.946, lies below 0.95; without ties its highest FPR is
    # the FPR at the next recall (36/37), which is the definition's point: the same value
    assert fpr_gap(37) == [0.0] * 12
    # with tied scores the nearest recall below 0.95 can skip a whole block of OOD samples
    s_id = np.array([1.0] * 94 + [0.5] * 6)  # recall 0.94 at t = 1, then 1.0 at t = 0.5
    s_ood = np.array([0.5] * 50 + [0.0] * 50)
    assert compute_ood_metrics(s_id, s_ood, "hendrycks")["fpr_at_95_tpr"] == 0.5  # first TPR >= 0.95: t = 0.5
    assert compute_ood_metrics(s_id, s_ood, "mcm_code")["fpr_at_95_tpr"] == 0.0  # recall 0.94 is nearer
    assert mcm_fpr(s_id, s_ood) == 0.0


def test_mcm_code_takes_the_highest_fpr_at_the_nearest_recall():
    # thresholds 3, 2, 1: recall 0.95 at t = 3 (fpr 0) and at t = 2 (fpr 0.5, only OOD samples added)
    s_id = np.array([3.0] * 95 + [1.0] * 5)
    s_ood = np.array([2.0] * 2 + [0.0] * 2)
    assert compute_ood_metrics(s_id, s_ood, "mcm_code", min_ood=1)["fpr_at_95_tpr"] == 0.5
    assert compute_ood_metrics(s_id, s_ood, "hendrycks", min_ood=1)["fpr_at_95_tpr"] == 0.0  # the lowest FPR at TPR >= 0.95
    assert mcm_fpr(s_id, s_ood) == 0.5


def test_conventions_registry_and_descriptions():
    from pytest_qrel.conventions import describe

    assert CONVENTIONS.names() == ["hendrycks", "mcm_code", "openood"]
    for name in CONVENTIONS.names():
        info = describe(name)
        assert all(info[k] for k in ("reproduces", "fpr_at_95_tpr", "aupr")), name
    assert "MCM" in describe("mcm_code")["reproduces"] and "NegLabel" in describe("mcm_code")["reproduces"]
    assert "OpenOOD" in describe("openood")["reproduces"]
