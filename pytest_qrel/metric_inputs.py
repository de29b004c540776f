"""Argument checks of the metric functions (:mod:`pytest_qrel.metrics`, :mod:`pytest_qrel.conventions`).

A leaf module (numpy and :mod:`pytest_qrel.errors` only): the metrics and the conventions that
override them both validate their inputs with these, without importing each other. Call problems
(wrong shape, empty) raise :class:`ValueError` naming the argument; problems of the data (NaN / inf,
labels out of range, all-equal or too few OOD scores) raise :class:`~pytest_qrel.errors.NumericsError`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import NumericsError

#: Rows of ``probs`` must sum to 1 within this absolute tolerance (float16 softmax is ~5e-4 off).
PROBS_SUM_ATOL = 1e-2


# --------------------------------------------------------------------------------------------
# Validation (separate from computation)
# --------------------------------------------------------------------------------------------


def _as_float_array(x: Any, name: str) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric; could not convert it to float64 ({exc})") from None
    return arr


def _check_finite(arr: np.ndarray, name: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        first = np.unravel_index(int(np.argmax(bad)), arr.shape)
        where = first[0] if len(first) == 1 else tuple(int(i) for i in first)
        n_nan = int(np.isnan(arr).sum())
        n_inf = int(bad.sum()) - n_nan
        raise NumericsError(
            f"{name} contains non-finite values: {n_nan} NaN and {n_inf} inf "
            f"(first at index {where}); the model output is broken"
        )


def check_logits(logits: Any, name: str = "logits") -> np.ndarray:
    """Return ``logits`` as a finite float64 array of shape (N, C), N >= 1, C >= 1.

    Raises:
        ValueError: not 2-D, empty, or containing NaN/inf.
    """
    arr = _as_float_array(logits, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D with shape (N, C); got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"{name} is empty: got shape {arr.shape}; need at least one sample and one class")
    _check_finite(arr, name)
    return arr


def check_probs(probs: Any, name: str = "probs") -> np.ndarray:
    """Return ``probs`` as a float64 (N, C) array of probabilities (rows sum to 1).

    Raises:
        ValueError: as :func:`check_logits`, or values outside [0, 1], or a row whose sum is
            more than :data:`PROBS_SUM_ATOL` away from 1 (pass ``softmax(logits)``, not logits).
    """
    arr = check_logits(probs, name)
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(
            f"{name} must be probabilities in [0, 1]; found values in [{lo:g}, {hi:g}] "
            "(pass softmax(logits), not logits)"
        )
    sums = arr.sum(axis=1)
    off = np.abs(sums - 1.0) > PROBS_SUM_ATOL
    if off.any():
        i = int(np.argmax(off))
        raise ValueError(
            f"{name} rows must sum to 1; row {i} sums to {sums[i]:g} "
            f"({int(off.sum())} rows off by more than {PROBS_SUM_ATOL:g})"
        )
    return arr


def check_labels(labels: Any, n_samples: int, n_classes: int, name: str = "labels") -> np.ndarray:
    """Return ``labels`` as an int64 array of shape (n_samples,) with values in [0, n_classes).

    Integer-valued floats are accepted; fractional values are not.

    Raises:
        ValueError: not 1-D, wrong length, non-integer, non-finite or out-of-range values.
    """
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (N,); got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"{name} has {arr.shape[0]} entries but there are {n_samples} samples (rows)")
    if arr.dtype == np.bool_ or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"{name} must be integer class indices; got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        _check_finite(arr, name)
        if not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must be integer class indices; found fractional values")
    arr = arr.astype(np.int64)
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= n_classes:
        raise NumericsError(
            f"{name} out of range: values must be in [0, {n_classes}) for {n_classes} classes; "
            f"found min {lo}, max {hi}"
        )
    return arr


def check_scores(scores: Any, name: str) -> np.ndarray:
    """Return ``scores`` as a non-empty, finite, 1-D float64 array.

    Raises:
        ValueError: not 1-D, empty, or containing NaN/inf.
    """
    arr = _as_float_array(scores, name)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D with shape (N,); got shape {arr.shape}")
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty (0 scores); need at least one")
    _check_finite(arr, name)
    return arr


def check_n_bins(n_bins: Any) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer; got {n_bins!r}")
    return int(n_bins)


def check_not_degenerate(s_id: np.ndarray, s_ood: np.ndarray) -> None:
    """Raise :class:`~pytest_qrel.errors.NumericsError` when every ID and OOD score is the same value
    (no threshold separates anything: AUROC 0.5 and FPR@95 1.0 by construction)."""
    lo = min(float(s_id.min()), float(s_ood.min()))
    if lo == max(float(s_id.max()), float(s_ood.max())):
        raise NumericsError(
            f"all {s_id.size} ID and {s_ood.size} OOD scores equal {lo:.6g}: the OOD metrics are degenerate "
            "(AUROC 0.5 and FPR@95 1.0 by construction); the outputs do not depend on the input"
        )


def check_ood_sizes(s_ood: np.ndarray, min_ood: int) -> None:
    """Raise :class:`~pytest_qrel.errors.NumericsError` when there are fewer than ``min_ood`` OOD scores."""
    if s_ood.size < min_ood:
        raise NumericsError(
            f"ood_scores has {s_ood.size} sample{'s' if s_ood.size != 1 else ''}; OOD metrics need at least {min_ood} "
            f"(with fewer, one sample moves FPR@95 by more than {100 / min_ood:g} points)"
        )
