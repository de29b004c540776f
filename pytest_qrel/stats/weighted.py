"""Metrics of many resamples at once, from per-sample counts: exact, vectorised, no resampled copies.

A resample is a column of counts (how often each sample was drawn; :mod:`.resample`), and a
chunk of resamples is a sample-major ``(n + 2, resamples)`` float32 array (two extra rows: 0 and
TINY). Every metric here equals the registered metric function (:mod:`pytest_qrel.metrics`, or
the convention's override in :mod:`pytest_qrel.conventions`) applied to the resampled arrays
``x[resample_indices(counts[:, b])]``, for all columns at once. Counts and their running sums are
float32, exact for integers below 2**24 samples; weighted sums of real values are float32 too
(relative error about 1e-6).

**ID metrics** (``top1``, ``nll``, ``ece``) are linear in the counts up to a final reduction:
each contributes per-sample *columns* (``correct``; ``nll``; for ECE one column per bin holding
``correct - confidence`` in the sample's bin, same 15 equal-width bins as :func:`metrics.ece`), all
columns of one dataset go into one matrix ``M`` (k, n) and one product ``M @ counts`` per chunk
gives every weighted sum; ECE is then ``sum_b |S_b| / n``. New ID metrics register an
:class:`IdForm` in :data:`WEIGHTED_ID`.

**OOD metrics** read an :class:`OodCurve`: each score array (ID and OOD separately) is sorted
once per side (:class:`OodStatic`, reused across all resamples); per chunk the counts are gathered
into that order (one ``take`` of whole rows) and their running sums taken (one small matrix
product, :class:`Blocked`), so every resample is a weighted count per sample in score order and
AUROC, AUPR and FPR@95 follow from running sums read at precomputed positions. Ties (within and
across ID and OOD) follow scikit-learn exactly; a sample with count 0 is simply absent.

Adding a convention's weighted metric (one registry entry)
-----------------------------------------------------------
A convention in :data:`pytest_qrel.conventions.CONVENTIONS` that overrides metric ``m`` gets its
resampled form from :data:`WEIGHTED_OOD` under ``"<convention>:<m>"``; metrics it does not
override use the entry under the bare name ``"<m>"``. An entry is
``fn(curve: OodCurve) -> np.ndarray`` of shape ``(resamples,)``. What a curve offers:
``c.A`` / ``c.O`` (total ID / OOD weight per resample), ``c.w(k)`` and ``c.cum(k)`` (weights and
inclusive running sums of set ``k`` in ``"id"`` / ``"ood"`` in ascending score order, in the
:class:`Blocked` row layout), ``c.at(where, cum, name)`` (the running sum of ``cum`` at each
sample of ``where``: ``"id_le"`` / ``"id_lt"`` / ``"ood_le"`` / ``"ood_lt"`` = ID / OOD weight
scoring ``<=`` / ``<`` than it), ``c.static.sample_rows(k)`` (the rows that hold samples: the
others hold no weight and must not be picked), :func:`last_position` (a per-resample search on
a running sum) and ``c.total(x, k)`` (column sums). E.g. a TPR-closest-to-95% FPR::

    @WEIGHTED_OOD.register("mcm:fpr_at_95_tpr")
    def _mcm_fpr(c: OodCurve) -> np.ndarray:
        rows = c.static.sample_rows("id")
        tpr = (c.A - c.at("id", "id", "id_lt")[rows]) / c.A      # ID accepted at each ID score
        fpr = (c.O - c.at("id", "ood", "ood_lt")[rows]) / c.O    # OOD accepted there
        pick = np.abs(tpr - 0.95).argmin(axis=0)
        return fpr[pick, np.arange(c.rows)]

(ignoring weightless samples for brevity). Without an entry the interval is still exact, through
:func:`fallback` (the convention's plain function called on each resampled array: correct, about
1,000x slower). ``tests/test_stats.py`` checks every (convention, metric) pair, registered or
not, against the plain function on resampled arrays, so a new entry is tested as soon as it
is registered.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np

from ..registry import Registry
from .resample import TINY

DTYPE = np.float32
"""Counts, running sums and weighted sums (exact for integer counts below 2**24)."""

ECE_BINS = 15
_BLOCK = 16  # running sums: blocks of 16 positions times a 16 x 16 triangular matrix


# --------------------------------------------------------------------------------------------
# Running sums in the blocked layout
# --------------------------------------------------------------------------------------------


class Blocked:
    """The layout of a gathered, sorted column of ``n`` samples plus a leading "no sample" slot.

    Position ``p`` (``0``: nothing, ``1..n``: the sorted samples, then padding up to a multiple
    of 16) is stored in row ``(p % 16) * G + p // 16`` of an ``(m, rows)`` array (``m = 16 G``),
    so that the running sums inside each block of 16 positions are one matrix product over
    ``x (16, G * rows)`` (see :meth:`running_sums`). ``row_of(p)`` maps positions to stored rows.
    """

    def __init__(self, n: int) -> None:
        self.n = n
        self.m = -(-(n + 1) // _BLOCK) * _BLOCK
        self.g = self.m // _BLOCK

    def row_of(self, p: np.ndarray | int) -> np.ndarray:
        p = np.asarray(p, dtype=np.intp)
        return (p % _BLOCK) * self.g + p // _BLOCK

    def gather_index(self, order: np.ndarray, first: int) -> np.ndarray:
        """Row ``r`` of the gathered array is count row ``index[r]``: position 0 reads count row
        ``first``, positions ``1..n`` the samples in ``order``, padding the zero row ``n``."""
        pos_source = np.full(self.m, self.n, dtype=np.intp)
        pos_source[0] = first
        pos_source[1 : self.n + 1] = order
        index = np.empty(self.m, dtype=np.intp)
        index[self.row_of(np.arange(self.m))] = pos_source
        return index

    def gather(self, counts: np.ndarray, index: np.ndarray) -> np.ndarray:
        """``counts[index]`` into a new ``(m + G, rows)`` buffer: rows ``:m`` the gathered weights,
        rows ``m:`` room for the block offsets of :meth:`running_sums`."""
        buf = np.empty((self.m + self.g, counts.shape[1]), dtype=DTYPE)
        np.take(counts, index, axis=0, out=buf[: self.m], mode="clip")
        return buf

    def running_sums(self, buf: np.ndarray) -> np.ndarray:
        """Inclusive running sums over the positions of a :meth:`gather` buffer, ``(m, rows)``.

        One matrix product ``[tri | 1] (16, 17) @ [x ; offsets] (17, G * rows)``: the running sums
        inside each block plus the total of all earlier blocks (from the block totals, a
        ``cumsum`` over G values per resample).
        """
        rows = buf.shape[1]
        x = buf[: self.m].reshape(_BLOCK, self.g * rows)
        totals = (_ONES_BLOCK @ x).reshape(self.g, rows)
        off = buf[self.m :]
        off[0] = 0.0
        if self.g > 1:  # exclusive running sums of the block totals, along a contiguous axis
            off[1:] = np.cumsum(np.ascontiguousarray(totals[:-1].T), axis=1).T
        return (_TRI_AUG @ buf.reshape(_BLOCK + 1, self.g * rows)).reshape(self.m, rows)


_ONES_BLOCK = np.ones(_BLOCK, dtype=DTYPE)
_TRI_AUG = np.hstack([np.tril(np.ones((_BLOCK, _BLOCK), dtype=DTYPE)), np.ones((_BLOCK, 1), dtype=DTYPE)])


# --------------------------------------------------------------------------------------------
# ID metrics: columns and a reduction
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdForm:
    """The resampled form of an ID metric.

    ``columns(fields) -> (n, k)``: per-sample columns from a dataset's arrays (``correct``,
    ``confidence``, ``nll``); ``reduce(sums, n) -> (rows,)``: the metric from the weighted sums
    ``counts @ columns`` (each row of counts sums to ``n``).
    """

    columns: Callable[[Mapping[str, np.ndarray]], np.ndarray]
    reduce: Callable[[np.ndarray, int], np.ndarray]
    needs: tuple[str, ...]


WEIGHTED_ID: Registry[IdForm] = Registry("resampled ID metric")


def _field(fields: Mapping[str, np.ndarray], name: str) -> np.ndarray:
    try:
        return np.asarray(fields[name])
    except KeyError:
        raise KeyError(name) from None


def ece_bins(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence, as :func:`pytest_qrel.metrics.ece`: ``[e_k, e_k+1)``, last bin closed."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(np.asarray(confidence, dtype=np.float64), edges) - 1, 0, n_bins - 1)


def _ece_columns(fields: Mapping[str, np.ndarray]) -> np.ndarray:
    conf = np.asarray(_field(fields, "confidence"), dtype=np.float64)
    gap = _field(fields, "correct").astype(np.float64) - conf
    out = np.zeros((conf.shape[0], ECE_BINS), dtype=np.float64)
    out[np.arange(conf.shape[0]), ece_bins(conf)] = gap
    return out


WEIGHTED_ID.add(
    "top1",
    IdForm(lambda f: _field(f, "correct").astype(np.float64)[:, None], lambda s, n: s[:, 0] / n, ("correct",)),
)
WEIGHTED_ID.add(
    "nll",
    IdForm(lambda f: np.asarray(_field(f, "nll"), dtype=np.float64)[:, None], lambda s, n: s[:, 0] / n, ("nll",)),
)
WEIGHTED_ID.add(
    "ece",
    IdForm(_ece_columns, lambda s, n: np.abs(s).sum(axis=1) / n, ("correct", "confidence")),
)


# --------------------------------------------------------------------------------------------
# OOD metrics: a sorted curve per side, running sums per chunk
# --------------------------------------------------------------------------------------------

class _Counts(dict):
    """``counts[name]`` for ``name`` in ``id_le``, ``id_lt``, ``ood_le``, ``ood_lt``: for each sorted
    sample of set ``where``, how many samples of set ID / OOD score ``<=`` / ``<`` than it
    (computed on first use)."""

    def __init__(self, sorted_scores: dict[str, np.ndarray], where: str) -> None:
        super().__init__()
        self._sorted, self._where = sorted_scores, where

    def __missing__(self, name: str) -> np.ndarray:
        other, side = name.split("_")
        value = np.searchsorted(self._sorted[other], self._sorted[self._where], "right" if side == "le" else "left")
        self[name] = value
        return value


class OodStatic:
    """What one side's scores on (ID set, OOD set) need, computed once: orders and tie positions.

    Scores are higher = more ID and sorted **ascending**. For each sample ``p`` of a set (ID or
    OOD, in sorted order), ``counts[where][name][p]`` is how many ID (``id_le``, ``id_lt``) or
    OOD (``ood_le``, ``ood_lt``) samples score ``<=`` / ``<`` than it: a running sum of weights
    read at that position is the weight below the sample. ``layout[k]`` is the :class:`Blocked`
    layout of set ``k``'s gathered weights and ``gather[k]`` its gather index into counts with
    the two extra rows of :func:`.resample.counts_chunk` (``n``: 0, ``n + 1``: TINY). The ID
    layout's position 0 reads TINY, so every ID running sum is positive (denominators such as
    ``O_le + A_le`` never vanish) and rounds back to the exact count wherever that is >= 1.
    """

    def __init__(self, id_scores: np.ndarray, ood_scores: np.ndarray) -> None:
        s_id = np.asarray(id_scores, dtype=np.float64)
        s_ood = np.asarray(ood_scores, dtype=np.float64)
        if s_id.ndim != 1 or s_ood.ndim != 1 or not s_id.size or not s_ood.size:
            raise ValueError("OOD metrics need non-empty 1-D ID and OOD scores")
        for name, s in (("ID", s_id), ("OOD", s_ood)):
            if not np.isfinite(s).all():
                raise ValueError(f"{name} scores contain NaN or inf; the model output is broken")
        self.n = {"id": s_id.size, "ood": s_ood.size}
        # any sort: samples with equal scores are treated alike (counts of <= and <), their order is moot
        self.order = {"id": np.argsort(s_id), "ood": np.argsort(s_ood)}
        self.sorted = {"id": s_id[self.order["id"]], "ood": s_ood[self.order["ood"]]}
        self.layout = {k: Blocked(self.n[k]) for k in ("id", "ood")}
        self.gather = {
            "id": self.layout["id"].gather_index(self.order["id"], first=self.n["id"] + 1),
            "ood": self.layout["ood"].gather_index(self.order["ood"], first=self.n["ood"]),
        }
        self.counts = {"id": _Counts(self.sorted, "id"), "ood": _Counts(self.sorted, "ood")}
        self._read: dict[tuple[str, str, str], np.ndarray] = {}
        self._fix: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._ones = {k: np.ones(self.layout[k].m, dtype=DTYPE) for k in ("id", "ood")}

    def rows(self, k: str, positions: np.ndarray | int) -> np.ndarray:
        """Stored rows of positions ``positions`` (counts of samples) in set ``k``'s layout."""
        return self.layout[k].row_of(positions)

    def sample_rows(self, k: str, samples: np.ndarray | None = None) -> np.ndarray:
        """Stored rows of the sorted samples ``samples`` (default: all) of set ``k``."""
        idx = np.arange(self.n[k]) if samples is None else np.asarray(samples)
        return self.layout[k].row_of(idx + 1)

    def read(self, where: str, cum: str, name: str) -> np.ndarray:
        """Stored rows of ``cum``'s running sums holding, for each stored row of ``where``, the
        position ``counts[where][name]`` of its sample (position 0 for rows without a sample)."""
        key = (where, cum, name)
        if key not in self._read:
            pos = np.zeros(self.layout[where].m, dtype=np.intp)
            pos[self.sample_rows(where)] = self.counts[where][name]
            self._read[key] = self.rows(cum, pos)
        return self._read[key]

    def cross_fix(self, where: str, cum: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """For a read of the other set's running sums at ``name`` (``<cum>_le`` / ``<cum>_lt``): the
        stored rows of ``where`` where it differs from the read at the other of the two (samples
        tied with some sample of ``cum``), and the rows of ``cum`` to read there."""
        key = (where, name)
        if key not in self._fix:
            c = self.counts[where]
            tied = np.flatnonzero(c[f"{cum}_le"] != c[f"{cum}_lt"])
            self._fix[key] = (self.sample_rows(where, tied), self.rows(cum, c[name][tied]))
        return self._fix[key]

    @cached_property
    def cross_tied(self) -> np.ndarray:
        """Sorted OOD samples tied with some ID sample."""
        c = self.counts["ood"]
        return np.flatnonzero(c["id_le"] != c["id_lt"])

    @cached_property
    def orig_rows(self) -> dict[str, np.ndarray]:
        """``orig_rows[k][i]``: the stored row of set ``k``'s sample ``i`` (original order), to take a
        per-row array back to sample order."""
        out = {}
        for k in ("id", "ood"):
            rank = np.empty(self.n[k], dtype=np.intp)
            rank[self.order[k]] = np.arange(self.n[k])
            out[k] = self.sample_rows(k, rank)
        return out

    @cached_property
    def groups(self) -> ScoreGroups:
        """The distinct scores over ID and OOD together (see :class:`ScoreGroups`), built on first use."""
        return ScoreGroups(self)

    def own_fix(self, k: str, name: str) -> tuple[np.ndarray, np.ndarray]:
        """For a read of set ``k``'s own running sums at ``<k>_le`` / ``<k>_lt``: the stored rows
        where ties move the read away from the sample's own position, and the rows to read there."""
        key = (k, name)
        if key not in self._fix:
            own = np.arange(1, self.n[k] + 1) if name.endswith("_le") else np.arange(self.n[k])
            tied = np.flatnonzero(self.counts[k][name] != own)
            self._fix[key] = (self.sample_rows(k, tied), self.rows(k, self.counts[k][name][tied]))
        return self._fix[key]

    def total(self, x: np.ndarray, where: str) -> np.ndarray:
        """Column sums of an ``(m, rows)`` array in ``where``'s layout, as float64 (rows,)."""
        return (self._ones[where] @ x).astype(np.float64)


class ScoreGroups:
    """The distinct score values of ID and OOD together, ascending (``G`` of them): the points of a
    ROC curve before resampling (a resample keeps the groups that carry weight).

    For group ``g``, the sorted ID samples ``id_lo[g] .. id_hi[g] - 1`` and the sorted OOD samples
    ``ood_lo[g] .. ood_hi[g] - 1`` hold its score, so a running sum read at position ``id_hi[g]``
    is the ID weight scoring ``<=`` it and at ``id_lo[g]`` the weight scoring ``<`` it; the
    ``*_rows`` arrays are those positions' stored rows. ``of_ood[j]`` / ``of_id[i]``: the group
    of sorted OOD sample ``j`` / ID sample ``i``.
    """

    def __init__(self, st: OodStatic) -> None:
        values = np.unique(np.concatenate([st.sorted["id"], st.sorted["ood"]]))
        self.size = values.size
        self.id_lo = np.searchsorted(st.sorted["id"], values, "left")
        self.id_hi = np.searchsorted(st.sorted["id"], values, "right")
        self.ood_lo = np.searchsorted(st.sorted["ood"], values, "left")
        self.ood_hi = np.searchsorted(st.sorted["ood"], values, "right")
        self.of_id = np.searchsorted(values, st.sorted["id"])
        self.of_ood = np.searchsorted(values, st.sorted["ood"])
        self.id_lo_rows, self.id_hi_rows = st.rows("id", self.id_lo), st.rows("id", self.id_hi)
        self.ood_lo_rows, self.ood_hi_rows = st.rows("ood", self.ood_lo), st.rows("ood", self.ood_hi)


class OodCurve:
    """One chunk of resamples on one side: sorted weights and their running sums (sample-major).

    ``w(k)`` (``k`` = ``"id"`` / ``"ood"``): the gathered weights, ``(m, rows)`` in the
    :class:`Blocked` layout of :class:`OodStatic`; ``cum(k)``: their inclusive running sums, so
    ``cum(k)[row_of(p)]`` is the weight of the ``p`` lowest-scoring samples. ``A`` / ``O``: total
    ID / OOD weight per resample. :meth:`at` reads running sums aligned with a set's stored rows
    (cached, so metrics of one curve share the reads).
    """

    def __init__(self, static: OodStatic, id_counts: np.ndarray, ood_counts: np.ndarray) -> None:
        self.static = static
        self.rows = id_counts.shape[1]
        self._counts = {"id": id_counts, "ood": ood_counts}
        self._buf: dict[str, np.ndarray] = {}
        self._cum: dict[str, np.ndarray] = {}
        self._at: dict[tuple[str, str, str], np.ndarray] = {}

    def _gathered(self, k: str) -> np.ndarray:
        if k not in self._buf:
            self._buf[k] = self.static.layout[k].gather(self._counts[k], self.static.gather[k])
        return self._buf[k]

    def w(self, k: str) -> np.ndarray:
        return self._gathered(k)[: self.static.layout[k].m]

    def cum(self, k: str) -> np.ndarray:
        if k not in self._cum:
            self._cum[k] = self.static.layout[k].running_sums(self._gathered(k))
        return self._cum[k]

    def cum_at(self, k: str, positions: np.ndarray) -> np.ndarray:
        """``cum(k)`` at one position per resample (``positions`` (rows,)), as float64."""
        return self.cum(k)[self.static.rows(k, positions), np.arange(self.rows)].astype(np.float64)

    @cached_property
    def A(self) -> np.ndarray:  # noqa: N802 - the usual name of the positive total
        return self.cum("id")[self.static.rows("id", self.static.n["id"])].astype(np.float64)

    @cached_property
    def O(self) -> np.ndarray:  # noqa: N802, E743
        return self.cum("ood")[self.static.rows("ood", self.static.n["ood"])].astype(np.float64)

    def at(self, where: str, cum: str, name: str) -> np.ndarray:
        """``cum``'s running sum at ``counts[where][name]``, aligned with ``w(where)``: e.g.
        ``at("ood", "id", "id_le")`` holds, in each OOD sample's row, the ID weight scoring ``<=`` it."""
        key = (where, cum, name)
        if key not in self._at:
            st = self.static
            if where == cum:  # own running sums: the sample's own position, moved by ties
                base = self.cum(where) if name.endswith("_le") else self.cum(where) - self.w(where)
                rows, src = st.own_fix(where, name)
                if rows.size:
                    base = base.copy() if base is self.cum(where) else base
                    base[rows] = self.cum(where)[src]
                self._at[key] = base
            else:
                other = (where, cum, f"{cum}_le" if name.endswith("_lt") else f"{cum}_lt")
                rows, src = st.cross_fix(where, cum, name)
                if other in self._at and rows.size < st.n[where] // 8:
                    # "<=" and "<" reads differ only at samples tied across the sets: patch those
                    base = self._at[other].copy() if rows.size else self._at[other]
                    base[rows] = self.cum(cum)[src]
                    self._at[key] = base
                else:
                    self._at[key] = np.take(self.cum(cum), st.read(where, cum, name), axis=0)
        return self._at[key]

    def total(self, x: np.ndarray, where: str) -> np.ndarray:
        return self.static.total(x, where)

    def running(self, k: str, x: np.ndarray) -> np.ndarray:
        """Inclusive running sums, over set ``k``'s positions, of any ``(m, rows)`` array in its layout."""
        lay = self.static.layout[k]
        buf = np.empty((lay.m + lay.g, self.rows), dtype=DTYPE)
        buf[: lay.m] = x
        return lay.running_sums(buf)

    def read_running(self, run: np.ndarray, where: str, k: str, name: str, own: np.ndarray | None = None) -> np.ndarray:
        """``run`` (running sums over set ``k``, e.g. from :meth:`running`) read as :meth:`at` reads
        ``cum(k)``: at ``counts[where][name]`` for each stored row of ``where``. For ``where == k`` and
        a ``_lt`` name, ``own`` is the array ``run`` sums (subtracted at each sample's own row)."""
        st = self.static
        if where != k:
            return np.take(run, st.read(where, k, name), axis=0)
        base = run if name.endswith("_le") else run - own
        rows, src = st.own_fix(where, name)
        if rows.size:
            base = base.copy() if base is run else base
            base[rows] = run[src]
        return base

    def sorted_weights(self, k: str, col: int) -> np.ndarray:
        """Weights of the sorted samples of set ``k`` in resample ``col``, as int64 (n,)."""
        return self.w(k)[self.static.sample_rows(k), col].astype(np.int64)

    def resampled(self, col: int) -> tuple[np.ndarray, np.ndarray]:
        """The resampled (ID, OOD) score arrays of one resample (sorted ascending)."""
        st = self.static
        return tuple(np.repeat(st.sorted[k], self.sorted_weights(k, col)) for k in ("id", "ood"))  # type: ignore[return-value]


WEIGHTED_OOD: Registry[Callable[[OodCurve], np.ndarray]] = Registry("resampled OOD metric")
"""``"<metric>"`` (the default definition) or ``"<convention>:<metric>"`` -> ``fn(curve) -> (rows,)``."""


def _precision(pos: np.ndarray, neg: np.ndarray) -> np.ndarray:
    """``pos / (pos + neg)``, 0 where both are 0 (rows whose weight is 0)."""
    den = pos + neg
    np.maximum(den, TINY, out=den)
    return np.divide(pos, den, out=den)


@WEIGHTED_OOD.register("auroc")
def _auroc(c: OodCurve) -> np.ndarray:
    """``P(ID > OOD) + P(=)/2`` = ``1 - sum_j o_j (A_le(j) - A_eq(j)/2) / (A O)``."""
    st = c.static
    below = c.total(c.w("ood") * c.at("ood", "id", "id_le"), "ood")
    if st.cross_tied.size:  # ties between ID and OOD count one half: only the tied OOD samples
        rows = st.sample_rows("ood", st.cross_tied)
        le = c.cum("id")[st.rows("id", st.counts["ood"]["id_le"][st.cross_tied])]
        lt = c.cum("id")[st.rows("id", st.counts["ood"]["id_lt"][st.cross_tied])]
        below -= 0.5 * (c.w("ood")[rows] * (le - lt)).sum(axis=0, dtype=np.float64)
    return 1.0 - below / (c.A * c.O)


@WEIGHTED_OOD.register("aupr_out")
def _aupr_out(c: OodCurve) -> np.ndarray:
    """Average precision, OOD positive, decision ``-score``: ``sum_j o_j P(<= s_j) / O``."""
    st = c.static
    a_le = c.at("ood", "id", "id_le")
    o_le = c.cum("ood")  # each sample's own running sum; tied samples are patched below
    den = o_le + a_le  # > 0: the ID running sums start at TINY
    precision = np.divide(o_le, den, out=den)
    rows, src = st.own_fix("ood", "ood_le")
    if rows.size:
        tied = c.cum("ood")[src]
        precision[rows] = tied / (tied + a_le[rows])
    return c.total(np.multiply(c.w("ood"), precision, out=precision), "ood") / c.O


@WEIGHTED_OOD.register("aupr_in")
def _aupr_in(c: OodCurve) -> np.ndarray:
    """Average precision, ID positive, decision ``score``: ``sum_i a_i P(>= s_i) / A``."""
    a_ge = c.A.astype(DTYPE) - c.at("id", "id", "id_lt")
    o_ge = c.O.astype(DTYPE) - c.at("id", "ood", "ood_lt")
    return c.total(c.w("id") * _precision(a_ge, o_ge), "id") / c.A


def last_position(c: OodCurve, k: str, ok: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """Per resample, the largest position ``p`` (0..n) of set ``k`` whose running sum ``cum`` passes
    ``ok(cum_float64)``, for ``ok`` true at position 0 and monotone in the running sum (true,
    then false, as positions grow). Two steps: over the block starts (positions 16 g, stored
    rows 0..G-1 in order), then inside the block found."""
    lay, cum, cols = c.static.layout[k], c.cum(k), np.arange(c.rows)
    starts = ok(cum[: lay.g].astype(np.float64)).sum(axis=0) - 1  # blocks whose start passes
    inside = cum[np.arange(_BLOCK)[:, None] * lay.g + starts[None, :], cols[None, :]]
    p = _BLOCK * starts + ok(inside.astype(np.float64)).sum(axis=0) - 1
    return np.minimum(p, lay.n)


@WEIGHTED_OOD.register("fpr_at_95_tpr")
def _fpr_at_95_tpr(c: OodCurve) -> np.ndarray:
    """ID positive: the OOD share accepted (``score >= t``) at the highest threshold ``t`` whose
    TPR ``A(>= t) / A`` is ``>= 0.95`` (the float64 comparison scikit-learn's ``roc_curve`` makes).

    ``K``, the largest position with ``(A - cum_id(K)) / A >= 0.95``, bounds the weight below the
    threshold; the threshold is the highest-scoring ID sample ``i`` with ``#ID < s_i <= K``. It
    carries weight (a weightless one would pass together with the next, or, with nothing above
    it, fail), so it is a point of the ROC curve.
    """
    t = _hendrycks_threshold(c)
    return (c.O - c.cum_at("ood", c.static.counts["id"]["ood_lt"][t])) / c.O


def _hendrycks_threshold(c: OodCurve) -> np.ndarray:
    """Per resample, the sorted ID sample whose score is the threshold of :func:`_fpr_at_95_tpr`."""
    A = c.A
    K = last_position(c, "id", lambda cum: (A - cum) / A >= 0.95)
    return np.searchsorted(c.static.counts["id"]["id_lt"], K, side="right") - 1


def _weight(c: OodCurve, k: str, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``cum(k)`` at stored ``rows`` of columns ``cols`` (broadcast), as exact integers in float64
    (the TINY of the ID layout's position 0 rounds away)."""
    return np.rint(c.cum(k)[rows, cols].astype(np.float64))


@WEIGHTED_OOD.register("mcm_code:fpr_at_95_tpr")
def _mcm_fpr(c: OodCurve) -> np.ndarray:
    """:func:`pytest_qrel.conventions.nearest_recall_fpr_at_95_tpr`: ID positive, the ROC point
    whose TPR is nearest 0.95 (ties: the higher TPR; among points of that TPR the highest FPR; at
    TPR 1 only the first point reaching it).

    TPR is monotone along the curve, so the nearest TPR is one of two levels around 0.95: ``hi``,
    the TPR at :func:`_fpr_at_95_tpr`'s threshold ``s_t`` (the first point with TPR >= 0.95), and
    ``lo``, the ID share scoring strictly above ``s_t`` (the point(s) just before, if any weight
    scores above ``s_t``). The points of one TPR level run from one weighted ID score down to the
    next; the lowest of them has the highest FPR: for ``lo`` the OOD share scoring ``> s_t``, for
    ``hi`` the OOD share scoring above the next weighted ID sample below ``s_t`` (or, at TPR 1,
    the point at ``s_t`` itself). Distances are compared in float64 as ``numpy`` does.
    """
    st, A, O = c.static, c.A, c.O  # noqa: E741  (O: the total OOD weight, the notation of c.O and the formulas)
    t = _hendrycks_threshold(c)
    below = np.rint(c.cum_at("id", st.counts["id"]["id_lt"][t]))  # ID weight scoring < s_t
    above = A - np.rint(c.cum_at("id", st.counts["id"]["id_le"][t]))  # ID weight scoring > s_t
    ood_above = O - np.rint(c.cum_at("ood", st.counts["id"]["ood_le"][t]))  # OOD weight scoring > s_t
    tpr_hi, tpr_lo = (A - below) / A, above / A
    use_lo = ((above > 0) | (ood_above > 0)) & (np.abs(tpr_lo - 0.95) < np.abs(tpr_hi - 0.95))
    # hi: the highest weighted ID sample below s_t (where the running sum first reaches `below`)
    j = last_position(c, "id", lambda cum: cum < np.maximum(below, 0.5)) + 1  # 1-based position
    j_ood_le = st.counts["id"]["ood_le"][np.clip(j - 1, 0, st.n["id"] - 1)]
    fpr_hi = np.where(below > 0.5, (O - np.rint(c.cum_at("ood", j_ood_le))) / O,
                      (O - np.rint(c.cum_at("ood", st.counts["id"]["ood_lt"][t]))) / O)
    return np.where(use_lo, ood_above / O, fpr_hi)


WINDOW = 16
"""Score groups read at once per resample by :func:`_openood_fpr`'s walk along a straight run."""


@WEIGHTED_OOD.register("openood:fpr_at_95_tpr")
def _openood_fpr(c: OodCurve) -> np.ndarray:
    """OOD positive, decision ``-score`` (thresholds ascending in score), scikit-learn ``roc_curve``
    with ``drop_intermediate=True``: FPR (ID share flagged) at the first *kept* point with TPR >= 0.95.

    The points are the score groups (:class:`ScoreGroups`) that carry weight in the resample;
    ``p``, the first with OOD share ``<= s`` at least 0.95, is the group of the first sorted OOD
    sample whose running sum reaches it. scikit-learn drops a point whose step in (its own ID and
    OOD weight) equals its step out (the next point's): a straight run. So unless ``p`` is the
    first point (always kept), the answer is the last point of the run of consecutive points
    carrying exactly ``p``'s weights, found by reading :data:`WINDOW` groups at a time for the
    resamples still in a run. Along a run of OOD-only points the FPR is constant, so only a run of
    tied ID-and-OOD points with equal weights (rare: e.g. integer scores) is walked.
    """
    st, A, O, cols = c.static, c.A, c.O, np.arange(c.rows)  # noqa: E741  (O: the total OOD weight, the notation of c.O and the formulas)
    gr = st.groups
    K = last_position(c, "ood", lambda cum: cum / O < 0.95) + 1  # first OOD position reaching 95%
    p = gr.of_ood[np.minimum(K, st.n["ood"]) - 1]
    ap = _weight(c, "id", gr.id_hi_rows[p], cols) - _weight(c, "id", gr.id_lo_rows[p], cols)
    op = _weight(c, "ood", gr.ood_hi_rows[p], cols) - _weight(c, "ood", gr.ood_lo_rows[p], cols)
    first = (_weight(c, "id", gr.id_lo_rows[p], cols) + _weight(c, "ood", gr.ood_lo_rows[p], cols)) == 0
    q = p.copy()  # the last point of the run so far
    # Along a run of OOD-only points the FPR does not move: only a run of tied ID-and-OOD points
    # with equal weights (p's ID weight > 0) needs the walk.
    walk = np.flatnonzero(~first & (ap > 0))
    at = p[walk]  # the group the window starts after
    step = np.arange(1, WINDOW + 1)[:, None]
    while walk.size:
        g = at[None, :] + step  # (WINDOW, walking)
        inside = g < gr.size
        g = np.minimum(g, gr.size - 1)
        wc = cols[walk][None, :]
        a = _weight(c, "id", gr.id_hi_rows[g], wc) - _weight(c, "id", gr.id_lo_rows[g], wc)
        o = _weight(c, "ood", gr.ood_hi_rows[g], wc) - _weight(c, "ood", gr.ood_lo_rows[g], wc)
        present = inside & ((a + o) > 0)
        same = present & (a == ap[walk]) & (o == op[walk])
        differ = present & ~same
        ends = differ.any(axis=0) | ~inside[-1]  # the run ends inside this window
        cut = np.where(differ.any(axis=0), differ.argmax(axis=0), WINDOW)  # first differing point
        before = same & (np.arange(WINDOW)[:, None] < cut[None, :])
        has = before.any(axis=0)
        last_same = WINDOW - 1 - before[::-1].argmax(axis=0)
        run_end = np.where(has, g[last_same, np.arange(walk.size)], q[walk])
        q[walk] = run_end
        at = np.where(has, run_end, at + WINDOW)
        walk, at = walk[~ends], at[~ends]
    return np.rint(c.cum_at("id", gr.id_hi[q])) / A


@WEIGHTED_OOD.register("openood:aupr_out")
def _openood_aupr_out(c: OodCurve) -> np.ndarray:
    """Trapezoidal AUPR, OOD positive, decision ``-score``: the precision at each OOD sample
    (``O_le / (O_le + A_le)``) and just above it (``O_lt / (O_lt + A_lt)``), both from the OOD
    running sums and one read of the ID ones; only tied samples are read apart."""
    st = c.static
    cum, w = c.cum("ood"), c.w("ood")
    a_le = c.at("ood", "id", "id_le")
    incl = _precision(cum, a_le)
    rows, src = st.own_fix("ood", "ood_le")
    if rows.size:
        tied = cum[src]
        incl[rows] = tied / np.maximum(tied + a_le[rows], TINY)
    o_lt = cum - w
    rows, src = st.own_fix("ood", "ood_lt")
    if rows.size:
        o_lt[rows] = cum[src]
    before = o_lt + a_le
    rows, src = st.cross_fix("ood", "id", "id_lt")
    if rows.size:
        before[rows] = o_lt[rows] + c.cum("id")[src]
    return _trapezoid_sum(c, "ood", incl, o_lt, before, c.O)


@WEIGHTED_OOD.register("openood:aupr_in")
def _openood_aupr_in(c: OodCurve) -> np.ndarray:
    """Trapezoidal AUPR, ID positive, decision ``score``, read as :func:`_openood_aupr_out`."""
    st = c.static
    A, O = c.A.astype(DTYPE), c.O.astype(DTYPE)  # noqa: E741  (O: the total OOD weight, the notation of c.O and the formulas)
    cum, w = c.cum("id"), c.w("id")
    o_ge = O - c.at("id", "ood", "ood_lt")
    a_ge = A - (cum - w)
    rows, src = st.own_fix("id", "id_lt")
    if rows.size:
        a_ge[rows] = A - cum[src]
    incl = _precision(a_ge, o_ge)
    a_gt = A - cum
    rows, src = st.own_fix("id", "id_le")
    if rows.size:
        a_gt[rows] = A - cum[src]
    before = a_gt + o_ge
    rows, src = st.cross_fix("id", "ood", "ood_le")
    if rows.size:
        before[rows] = a_gt[rows] + (O - c.cum("ood")[src])
    return _trapezoid_sum(c, "id", incl, a_gt, before, c.A)


def _trapezoid_sum(c: OodCurve, where: str, incl: np.ndarray, pos_excl: np.ndarray, before: np.ndarray, total) -> np.ndarray:
    """``sum_j w_j (precision at s_j + precision just above s_j) / (2 total)``, the second
    ``pos_excl / before`` (1 where nothing is above: integer weights, so below 1 means none)."""
    first = before < 0.5
    np.maximum(before, TINY, out=before)
    excl = np.divide(pos_excl, before, out=before)
    excl[first] = 1.0
    excl += incl
    excl *= c.w(where)
    return c.total(excl, where) / (2.0 * total)


def fallback(plain: Callable[[Any, Any], float]) -> Callable[[OodCurve], np.ndarray]:
    """A resampled form of any ``fn(id_scores, ood_scores)``: called on each resampled array."""

    def fn(c: OodCurve) -> np.ndarray:
        return np.array([plain(*c.resampled(r)) for r in range(c.rows)], dtype=np.float64)

    fn.__name__ = f"fallback_{getattr(plain, '__name__', 'metric')}"
    return fn


def ood_form(metric: str, conventions: str = "hendrycks") -> Callable[[OodCurve], np.ndarray]:
    """The resampled form of OOD ``metric`` under ``conventions`` (see the module docstring)."""
    from ..conventions import CONVENTIONS
    from ..metrics import METRICS

    overrides = CONVENTIONS.get(conventions)
    key = f"{conventions}:{metric}" if metric in overrides else metric
    if key in WEIGHTED_OOD:
        return WEIGHTED_OOD.get(key)
    return fallback(overrides.get(metric, METRICS.get(metric)))


__all__ = [
    "DTYPE",
    "ECE_BINS",
    "WEIGHTED_ID",
    "WEIGHTED_OOD",
    "Blocked",
    "IdForm",
    "OodCurve",
    "OodStatic",
    "ece_bins",
    "fallback",
    "last_position",
    "ood_form",
]
