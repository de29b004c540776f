"""Paired bootstrap intervals: the resamples, the resampled metrics (exact against the registered
functions on resampled arrays), the interval of each kind of check, DeLong, degenerate cases."""

from __future__ import annotations

import math

import zlib

import numpy as np
import pytest

from pytest_qrel.errors import NumericsError
from sklearn.metrics import roc_curve

from pytest_qrel import metrics
from pytest_qrel.conventions import CONVENTIONS
from pytest_qrel.spec.schema import Bound
from pytest_qrel.stats import IntervalRequest, paired_interval, paired_intervals, percentile_interval
from pytest_qrel.stats.delong import delong_auroc_delta, delong_interval, structural_components
from pytest_qrel.stats.resample import RNG_BLOCK, SMALL_N, counts_chunk, resample_counts, resample_indices, split_halves
from pytest_qrel.stats.influence import INFLUENCE
from pytest_qrel.stats.weighted import WEIGHTED_ID, WEIGHTED_OOD, OodCurve, OodStatic, fallback, ood_form

OOD_METRICS = [m for m in metrics.METRICS if metrics.METRICS.meta(m)["kind"] == "ood"]


# ------------------------------------------------------------------ resamples


@pytest.mark.parametrize("n", [7, SMALL_N - 1, 1500])
def test_counts_are_multinomial(n):
    """Each resample has n draws; counts per sample follow Binomial(n, 1/n) (exactly multinomial:
    the Poisson path conditions on the total), against a chi-square bound on the pooled counts."""
    counts = resample_counts(3, "set", n, 0, 400)
    assert counts.shape == (n, 400) and counts.dtype == np.float32
    assert (counts.sum(axis=0) == n).all()
    k = counts.astype(int).ravel()
    p = np.array([math.comb(n, j) * (1 / n) ** j * (1 - 1 / n) ** (n - j) for j in range(4)])
    observed = np.array([(k == j).sum() for j in range(4)] + [(k >= 4).sum()])
    expected = k.size * np.append(p, 1 - p.sum())
    chi2 = ((observed - expected) ** 2 / expected).sum()
    assert chi2 < 20.5, (observed, expected.round())  # 4 degrees of freedom, p = 0.0004
    # negative covariance between samples, as in a multinomial: Var(c_1 + c_2) = 2 (1 - 2/n) + ... ~ 2 - 4/n
    pair = counts[0] + counts[1]
    assert abs(pair.var() - (2 * (1 - 1 / n) - 2 / n)) < 0.35


def test_counts_reproducible_and_independent_of_chunking():
    whole = resample_counts(5, "digits", 1000, 0, 40)
    pieces = np.hstack([resample_counts(5, "digits", 1000, s, min(40, s + 7)) for s in range(0, 40, 7)])
    np.testing.assert_array_equal(whole, pieces)
    np.testing.assert_array_equal(whole[:, 13:29], counts_chunk(5, "digits", 1000, 13, 29)[:1000])
    assert not np.array_equal(whole, resample_counts(6, "digits", 1000, 0, 40))  # the seed matters
    assert not np.array_equal(whole, resample_counts(5, "textures", 1000, 0, 40))  # so does the set


def test_counts_chunk_extra_rows():
    c = counts_chunk(0, "x", 20, 0, RNG_BLOCK)
    assert c.shape == (22, RNG_BLOCK)
    assert (c[20] == 0).all() and (c[21] > 0).all() and (c[21] < 1e-6).all()


# ------------------------------------------------------------------ resampled metrics: exact


def _scores(rng: np.random.Generator, n_id: int, n_ood: int, ties: str) -> tuple[np.ndarray, np.ndarray]:
    s_id, s_ood = rng.normal(1.0, 1.0, n_id), rng.normal(0.0, 1.0, n_ood)
    if ties == "coarse":  # many ties within and across sets
        s_id, s_ood = np.round(s_id * 2) / 2, np.round(s_ood * 2) / 2
    elif ties == "equal":
        s_id[:], s_ood[:] = 0.25, 0.25
    elif ties == "saturated":  # MSP-like: a block of exact ones on both sides
        s_id[: n_id // 3], s_ood[: n_ood // 5] = 1.0, 1.0
    return s_id, s_ood


@pytest.mark.parametrize("conventions", CONVENTIONS.names())
@pytest.mark.parametrize("metric", OOD_METRICS)
@pytest.mark.parametrize("ties", ["none", "coarse", "equal", "saturated"])
def test_resampled_ood_metric_equals_registered_function(conventions, metric, ties):
    """Every (convention, metric) pair, registered weighted form or fallback, equals the function
    the convention names, applied to the resampled arrays ``x[resample_indices(counts)]``."""
    rng = np.random.default_rng(zlib.crc32(f"{conventions}:{metric}:{ties}".encode()))  # stable across processes
    plain = CONVENTIONS.get(conventions).get(metric, metrics.METRICS.get(metric))
    form = ood_form(metric, conventions)
    if ties == "equal":  # refused before any interval is drawn: the engine never resamples such a set
        s_id, s_ood = _scores(rng, 30, 20, ties)
        with pytest.raises(NumericsError, match="degenerate"):
            plain(s_id, s_ood)
        return
    for trial in range(6):
        n_id, n_ood = int(rng.integers(2, 70)), int(rng.integers(1, 50))
        s_id, s_ood = _scores(rng, n_id, n_ood, ties)
        c_id, c_ood = counts_chunk(trial, "id", n_id, 0, 16), counts_chunk(trial, "ood", n_ood, 0, 16)
        got = np.asarray(form(OodCurve(OodStatic(s_id, s_ood), c_id, c_ood)), dtype=float)
        want = np.full(16, np.nan)
        for b in range(16):
            try:
                want[b] = plain(s_id[resample_indices(c_id[:n_id, b])], s_ood[resample_indices(c_ood[:n_ood, b])])
            except NumericsError:  # a resample of a tiny tied set can be all-equal: the plain metric refuses it
                pass
        keep = ~np.isnan(want)
        np.testing.assert_allclose(got[keep], want[keep], rtol=0, atol=2e-6, err_msg=f"{conventions}:{metric} trial {trial}")


def test_fallback_is_exact_and_used_without_an_entry():
    rng = np.random.default_rng(0)
    s_id, s_ood = _scores(rng, 40, 30, "coarse")
    c_id, c_ood = counts_chunk(1, "id", 40, 0, 8), counts_chunk(1, "ood", 30, 0, 8)
    curve = OodCurve(OodStatic(s_id, s_ood), c_id, c_ood)
    np.testing.assert_allclose(fallback(metrics.auroc)(curve), WEIGHTED_OOD.get("auroc")(curve), atol=1e-7)
    CONVENTIONS.add("_test_only", {"auroc": lambda a, b: float(np.mean(a)) - float(np.mean(b))})
    try:
        form = ood_form("auroc", "_test_only")
        want = [float(np.mean(s_id[resample_indices(c_id[:40, b])]) - np.mean(s_ood[resample_indices(c_ood[:30, b])])) for b in range(8)]
        np.testing.assert_allclose(form(curve), want, atol=1e-12)
    finally:
        CONVENTIONS._entries.pop("_test_only")
        CONVENTIONS._meta.pop("_test_only")


def test_openood_fpr_follows_dropped_roc_points():
    """A case where scikit-learn's drop_intermediate changes OpenOOD's FPR@95: the resampled form
    must follow it (this guards the walk over dropped points, not just the first TPR >= 95%)."""
    rng = np.random.default_rng(7)
    plain = CONVENTIONS.get("openood")["fpr_at_95_tpr"]
    form = WEIGHTED_OOD.get("openood:fpr_at_95_tpr")
    found = 0
    for trial in range(200):
        s_id, s_ood = np.round(rng.normal(0.5, 1, 25) * 2) / 2, np.round(rng.normal(0, 1, 25) * 2) / 2
        is_ood = np.r_[np.zeros(25), np.ones(25)]
        fpr, tpr, _ = roc_curve(is_ood, -np.r_[s_id, s_ood], drop_intermediate=False)
        if fpr[np.argmax(tpr >= 0.95)] == plain(s_id, s_ood):
            continue
        found += 1
        ones = np.r_[np.ones(25), 0.0, 2.0**-24].astype(np.float32)[:, None]
        assert form(OodCurve(OodStatic(s_id, s_ood), ones, ones))[0] == pytest.approx(plain(s_id, s_ood))
    assert found >= 3


@pytest.mark.parametrize("conventions", CONVENTIONS.names())
def test_every_convention_has_a_fast_fpr_form(conventions):
    """No convention's FPR@95 falls back to the per-resample plain call (about 1,000x slower)."""
    form = ood_form("fpr_at_95_tpr", conventions)
    assert not form.__name__.startswith("fallback"), f"{conventions}: register a weighted form in WEIGHTED_OOD"


@pytest.mark.parametrize("conventions", CONVENTIONS.names())
@pytest.mark.parametrize("ties", ["none", "coarse", "integers", "saturated"])
def test_fast_fpr_forms_equal_the_plain_function_on_larger_sets(conventions, ties):
    """Every convention's FPR@95 on sets of a few hundred, on resamples and on the full data (all
    counts 1: the long straight runs of OpenOOD's dropped ROC points, the nearest-recall ties of
    MCM's code), against the convention's own function on the resampled arrays."""
    rng = np.random.default_rng(zlib.crc32(f"fpr:{conventions}:{ties}".encode()))
    plain = CONVENTIONS.get(conventions).get("fpr_at_95_tpr", metrics.fpr_at_95_tpr)
    form = ood_form("fpr_at_95_tpr", conventions)
    for trial in range(3):
        n_id, n_ood = int(rng.integers(150, 600)), int(rng.integers(100, 600))
        separation = 4.0 if trial == 0 else rng.uniform(0, 2.5)  # 4: runs of dozens of OOD-only points
        s_id, s_ood = rng.normal(separation, 1, n_id), rng.normal(0, rng.uniform(0.5, 1.5), n_ood)
        if ties == "coarse":
            s_id, s_ood = np.round(s_id * 4) / 4, np.round(s_ood * 4) / 4
        elif ties == "integers":  # a handful of distinct scores: equal TPR levels, equal steps
            s_id, s_ood = np.round(s_id), np.round(s_ood)
        elif ties == "saturated":
            s_id[: n_id // 2], s_ood[: n_ood // 6] = 3.0, 3.0
        if ties == "integers" and trial == 0:  # one ID and one OOD sample at each of 40 scores: on the full
            # data a straight ROC run from OpenOOD's 95% point (at score 17) to the end, all dropped but the last
            s_id, s_ood = np.arange(40.0), np.r_[np.full(400, -1.0), np.arange(40.0)]
            n_id, n_ood = s_id.size, s_ood.size
        c_id, c_ood = counts_chunk(trial, "id", n_id, 0, 24).copy(), counts_chunk(trial, "ood", n_ood, 0, 24).copy()  # read-only (cached)
        c_id[:n_id, 0], c_ood[:n_ood, 0] = 1.0, 1.0  # the full data
        got = form(OodCurve(OodStatic(s_id, s_ood), c_id, c_ood))
        want = [plain(s_id[resample_indices(c_id[:n_id, b])], s_ood[resample_indices(c_ood[:n_ood, b])]) for b in range(24)]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12, err_msg=f"{conventions} trial {trial}")


def _id_arrays(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    logits = rng.normal(0, 2, (n, 5))
    logits[: n // 4] = np.round(logits[: n // 4])  # ties in the arg-max and round confidences
    labels = rng.integers(0, 5, n)
    probs = metrics.softmax(logits)
    fields = {
        "correct": probs.argmax(1) == labels,
        "confidence": probs.max(1),
        "nll": metrics.logsumexp(logits) - logits[np.arange(n), labels],
    }
    return logits, labels, fields


@pytest.mark.parametrize("metric", list(WEIGHTED_ID))
def test_resampled_id_metric_equals_registered_function(metric):
    rng = np.random.default_rng(1)
    for trial in range(5):
        n = int(rng.integers(1, 90))
        logits, labels, fields = _id_arrays(rng, n)
        form = WEIGHTED_ID.get(metric)
        counts = counts_chunk(trial, "d", n, 0, 16)
        columns = np.zeros((n + 2, form.columns(fields).shape[1]))
        columns[:n] = form.columns(fields)
        got = form.reduce((counts.astype(np.float64).T @ columns), n)
        fn = metrics.METRICS.get(metric)
        inputs = metrics.softmax(logits) if metrics.METRICS.meta(metric)["input"] == "probs" else logits
        want = [fn(inputs[resample_indices(counts[:n, b])], labels[resample_indices(counts[:n, b])]) for b in range(16)]
        np.testing.assert_allclose(got, want, atol=1e-9)


# ------------------------------------------------------------------ whole requests, from scratch


def _side(rng, n_id, oods, base=None, noise=0.0):
    """Per-sample arrays of a side: ID set 'digits' and OOD sets ``oods`` ({name: size})."""
    if base is None:
        logits, labels, fields = _id_arrays(rng, n_id)
        out = {"digits": {**fields, "score.msp": fields["confidence"].astype(np.float32)}}
        for name, n in oods.items():
            out[name] = {"score.msp": rng.beta(2, 3, n).astype(np.float32)}
        out["_labels"] = labels
        return out
    out = {}
    flip = rng.random(n_id) < noise
    out["digits"] = {
        "correct": np.where(flip, ~base["digits"]["correct"], base["digits"]["correct"]),
        "confidence": np.clip(base["digits"]["confidence"] + rng.normal(0, noise, n_id), 0, 1),
        "nll": base["digits"]["nll"] + rng.normal(0, noise, n_id),
        "score.msp": (base["digits"]["score.msp"] + rng.normal(0, noise, n_id)).astype(np.float32),
    }
    for name in oods:
        s = base[name]["score.msp"]
        out[name] = {"score.msp": (s + rng.normal(0, noise, s.size)).astype(np.float32)}
    return out


def _id_value(metric, fields, idx):
    if metric == "top1":
        return float(np.mean(fields["correct"][idx]))
    if metric == "nll":
        return float(np.mean(np.asarray(fields["nll"], np.float64)[idx]))
    conf, correct = np.asarray(fields["confidence"], np.float64)[idx], fields["correct"][idx]
    bins = np.clip(np.digitize(conf, np.linspace(0, 1, 16)) - 1, 0, 14)
    gap = np.bincount(bins, weights=correct - conf, minlength=15)
    return float(np.abs(gap).sum() / idx.size)


def test_interval_equals_a_from_scratch_percentile_bootstrap():
    """Every kind of quantity, recomputed here per resample with the registered metric functions
    on resampled arrays (multi-seed means, mean over OOD sets, a reference quantizer, a pair):
    the library's intervals are the same percentiles."""
    rng = np.random.default_rng(11)
    oods = {"textures": 60, "noise": 45}
    fp32 = _side(rng, 120, oods)
    seeds = (_side(rng, 120, oods, fp32, 0.1), _side(rng, 120, oods, fp32, 0.12))
    ref = (_side(rng, 120, oods, fp32, 0.3),)
    B = 40
    reqs = [
        IntervalRequest("ece", ("digits",), seeds, fp32, bound=Bound("delta", "<=", 10, "%")),
        IntervalRequest("top1", ("digits",), seeds, fp32, bound=Bound("delta", "<=", 1, "pp")),
        IntervalRequest("aupr_out", ("textures", "noise"), seeds, fp32, score="msp", id_dataset="digits", bound=Bound("delta", "<=", 12, "%")),
        IntervalRequest("fpr_at_95_tpr", ("noise",), seeds[:1], fp32, ref=ref, score="msp", id_dataset="digits", bound=Bound("delta", "<=", 0, "abs", ref="W4A4")),
        IntervalRequest("auroc", ("textures",), seeds[:1], fp32, score="msp", id_dataset="digits", bound=Bound("value", ">=", 60, "%")),
        IntervalRequest("vulnerability", ("digits", "textures_l"), seeds[:1], fp32),
    ]
    for side in (fp32, *seeds):  # a labelled second set for the pair
        side["textures_l"] = {k: side["digits"][k][:80] for k in ("correct", "confidence", "nll")}
    results = paired_intervals(reqs, resamples=B, seed=4)

    idx = {d: [resample_indices(resample_counts(4, d, n, 0, B)[:, b]) for b in range(B)] for d, n in
           {"digits": 120, "textures": 60, "noise": 45, "textures_l": 80}.items()}

    def value(side, req, b):
        if req.metric == "vulnerability":
            return _id_value("top1", side["digits"], idx["digits"][b]) - _id_value("top1", side["textures_l"], idx["textures_l"][b])
        if req.metric in ("ece", "top1", "nll"):
            return _id_value(req.metric, side["digits"], idx["digits"][b])
        fn = metrics.METRICS.get(req.metric)
        s_id = side["digits"]["score.msp"][idx["digits"][b]]
        return np.mean([fn(s_id, side[d]["score.msp"][idx[d][b]]) for d in req.datasets])

    for req, res in zip(reqs, results):
        hib = metrics.METRICS.meta(req.metric)["higher_is_better"]
        q = np.array([np.mean([value(s, req, b) for s in req.quantized]) for b in range(B)])
        f = np.array([value(fp32, req, b) for b in range(B)])
        delta = f - q if hib else q - f
        # ECE's and AUPR's intervals are built otherwise (test_ece_interval_from_scratch,
        # test_aupr_interval_is_the_studentized_one_from_scratch) from these plain draws
        # (top-1's includes the score interval of its counts: test_top1_interval_includes_the_score_interval)
        other = res.method != "percentile"
        assert other == (req.metric in ("ece", "aupr_out")) or res.method == "percentile+score", (req.metric, res.method)
        delta_ci = percentile_interval(res.delta_draws, 0.95) if other else res.delta_ci
        compared_ci = percentile_interval(res.compared_draws, 0.95) if other else res.compared_ci
        if res.method == "percentile+score":
            assert res.compared_ci[0] <= compared_ci[0] and compared_ci[1] <= res.compared_ci[1]
        np.testing.assert_allclose(delta_ci, np.quantile(delta, [0.025, 0.975]), atol=2e-6, err_msg=req.metric)
        b = req.bound
        if b is None:
            compared = delta
        elif b.ref is not None:
            r = np.array([value(ref[0], req, i) for i in range(B)])
            compared = delta - ((f - r) if hib else (r - f))
        elif b.kind == "value":
            compared = 100 * q
        elif b.unit == "%":
            compared = 100 * delta / np.abs(f)
        else:
            compared = 100 * delta
        np.testing.assert_allclose(compared_ci, np.quantile(compared, [0.025, 0.975]), atol=2e-4, err_msg=req.metric)
        assert res.resamples == B and res.seed == 4 and res.level == 0.95


def _ece_parts(fields, idx, first_half):
    """(over, under, bin sums / n) of one resample, written out: 15 bins, two fixed halves."""
    conf = np.asarray(fields["confidence"], np.float64)[idx]
    gap = fields["correct"][idx] - conf
    bins = np.clip(np.digitize(conf, np.linspace(0, 1, 16)) - 1, 0, 14)
    s0 = np.bincount(bins, weights=np.where(first_half[idx], gap, 0.0), minlength=15)
    s1 = np.bincount(bins, weights=np.where(first_half[idx], 0.0, gap), minlength=15)
    n = idx.size
    under = max(0.0, float((np.sign(s0) * s1 + np.sign(s1) * s0).sum()) / n)
    return float(np.abs(s0 + s1).sum()) / n, under, (s0 + s1) / n


def test_ece_interval_from_scratch():
    """ECE's interval (:mod:`pytest_qrel.stats.ece`) recomputed here from resampled arrays: the
    plain ECE ("over"), the split-sign estimator ("under", halves from ``split_halves``) and the
    paired bin distance, for every kind of bound, two seeds and two ID sets; each end the tighter
    of the two constructions at level 1 - a/4 (1 - a/2 for a value bound, which has one)."""
    rng = np.random.default_rng(12)
    fp32 = _side(rng, 150, {})
    seeds = (_side(rng, 150, {}, fp32, 0.1), _side(rng, 150, {}, fp32, 0.15))
    ref = (_side(rng, 150, {}, fp32, 0.3),)
    for side in (fp32, *seeds, *ref):
        side["second"] = {k: side["digits"][k][:90] for k in ("correct", "confidence", "nll")}
    sets = ("digits", "second")
    bounds = [Bound("delta", "<=", 10, "%"), Bound("delta", "<=", 1, "pp"), None, Bound("value", "<=", 0.2),
              Bound("delta", "<=", 0, "abs", ref="W4A4")]
    B, seed = 60, 3
    reqs = [IntervalRequest("ece", sets, seeds, fp32, ref=ref if b is not None and b.ref else (), bound=b) for b in bounds]
    results = paired_intervals(reqs, resamples=B, seed=seed)
    idx = {d: [resample_indices(resample_counts(seed, d, n, 0, B)[:, b]) for b in range(B)] for d, n in (("digits", 150), ("second", 90))}
    halves = {d: split_halves(seed, d, n) for d, n in (("digits", 150), ("second", 90))}

    def parts(sides):  # per seed, per set: (over, under, sums) arrays over resamples
        return [[[_ece_parts(side[d], idx[d][b], halves[d]) for b in range(B)] for d in sets] for side in sides]

    def mean_of(p, i):  # mean over seeds and sets of part i, per resample
        return np.mean([[[r[i] for r in per_set] for per_set in per_seed] for per_seed in p], axis=(0, 1))

    def dist(pa, pb):
        return np.mean([[[np.abs(ra[2] - rb[2]).sum() for ra, rb in zip(sa_d, sb_d)] for sa_d, sb_d in zip(sa, sb)]
                        for sa in pa for sb in pb], axis=(0, 1))

    pq, pf, pr = parts(seeds), parts([fp32]), parts(ref)
    over = {k: mean_of(p, 0) for k, p in (("q", pq), ("f", pf), ("r", pr))}
    under = {k: mean_of(p, 1) for k, p in (("q", pq), ("f", pf), ("r", pr))}
    t_f, t_r = dist(pq, pf), dist(pq, pr)

    def ends(constructions, level=0.95):
        a = (1 - level) / 2 / len(constructions)
        return (max(np.quantile(lo, a) for lo, _ in constructions), min(np.quantile(hi, 1 - a) for _, hi in constructions))

    with np.errstate(divide="ignore"):
        want = [
            [(100 * (under["q"] - over["f"]) / over["f"], 100 * (over["q"] - under["f"]) / under["f"]), (-100 * t_f / under["f"], 100 * t_f / under["f"])],
            [(100 * (under["q"] - over["f"]), 100 * (over["q"] - under["f"])), (-100 * t_f, 100 * t_f)],
            [(under["q"] - over["f"], over["q"] - under["f"]), (-t_f, t_f)],
            [(under["q"], over["q"])],
            [(under["q"] - over["r"], over["q"] - under["r"]), (-t_r, t_r)],
        ]
    delta = [(under["q"] - over["f"], over["q"] - under["f"]), (-t_f, t_f)]
    for b, res, constructions in zip(bounds, results, want):
        assert res.method == "ece-bounds"
        np.testing.assert_allclose(res.compared_ci, ends(constructions), rtol=1e-5, atol=1e-7, err_msg=str(b))
        np.testing.assert_allclose(res.delta_ci, ends(delta), rtol=1e-5, atol=1e-7, err_msg=str(b))
        np.testing.assert_allclose(res.at_level(0.8).compared_ci, ends(constructions, 0.8), rtol=1e-5, atol=1e-7)
        assert res.compared_ci[0] <= res.compared_ci[1]


def test_at_level_reuses_the_draws():
    rng = np.random.default_rng(2)
    fp32 = _side(rng, 300, {"noise": 200})
    q = _side(rng, 300, {"noise": 200}, fp32, 0.1)
    res = paired_interval(IntervalRequest("auroc", ("noise",), (q,), fp32, score="msp", id_dataset="digits"), resamples=200)
    wide = res.at_level(0.99)
    assert wide.delta_ci[0] <= res.delta_ci[0] and wide.delta_ci[1] >= res.delta_ci[1]
    np.testing.assert_allclose(wide.delta_ci, percentile_interval(res.delta_draws, 0.99))
    half95, half99 = (res.delong_ci[1] - res.delong_ci[0]) / 2, (wide.delong_ci[1] - wide.delong_ci[0]) / 2
    assert half99 / half95 == pytest.approx(2.5758 / 1.9600, rel=1e-3)


def test_arrays_of_different_lengths_are_not_paired():
    rng = np.random.default_rng(3)
    fp32 = _side(rng, 50, {"noise": 20})
    q = _side(rng, 50, {"noise": 20}, fp32, 0.1)
    q["noise"]["score.msp"] = q["noise"]["score.msp"][:-1]
    with pytest.raises(ValueError, match="same samples in the same order"):
        paired_interval(IntervalRequest("auroc", ("noise",), (q,), fp32, score="msp", id_dataset="digits"))
    with pytest.raises(ValueError, match="no 'score.energy'"):
        paired_interval(IntervalRequest("auroc", ("noise",), (fp32,), fp32, score="energy", id_dataset="digits"))


# ------------------------------------------------------------------ degenerate cases


def test_ood_set_of_one_image_gives_a_message_not_nan():
    rng = np.random.default_rng(4)
    fp32 = _side(rng, 100, {"one": 1})
    q = _side(rng, 100, {"one": 1}, fp32, 0.1)
    res = paired_interval(IntervalRequest("auroc", ("one",), (q,), fp32, score="msp", id_dataset="digits", bound=Bound("delta", "<=", 1, "pp")))
    assert res.delta_ci is None and res.compared_ci is None
    assert "'one' has 1 sample: no interval" in res.note
    assert res.delta is not None and math.isfinite(res.delta)


def test_all_equal_scores_give_a_zero_width_interval_and_say_so():
    rng = np.random.default_rng(5)
    fp32 = _side(rng, 100, {"noise": 50})
    for side in (fp32,):
        side["digits"]["score.msp"][:] = 0.5
        side["noise"]["score.msp"][:] = 0.5
    res = paired_interval(IntervalRequest("auroc", ("noise",), (fp32,), fp32, score="msp", id_dataset="digits", bound=Bound("delta", "<=", 1, "pp")))
    assert res.delta_ci == (0.0, 0.0) and res.compared_ci == (0.0, 0.0)
    assert "zero width" in res.note
    assert res.delong_ci == (0.0, 0.0)  # DeLong's variance is 0 too, not NaN


def test_fp32_zero_under_a_relative_bound_gives_a_message_not_nan():
    """FP32 FPR@95 is 0 (perfect separation) on the full data and on most resamples: a relative
    delta is +inf there; the interval ends are order statistics (no NaN) and the note says to use pp."""
    rng = np.random.default_rng(6)
    fp32 = _side(rng, 200, {"noise": 100})
    fp32["digits"]["score.msp"] = (2.0 + rng.random(200)).astype(np.float32)
    fp32["noise"]["score.msp"] = rng.random(100).astype(np.float32)
    q = _side(rng, 200, {"noise": 100}, fp32, 0.6)
    res = paired_interval(IntervalRequest("fpr_at_95_tpr", ("noise",), (q,), fp32, score="msp", id_dataset="digits", bound=Bound("delta", "<=", 10, "%")))
    assert res.fp32 == 0.0
    assert res.compared_ci is not None and not any(math.isnan(x) for x in res.compared_ci)
    assert res.compared_ci[1] == math.inf
    assert "FP32 fpr_at_95_tpr is 0" in res.note and "pp" in res.note
    assert res.delta_ci is not None and all(math.isfinite(x) for x in res.delta_ci)


def test_spectral_metrics_have_no_interval():
    rng = np.random.default_rng(8)
    fp32 = _side(rng, 30, {})
    res = paired_interval(IntervalRequest("spectral_error", ("digits",), (fp32,), fp32, bound=Bound("value", "<=", 0.2)))
    assert res.compared_ci is None and "no per-sample form" in res.note


# ------------------------------------------------------------------ DeLong


def test_delong_components_against_brute_force():
    rng = np.random.default_rng(9)
    x, y = np.round(rng.normal(1, 1, 40), 1), np.round(rng.normal(0, 1, 30), 1)
    psi = (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])
    auc, v10, v01 = structural_components(x, y)
    assert auc == pytest.approx(metrics.auroc(x, y))
    np.testing.assert_allclose(v10, psi.mean(1))
    np.testing.assert_allclose(v01, psi.mean(0))
    # paired difference of two score sets: the textbook covariance formula, written out
    x2, y2 = x + rng.normal(0, 0.5, 40), y + rng.normal(0, 0.5, 30)
    psi2 = (x2[:, None] > y2[None, :]) + 0.5 * (x2[:, None] == y2[None, :])
    s10 = np.cov(np.vstack([psi.mean(1), psi2.mean(1)]))
    s01 = np.cov(np.vstack([psi.mean(0), psi2.mean(0)]))
    var = (s10[0, 0] + s10[1, 1] - 2 * s10[0, 1]) / 40 + (s01[0, 0] + s01[1, 1] - 2 * s01[0, 1]) / 30
    r = delong_auroc_delta(x, y, x2, y2)
    assert r.se == pytest.approx(math.sqrt(var))
    assert r.estimate == pytest.approx(psi.mean() - psi2.mean())


def test_delong_agrees_with_the_bootstrap():
    """At N = 1,500 + 1,500 the bootstrap's AUROC-delta interval and DeLong's agree: standard
    errors within 15%, centres within a fifth of a standard error."""
    rng = np.random.default_rng(10)
    n = 1500
    s_id, s_ood = rng.normal(1.2, 1, n), rng.normal(0, 1, n)
    fp32 = {"digits": {"score.msp": s_id}, "noise": {"score.msp": s_ood}}
    q = {"digits": {"score.msp": s_id + rng.normal(0, 0.6, n)}, "noise": {"score.msp": s_ood + rng.normal(0, 0.6, n)}}
    res = paired_interval(IntervalRequest("auroc", ("noise",), (q,), fp32, score="msp", id_dataset="digits"), resamples=1000)
    boot_se = float(np.std(res.delta_draws, ddof=1))
    d = delong_interval([(1.0, s_id, s_ood, "noise"), (-1.0, q["digits"]["score.msp"], q["noise"]["score.msp"], "noise")])
    assert boot_se == pytest.approx(d.se, rel=0.15)
    assert abs(np.mean(res.delta_draws) - d.estimate) < 0.2 * d.se
    assert res.delong_ci == pytest.approx((d.low, d.high))
    # pairing is what makes it tight: an unpaired interval would be several times wider
    unpaired = math.sqrt(sum(structural_se(s) ** 2 for s in ((s_id, s_ood), (q["digits"]["score.msp"], q["noise"]["score.msp"]))))
    assert unpaired > 2 * d.se


def structural_se(pair):
    _, v10, v01 = structural_components(*pair)
    return math.sqrt(np.var(v10, ddof=1) / v10.size + np.var(v01, ddof=1) / v01.size)


# ------------------------------------------------------------------ studentized AUPR


@pytest.mark.parametrize("key", sorted(INFLUENCE))
def test_influence_values_are_derivatives_of_the_registered_aupr(key):
    """Each sample's influence on AUPR (step-wise and OpenOOD's trapezoid, ID and OOD positive) is the
    derivative of scikit-learn's weighted metric with respect to that sample's weight (finite
    differences), on tied scores and integer weights (a resample)."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve

    rng = np.random.default_rng(zlib.crc32(key.encode()))
    s_id, s_ood = np.round(rng.normal(1, 1, 50), 1), np.round(rng.normal(0, 1, 35), 1)
    w_id, w_ood = rng.integers(1, 4, 50).astype(float), rng.integers(1, 4, 35).astype(float)
    ood_positive, trapezoid = key.endswith("aupr_out"), key.startswith("openood:")

    def value(wi, wo):
        y = np.r_[np.zeros(50), np.ones(35)] if ood_positive else np.r_[np.ones(50), np.zeros(35)]
        d, w = np.r_[s_id, s_ood] * (-1 if ood_positive else 1), np.r_[wi, wo]
        if not trapezoid:
            return average_precision_score(y, d, sample_weight=w)
        precision, recall, _ = precision_recall_curve(y, d, sample_weight=w)
        return auc(recall, precision)

    d_id, d_ood = INFLUENCE[key](s_id, s_ood, w_id=w_id, w_ood=w_ood)
    base, eps = value(w_id, w_ood), 1e-6
    fd_id = [(value(w_id + eps * (np.arange(50) == k), w_ood) - base) / eps for k in range(50)]
    fd_ood = [(value(w_id, w_ood + eps * (np.arange(35) == k)) - base) / eps for k in range(35)]
    np.testing.assert_allclose(d_id, fd_id, atol=1e-7)
    np.testing.assert_allclose(d_ood, fd_ood, atol=1e-7)


def test_aupr_interval_is_the_studentized_one_from_scratch():
    """AUPR-out's interval, recomputed here: on each resample b, influence values of both sides
    recomputed with the resample's counts as weights (the plain functions of
    ``pytest_qrel.stats.influence``), paired sample by sample through the quantity's derivatives
    on that resample (for a relative delta ``100 (F - Q) / F``: ``100 Q / F^2`` and ``-100 / F``),
    se_b from their count-weighted variance per set; t_b = (theta_b - theta) / se_b, and the
    interval theta - [q(0.975; t), q(0.025; t)] * se."""
    rng = np.random.default_rng(13)
    fp32 = _side(rng, 200, {"noise": 150})
    q = _side(rng, 200, {"noise": 150}, fp32, 0.15)
    B, seed = 60, 2
    res = paired_interval(IntervalRequest("aupr_out", ("noise",), (q,), fp32, score="msp", id_dataset="digits",
                                          bound=Bound("delta", "<=", 10, "%")), resamples=B, seed=seed)
    assert res.method == "studentized"
    scores = {k: (side["digits"]["score.msp"], side["noise"]["score.msp"]) for k, side in (("f", fp32), ("q", q))}
    counts = [np.ones((200, 1)), np.ones((150, 1))], [resample_counts(seed, "digits", 200, 0, B), resample_counts(seed, "noise", 150, 0, B)]

    def se_and_values(c_id, c_ood):
        """Per column of counts: (F, Q, se of F - Q, se of 100 (F - Q) / F)."""
        out = []
        for b in range(c_id.shape[1]):
            w_id, w_ood = c_id[:, b].astype(float), c_ood[:, b].astype(float)
            infl = {k: INFLUENCE["aupr_out"](*scores[k], w_id=w_id, w_ood=w_ood) for k in scores}
            vals = {k: metrics.aupr_out(scores[k][0][resample_indices(w_id)], scores[k][1][resample_indices(w_ood)]) for k in scores}
            F, Q = vals["f"], vals["q"]
            row = [F, Q]
            for df, dq in ((1.0, -1.0), (100 * Q / F**2, -100 / F)):
                var = 0.0
                for j, w in ((0, w_id), (1, w_ood)):
                    d = df * infl["f"][j] + dq * infl["q"][j]
                    var += (w * d**2).sum() - (w * d).sum() ** 2 / w.size
                row.append(np.sqrt(var))
            out.append(row)
        return np.array(out)

    full, per = se_and_values(*counts[0]), se_and_values(*counts[1])
    for point, draws, got, col in ((res.delta, res.delta_draws, res.delta_ci, 2), (res.compared, res.compared_draws, res.compared_ci, 3)):
        t = (draws - point) / per[:, col]
        want = point - np.quantile(t, [0.975, 0.025]) * full[0, col]
        np.testing.assert_allclose(got, want, rtol=2e-4)
    assert res.delta_ci != pytest.approx(percentile_interval(res.delta_draws, 0.95))  # not the percentile interval


def test_weighted_influence_equals_the_plain_one_on_resamples():
    """The influence values computed on a chunk of resamples (running sums, as the metrics) equal
    the plain functions with the counts as weights, for every AUPR variant, tied and untied."""
    from pytest_qrel.stats.influence import WEIGHTED_INFLUENCE

    rng = np.random.default_rng(14)
    for ties in (False, True):
        s_id, s_ood = rng.normal(1, 1, 70), rng.normal(0, 1, 50)
        if ties:
            s_id, s_ood = np.round(s_id, 1), np.round(s_ood, 1)
        c_id, c_ood = counts_chunk(0, "id", 70, 0, 8), counts_chunk(0, "ood", 50, 0, 8)
        for key, fn in WEIGHTED_INFLUENCE.items():
            _, d_id, d_ood = fn(OodCurve(OodStatic(s_id, s_ood), c_id, c_ood))
            for b in range(8):
                p_id, p_ood = INFLUENCE[key](s_id, s_ood, w_id=c_id[:70, b], w_ood=c_ood[:50, b])
                drawn_id, drawn_ood = c_id[:70, b] > 0, c_ood[:50, b] > 0  # undrawn samples carry no weight
                np.testing.assert_allclose(d_id[drawn_id, b], p_id[drawn_id], atol=1e-7, err_msg=key)
                np.testing.assert_allclose(d_ood[drawn_ood, b], p_ood[drawn_ood], atol=1e-7, err_msg=key)


def test_relative_ece_delta_of_a_calibrated_fp32_model_has_no_upper_bound_and_says_so():
    """FP32 calibrated (correct with probability = confidence): its ECE cannot be told from 0 at
    200 samples, so ``ece delta <= 10%`` has no finite upper end, and the note says to use pp."""
    rng = np.random.default_rng(15)
    conf = rng.uniform(0.5, 1.0, 200)
    u = rng.random(200)
    fp32 = {"digits": {"correct": u < conf, "confidence": conf}}
    q = {"digits": {"correct": u < conf - 0.05, "confidence": conf}}
    res = paired_interval(IntervalRequest("ece", ("digits",), (q,), fp32, bound=Bound("delta", "<=", 10, "%")), resamples=200)
    assert res.compared_ci[1] == math.inf
    assert "bound it in pp instead" in res.note
    pp = paired_interval(IntervalRequest("ece", ("digits",), (q,), fp32, bound=Bound("delta", "<=", 1, "pp")), resamples=200)
    assert all(math.isfinite(x) for x in pp.compared_ci) and "bound it in pp" not in pp.note


def test_resample_chunks_are_drawn_once_and_cannot_be_written(monkeypatch):
    """Every interval request of a run reads the same dataset's resamples: a chunk is drawn once
    and handed out again, read-only, so no caller can change what the next one reads."""
    from pytest_qrel.stats import resample

    monkeypatch.setattr(resample, "_CACHE", type(resample._CACHE)())
    draws = []
    real = resample._draw_chunk
    monkeypatch.setattr(resample, "_draw_chunk", lambda *a: draws.append(a) or real(*a))
    first = counts_chunk(7, "digits", 300, 0, 64)
    again = counts_chunk(7, "digits", 300, 0, 64)
    assert again is first and len(draws) == 1 and not first.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        first[0, 0] = 5.0
    counts_chunk(7, "digits89", 300, 0, 64)
    assert len(draws) == 2  # another dataset: its own draw
    monkeypatch.setattr(resample, "CACHED_BYTES", 0)  # too large to keep: drawn each time, the same values
    big = counts_chunk(7, "photos", 300, 0, 64)
    np.testing.assert_array_equal(counts_chunk(7, "photos", 300, 0, 64), big)
    assert len(draws) == 4
