"""Plot data of a unit record: reliability bins, ROC and PR points, thinning."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_qrel import curves
from pytest_qrel.metrics import aupr_out, auroc, ece, softmax


def reference_bins(conf: np.ndarray, correct: np.ndarray, n_bins: int) -> tuple[list[int], list[float | None]]:
    """Bins written out one by one: [e_k, e_k+1) for every bin but the last, which is [e_n-1, 1]."""
    counts, accs = [], []
    for k in range(n_bins):
        lo, hi = k / n_bins, (k + 1) / n_bins
        inside = (conf >= lo) & ((conf < hi) if k < n_bins - 1 else (conf <= 1.0))
        counts.append(int(inside.sum()))
        accs.append(float(correct[inside].mean()) if inside.any() else None)
    return counts, accs


def test_reliability_bins_match_ece_and_an_explicit_binning() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (500, 6))
    labels = rng.integers(0, 6, 500)
    probs = softmax(logits)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    conf[:3] = [1.0, 0.2, 0.4]  # exactly on edges: 1.0 goes to the last bin, 0.2 and 0.4 to the bin on their right
    bins = curves.reliability_bins(conf, correct)
    assert len(bins["edges"]) == 16 and bins["edges"][0] == 0.0 and bins["edges"][-1] == 1.0
    counts, accs = reference_bins(conf, correct, 15)
    assert bins["count"] == counts
    for got, want in zip(bins["accuracy"], accs):
        assert (got is None and want is None) or got == pytest.approx(want, abs=1e-4)
    # exact agreement with metrics.ece on untouched data
    probs = softmax(logits)
    conf, correct = probs.max(1), probs.argmax(1) == labels
    b = curves.reliability_bins(conf, correct)
    gap = sum(c * abs(a - m) for c, a, m in zip(b["count"], b["accuracy"], b["confidence"]) if c) / sum(b["count"])
    assert gap == pytest.approx(ece(probs, labels), abs=1e-3)  # bins are rounded to 4 decimals


def test_reliability_bins_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="confidence must lie in"):
        curves.reliability_bins([1.5], [True])
    with pytest.raises(ValueError, match="entries"):
        curves.reliability_bins([0.5, 0.6], [True])
    with pytest.raises(ValueError, match="n_bins"):
        curves.reliability_bins([0.5], [True], n_bins=0)


def _scores(n_id: int = 3000, n_ood: int = 2000, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)


def test_roc_points_keep_the_curve_within_the_point_budget() -> None:
    s_id, s_ood = _scores()
    full = curves.roc_points(s_id, s_ood, max_points=10**6)
    thin = curves.roc_points(s_id, s_ood, max_points=100)
    assert len(thin["fpr"]) <= 100 < len(full["fpr"])
    assert (thin["fpr"][0], thin["tpr"][0]) == (0.0, 0.0) and (thin["fpr"][-1], thin["tpr"][-1]) == (1.0, 1.0)
    assert np.all(np.diff(thin["fpr"]) >= 0) and np.all(np.diff(thin["tpr"]) >= 0)
    # ID is the positive class: the area under the full curve is the library's AUROC
    assert np.trapezoid(full["tpr"], full["fpr"]) == pytest.approx(auroc(s_id, s_ood), abs=1e-3)
    # the thinned curve stays close to the full one everywhere
    dev = np.abs(np.interp(full["fpr"], thin["fpr"], thin["tpr"]) - np.asarray(full["tpr"]))
    assert dev.max() < 0.02


def test_pr_points_have_ood_as_the_positive_class() -> None:
    s_id, s_ood = _scores(800, 400)
    full = curves.pr_points(s_id, s_ood, max_points=10**6)
    recall, precision = np.asarray(full["recall"]), np.asarray(full["precision"])
    ap = float(np.sum(-np.diff(recall) * precision[:-1]))  # step-wise, recall decreasing
    assert ap == pytest.approx(aupr_out(s_id, s_ood), abs=1e-3)
    thin = curves.pr_points(s_id, s_ood, max_points=50)
    assert len(thin["recall"]) <= 50 and thin["recall"][0] == 1.0 and thin["recall"][-1] == 0.0
    assert precision[0] == pytest.approx(400 / 1200, abs=1e-4)  # at recall 1: the OOD share


def test_simplify_keeps_corners_and_drops_straight_runs() -> None:
    x = np.r_[np.zeros(50), np.linspace(0, 1, 50)]
    y = np.r_[np.linspace(0, 1, 50), np.ones(50)]
    sx, sy = curves.simplify(x, y, max_points=10)
    assert list(zip(sx, sy)) == [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]  # the L shape: three points
    sx, sy = curves.simplify([0, 1, 2], [0, 5, 0], max_points=2)
    assert list(sx) == [0, 2]
    with pytest.raises(ValueError, match="at least 2"):
        curves.simplify([0, 1, 2], [0, 1, 2], max_points=1)


def test_unit_curves_from_sample_arrays() -> None:
    s_id, s_ood = _scores(300, 200)
    rng = np.random.default_rng(3)
    arrays = {
        "digits": {"confidence": rng.random(300), "correct": rng.random(300) < 0.9, "score.msp": s_id, "score.energy": s_id * 2},
        "noise": {"score.msp": s_ood, "score.energy": s_ood * 2},
        "photos": {"score.msp": s_ood - 1},  # no energy score here: that curve is skipped
    }
    out = curves.unit_curves(arrays, "digits", ["noise", "photos", "missing"], ["msp", "energy"])
    assert out["reliability"]["dataset"] == "digits" and sum(out["reliability"]["count"]) == 300
    assert set(out["roc"]) == {"msp", "energy"} and set(out["roc"]["msp"]) == {"noise", "photos"}
    assert set(out["pr"]["energy"]) == {"noise"}
    assert curves.unit_curves({"digits": {}}, "digits", ["noise"], ["msp"]) == {}
    with pytest.raises(ValueError, match="ID set 'imagenet'"):
        curves.unit_curves(arrays, "imagenet")
