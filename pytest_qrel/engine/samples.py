"""Per-sample arrays: what a unit keeps of a forward pass, and the metrics computed from them.

A forward pass over a dataset gives logits (N, C); a unit keeps only these arrays per dataset
(about 30 + 8 x scores bytes a sample), computed batch by batch so the full logits never exist:

``label``        int64 (N,), the class index, -1 for OOD samples
``pred``         int64 (N,), the arg-max class
``confidence``   float32 (N,), the max softmax probability (what ECE bins)
``correct``      bool (N,), ``pred == label`` (False for OOD samples)
``nll``          float32 (N,), negative log-likelihood of the label in nats (labelled sets only)
``score.<s>``    float64 (N,), OOD score ``s`` (higher = more in-distribution); float64 so that a
                 saturated MSP (1 - 1e-9) does not tie with 1.0

These are the inputs of every check, of the baselines' stored FP32 arrays, of the paired
bootstrap intervals and of the report's curves. ``SampleArrays`` is ``{field: array}`` of one
dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from ..errors import ModelError


SampleArrays = dict[str, np.ndarray]
LABELLED_FIELDS = ("label", "pred", "confidence", "correct", "nll")
OOD_FIELDS = ("label", "pred", "confidence")


def check_batch_logits(logits: Any, images: int, what: str, classes: int | None = None) -> int:
    """The forward pass of a batch of ``images`` gave one row of class scores per image: logits
    ``(images, C)``, with ``C == classes`` when given (the first batch's width, so every batch of a
    pass has the same). Returns C. ``what`` names the pass ("model 'vit' W8A8 on digits").

    Raises:
        ModelError: one line naming the pass, the shape returned and the shape expected, e.g. a
            forward that averages over the batch and returns ``(1, C)`` for a batch of 64.
    """
    shape = tuple(getattr(logits, "shape", ()))
    if not hasattr(logits, "shape"):
        raise ModelError(
            f"{what}: the forward pass returned {type(logits).__name__}, not a logits tensor of shape ({images}, C) "
            "(fix: make the model's forward return one row of class scores per image)"
        )
    if len(shape) != 2 or shape[0] != images or (classes is not None and shape[1] != classes):
        width = classes if classes is not None else (shape[1] if len(shape) == 2 else "C")
        raise ModelError(
            f"{what}: the forward pass returned logits of shape {shape} for a batch of {images} images; expected "
            f"({images}, {width}), one row of class scores per image (fix: make the model's forward return (batch, classes) logits)"
        )
    return int(shape[1])


def batch_arrays(logits: Any, labels: np.ndarray, *, labelled: bool) -> SampleArrays:
    """The label / pred / confidence / correct / nll arrays of one batch of float logits (B, C)."""
    x = np.asarray(logits, dtype=np.float64)
    m = x.max(axis=1, keepdims=True)
    z = np.exp(x - m)
    denom = z.sum(axis=1)
    pred = x.argmax(axis=1).astype(np.int64)
    out: SampleArrays = {
        "label": np.asarray(labels, dtype=np.int64),
        "pred": pred,
        "confidence": (z.max(axis=1) / denom).astype(np.float32),
    }
    if labelled:
        rows = np.arange(len(x))
        out["correct"] = pred == out["label"]
        out["nll"] = (np.log(denom) + m[:, 0] - x[rows, out["label"]]).astype(np.float32)
    return out


def concat(parts: list[SampleArrays]) -> SampleArrays:
    """Join per-batch arrays field by field (an empty dataset gives empty arrays)."""
    if not parts:
        return {}
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def take(arrays: Mapping[str, np.ndarray], index: np.ndarray) -> SampleArrays:
    """The same samples' arrays, reordered / resampled by ``index``."""
    return {k: v[index] for k, v in arrays.items()}


def nbytes(arrays: Mapping[str, Mapping[str, np.ndarray]]) -> int:
    """Bytes held by ``{dataset: SampleArrays}``."""
    return int(sum(a.nbytes for per in arrays.values() for a in per.values()))
