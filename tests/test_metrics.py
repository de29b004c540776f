"""Tests of pytest_qrel.metrics against scikit-learn, brute force and hand-computed values."""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from pytest_qrel import metrics
from pytest_qrel.metrics import (
    METRICS,
    aupr_in,
    aupr_out,
    auroc,
    compute_id_metrics,
    compute_ood_metrics,
    ece,
    fpr_at_95_tpr,
    nll,
    softmax,
    top1,
)
from pytest_qrel.registry import Registry

SEEDS = [0, 1, 2, 3, 4]
OOD_FNS = [auroc, aupr_in, aupr_out, fpr_at_95_tpr]


# ------------------------------------------------------------------------------------------
# Independent reference implementations (counting, no sklearn curves)
# ------------------------------------------------------------------------------------------


def tied_scores(seed: int, n_id: int = 300, n_ood: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Overlapping ID/OOD scores rounded to integers, so there are many ties."""
    rng = np.random.default_rng(seed)
    return np.round(rng.normal(1.0, 1.5, n_id)), np.round(rng.normal(0.0, 1.5, n_ood))


def brute_average_precision(pos_values: np.ndarray, neg_values: np.ndarray) -> float:
    """AP = sum over distinct thresholds (descending) of (R_k - R_{k-1}) * P_k, by counting."""
    ap, prev_recall = 0.0, 0.0
    for t in np.unique(np.concatenate([pos_values, neg_values]))[::-1]:
        tp = np.sum(pos_values >= t)
        fp = np.sum(neg_values >= t)
        recall = tp / len(pos_values)
        ap += (recall - prev_recall) * (tp / (tp + fp))
        prev_recall = recall
    return float(ap)


def brute_auroc(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """Probability that a random ID sample outscores a random OOD one (ties count 1/2)."""
    diff = id_s[:, None] - ood_s[None, :]
    return float(np.mean((diff > 0) + 0.5 * (diff == 0)))


def brute_fpr95(id_s: np.ndarray, ood_s: np.ndarray) -> float:
    """FPR at the first threshold (descending) where TPR >= 0.95; exact integer comparison."""
    for t in np.unique(np.concatenate([id_s, ood_s]))[::-1]:
        tp = int(np.sum(id_s >= t))
        if 20 * tp >= 19 * len(id_s):  # tp / n_id >= 0.95 without rounding
            return float(np.sum(ood_s >= t) / len(ood_s))
    raise AssertionError("unreachable: the lowest threshold accepts every ID sample")


def loop_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """Straightforward ECE: bins [lo, hi) except the last [lo, 1]; loop over bins."""
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    total = 0.0
    for b in range(n_bins):
        lo, hi = edges[b], edges[b + 1]
        if b == n_bins - 1:
            in_bin = (conf >= lo) & (conf <= hi)
        else:
            in_bin = (conf >= lo) & (conf < hi)
        if in_bin.any():
            gap = abs(correct[in_bin].mean() - conf[in_bin].mean())
            total += in_bin.mean() * gap
    return total


def random_probs(seed: int, n: int = 500, c: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities with confidences spread over (0.1, 1) and accuracy ~0.6 at every confidence.

    So low-confidence bins are under-confident and high-confidence bins over-confident: the gaps
    have both signs and the binning changes the ECE (with one sign everywhere, every binning
    would give the same |mean acc - mean conf|).
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, rng.uniform(0.1, 4.0, (n, 1)), (n, c))
    pred = logits.argmax(axis=1)
    other = (pred + rng.integers(1, c, n)) % c
    labels = np.where(rng.random(n) < 0.6, pred, other)
    return softmax(logits), labels


# ------------------------------------------------------------------------------------------
# OOD metrics: agreement with scikit-learn and brute force, on tied data
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_ood_metrics_agree_with_sklearn_on_ties(seed: int) -> None:
    id_s, ood_s = tied_scores(seed)
    assert len(np.unique(np.concatenate([id_s, ood_s]))) < 30  # really tied
    is_id = np.r_[np.ones(len(id_s)), np.zeros(len(ood_s))]
    s = np.r_[id_s, ood_s]
    assert aupr_out(id_s, ood_s) == pytest.approx(average_precision_score(1 - is_id, -s), abs=1e-12)
    assert aupr_in(id_s, ood_s) == pytest.approx(average_precision_score(is_id, s), abs=1e-12)
    assert auroc(id_s, ood_s) == pytest.approx(roc_auc_score(is_id, s), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_ood_metrics_agree_with_brute_force_on_ties(seed: int) -> None:
    id_s, ood_s = tied_scores(seed)
    # aupr_out: OOD positive, decision value -score
    assert aupr_out(id_s, ood_s) == pytest.approx(brute_average_precision(-ood_s, -id_s), abs=1e-12)
    # aupr_in: ID positive, decision value score
    assert aupr_in(id_s, ood_s) == pytest.approx(brute_average_precision(id_s, ood_s), abs=1e-12)
    assert auroc(id_s, ood_s) == pytest.approx(brute_auroc(id_s, ood_s), abs=1e-12)
    assert fpr_at_95_tpr(id_s, ood_s) == brute_fpr95(id_s, ood_s)


@pytest.mark.parametrize("seed", SEEDS)
def test_fpr95_brute_force_continuous_and_small(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    n_id = int(rng.integers(5, 60))
    id_s = rng.normal(1.0, 1.0, n_id)
    ood_s = rng.normal(0.0, 1.0, int(rng.integers(5, 60)))
    assert fpr_at_95_tpr(id_s, ood_s) == brute_fpr95(id_s, ood_s)


def test_ood_hand_computed_asymmetric_case() -> None:
    # ID [3, 2, 0], OOD [1]. Descending: 3(ID) 2(ID) 1(OOD) 0(ID).
    id_s, ood_s = [3.0, 2.0, 0.0], [1.0]
    # ID positive: precision at each ID hit 1/1, 2/2, 3/4 -> AP = (1 + 1 + 0.75) / 3
    assert aupr_in(id_s, ood_s) == pytest.approx(11 / 12)
    # OOD positive on -score: order 0(ID) then 1(OOD): precision at the OOD hit = 1/2
    assert aupr_out(id_s, ood_s) == pytest.approx(0.5)
    # pairs ID > OOD: (3,1), (2,1) of 3
    assert auroc(id_s, ood_s) == pytest.approx(2 / 3)
    # TPR >= 0.95 needs all 3 ID accepted (threshold 0) -> the OOD sample is accepted too
    assert fpr_at_95_tpr(id_s, ood_s) == 1.0


def test_fpr95_takes_first_point_at_exactly_95_percent() -> None:
    id_s = np.arange(1.0, 21.0)  # 20 ID samples: threshold 2 accepts 19/20 = 0.95 exactly
    ood_s = np.array([1.5, 0.5, 10.5])
    # at threshold 2 only 10.5 is accepted -> 1/3 (a strict ">" would go to threshold 1 -> 2/3)
    assert fpr_at_95_tpr(id_s, ood_s) == pytest.approx(1 / 3)


def test_fpr95_no_interpolation_between_points() -> None:
    # 10 ID samples: TPR 0.9 at threshold 2, then 1.0 at threshold 1 (first point >= 0.95)
    id_s = np.arange(1.0, 11.0)
    ood_s = np.array([1.5, 0.5, 10.5, 9.5])
    # threshold 1 accepts 1.5, 10.5, 9.5 -> 3/4; interpolating between (0.9, 2/4) and
    # (1.0, 3/4) would give 5/8
    assert fpr_at_95_tpr(id_s, ood_s) == pytest.approx(3 / 4)


def test_fpr95_keeps_collinear_points_on_a_diagonal_roc() -> None:
    # every threshold holds one ID and one OOD sample: the ROC is the diagonal, and each of its
    # collinear points is an operating point (roc_curve(drop_intermediate=True) would keep only
    # the two ends and report 1.0)
    id_s = ood_s = np.arange(20.0)
    assert fpr_at_95_tpr(id_s, ood_s) == pytest.approx(0.95)
    assert brute_fpr95(id_s, ood_s) == pytest.approx(0.95)


def test_perfect_separation() -> None:
    id_s, ood_s = np.array([5.0, 6.0, 7.0]), np.array([-1.0, 0.0, 1.0, 2.0])
    assert auroc(id_s, ood_s) == 1.0
    assert aupr_out(id_s, ood_s) == 1.0
    assert aupr_in(id_s, ood_s) == 1.0
    assert fpr_at_95_tpr(id_s, ood_s) == 0.0


def test_reversed_separation() -> None:
    id_s, ood_s = np.array([-1.0, 0.0, 1.0]), np.array([5.0, 6.0, 7.0, 8.0])
    assert auroc(id_s, ood_s) == 0.0
    assert fpr_at_95_tpr(id_s, ood_s) == 1.0
    # AP with every positive ranked last: mean of precisions 1/5, 2/6, 3/7 for ID positive
    assert aupr_in(id_s, ood_s) == pytest.approx((1 / 5 + 2 / 6 + 3 / 7) / 3)


def test_all_tied_is_a_degenerate_metric_not_chance() -> None:
    # Every score equal: AUROC 0.5 and FPR@95 1.0 would be artefacts of the ties, so each OOD
    # metric (and compute_ood_metrics, whatever the convention) refuses with one clear line.
    from pytest_qrel.errors import NumericsError

    id_s, ood_s = np.zeros(3), np.zeros(5)
    msg = (
        "all 3 ID and 5 OOD scores equal 0: the OOD metrics are degenerate "
        "(AUROC 0.5 and FPR@95 1.0 by construction); the outputs do not depend on the input"
    )
    for fn in (*OOD_FNS, lambda a, b: compute_ood_metrics(a, b, min_ood=1), lambda a, b: compute_ood_metrics(a, b, "openood", min_ood=1)):
        with pytest.raises(NumericsError) as info:
            fn(id_s, ood_s)
        assert str(info.value) == msg
    # one distinct value on either side is enough to rank: ties within a side are fine
    assert auroc(np.zeros(3), np.r_[np.zeros(4), -1.0]) == pytest.approx(0.5 + 0.5 * 1 / 5)


def test_ood_metrics_accept_lists_and_ints_and_return_floats() -> None:
    for fn in OOD_FNS:
        v = fn([3, 2, 1], [0, 1])
        assert type(v) is float
        assert 0.0 <= v <= 1.0


# ------------------------------------------------------------------------------------------
# ECE
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("n_bins", [15, 10, 7])
def test_ece_matches_loop_reference(seed: int, n_bins: int) -> None:
    probs, labels = random_probs(seed)
    assert ece(probs, labels, n_bins=n_bins) == pytest.approx(loop_ece(probs, labels, n_bins), abs=1e-12)


def test_random_probs_make_binning_matter() -> None:
    probs, labels = random_probs(0)
    conf = probs.max(axis=1)
    assert conf.min() < 0.3 and conf.max() > 0.9
    overall_gap = abs(np.mean(probs.argmax(axis=1) == labels) - conf.mean())
    assert loop_ece(probs, labels, 15) > overall_gap + 0.05


def test_ece_default_is_15_bins() -> None:
    probs, labels = random_probs(7)
    assert ece(probs, labels) == pytest.approx(loop_ece(probs, labels, 15), abs=1e-12)
    assert ece(probs, labels) != pytest.approx(loop_ece(probs, labels, 10), abs=1e-6)


def test_ece_hand_computed_edges_and_one() -> None:
    # 4 bins with exact edges 0, .25, .5, .75, 1
    probs = np.array(
        [
            [0.5, 0.5],  # conf .5 exactly on an edge -> bin [.5, .75); arg-max 0 == label: right
            [0.25, 0.75],  # conf .75 on an edge -> last bin [.75, 1]; right
            [0.0, 1.0],  # conf 1.0 -> last bin; wrong
            [0.4, 0.6],  # conf .6 -> bin [.5, .75); wrong
        ]
    )
    labels = np.array([0, 1, 0, 0])
    # bin [.5,.75): acc 1/2, conf .55 -> |.05| * 2/4 ; bin [.75,1]: acc 1/2, conf .875 -> .375 * 2/4
    assert ece(probs, labels, n_bins=4) == pytest.approx(0.025 + 0.1875)
    # (with (lo, hi] bins it would be .125 + .0875 + .25 = .4625; with 1.0 in a bin of its
    # own, as torchmetrics does, .025 + .0625 + .25 = .3375)


def test_ece_single_confident_mistake_is_one() -> None:
    # the worst possible calibration: confidence exactly 1.0 and wrong
    assert ece([[1.0, 0.0, 0.0]], [2]) == 1.0
    assert ece([[1.0, 0.0, 0.0]], [0]) == 0.0


def test_ece_two_bins_hand_computed() -> None:
    # conf .9 right, .9 wrong, .6 right, .6 right; with 2 bins, bin [.5, 1] holds all:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.4, 0.6], [0.6, 0.4]])
    labels = np.array([0, 1, 1, 0])
    # acc 3/4, mean conf .75 -> 0
    assert ece(probs, labels, n_bins=2) == pytest.approx(0.0, abs=1e-12)
    # with 5 bins the .9s and the .6s are in different bins (whichever side of the edge
    # 3 * 0.2 the .6s fall): conf .9, acc .5 -> .4 * 2/4; conf .6, acc 1 -> .4 * 2/4
    assert ece(probs, labels, n_bins=5) == pytest.approx(0.4)


def test_ece_perfectly_calibrated_is_near_zero_and_overconfident_is_not() -> None:
    rng = np.random.default_rng(0)
    n = 200_000
    conf = rng.uniform(0.5, 1.0, n)
    probs = np.stack([conf, 1.0 - conf], axis=1)
    correct = rng.random(n) < conf
    labels = np.where(correct, 0, 1)
    assert ece(probs, labels) < 0.005
    # now correct only with probability conf - 0.2: ECE ~ 0.2
    correct = rng.random(n) < conf - 0.2
    labels = np.where(correct, 0, 1)
    assert ece(probs, labels) == pytest.approx(0.2, abs=0.01)


def _torchmetrics_style_ece(probs: np.ndarray, labels: np.ndarray, n_bins: int) -> float:
    """torchmetrics' binning, re-derived: bucketize(right=True) - 1 into n_bins + 1 slots."""
    torch = pytest.importorskip("torch")
    p = torch.as_tensor(probs, dtype=torch.float64)
    conf, pred = p.max(dim=1)
    acc = (pred == torch.as_tensor(labels)).to(torch.float64)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)
    idx = torch.bucketize(conf, edges, right=True) - 1
    count = torch.zeros(n_bins + 1, dtype=torch.float64).scatter_add_(0, idx, torch.ones_like(conf))
    conf_bin = torch.zeros(n_bins + 1, dtype=torch.float64).scatter_add_(0, idx, conf)
    acc_bin = torch.zeros(n_bins + 1, dtype=torch.float64).scatter_add_(0, idx, acc)
    return float(torch.sum(torch.abs(acc_bin - conf_bin)) / count.sum())


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_ece_matches_torchmetrics_binning_below_one(seed: int) -> None:
    probs, labels = random_probs(seed)
    assert probs.max() < 1.0
    assert ece(probs, labels) == pytest.approx(_torchmetrics_style_ece(probs, labels, 15), abs=1e-12)


def test_ece_documented_difference_from_torchmetrics_at_one() -> None:
    # conf .95 right and 1.0 wrong share the last of 15 bins for us; torchmetrics splits them
    probs = np.array([[0.95, 0.05], [1.0, 0.0]])
    labels = np.array([0, 1])
    assert ece(probs, labels) == pytest.approx(abs(0.5 - 0.975))
    assert _torchmetrics_style_ece(probs, labels, 15) == pytest.approx(0.5 * 0.05 + 0.5 * 1.0)


def test_ece_accepts_float32_probs() -> None:
    probs, labels = random_probs(3)
    p32 = probs.astype(np.float32)
    assert ece(p32, labels) == pytest.approx(loop_ece(p32.astype(np.float64), labels, 15), abs=1e-12)


# ------------------------------------------------------------------------------------------
# top1 / nll / softmax
# ------------------------------------------------------------------------------------------


def test_top1_hand_computed() -> None:
    logits = np.array([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [5.0, 4.0, 6.0], [1.0, 1.0, 0.0]])
    # predictions 0, 1, 2, 0 (tie -> lowest index)
    assert top1(logits, [0, 1, 2, 0]) == 1.0
    assert top1(logits, [0, 1, 0, 1]) == 0.5
    assert top1(logits, [1, 0, 0, 1]) == 0.0


def test_nll_hand_computed() -> None:
    logits = np.array([[0.0, math.log(3.0)], [0.0, math.log(3.0)]])  # p = (1/4, 3/4)
    assert nll(logits, [1, 0]) == pytest.approx((math.log(4 / 3) + math.log(4.0)) / 2)
    assert nll([[0.0, 0.0, 0.0]], [2]) == pytest.approx(math.log(3.0))


def test_nll_matches_naive_minus_log_softmax() -> None:
    logits = np.array([[1.0, 2.0, 0.5], [-1.0, 0.0, 3.0]])
    labels = np.array([2, 0])
    e = np.exp(logits)
    naive = -np.log(e[np.arange(2), labels] / e.sum(axis=1))
    assert nll(logits, labels) == pytest.approx(float(naive.mean()), rel=1e-12)


def test_nll_and_softmax_stable_with_huge_logits() -> None:
    logits = np.array([[1e4, 0.0], [0.0, 1e4]])
    # sample 0: p(label 0) = 1 -> 0 nats; sample 1: -log(e^0 / e^1e4) = 1e4 nats
    assert nll(logits, [0, 0]) == pytest.approx(5000.0)
    assert np.isfinite(softmax(np.full((2, 5), 1e4))).all()
    assert softmax(np.full((1, 4), 1e4)).tolist() == [[0.25] * 4]
    assert nll(np.full((1, 4), -1e4), [3]) == pytest.approx(math.log(4.0))


def test_softmax_rows_sum_to_one_float64() -> None:
    rng = np.random.default_rng(0)
    p = softmax(rng.normal(0, 10, (50, 7)).astype(np.float32))
    assert p.dtype == np.float64
    assert np.allclose(p.sum(axis=1), 1.0)
    assert (p >= 0).all()


# ------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fn", OOD_FNS, ids=lambda f: f.__name__)
def test_ood_validation_messages(fn) -> None:
    with pytest.raises(ValueError, match=r"id_scores is empty"):
        fn([], [1.0])
    with pytest.raises(ValueError, match=r"ood_scores is empty"):
        fn([1.0], np.array([]))
    with pytest.raises(ValueError, match=r"ood_scores contains non-finite values: 1 NaN and 0 inf \(first at index 1\)"):
        fn([1.0, 2.0], [0.0, np.nan])
    with pytest.raises(ValueError, match=r"id_scores contains non-finite values: 0 NaN and 1 inf"):
        fn([np.inf, 2.0], [0.0])
    with pytest.raises(ValueError, match=r"id_scores must be 1-D .* got shape \(2, 1\)"):
        fn([[1.0], [2.0]], [0.0])
    with pytest.raises(ValueError, match=r"ood_scores must be numeric"):
        fn([1.0], ["a"])


@pytest.mark.parametrize("fn", [top1, nll], ids=lambda f: f.__name__)
def test_logits_validation_messages(fn) -> None:
    good = np.zeros((3, 4))
    with pytest.raises(ValueError, match=r"logits must be 2-D with shape \(N, C\); got shape \(4,\)"):
        fn(np.zeros(4), [0, 1, 2, 3])
    with pytest.raises(ValueError, match=r"logits is empty: got shape \(0, 4\)"):
        fn(np.zeros((0, 4)), [])
    with pytest.raises(ValueError, match=r"labels has 2 entries but there are 3 samples"):
        fn(good, [0, 1])
    with pytest.raises(ValueError, match=r"labels out of range: values must be in \[0, 4\).*found min 0, max 4"):
        fn(good, [0, 1, 4])
    with pytest.raises(ValueError, match=r"labels out of range.*found min -1"):
        fn(good, [-1, 1, 2])
    with pytest.raises(ValueError, match=r"labels must be integer class indices; found fractional"):
        fn(good, [0.0, 1.5, 2.0])
    with pytest.raises(ValueError, match=r"labels must be 1-D"):
        fn(good, [[0], [1], [2]])
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match=r"logits contains non-finite values: 1 NaN .*first at index \(1, 2\)"):
        fn(bad, [0, 1, 2])


def test_labels_integer_valued_floats_are_accepted() -> None:
    assert top1(np.eye(3), np.array([0.0, 1.0, 2.0])) == 1.0


def test_ece_validation_messages() -> None:
    with pytest.raises(ValueError, match=r"probs must be probabilities in \[0, 1\]; found values in \[-1, 2\].*softmax"):
        ece([[2.0, -1.0]], [0])
    with pytest.raises(ValueError, match=r"probs rows must sum to 1; row 1 sums to 0.5"):
        ece([[0.5, 0.5], [0.25, 0.25]], [0, 1])
    with pytest.raises(ValueError, match=r"n_bins must be a positive integer; got 0"):
        ece([[0.5, 0.5]], [0], n_bins=0)
    with pytest.raises(ValueError, match=r"labels has 2 entries but there are 1 samples"):
        ece([[0.5, 0.5]], [0, 1])
    with pytest.raises(ValueError, match=r"probs contains non-finite values"):
        ece([[np.nan, 0.5]], [0])


# ------------------------------------------------------------------------------------------
# Registry and engine entry points
# ------------------------------------------------------------------------------------------

EXPECTED = {
    # name: (higher_is_better, kind, fraction, input)
    "top1": (True, "id", True, "logits"),
    "nll": (False, "id", False, "logits"),
    "ece": (False, "id", True, "probs"),
    "auroc": (True, "ood", True, "scores"),
    "aupr_in": (True, "ood", True, "scores"),
    "aupr_out": (True, "ood", True, "scores"),
    "fpr_at_95_tpr": (False, "ood", True, "scores"),
    "vulnerability": (False, "pair", True, "pair"),
    "spectral_error": (False, "spectral", False, "spectra"),
    "spectral_error_high": (False, "spectral", False, "spectra"),
    # runtime units' audit numbers (pytest_qrel.runtimes.checks): read from a record, no function here
    "parity": (False, "runtime", False, "runtime"),
    "logit_diff": (False, "runtime", False, "runtime"),
    "agreement": (True, "runtime", True, "runtime"),
    "int8_share": (True, "runtime", True, "runtime"),
    "latency": (False, "runtime", False, "runtime"),
    "latency_b1": (False, "runtime", False, "runtime"),
    "memory": (False, "runtime", False, "runtime"),
    "size": (False, "runtime", False, "runtime"),
}


def test_registry_names_and_metadata() -> None:
    assert METRICS.names() == sorted(EXPECTED)
    for name, (hib, kind, fraction, inp) in EXPECTED.items():
        meta = METRICS.meta(name)
        assert set(meta) >= {"higher_is_better", "kind", "fraction", "input"}
        assert meta["higher_is_better"] is hib, name
        assert meta["kind"] == kind, name
        assert meta["fraction"] is fraction, name
        assert meta["input"] == inp, name
        if kind != "runtime":
            assert METRICS.get(name) is getattr(metrics, name)


def test_registry_unknown_metric_lists_known() -> None:
    from pytest_qrel.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=r"unknown metric 'fpr95'.*known: .*fpr_at_95_tpr"):
        METRICS.get("fpr95")


def test_compute_id_metrics_matches_individual_calls() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (200, 5))
    labels = rng.integers(0, 5, 200)
    out = compute_id_metrics(logits, labels)
    assert set(out) == {"top1", "nll", "ece"}
    assert all(type(v) is float for v in out.values())
    assert out["top1"] == top1(logits, labels)
    assert out["nll"] == nll(logits, labels)
    assert out["ece"] == ece(softmax(logits), labels)


def test_compute_ood_metrics_matches_individual_calls() -> None:
    id_s, ood_s = tied_scores(0)
    out = compute_ood_metrics(id_s, ood_s)
    assert set(out) == {"auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr"}
    assert all(type(v) is float for v in out.values())
    for fn in OOD_FNS:
        assert out[fn.__name__] == fn(id_s, ood_s)


def test_compute_functions_follow_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    reg: Registry = Registry("metric")
    for name in METRICS:
        reg.add(name, METRICS.get(name), **METRICS.meta(name))
    reg.add("mean_max_prob", lambda p, y: float(p.max(axis=1).mean()),
            higher_is_better=True, kind="id", fraction=True, input="probs")
    reg.add("id_mean", lambda a, b: float(np.mean(a)), higher_is_better=True, kind="ood", fraction=False, input="scores")
    monkeypatch.setattr(metrics, "METRICS", reg)
    id_out = compute_id_metrics([[0.0, math.log(3.0)]], [1])
    assert id_out["mean_max_prob"] == pytest.approx(0.75)  # got probs, not logits
    assert "id_mean" not in id_out
    ood_out = compute_ood_metrics([1.0, 3.0], [0.0], min_ood=1)
    assert ood_out["id_mean"] == 2.0
    assert "mean_max_prob" not in ood_out


def test_compute_id_metrics_validates_once_with_clear_message() -> None:
    with pytest.raises(ValueError, match=r"logits must be 2-D"):
        compute_id_metrics([1.0, 2.0], [0, 1])
    with pytest.raises(ValueError, match=r"id_scores contains non-finite"):
        compute_ood_metrics([np.nan], [1.0])


def test_docstring_examples() -> None:
    failed, attempted = doctest.testmod(metrics, optionflags=doctest.ELLIPSIS)
    assert attempted >= 10
    assert failed == 0
