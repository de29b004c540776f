"""Paired, stratified bootstrap intervals of the delta of a check.

What the interval is: the check's quantity (the delta in the bound's unit, or the value for a
value bound) recomputed on ``resamples`` bootstrap resamples of the test data; its ``level``
percentile interval (``[q(a/2), q(1 - a/2)]`` of the resampled quantities, ``a = 1 - level``).
It measures how much the quantity would move if the test images were drawn again from the same
distribution; it says nothing about calibration seeds or other models.

Pairing: quantized, FP32 and, for ``delta(ref)`` bounds, the reference quantizer are evaluated on
the *same* resample (one set of counts per dataset shared by every side), so the noise they share
cancels in the delta; for the FP32 baseline this needs its stored per-sample arrays in the same
sample order as the quantized ones. Stratification: each dataset (the ID test set, each OOD set,
each shifted set) is resampled on its own, so an OOD metric always sees every set at its size.

How values combine (as the point values of the engine do): ``on mean(...)``: each set is
resampled, the metric computed per set and averaged; multi-seed quantizers: the mean over seeds
on the same resample; ``vulnerability``: ``top1(common) - top1(counter)`` on the same resample
of each. Post-hoc steps (``+temperature``) are **not** refitted per resample: the arrays passed
in are already calibrated with the temperature fitted once on the held-out split, so the
interval leaves out the uncertainty of the fitted temperature (small next to the test-set noise
for a one-parameter fit on a few hundred held-out images).

Input layout (``SampleArrays``): ``{dataset: {field: array (N,)}}`` with fields ``correct``
(bool), ``confidence`` (max softmax probability), ``nll`` (nats), and for each OOD score ``s``
``score.<s>`` (higher = more in-distribution); ``label`` / ``pred`` are not read. Arrays of one
dataset must have the same length and sample order on every side.

Defaults: 1,000 resamples, level 0.95, seed 0 (recorded in the result). The interval
(``PairedInterval.method``): the percentile interval of the resampled quantity (for top-1 widened
to the score interval of the paired counts where that is wider, :mod:`.counts`), except for ECE
(``"ece-bounds"``: bounds from an over- and an under-estimator, :mod:`.ece`, because the binned ECE
is biased) and for AUPR on sets below :data:`STUDENTIZE_BELOW` samples (``"studentized"``: the
bootstrap-t, :mod:`.studentized`, because its spread moves with the delta). Each keeps a
``confidence: c`` check at the true delta passing at most ``(1 - c) / 2`` of the time
(tests/test_stats_coverage.py, docs/statistics.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..spec.schema import Bound
from . import ece
from .counts import TopOneScore, top1_score, widen
from .delong import DeLongResult, delong_from_components
from .influence import WEIGHTED_INFLUENCE, influence_key
from .resample import RNG_BLOCK, TINY, counts_chunk, split_halves
from .studentized import partials, pseudo_draws, variance
from .weighted import DTYPE, WEIGHTED_ID, OodCurve, OodStatic, ood_form

SampleArrays = Mapping[str, Mapping[str, np.ndarray]]
"""``{dataset: {field: array}}``; see the module docstring."""

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
DEFAULT_SEED = 0
MIN_SAMPLES = 2
"""A set with fewer samples gets no interval (every resample would be the same images)."""
FEW_SAMPLES = 30
"""A set with fewer samples gets an interval with a note that it is a rough guide."""
STUDENTIZE_BELOW = 5000
"""AUPR intervals are studentized (:mod:`.studentized`) when every set they read has fewer samples;
above, the percentile interval: its one-sided error shrinks like ``1 / sqrt(n)`` (about +1 point at
n = 300, so about +0.25 at 5,000), and the per-resample influence values cost about 4x the metric
(at 50,000 + 50,000 the two intervals agree to 2% of their width)."""
DELONG_UNION_BELOW = 200
"""An AUROC delta's interval includes DeLong's when a set it reads has fewer samples (:func:`_widen_to_delong`)."""
CHUNK_ELEMENTS = 1 << 19
"""Counts per dataset held at once (rows x samples); bounds the memory of a chunk of resamples."""

Kind = Literal["delta", "value", "ref-delta", "ref-value"]


@dataclass(frozen=True, eq=False)
class IntervalRequest:
    """One check's quantity, as the engine knows it.

    ``metric``: a registered metric name. ``datasets``: for ID metrics the labelled set(s) (values
    averaged if several); for OOD metrics the OOD set(s) averaged (``mean(...)``: several); for
    pair metrics ``(common, counter)``. ``id_dataset``: the ID test set of an OOD metric.
    ``quantized``: the arrays of the quantizer under test, one mapping per calibration seed
    (values averaged over seeds); ``fp32``: the stored FP32 baseline's arrays (``None`` only for
    value bounds); ``ref``: the reference quantizer of a ``delta(ref)`` / ``value(ref)`` bound,
    one mapping per seed. ``bound`` decides the quantity and unit of ``compared``; ``None``: the
    delta in the metric's unit.
    """

    metric: str
    datasets: tuple[str, ...]
    quantized: tuple[SampleArrays, ...]
    fp32: SampleArrays | None
    ref: tuple[SampleArrays, ...] = ()
    score: str | None = None
    id_dataset: str | None = None
    conventions: str = "hendrycks"
    bound: Bound | None = None


@dataclass(frozen=True, eq=False)
class Bounds:
    """An interval from one or more *constructions* of one quantity on the same resamples, each a
    pair ``(lower-end draws, upper-end draws)``.

    At level ``c`` (``a = (1 - c) / 2``, ``k`` constructions) the interval is
    ``[max_i q(a / k; lower_i), min_i q(1 - a / k; upper_i)]``: every end is a one-sided bound at
    level ``1 - a / k``, so taking the tightest of ``k`` keeps ``1 - a`` (Bonferroni). One
    construction whose two arrays are the same draws is the percentile interval. Used where the
    plain percentile interval does not hold its level (ECE: :mod:`.ece`).
    """

    constructions: tuple[tuple[np.ndarray, np.ndarray], ...]

    def interval(self, level: float) -> tuple[float, float] | None:
        """The interval at ``level``; ``None`` if a draw is NaN (as :func:`percentile_interval`)."""
        k = len(self.constructions)
        each = 1.0 - (1.0 - level) / k
        lows, highs = [], []
        for lower, upper in self.constructions:
            lo, hi = percentile_interval(lower, each), percentile_interval(upper, each)
            if lo is None or hi is None:
                return None
            lows.append(lo[0])
            highs.append(hi[1])
        return max(lows), min(highs)


@dataclass
class PairedInterval:
    """The interval of one request (all numbers plain floats).

    ``value`` / ``fp32`` / ``ref_value`` and ``delta`` are point estimates on the full data
    (metric unit; ``delta`` positive = worse). ``delta_ci``: the interval of ``delta`` in the
    metric's unit (``None`` without FP32 or without an interval). ``compared`` / ``compared_ci``:
    the quantity the bound applies to, in the bound's unit (``kind``: ``delta`` -> the delta in
    ``unit`` ``%``, ``pp`` or ``abs``; ``value`` -> the value; ``ref-delta`` -> ``delta -
    ref_delta``; ``ref-value`` -> ``value - ref_value``, both in the metric's unit). ``n``: the
    samples per resampled set. ``note``: why there is no interval, or what to keep in mind
    (empty if nothing). ``delong_ci``: DeLong's analytic interval of ``delta`` (AUROC deltas
    against FP32 only; ``delta +/- z * delong_se``), a cross-check of the bootstrap.
    ``delta_draws`` / ``compared_draws``: the resampled quantities (plain estimator).
    ``method``: ``"percentile"`` (the percentile interval of those draws) or, for ECE,
    ``"ece-bounds"`` (``delta_bounds`` / ``compared_bounds``, :class:`Bounds` from estimators that
    err in known directions: :mod:`.ece`), or for top-1 ``"percentile+score"`` where the union with
    the score interval of the paired counts (``score``, :mod:`.counts`) widened the percentile one,
    for an AUROC delta on small sets ``"percentile+delong"`` where the union with DeLong's interval did;
    :meth:`at_level` re-summarises each.
    """

    metric: str
    kind: Kind
    unit: str
    level: float
    resamples: int
    seed: int
    value: float | None
    fp32: float | None
    ref_value: float | None
    delta: float | None
    compared: float | None
    delta_ci: tuple[float, float] | None = None
    compared_ci: tuple[float, float] | None = None
    n: dict[str, int] = field(default_factory=dict)
    note: str = ""
    delong_ci: tuple[float, float] | None = None
    delong_se: float | None = None
    method: str = "percentile"
    delta_draws: np.ndarray | None = field(default=None, repr=False)
    compared_draws: np.ndarray | None = field(default=None, repr=False)
    delta_bounds: Bounds | None = field(default=None, repr=False)
    compared_bounds: Bounds | None = field(default=None, repr=False)
    score: TopOneScore | None = field(default=None, repr=False)
    """Top-1: the score intervals of the paired counts that every interval of it includes (:mod:`.counts`)."""

    def at_level(self, level: float) -> PairedInterval:
        """The same resamples summarised at another ``level`` (e.g. a check's ``confidence``)."""
        _check_level(level)
        out = replace(self, level=level)
        if self.delta_bounds is not None:
            out.delta_ci = self.delta_bounds.interval(level)
        elif self.delta_draws is not None:
            out.delta_ci = percentile_interval(self.delta_draws, level)
        if self.compared_bounds is not None:
            out.compared_ci = self.compared_bounds.interval(level)
        elif self.compared_draws is not None:
            out.compared_ci = percentile_interval(self.compared_draws, level)
        if self.score is not None:
            out.delta_ci = widen(out.delta_ci, self.score.delta(level))
            out.compared_ci = widen(out.compared_ci, self.score.compared(level))
        if self.delong_se is not None and self.delta is not None:
            out.delong_ci = _normal_interval(self.delta, self.delong_se, level)
            _widen_to_delong(out)
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain fields for records (no draws)."""
        return {
            "metric": self.metric, "kind": self.kind, "unit": self.unit, "level": self.level,
            "resamples": self.resamples, "seed": self.seed, "method": self.method, "value": self.value,
            "fp32": self.fp32, "ref_value": self.ref_value, "delta": self.delta, "compared": self.compared,
            "delta_ci": list(self.delta_ci) if self.delta_ci else None,
            "compared_ci": list(self.compared_ci) if self.compared_ci else None,
            "n": dict(self.n), "note": self.note,
            "delong_ci": list(self.delong_ci) if self.delong_ci else None,
            "delong_se": self.delong_se,
        }


def _normal_interval(estimate: float, se: float, level: float) -> tuple[float, float]:
    from statistics import NormalDist

    z = NormalDist().inv_cdf(0.5 + level / 2.0)
    return (estimate - z * se, estimate + z * se)


def _check_level(level: float) -> None:
    if not (isinstance(level, (int, float)) and 0.0 < float(level) < 1.0):
        raise ValueError(f"level must be a fraction in (0, 1), e.g. 0.95; got {level!r}")


def percentile_interval(draws: np.ndarray, level: float) -> tuple[float, float] | None:
    """``(q(a/2), q(1 - a/2))`` of ``draws`` for ``a = 1 - level``; ``None`` if any draw is NaN.

    With infinite draws (a relative delta over an FP32 value of 0) the order statistics are used
    instead of interpolation, so an end is +/-inf rather than NaN.
    """
    d = np.asarray(draws, dtype=np.float64)
    if d.size == 0 or np.isnan(d).any():
        return None
    a = (1.0 - level) / 2.0
    if np.isfinite(d).all():
        lo, hi = np.quantile(d, [a, 1.0 - a])
    else:
        lo, hi = np.quantile(d, a, method="lower"), np.quantile(d, 1.0 - a, method="higher")
    return float(lo), float(hi)


def relative(delta: np.ndarray, fp32: Any) -> np.ndarray:
    """``delta / |fp32|`` elementwise, with :func:`pytest_qrel.evaluate.relative`'s rule at 0."""
    delta = np.asarray(delta, dtype=np.float64)
    fp32 = np.broadcast_to(np.asarray(fp32, dtype=np.float64), delta.shape)
    out = np.zeros_like(delta)
    np.divide(delta, np.abs(fp32), out=out, where=fp32 != 0)
    zero = fp32 == 0
    out[zero] = np.where(delta[zero] == 0, 0.0, np.copysign(np.inf, delta[zero]))
    return out


# --------------------------------------------------------------------------------------------
# Planning: which per-side metric values ("terms") the requests need
# --------------------------------------------------------------------------------------------


@dataclass
class _Plan:
    sides: list[SampleArrays] = field(default_factory=list)
    side_ids: dict[int, int] = field(default_factory=dict)
    n: dict[str, int] = field(default_factory=dict)
    id_terms: dict[str, dict[tuple, tuple[int, str]]] = field(default_factory=dict)  # dataset -> term -> (side, metric)
    ood_terms: dict[tuple, dict[tuple, Any]] = field(default_factory=dict)  # (side, score, id, ood) -> term -> fn

    def side(self, arrays: SampleArrays) -> int:
        key = id(arrays)
        if key not in self.side_ids:
            self.side_ids[key] = len(self.sides)
            self.sides.append(arrays)
        return self.side_ids[key]

    def field_of(self, side: int, dataset: str, name: str) -> np.ndarray:
        arrays = self.sides[side]
        if dataset not in arrays:
            raise ValueError(f"per-sample arrays have no dataset '{dataset}' (have: {', '.join(sorted(arrays)) or 'none'})")
        fields = arrays[dataset]
        if name not in fields:
            raise ValueError(f"per-sample arrays of '{dataset}' have no '{name}' (have: {', '.join(sorted(fields))})")
        arr = np.asarray(fields[name])
        if arr.ndim != 1:
            raise ValueError(f"'{name}' of '{dataset}' must be 1-D (N,), got shape {arr.shape}")
        if dataset in self.n and arr.shape[0] != self.n[dataset]:
            raise ValueError(
                f"'{dataset}' has {arr.shape[0]} samples in one side's '{name}' but {self.n[dataset]} in another: "
                "paired arrays must hold the same samples in the same order"
            )
        self.n[dataset] = arr.shape[0]
        return arr

    def id_term(self, side: int, dataset: str, metric: str) -> tuple:
        form = WEIGHTED_ID.get(metric)
        for name in form.needs:
            self.field_of(side, dataset, name)
        term = ("id", side, dataset, metric)
        self.id_terms.setdefault(dataset, {})[term] = (side, metric)
        return term

    def ood_term(self, side: int, score: str, id_ds: str, ood_ds: str, metric: str, conventions: str) -> tuple:
        fname = f"score.{score}"
        self.field_of(side, id_ds, fname)
        self.field_of(side, ood_ds, fname)
        key = (side, score, id_ds, ood_ds)
        term = ("ood", side, score, id_ds, ood_ds, metric, conventions)
        self.ood_terms.setdefault(key, {})[term] = ood_form(metric, conventions)
        return term


def _id_side(plan: _Plan, req: IntervalRequest, side: int) -> list[tuple]:
    return [plan.id_term(side, d, req.metric) for d in req.datasets]


def _pair_side(plan: _Plan, req: IntervalRequest, side: int) -> list[tuple]:
    common, counter = req.datasets
    return [plan.id_term(side, common, "top1"), plan.id_term(side, counter, "top1")]


def _ood_side(plan: _Plan, req: IntervalRequest, side: int) -> list[tuple]:
    if req.score is None or req.id_dataset is None:
        raise ValueError(f"OOD metric '{req.metric}' needs a score and the ID dataset")
    return [plan.ood_term(side, req.score, req.id_dataset, d, req.metric, req.conventions) for d in req.datasets]


_SIDE_TERMS = {"id": _id_side, "pair": _pair_side, "ood": _ood_side}
"""Metric kind -> the terms whose values make one side's value: one per dataset, averaged (for pair
metrics ``[top1 on common, top1 on counter]``, subtracted)."""


def _side_terms(plan: _Plan, req: IntervalRequest, side: int, kind: str) -> list[tuple]:
    return _SIDE_TERMS.get(kind, _ood_side)(plan, req, side)


def _term_sets(term: tuple) -> tuple[str, ...]:
    """The datasets a term reads."""
    return (term[2],) if term[0] == "id" else (term[3], term[4])


def _combine(values: Mapping[tuple, np.ndarray], terms: list[tuple], kind: str) -> np.ndarray:
    per_set = [values[t] for t in terms]
    if kind == "pair":
        return per_set[0] - per_set[1]
    return per_set[0] if len(per_set) == 1 else np.mean(per_set, axis=0)


# --------------------------------------------------------------------------------------------
# Evaluation of every term on a chunk of resamples
# --------------------------------------------------------------------------------------------


class _Evaluator:
    """Every planned term on a chunk of resamples. An ECE term also yields ``("ece-under", term)``
    and ``("ece-sums", term)`` (:mod:`.ece`), from the bin sums of a fixed half of the samples
    (seeded by ``seed``), so each ECE interval can be built from estimators that err in a known
    direction."""

    def __init__(self, plan: _Plan, seed: int = DEFAULT_SEED) -> None:
        self.plan = plan
        self.influence = True  # also the influence values of AUPR terms (studentized intervals)
        self.tables: dict[str, tuple[np.ndarray, dict[tuple, tuple[slice, Any, slice | None]]]] = {}
        for dataset, terms in plan.id_terms.items():
            blocks, slots, at = [], {}, 0
            first_half = split_halves(seed, dataset, plan.n[dataset]) if any(m == "ece" for _, m in terms.values()) else None
            for term, (side, metric) in terms.items():
                form = WEIGHTED_ID.get(metric)
                fields = plan.sides[side][dataset]
                cols = np.asarray(form.columns(fields), dtype=DTYPE)  # the matrix is float32: convert early, hold less
                blocks.append(cols)
                half = None
                if metric == "ece":
                    assert first_half is not None
                    blocks.append(ece.half_columns(fields, first_half).astype(DTYPE))
                    half = slice(at + cols.shape[1], at + 2 * cols.shape[1])
                slots[term] = (slice(at, at + cols.shape[1]), form, half)
                at += cols.shape[1] * (2 if half is not None else 1)
            matrix = np.zeros((at, plan.n[dataset] + 2), dtype=DTYPE)  # the two extra rows of counts_chunk read 0
            matrix[:, :-2] = np.concatenate(blocks, axis=1).T
            self.tables[dataset] = (matrix, slots)
        self.statics = {
            key: OodStatic(
                plan.field_of(key[0], key[2], f"score.{key[1]}"), plan.field_of(key[0], key[3], f"score.{key[1]}")
            )
            for key in plan.ood_terms
        }

    def __call__(self, counts: Mapping[str, np.ndarray]) -> dict[tuple, Any]:
        """Every term whose datasets are all in ``counts`` (:func:`.resample.counts_chunk` layout)."""
        out: dict[tuple, Any] = {}
        for dataset, (matrix, slots) in self.tables.items():
            if dataset not in counts:
                continue
            sums = (matrix @ counts[dataset]).T.astype(np.float64)
            n = self.plan.n[dataset]
            for term, (sl, form, half) in slots.items():
                out[term] = np.asarray(form.reduce(sums[:, sl], n), dtype=np.float64)
                if half is not None:
                    out[("ece-under", term)], out[("ece-sums", term)] = ece.reductions(sums[:, sl], sums[:, half], n)
        for key, terms in self.plan.ood_terms.items():
            _, _, id_ds, ood_ds = key
            if id_ds not in counts or ood_ds not in counts:
                continue
            curve = OodCurve(self.statics[key], counts[id_ds], counts[ood_ds])
            for term, fn in terms.items():
                out[term] = np.asarray(fn(curve), dtype=np.float64)
                metric_key = influence_key(term[5], term[6])
                if metric_key in WEIGHTED_INFLUENCE and self.influence:
                    out[("influence", term)] = WEIGHTED_INFLUENCE[metric_key](curve)[1:]
        return out


def _chunk_rows(max_n: int) -> int:
    return RNG_BLOCK * max(1, CHUNK_ELEMENTS // (RNG_BLOCK * max(max_n, 1)))


# --------------------------------------------------------------------------------------------
# The public entry points
# --------------------------------------------------------------------------------------------


def _kind_unit(bound: Bound | None) -> tuple[Kind, str]:
    if bound is None:
        return "delta", "abs"
    if bound.ref is not None:
        return ("ref-delta" if bound.kind == "delta" else "ref-value"), "abs"
    return bound.kind, bound.unit  # type: ignore[return-value]


def _signed(fp32: np.ndarray, value: np.ndarray, higher_is_better: bool) -> np.ndarray:
    return fp32 - value if higher_is_better else value - fp32


def _compared(kind: Kind, unit: str, value: np.ndarray, fp32: np.ndarray | None, ref: np.ndarray | None, hib: bool) -> np.ndarray:
    if kind == "value":
        return 100.0 * value if unit == "%" else value
    if kind == "ref-value":
        return value - ref  # type: ignore[operator]
    delta = _signed(fp32, value, hib)  # type: ignore[arg-type]
    if kind == "ref-delta":
        return delta - _signed(fp32, ref, hib)  # type: ignore[arg-type]
    if unit == "%":
        return 100.0 * relative(delta, fp32)  # type: ignore[arg-type]
    return 100.0 * delta if unit == "pp" else delta


@dataclass(frozen=True, eq=False)
class _Prepared:
    """One request, planned: its metric's registry entry, kind (``id`` / ``ood`` / ``pair`` /
    ``spectral``), the bound's quantity kind and unit, its terms per side (``None``: no interval,
    ``note`` says why)."""

    req: IntervalRequest
    meta: Mapping[str, Any]
    kind: str
    rkind: Kind
    unit: str
    terms: dict[str, list[list[tuple]]] | None
    note: str

    @property
    def hib(self) -> bool:
        return bool(self.meta["higher_is_better"])

    def used(self) -> set[str]:
        """The datasets the request's terms read."""
        assert self.terms is not None
        return {d for sides in self.terms.values() for side in sides for t in side for d in _term_sets(t)}


def _prepare(plan: _Plan, req: IntervalRequest) -> _Prepared:
    """Check ``req`` and plan the terms of each side (quantized seeds, FP32, reference seeds)."""
    from ..metrics import METRICS

    meta = METRICS.meta(req.metric)
    kind = meta["kind"]
    rkind, unit = _kind_unit(req.bound)
    if not req.quantized:
        raise ValueError("a request needs the quantized arrays (one mapping per seed)")
    if req.fp32 is None and rkind != "value":
        raise ValueError(f"a {rkind} interval needs the FP32 arrays")
    if rkind.startswith("ref") and not req.ref:
        raise ValueError("a bound against another quantizer needs its arrays (ref=...)")
    if kind == "spectral" or (kind == "id" and req.metric not in WEIGHTED_ID):
        return _Prepared(req, meta, kind, rkind, unit, None, f"{req.metric} has no per-sample form, so no interval")
    if kind == "pair" and len(req.datasets) != 2:
        raise ValueError("a pair metric reads (common, counter)")
    terms = {
        "q": [_side_terms(plan, req, plan.side(s), kind) for s in req.quantized],
        "fp32": [_side_terms(plan, req, plan.side(req.fp32), kind)] if req.fp32 is not None else [],
        "ref": [_side_terms(plan, req, plan.side(s), kind) for s in req.ref],
    }
    return _Prepared(req, meta, kind, rkind, unit, terms, "")


def _studentizes(p: _Prepared, plan: _Plan) -> bool:
    """An OOD request whose metric has an influence form, on sets below :data:`STUDENTIZE_BELOW`."""
    return (
        p.terms is not None and p.kind == "ood" and influence_key(p.req.metric, p.req.conventions) in WEIGHTED_INFLUENCE
        and all(MIN_SAMPLES <= plan.n[d] < STUDENTIZE_BELOW for d in p.used())
    )


def _resample(
    prepared: list[_Prepared], plan: _Plan, evaluate: _Evaluator, student: Mapping[int, tuple[Any, dict[str, np.ndarray]]],
    resamples: int, seed: int,
) -> dict[tuple, np.ndarray]:
    """Every term on every resample, chunk by chunk (each dataset's counts drawn once per chunk);
    the studentized requests' per-resample variances go into ``student[i][1]``."""
    resampled: set[str] = set()
    for p in prepared:
        if p.terms is not None and all(plan.n[d] >= MIN_SAMPLES for d in p.used()):
            resampled |= p.used()
    values: dict[tuple, np.ndarray] = {}
    if not resampled:
        return values
    rows = _chunk_rows(max(plan.n[d] for d in resampled))
    for start in range(0, resamples, rows):
        stop = min(resamples, start + rows)
        counts = {d: counts_chunk(seed, d, plan.n[d], start, stop) for d in sorted(resampled)}
        chunk = evaluate(counts)
        for term, vals in chunk.items():
            if term[0] != "influence":
                values.setdefault(term, np.empty((resamples, *vals.shape[1:])))[start:stop] = vals
        for i, (_, per_resample) in student.items():
            p = prepared[i]
            for which, v in _student_variance(p.terms, chunk, counts, p.rkind, p.unit, p.hib).items():
                per_resample.setdefault(which, np.empty(resamples))[start:stop] = v
    return values


def paired_intervals(
    requests: Sequence[IntervalRequest],
    *,
    resamples: int = DEFAULT_RESAMPLES,
    level: float = DEFAULT_LEVEL,
    seed: int = DEFAULT_SEED,
) -> list[PairedInterval]:
    """Bootstrap intervals of every request, sharing resamples (one set of counts per dataset name).

    Pass all checks of a unit (or of a run) in one call: each dataset is resampled once per chunk
    and each side's scores are sorted once, whatever number of checks read them. A request whose
    interval cannot be computed (a set of one sample, a metric without per-sample form) gets a
    result with ``note`` saying why and ``delta_ci = compared_ci = None``.

    Raises:
        ValueError: bad ``resamples`` / ``level``, arrays missing or of different lengths across
            sides, unknown metric names.
    """
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 10:
        raise ValueError(f"resamples must be an integer >= 10, got {resamples!r}")
    _check_level(level)
    plan = _Plan()
    prepared = [_prepare(plan, req) for req in requests]
    evaluate = _Evaluator(plan, seed)
    ones = {d: np.concatenate([np.ones((plan.n[d], 1), DTYPE), [[0.0], [TINY]]]).astype(DTYPE) for d in sorted(plan.n)}
    point = evaluate(ones)
    student: dict[int, tuple[dict[str, np.ndarray], dict[str, np.ndarray]]] = {  # variances on the full data and per resample
        i: (_student_variance(p.terms, point, ones, p.rkind, p.unit, p.hib), {})
        for i, p in enumerate(prepared) if _studentizes(p, plan)
    }
    evaluate.influence = bool(student)  # the resamples need influence values only where a request studentizes
    values = _resample(prepared, plan, evaluate, student, resamples, seed)
    out = []
    for i, p in enumerate(prepared):
        res = _summarise(p, plan, evaluate.statics, point, values, resamples, level, seed)
        if i in student and res.compared_draws is not None:
            _studentize(res, student[i][1], student[i][0])  # variances: (full data, per resample)
        out.append(res)
    return out


def _student_variance(terms: Any, vals: Mapping[Any, np.ndarray], counts: Mapping[str, np.ndarray],
                      rkind: Kind, unit: str, hib: bool) -> dict[str, np.ndarray]:
    """Per resample (one chunk, or the full data), the variance of the request's compared quantity
    and delta from the influence values of its terms (:mod:`.studentized`)."""
    x: dict[str, np.ndarray | None] = {}
    infl: dict[str, dict[str, np.ndarray]] = {}
    for w in ("q", "fp32", "ref"):
        sides = terms[w]
        if not sides:
            x[w] = None
            continue
        x[w] = np.mean([_combine(vals, st, "ood") for st in sides], axis=0)
        acc: dict[str, np.ndarray] = {}
        weight = 1.0 / (len(sides) * len(sides[0]))
        for seed_terms in sides:
            for t in seed_terms:
                d_id, d_ood = vals[("influence", t)]
                for d, D in ((t[3], d_id), (t[4], d_ood)):
                    acc[d] = acc[d] + weight * D if d in acc else weight * D
        infl[w] = acc

    def quantity(kind: Kind, u: str):
        return lambda v: _compared(kind, u, v["q"], v["fp32"], v["ref"], hib)

    out = {}
    for which, f in (("compared", quantity(rkind, unit)), ("delta", quantity("delta", "abs"))):
        if which == "delta" and x["fp32"] is None:
            continue
        slopes = partials(f, x)
        combined: dict[str, np.ndarray] = {}
        for w, slope in slopes.items():
            for d, D in infl[w].items():
                part = D * slope.astype(D.dtype)
                combined[d] = combined[d] + part if d in combined else part
        out[which] = variance(combined, counts)
    return out


def _studentize(res: PairedInterval, se_draws: Mapping[str, np.ndarray], se_full: Mapping[str, np.ndarray]) -> None:
    """Replace the percentile intervals of ``res`` by bootstrap-t ones (:mod:`.studentized`) where
    the pivot exists; the method says which."""
    done = False
    for which, point, draws in (("compared", res.compared, res.compared_draws), ("delta", res.delta, res.delta_draws)):
        if which not in se_draws or point is None or draws is None:
            continue
        pseudo = pseudo_draws(point, draws, np.sqrt(se_draws[which]), float(np.sqrt(se_full[which][0])))
        if pseudo is None:
            continue
        bounds = Bounds(((pseudo, pseudo),))
        if which == "compared":
            res.compared_bounds, res.compared_ci = bounds, bounds.interval(res.level)
            done = True
        else:
            res.delta_bounds, res.delta_ci = bounds, bounds.interval(res.level)
    if done:
        res.method = "studentized"


def _side_values(terms: Mapping[str, list], source: Mapping[tuple, np.ndarray], which: str, kind: str) -> np.ndarray | None:
    """One side's value (mean over its seeds of the combined terms), on the full data or per resample."""
    sides = terms[which]
    if not sides:
        return None
    return np.mean([_combine(source, s, kind) for s in sides], axis=0)


def _set_point(base: PairedInterval, p: _Prepared, point: Mapping[tuple, np.ndarray]) -> None:
    """The point values (full data) of every side, the delta and the compared quantity."""
    assert p.terms is not None
    pv, pf, pr = (_side_values(p.terms, point, w, p.kind) for w in ("q", "fp32", "ref"))
    assert pv is not None  # every request has the quantized side
    base.value = float(pv[0])
    base.fp32 = None if pf is None else float(pf[0])
    base.ref_value = None if pr is None else float(pr[0])
    if pf is not None:
        base.delta = float(_signed(pf, pv, p.hib)[0])
    base.compared = float(_compared(p.rkind, p.unit, pv, pf, pr, p.hib)[0])


def _small_sets_note(plan: _Plan, sets: list[str]) -> str:
    return "; ".join(
        f"'{d}' has {plan.n[d]} sample{'s' if plan.n[d] != 1 else ''}: no interval "
        f"(a bootstrap needs at least {MIN_SAMPLES} samples per set)"
        for d in sets if plan.n[d] < MIN_SAMPLES
    )


def _set_ece_bounds(base: PairedInterval, p: _Prepared, values: Mapping[tuple, np.ndarray], notes: list[str]) -> None:
    """ECE: the interval from the over- and under-estimators (:mod:`.ece`), not the percentile one."""
    assert p.terms is not None
    base.method = ece.ECE_METHOD
    base.delta_bounds, base.compared_bounds = _ece_bounds(p.terms, values, p.rkind, p.unit)
    if base.delta_bounds is not None:
        base.delta_ci = base.delta_bounds.interval(base.level)
    base.compared_ci = base.compared_bounds.interval(base.level)
    if p.rkind == "delta" and p.unit == "%" and base.compared_ci is not None and not np.isfinite(base.compared_ci[1]):
        notes.append(
            "FP32's ECE cannot be told from 0 on some resamples (its under-estimate is 0 there), so a relative "
            "ECE delta has no upper bound at this sample size; bound it in pp instead"
        )


def _set_top1_score(base: PairedInterval, p: _Prepared, notes: list[str]) -> None:
    """Top-1: widen the percentile intervals to the score intervals of the paired counts (:mod:`.counts`),
    which a bootstrap of a few (or no) disagreements between the models cannot reach."""
    score = top1_score(p.rkind, p.unit, base.fp32, p.req.datasets, p.req.quantized, p.req.fp32, p.req.ref)
    if score is None:
        return
    base.score = score
    before = base.compared_ci
    base.delta_ci = widen(base.delta_ci, score.delta(base.level))
    base.compared_ci = widen(base.compared_ci, score.compared(base.level))
    after = base.compared_ci
    if after != before:
        base.method = "percentile+score"
    if before is not None and after is not None and (before[1] - before[0]) < 0.5 * (after[1] - after[0]):
        notes.append(
            "few samples tell the models apart, so the interval is the score interval of the counts "
            "(Tango / Wilson), not the bootstrap's, which cannot resample a difference it did not see"
        )


def _widen_to_delong(base: PairedInterval) -> None:
    """An AUROC delta's interval on a set below :data:`DELONG_UNION_BELOW` samples: the union of the
    bootstrap's and DeLong's. There the percentile interval alone passed a check at the true delta
    about twice as often as its level allows (``benchmarks/coverage_edges.py``: 5.2% at 10 + 10
    samples and 3.8% at 30 + 20, 2.8% with the union); at 300 + 300 it held its level (2.6%)."""
    if base.metric != "auroc" or base.kind != "delta" or base.delong_ci is None:
        return
    if not base.n or min(base.n.values()) >= DELONG_UNION_BELOW:
        return
    lo, hi = base.delong_ci
    if base.unit == "pp":
        compared: tuple[float, float] | None = (100.0 * lo, 100.0 * hi)
    elif base.unit == "%":
        compared = (100.0 * lo / abs(base.fp32), 100.0 * hi / abs(base.fp32)) if base.fp32 else None
    else:
        compared = (lo, hi)
    before = base.compared_ci
    base.delta_ci = widen(base.delta_ci, base.delong_ci)
    base.compared_ci = widen(base.compared_ci, compared)
    if base.compared_ci != before and base.method == "percentile":
        base.method = "percentile+delong"


def _draw_notes(base: PairedInterval, p: _Prepared, rf: np.ndarray | None, plan: _Plan, sets: list[str]) -> list[str]:
    """What a reader must know about the draws: undefined resamples, FP32 at 0 under a relative
    bound, zero width, few samples."""
    notes = []
    if base.compared_ci is None:
        notes.append(f"{p.req.metric} is undefined on some resamples, so no interval")
    if p.rkind == "delta" and p.unit == "%" and rf is not None:
        zero = int((rf == 0).sum())
        if zero or base.fp32 == 0:
            where = f"on {zero} of {base.resamples} resamples" + (" and on the full data" if base.fp32 == 0 else "")
            notes.append(
                f"FP32 {p.req.metric} is 0 {where}, where a relative (%) delta is undefined (0 if equal, "
                "+/-inf otherwise); bound it in pp or absolute units instead"
            )
    draws = base.compared_draws
    assert draws is not None
    if base.compared_ci is not None and base.compared_ci[0] == base.compared_ci[1] and np.isfinite(draws).all() and np.ptp(draws) == 0:
        what = "value" if p.rkind == "value" else "delta"
        notes.append(f"the {what} is the same on every resample (e.g. constant scores), so the interval has zero width")
    few = [d for d in sets if plan.n[d] < FEW_SAMPLES]
    if few:
        notes.append(f"only {' and '.join(f'{plan.n[d]} samples in {d}' for d in few)}: the interval is a rough guide")
    return notes


def _summarise(
    p: _Prepared, plan: _Plan, statics: Mapping[tuple, OodStatic], point: Mapping[tuple, np.ndarray],
    values: Mapping[tuple, np.ndarray], resamples: int, level: float, seed: int,
) -> PairedInterval:
    """The :class:`PairedInterval` of one prepared request from the point values and the draws."""
    base = PairedInterval(
        metric=p.req.metric, kind=p.rkind, unit=p.unit, level=level, resamples=resamples, seed=seed,
        value=None, fp32=None, ref_value=None, delta=None, compared=None, note=p.note,
    )
    if p.terms is None:
        return base
    sets = sorted(p.used())
    base.n = {d: plan.n[d] for d in sets}
    _set_point(base, p, point)
    small = _small_sets_note(plan, sets)
    if small:
        base.note = small
        return base
    rv, rf, rr = (_side_values(p.terms, values, w, p.kind) for w in ("q", "fp32", "ref"))
    assert rv is not None
    notes: list[str] = []
    if rf is not None:
        base.delta_draws = _signed(rf, rv, p.hib)
        base.delta_ci = percentile_interval(base.delta_draws, level)
    base.compared_draws = _compared(p.rkind, p.unit, rv, rf, rr, p.hib)
    base.compared_ci = percentile_interval(base.compared_draws, level)
    if p.req.metric == "top1" and p.kind == "id":
        _set_top1_score(base, p, notes)
    if p.req.metric == "ece" and p.kind == "id":
        _set_ece_bounds(base, p, values, notes)
    notes += _draw_notes(base, p, rf, plan, sets)
    if p.req.metric == "auroc" and p.rkind != "value" and not p.req.ref:
        delong = _delong(p.req, plan, statics, level, notes)
        if delong is not None:
            base.delong_ci, base.delong_se = (delong.low, delong.high), delong.se
            _widen_to_delong(base)
    base.note = "; ".join([n for n in [p.note, *notes] if n])
    return base


def _ece_bounds(terms: Mapping[str, list], values: Mapping[Any, np.ndarray], rkind: Kind, unit: str) -> tuple[Bounds | None, Bounds]:
    """The :class:`Bounds` of an ECE request's delta (metric unit) and compared quantity, from the
    over- (plain) and under-estimators of every side and the paired bin distances (:mod:`.ece`)."""

    def side(which: str, key: str | None) -> np.ndarray | None:
        sides = terms[which]
        if not sides:
            return None
        return np.mean([_combine({t: values[t if key is None else (key, t)] for t in s}, s, "id") for s in sides], axis=0)

    def distance(a: str, b: str) -> np.ndarray:
        """Mean over seed pairs and datasets of ``sum_b |S_a - S_b|``: bounds ``|ECE_a - ECE_b|``."""
        return np.mean([
            ece.paired_distance(values[("ece-sums", ta)], values[("ece-sums", tb)])
            for sa in terms[a] for sb in terms[b] for ta, tb in zip(sa, sb)
        ], axis=0)

    over = {w: side(w, None) for w in ("q", "fp32", "ref")}
    under = {w: side(w, "ece-under") for w in ("q", "fp32", "ref")}
    q_over, q_under = over["q"], under["q"]
    assert q_over is not None and q_under is not None  # every request has the quantized side
    # ECE: lower is better, so the quantity grows with the quantized side and falls with the others
    ordered = (
        _compared(rkind, unit, q_under, over["fp32"], over["ref"], False),
        _compared(rkind, unit, q_over, under["fp32"], under["ref"], False),
    )
    constructions = [ordered]
    partner = "ref" if rkind.startswith("ref") else ("fp32" if rkind == "delta" else None)
    if partner is not None:
        t = distance("q", partner)
        if rkind == "delta" and unit == "%":
            constructions.append((100.0 * relative(-t, under["fp32"]), 100.0 * relative(t, under["fp32"])))
        else:
            scale = 100.0 if (rkind == "delta" and unit == "pp") else 1.0
            constructions.append((-scale * t, scale * t))
    compared = Bounds(tuple(constructions))
    f_over, f_under = over["fp32"], under["fp32"]
    if f_over is None or f_under is None:
        return None, compared
    t = distance("q", "fp32")
    delta = Bounds(((q_under - f_over, q_over - f_under), (-t, t)))
    return delta, compared


def _delong(req: IntervalRequest, plan: _Plan, statics: Mapping[tuple, OodStatic], level: float, notes: list[str]) -> DeLongResult | None:
    """DeLong interval of the AUROC delta (FP32 minus the seed mean of the quantized), from the
    structural components the sorted curves already hold."""
    if req.fp32 is None:
        return None
    k = len(req.datasets)
    terms = []
    for coef, side in [(1.0 / k, req.fp32), *((-1.0 / (k * len(req.quantized)), s) for s in req.quantized)]:
        for d in req.datasets:
            st = statics[(plan.side(side), req.score, req.id_dataset, d)]
            terms.append((coef, st, d))
    try:
        r = delong_from_counts(terms, level)
    except ValueError as exc:
        notes.append(f"no DeLong cross-check ({exc})")
        return None
    return r


def delong_from_counts(terms: Sequence[tuple[float, OodStatic, str]], level: float) -> DeLongResult:
    """:func:`.delong.delong_interval` from sorted curves: ``V10`` and ``V01`` are counts of
    samples below each sample, which :class:`OodStatic` already has (no new sorts)."""
    pieces = []
    for coef, st, key in terms:
        m, n = st.n["id"], st.n["ood"]
        v10 = np.empty(m)
        v10[st.order["id"]] = (st.counts["id"]["ood_lt"] + st.counts["id"]["ood_le"]) / (2.0 * n)
        v01 = np.empty(n)
        v01[st.order["ood"]] = (2.0 * m - st.counts["ood"]["id_lt"] - st.counts["ood"]["id_le"]) / (2.0 * m)
        pieces.append((coef, v10, v01, key))
    return delong_from_components(pieces, level)


def paired_interval(request: IntervalRequest, **kwargs: Any) -> PairedInterval:
    """:func:`paired_intervals` of one request."""
    return paired_intervals([request], **kwargs)[0]


__all__ = [
    "DEFAULT_LEVEL",
    "DEFAULT_RESAMPLES",
    "DEFAULT_SEED",
    "FEW_SAMPLES",
    "MIN_SAMPLES",
    "Bounds",
    "IntervalRequest",
    "PairedInterval",
    "SampleArrays",
    "paired_interval",
    "paired_intervals",
    "percentile_interval",
    "relative",
]
