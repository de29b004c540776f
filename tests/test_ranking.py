"""pytest_qrel.ranking equals scikit-learn's ranking metrics (the reference) float for float."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from pytest_qrel import ranking


def _cases() -> list[tuple[str, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    cases = []
    for n in (2, 3, 7, 50, 1001):
        positive = rng.integers(0, 2, n)
        positive[0], positive[-1] = 0, 1  # both classes present
        cases.append((f"continuous-{n}", positive, rng.normal(size=n)))
        cases.append((f"ties-{n}", positive, rng.integers(0, 4, n).astype(np.float32)))
        cases.append((f"separable-{n}", positive, positive + rng.uniform(0, 0.5, n)))
    cases.append(("all-tied", np.array([0, 1, 1, 0]), np.zeros(4)))
    cases.append(("reversed", np.array([1, 1, 0, 0]), np.array([0.0, 1.0, 2.0, 3.0])))
    return cases


CASES = _cases()


@pytest.mark.parametrize(("name", "positive", "decision"), CASES, ids=[c[0] for c in CASES])
def test_curves_and_areas_equal_scikit_learn(name: str, positive: np.ndarray, decision: np.ndarray) -> None:
    for drop in (True, False):
        ours, ref = ranking.roc_curve(positive, decision, drop_intermediate=drop), skm.roc_curve(positive, decision, drop_intermediate=drop)
        for a, b in zip(ours, ref):
            np.testing.assert_array_equal(a, b)
    for a, b in zip(ranking.precision_recall_curve(positive, decision), skm.precision_recall_curve(positive, decision)):
        np.testing.assert_array_equal(a, b)
    assert ranking.roc_auc(positive, decision) == skm.roc_auc_score(positive, decision)
    assert ranking.average_precision(positive, decision) == skm.average_precision_score(positive, decision)
    precision, recall, _ = ranking.precision_recall_curve(positive, decision)
    assert ranking.trapezoid_auc(recall, precision) == skm.auc(recall, precision)


def test_trapezoid_auc_refuses_a_non_monotonic_x() -> None:
    with pytest.raises(ValueError, match="neither increasing nor decreasing"):
        ranking.trapezoid_auc(np.array([0.0, 1.0, 0.5]), np.array([0.0, 1.0, 1.0]))
