"""Influence values of AUPR: how much each sample moves it, for a studentized interval.

For a metric computed from weighted samples (weight 1 each on the full data, the bootstrap counts on
a resample), the influence of sample ``i`` is the derivative of the metric with respect to ``w_i``.
Within one stratum (the ID set, an OOD set) a multinomial resample of ``n`` draws changes the
metric by about ``sum_i (c_i - 1) D_i``, so its standard error is about
``sqrt(sum_strata sum_i (D_i - mean_stratum(D))**2)`` and, on a resample with counts ``c``,
``sqrt(sum_strata [sum_i c_i D_i**2 - (sum_i c_i D_i)**2 / n])``: the standard error the bootstrap-t
divides by (:mod:`.bootstrap`). Paired sides share samples, so the influence of a delta is the
difference of the two sides' influence values, sample by sample.

Formulas (``W`` the positive class's total weight, ``>=`` / ``>`` in decision value, ties included
as scikit-learn counts them). Step-wise average precision (``average_precision_score``) is
``AP = sum_j w_j P_j / W`` over positives ``j``, ``P_j = Pos(>= d_j) / (Pos(>= d_j) + Neg(>= d_j))``:

- positive ``k``: ``(P_k + sum_{j: d_j <= d_k} w_j Neg_j / den_j**2 - AP) / W``;
- negative ``i``: ``-sum_{j: d_j <= d_i} w_j Pos_j / den_j**2 / W``.

The trapezoidal area (OpenOOD: ``auc(recall, precision)``) averages ``P_j`` with the precision of the
samples strictly above ``d_j`` (1 where there are none) and adds the matching terms over
``d_j < d_k`` (the jump where "none above" ends is left out: it moves one term of the first
threshold only). Tested against finite differences of the registered functions
(``tests/test_stats.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from .weighted import OodCurve

Influence = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
"""``fn(id_scores, ood_scores) -> (D_id, D_ood)``: influence of each ID and each OOD sample (full data)."""


def _sums_at_or_below(d_sorted: np.ndarray, values: np.ndarray, at: np.ndarray, strict: bool) -> np.ndarray:
    """For each decision value in ``at``: the sum of ``values`` (aligned with ascending
    ``d_sorted``) over entries with decision ``<= at`` (``< at`` if ``strict``)."""
    cum = np.concatenate([[0.0], np.cumsum(values)])
    return cum[np.searchsorted(d_sorted, at, "left" if strict else "right")]


def _average_precision(pos: np.ndarray, neg: np.ndarray, w_pos: np.ndarray, w_neg: np.ndarray,
                       trapezoid: bool) -> tuple[float, np.ndarray, np.ndarray]:
    """(AP, influence of each positive, of each negative) for decision values ``pos`` / ``neg``
    (higher = predicted positive), weights ``w_pos`` / ``w_neg``."""
    order_p, order_n = np.argsort(pos), np.argsort(neg)
    dp, dn = pos[order_p], neg[order_n]
    wp, wn = w_pos[order_p], w_neg[order_n]
    W = wp.sum()

    def counts(strict: bool) -> tuple[np.ndarray, np.ndarray]:
        # weight of positives / negatives with decision >= d_j (> d_j if strict), for sorted positives j
        above_p = W - _sums_at_or_below(dp, wp, dp, strict=not strict)
        above_n = wn.sum() - _sums_at_or_below(dn, wn, dp, strict=not strict)
        return above_p, above_n

    terms = [counts(False)] + ([counts(True)] if trapezoid else [])
    ap, d_pos, d_neg = 0.0, np.zeros(dp.size), np.zeros(dn.size)
    for k, (p_ge, n_ge) in enumerate(terms):
        den = p_ge + n_ge
        none = den <= 0  # only for the strict count: nothing above, precision 1 by convention
        safe = np.where(none, 1.0, den)
        prec = np.where(none, 1.0, p_ge / safe)
        g_pos = np.where(none, 0.0, wp * n_ge / safe**2)  # d precision_j / d (positive weight above j)
        g_neg = np.where(none, 0.0, wp * p_ge / safe**2)
        # a sample at decision d raises the counts of every positive j with d_j <= d (< d if strict)
        strict = k == 1
        d_pos += prec + _sums_at_or_below(dp, g_pos, dp, strict=strict)
        d_neg -= _sums_at_or_below(dp, g_neg, dn, strict=strict)
        ap += float((wp * prec).sum())
    scale = len(terms) * W
    ap /= scale
    d_pos = d_pos / scale - ap / W
    d_neg = d_neg / scale
    out_p, out_n = np.empty_like(d_pos), np.empty_like(d_neg)
    out_p[order_p], out_n[order_n] = d_pos, d_neg
    return ap, out_p, out_n


def aupr_out_influence(id_scores: np.ndarray, ood_scores: np.ndarray, *, trapezoid: bool = False,
                       w_id: np.ndarray | None = None, w_ood: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Influence of each ID and OOD sample on AUPR-out (OOD positive, decision ``-score``)."""
    s_id, s_ood = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    w_id = np.ones(s_id.size) if w_id is None else np.asarray(w_id, np.float64)
    w_ood = np.ones(s_ood.size) if w_ood is None else np.asarray(w_ood, np.float64)
    _, d_ood, d_id = _average_precision(-s_ood, -s_id, w_ood, w_id, trapezoid)
    return d_id, d_ood


def aupr_in_influence(id_scores: np.ndarray, ood_scores: np.ndarray, *, trapezoid: bool = False,
                      w_id: np.ndarray | None = None, w_ood: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Influence of each ID and OOD sample on AUPR-in (ID positive, decision ``score``)."""
    s_id, s_ood = np.asarray(id_scores, np.float64), np.asarray(ood_scores, np.float64)
    w_id = np.ones(s_id.size) if w_id is None else np.asarray(w_id, np.float64)
    w_ood = np.ones(s_ood.size) if w_ood is None else np.asarray(w_ood, np.float64)
    _, d_id, d_ood = _average_precision(s_id, s_ood, w_id, w_ood, trapezoid)
    return d_id, d_ood


def weighted_influence(c: OodCurve, positive: str, trapezoid: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The formulas above on every resample of a chunk at once (:class:`.weighted.OodCurve`):
    ``(value (rows,), D_id (n_id, rows), D_ood (n_ood, rows))``, influence values in sample order.

    ``positive``: ``"ood"`` (AUPR-out, decision ``-score``) or ``"id"`` (AUPR-in, decision
    ``score``). The sums over positives with decision ``<=`` (``<``) a sample's are running sums of
    the per-positive terms read at that sample's position, as the metrics read counts."""
    from .weighted import DTYPE

    st = c.static
    negative = "id" if positive == "ood" else "ood"
    W = c.O if positive == "ood" else c.A
    if positive == "ood":
        counts = [((c.at("ood", "ood", "ood_le"), c.at("ood", "id", "id_le")), False)]
        if trapezoid:
            counts.append(((c.at("ood", "ood", "ood_lt"), c.at("ood", "id", "id_lt")), True))
    else:
        A, O = c.A.astype(DTYPE), c.O.astype(DTYPE)  # noqa: E741  (O: the total OOD weight, the notation of c.O and the formulas)
        counts = [((A - c.at("id", "id", "id_lt"), O - c.at("id", "ood", "ood_lt")), False)]
        if trapezoid:
            counts.append(((A - c.at("id", "id", "id_le"), O - c.at("id", "ood", "ood_le")), True))
    w = c.w(positive)
    lay = st.layout[positive]
    value = np.zeros(c.rows)
    d_pos = np.zeros((lay.m, c.rows), dtype=DTYPE)
    d_neg = np.zeros((st.layout[negative].m, c.rows), dtype=DTYPE)
    for (pos, neg), strict in counts:
        den = pos + neg
        none = den < 0.5  # nothing at or above (strict: above): precision 1, no derivative
        safe = np.where(none, 1.0, den).astype(DTYPE)
        precision = np.where(none, 1.0, pos / safe).astype(DTYPE)
        g_pos = np.where(none, 0.0, w * neg / (safe * safe)).astype(DTYPE)
        g_neg = np.where(none, 0.0, w * pos / (safe * safe)).astype(DTYPE)
        g_pos[0] = g_neg[0] = 0.0  # stored row 0 is the "no sample" position
        run_pos, run_neg = c.running(positive, g_pos), c.running(positive, g_neg)
        if positive == "ood":  # decision <= d_x: score >= s_x, all positives minus those below
            name = "ood_le" if strict else "ood_lt"
            last = lay.row_of(st.n["ood"])
            d_pos += precision + (run_pos[last] - c.read_running(run_pos, "ood", "ood", name, own=g_pos))
            d_neg -= run_neg[last] - c.read_running(run_neg, "id", "ood", name)
        else:  # decision <= d_x: score <= s_x
            name = "id_lt" if strict else "id_le"
            d_pos += precision + c.read_running(run_pos, "id", "id", name, own=g_pos)
            d_neg -= c.read_running(run_neg, "ood", "id", name)
        value += c.total(w * precision, positive)
    scale = len(counts) * W
    value /= scale
    d = {positive: d_pos / scale.astype(DTYPE) - (value / W).astype(DTYPE), negative: d_neg / scale.astype(DTYPE)}
    return value, d["id"][st.orig_rows["id"]], d["ood"][st.orig_rows["ood"]]


WEIGHTED_INFLUENCE = {
    "aupr_out": lambda c: weighted_influence(c, "ood", False),
    "aupr_in": lambda c: weighted_influence(c, "id", False),
    "openood:aupr_out": lambda c: weighted_influence(c, "ood", True),
    "openood:aupr_in": lambda c: weighted_influence(c, "id", True),
}
"""The same keys as :data:`INFLUENCE`, on a chunk of resamples."""


INFLUENCE: dict[str, Influence] = {
    "aupr_out": aupr_out_influence,
    "aupr_in": aupr_in_influence,
    "openood:aupr_out": lambda a, b, **k: aupr_out_influence(a, b, trapezoid=True, **k),
    "openood:aupr_in": lambda a, b, **k: aupr_in_influence(a, b, trapezoid=True, **k),
}
"""``"<metric>"`` or ``"<convention>:<metric>"`` (as :data:`.weighted.WEIGHTED_OOD`) -> influence
function; a request whose metric has an entry gets a studentized interval."""


def influence_key(metric: str, conventions: str) -> str:
    """The key of ``metric`` under ``conventions`` in :data:`INFLUENCE` / :data:`WEIGHTED_INFLUENCE`
    (as :func:`.weighted.ood_form` keys its forms); a request whose key is there is studentized."""
    from ..conventions import CONVENTIONS

    return f"{conventions}:{metric}" if metric in CONVENTIONS.get(conventions) else metric


__all__ = ["INFLUENCE", "WEIGHTED_INFLUENCE", "Influence", "aupr_in_influence", "aupr_out_influence", "influence_key", "weighted_influence"]
