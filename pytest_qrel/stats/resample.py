"""Reproducible bootstrap resamples of one dataset, as counts per sample.

A resample of a dataset of ``n`` samples draws ``n`` samples with replacement; it is stored as the
number of times each sample was drawn: a column of ``n`` non-negative integers summing to ``n``,
exactly Multinomial(n, 1/n, ..., 1/n) (the classic bootstrap). Every side of a comparison
(quantized, FP32, a reference quantizer, every seed) reads the *same* counts, which is what pairs
them; each dataset (the ID test set, each OOD set, each shifted set) is resampled on its own (a
stratified bootstrap).

Layout: **sample-major**, ``counts[i, b]`` is how often sample ``i`` is in resample ``b`` (shape
``(n, resamples)``), so that gathering samples into a sorted order moves whole rows.

Reproducibility: column ``b`` of dataset ``key`` depends only on ``(seed, key, n, b)``, never on how
many columns are drawn at once or on which other datasets or checks are in the same call.
Columns come in blocks of :data:`RNG_BLOCK`, each block from its own generator seeded with
``SeedSequence(seed, spawn_key=(crc32(key), n, block))``.

How the counts are drawn (fast and exact): each sample gets a Poisson(lam) count with
``lam = 1 - 3 / sqrt(n)`` (a 16-bit table lookup, refined with a fresh uniform in the few table
cells that straddle a jump of the Poisson CDF, so the draw is exact up to float64 rounding of the
CDF). Conditional on their total ``t``, i.i.d. Poisson counts are Multinomial(t, uniform) whatever
lam is; a column with ``t > n`` (probability about 0.1 %) is drawn again, and a column with
``t <= n`` gets ``n - t`` more draws uniformly at random, which makes it Multinomial(n, uniform)
exactly. This is several times faster than ``bincount(integers(0, n, n))`` at n = 50,000. Sets of
fewer than :data:`SMALL_N` samples use ``bincount`` directly.
"""

from __future__ import annotations

import math
import zlib
from collections import OrderedDict
from functools import lru_cache

import numpy as np

RNG_BLOCK = 8
"""Resamples drawn from one generator; compute chunks are multiples of this."""

SMALL_N = 256
"""Below this many samples a resample is drawn as ``bincount(integers(0, n, n))``."""

_CELLS = 1 << 16
_BOUNDARY = 255


@lru_cache(maxsize=64)
def _poisson_table(lam: float) -> tuple[np.ndarray, np.ndarray]:
    """``(table, cdf)``: ``table[u]`` (float32) is the Poisson(lam) count of every uniform in
    ``[u / 2**16, (u + 1) / 2**16)``, or :data:`_BOUNDARY` where the CDF jumps inside that cell."""
    pmf, cdf, k = [math.exp(-lam)], [math.exp(-lam)], 0
    while cdf[-1] < 1.0 and k < 200:
        k += 1
        pmf.append(pmf[-1] * lam / k)
        cdf.append(cdf[-1] + pmf[-1])
    cdf_arr = np.minimum(np.asarray(cdf, dtype=np.float64), 1.0)
    cdf_arr[-1] = 1.0
    cells = np.arange(_CELLS, dtype=np.float64)
    count_lo = np.searchsorted(cdf_arr, cells / _CELLS, side="right")
    count_hi = np.searchsorted(cdf_arr, np.nextafter((cells + 1) / _CELLS, 0.0), side="right")
    table = np.where(count_lo == count_hi, count_lo, _BOUNDARY).astype(np.float32)
    return table, cdf_arr


def _generator(seed: int, key: str, n: int, block: int) -> np.random.Generator:
    ss = np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(key.encode("utf-8")), int(n), int(block)))
    return np.random.Generator(np.random.PCG64(ss))


TINY = np.float32(2.0**-24)
"""Weight of the "almost nothing" row: it keeps denominators positive and vanishes (rounds away)
next to any count of 1 or more in float32."""


def _direct_columns(gen: np.random.Generator, n: int, out: np.ndarray) -> None:
    """Fill ``out`` (n, cols) with counts from explicit draws (small sets)."""
    cols = out.shape[1]
    idx = gen.integers(0, n, size=(cols, n)) * cols + np.arange(cols)[:, None]
    out[...] = np.bincount(idx.ravel(), minlength=n * cols).reshape(n, cols)


def _refine(gen: np.random.Generator, raw: np.ndarray, counts: np.ndarray, hit: np.ndarray, cdf: np.ndarray) -> None:
    """Exact counts for the flat positions ``hit`` whose 16-bit cell straddles a CDF jump."""
    u = (raw.reshape(-1)[hit].astype(np.float64) + gen.random(hit.size)) / _CELLS
    counts.reshape(-1)[hit] = np.searchsorted(cdf, u, side="right")


def _poisson_chunk(gens: list[np.random.Generator], n: int, out: np.ndarray) -> None:
    """Fill ``out`` (n, 8 * len(gens)), contiguous, with Multinomial(n, uniform) columns: block ``j``
    of 8 columns from ``gens[j]``, in the same order of draws as if it were drawn alone."""
    table, cdf = _poisson_table(1.0 - 3.0 / math.sqrt(n))
    blocks = len(gens)
    raw = np.empty((n, RNG_BLOCK * blocks), dtype=np.uint16)
    for j, gen in enumerate(gens):
        raw[:, j * RNG_BLOCK : (j + 1) * RNG_BLOCK] = gen.bit_generator.random_raw(n * RNG_BLOCK // 4 + 1).view(np.uint16)[: n * RNG_BLOCK].reshape(n, RNG_BLOCK)
    np.take(table, raw, out=out, mode="clip")
    hits = np.flatnonzero(out.reshape(-1) == _BOUNDARY)
    block_of_hit = (hits % (RNG_BLOCK * blocks)) // RNG_BLOCK
    for j, gen in enumerate(gens):
        mine = hits[block_of_hit == j]
        if mine.size:
            _refine(gen, raw, out, mine, cdf)
    totals = (_ones(n) @ out).astype(np.int64)  # exact: integers below 2**24
    for j, gen in enumerate(gens):
        cols = slice(j * RNG_BLOCK, (j + 1) * RNG_BLOCK)
        block_totals = totals[cols]
        for c in np.flatnonzero(block_totals > n):  # rare: draw the column again until it fits
            while block_totals[c] > n:
                col_raw = gen.bit_generator.random_raw(n // 4 + 1).view(np.uint16)[:n].reshape(n, 1)
                col = np.take(table, col_raw).astype(np.float32)
                col_hits = np.flatnonzero(col.reshape(-1) == _BOUNDARY)
                if col_hits.size:
                    _refine(gen, col_raw, col, col_hits, cdf)
                out[:, j * RNG_BLOCK + c] = col[:, 0]
                block_totals[c] = int(col.sum(dtype=np.float64))
        fill = n - block_totals
        extra = gen.integers(0, n, size=int(fill.sum())) * (RNG_BLOCK * blocks) + np.repeat(np.arange(RNG_BLOCK) + j * RNG_BLOCK, fill)
        cells, times = np.unique(extra, return_counts=True)
        out.reshape(-1)[cells] += times


@lru_cache(maxsize=16)
def _ones(n: int) -> np.ndarray:
    return np.ones(n, dtype=np.float32)


CACHED_BYTES = 8 << 20
"""Chunks up to this size are kept (:func:`counts_chunk`): a run asks for the same dataset's
resamples once per interval request (every check on the ID test set redraws them otherwise)."""

_CACHE: OrderedDict[tuple[int, str, int, int, int], np.ndarray] = OrderedDict()
_CACHE_ENTRIES = 32


def counts_chunk(seed: int, key: str, n: int, start: int, stop: int) -> np.ndarray:
    """Resamples ``start .. stop - 1`` of dataset ``key`` as an ``(n + 2, stop - start)`` float32
    array: rows ``0 .. n - 1`` the counts (see :func:`resample_counts`), row ``n`` zeros ("no
    sample"), row ``n + 1`` :data:`TINY` ("almost nothing"); the gathers of :mod:`.weighted` read
    the last two rows. The array is read-only: small chunks are cached and handed out again."""
    cache_key = (seed, key, n, start, stop)
    cached = _CACHE.get(cache_key)
    if cached is not None:
        _CACHE.move_to_end(cache_key)
        return cached
    out = _draw_chunk(seed, key, n, start, stop)
    out.flags.writeable = False
    if out.nbytes <= CACHED_BYTES:
        _CACHE[cache_key] = out
        while len(_CACHE) > _CACHE_ENTRIES:
            _CACHE.popitem(last=False)
    return out


def _draw_chunk(seed: int, key: str, n: int, start: int, stop: int) -> np.ndarray:
    if n < 1:
        raise ValueError(f"dataset '{key}' has no samples to resample")
    if not 0 <= start <= stop:
        raise ValueError(f"bad resample range {start}..{stop}")
    first, last = start // RNG_BLOCK, -(-stop // RNG_BLOCK)
    out = np.empty((n + 2, (last - first) * RNG_BLOCK), dtype=np.float32)
    gens = [_generator(seed, key, n, b) for b in range(first, last)]
    if n < SMALL_N:
        for j, gen in enumerate(gens):
            _direct_columns(gen, n, out[:n, j * RNG_BLOCK : (j + 1) * RNG_BLOCK])
    else:
        _poisson_chunk(gens, n, out[:n])
    out[n] = 0.0
    out[n + 1] = TINY
    lo = start - first * RNG_BLOCK
    return out if (lo == 0 and out.shape[1] == stop - start) else out[:, lo : lo + stop - start]


def resample_counts(seed: int, key: str, n: int, start: int, stop: int) -> np.ndarray:
    """Counts of resamples ``start .. stop - 1`` of dataset ``key`` with ``n`` samples, sample-major.

    Returns an ``(n, stop - start)`` float32 array (exact for counts and their running sums below
    2**24); each column sums to ``n`` and is Multinomial(n, uniform).

    >>> c = resample_counts(0, "digits", 10, 0, 3)
    >>> c.shape, c.sum(axis=0).tolist()
    ((10, 3), [10.0, 10.0, 10.0])
    """
    return counts_chunk(seed, key, n, start, stop)[:n]


def resample_indices(counts: np.ndarray) -> np.ndarray:
    """The sample indices of one resample (a column of counts), sorted: ``np.repeat(arange(n), counts)``.

    ``x[resample_indices(c)]`` is the resampled array that the weighted metrics equal."""
    col = np.asarray(counts)
    return np.repeat(np.arange(col.shape[0]), col.astype(np.int64))




def split_halves(seed: int, key: str, n: int) -> np.ndarray:
    """A fixed random split of dataset ``key``'s ``n`` samples into two halves: ``True`` marks the
    first half (``n // 2`` samples). Depends only on ``(seed, key, n)``, like the resamples, and
    is the same for every side of a comparison (the split pairs, as the counts do)."""
    ss = np.random.SeedSequence(int(seed), spawn_key=(zlib.crc32(key.encode("utf-8")), int(n), 1 << 31))
    mask = np.zeros(n, dtype=bool)
    mask[np.random.Generator(np.random.PCG64(ss)).permutation(n)[: n // 2]] = True
    return mask


__all__ = ["RNG_BLOCK", "SMALL_N", "TINY", "counts_chunk", "resample_counts", "resample_indices", "split_halves"]
