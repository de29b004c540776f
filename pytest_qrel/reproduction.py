"""The FP32 reproduction check: does the FP32 model still give the per-sample outputs its baseline stores?

A baseline's checksums prove that its files are the ones that were written; they cannot prove that
the FP32 model of *this* run still computes what was stored (an unseeded random op in ``forward``,
dropout left in train mode, a changed factory whose weights hash the same, another torch build).
So every run passes the first :data:`REPRODUCE_IMAGES` images of the ID test split through the FP32
model once per model (one small batch, not one per check, and no outputs cache) and compares the
outputs with the stored per-sample arrays of those images (:mod:`pytest_qrel.engine.samples`:
``pred``, ``confidence``, ``nll``, ``score.<s>``). The same pass checks, when a baseline is written,
that the model's outputs depend on its input at all
(:func:`pytest_qrel.validation.refuse_input_independent`).

Tolerances (:func:`tolerance_for`), and why:

- Same device type as the baseline (``cpu`` against ``cpu``): ``confidence`` within 1e-4 absolute;
  ``nll`` and every ``score.<s>`` within 1e-4 x max(1, |stored|). A deterministic model gives the
  same bits on the same machine, or differs by float rounding when the batch composition or thread
  count changes the summation order (about 1e-7 relative in float32 logits); 1e-4 leaves three
  orders of magnitude for that, and is still 100x below the smallest bound worth stating (0.01 pp).
- Another device type (a CPU baseline checked with ``--qrel-device cuda``, or the reverse):
  :data:`CROSS_DEVICE_FACTOR` (50) times looser, 5e-3. GPUs use TF32 convolutions by default and
  other reduction orders; a 12-block ViT then moves logits by about 1e-3. Unseeded noise, dropout
  or a changed model still moves them by far more.
- Predictions must match, except where the re-run's top two probabilities are within twice the
  confidence tolerance of each other (a near tie, where either class may win by rounding).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

REPRODUCE_IMAGES = 32
"""Images of the ID test split (the first ones, in the set's order) re-run through FP32 each run."""

CROSS_DEVICE_FACTOR = 50.0
"""How much looser the tolerances are when the baseline was computed on another device type."""


@dataclass(frozen=True)
class Tolerance:
    """``confidence``: absolute, in probability; ``relative``: for ``nll`` (nats) and scores, the
    allowed difference is ``relative * max(1, |stored|)``."""

    confidence: float = 1e-4
    relative: float = 1e-4

    def describe(self) -> str:
        return f"confidence within {self.confidence:g}, NLL and scores within {self.relative:g} x max(1, |value|)"


def device_type(device: str) -> str:
    """``"cuda:1"`` -> ``"cuda"``."""
    return str(device).split(":")[0]


def tolerance_for(stored_device: str, run_device: str) -> Tolerance:
    """The tolerance for a baseline computed on ``stored_device`` re-run on ``run_device``."""
    base = Tolerance()
    if device_type(stored_device) == device_type(run_device):
        return base
    return Tolerance(base.confidence * CROSS_DEVICE_FACTOR, base.relative * CROSS_DEVICE_FACTOR)


def _top2_gap(logits: np.ndarray) -> np.ndarray:
    x = np.asarray(logits, dtype=np.float64)
    if x.shape[1] < 2:
        return np.ones(len(x))
    z = np.exp(x - x.max(axis=1, keepdims=True))
    p = z / z.sum(axis=1, keepdims=True)
    top = np.sort(p, axis=1)[:, -2:]
    return top[:, 1] - top[:, 0]


def reproduction_differences(stored: dict[str, np.ndarray], rerun: dict[str, np.ndarray], logits: Any, tol: Tolerance) -> list[str]:
    """What differs between the stored arrays of the first ``n`` samples and a re-run of them
    (``rerun``, with its ``logits`` (n, C)); empty when the re-run reproduces them within ``tol``.
    Each entry is a short phrase: ``"3 of 32 predictions differ"``, ``"confidence differs by up to
    0.031"``."""
    n = len(rerun["pred"])
    out: list[str] = []
    if any(len(stored.get(f, ())) < n for f in ("label", "pred", "confidence")):
        return [f"the baseline stores fewer than {n} samples of the set"]
    if not np.array_equal(stored["label"][:n], rerun["label"]):
        out.append("the labels differ (other data)")
    flipped = np.asarray(stored["pred"][:n]) != np.asarray(rerun["pred"])
    hard = flipped & (_top2_gap(np.asarray(logits)) > 2 * tol.confidence)
    if hard.any():
        out.append(f"{int(hard.sum())} of {n} predictions differ")
    diff = np.abs(np.asarray(stored["confidence"][:n], np.float64) - np.asarray(rerun["confidence"], np.float64))
    if diff.max(initial=0.0) > tol.confidence:
        out.append(f"confidence differs by up to {diff.max():.3g}")
    fields = [f for f in rerun if (f == "nll" or f.startswith("score.")) and f in stored and len(stored[f]) >= n]
    for f in sorted(fields):
        a = np.asarray(stored[f][:n], np.float64)
        d = np.abs(a - np.asarray(rerun[f], np.float64))
        if (d > tol.relative * np.maximum(1.0, np.abs(a))).any():
            out.append(f"{f} differs by up to {d.max():.3g}")
    return out


class FirstImages:
    """The first ``n`` samples of an image set, as an image set of their own (for the reproduction
    pass); a shifted set keeps its corruption. ``decodes``: whether its samples are decoded from
    files (then the runner uses its DataLoader workers, as for the whole set); the reproduction
    runner has no decode-once image store, so the set's store entry is never read or replaced."""

    def __init__(self, ds: Any, n: int, *, decodes: bool = False) -> None:
        import hashlib

        self.ds, self.n, self.decodes = ds, int(n), decodes
        self.name = f"{getattr(ds, 'name', 'dataset')} (first {self.n})"
        self.labels = np.asarray(ds.labels)[: self.n]
        self.class_names = getattr(ds, "class_names", None)
        self.fingerprint = hashlib.sha256(f"{getattr(ds, 'fingerprint', '')}|first {self.n}".encode()).hexdigest()
        if hasattr(ds, "corrupt_unit") and hasattr(ds, "raw"):
            self.corrupt_unit, self.raw = ds.corrupt_unit, ds.raw

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < self.n:
            raise IndexError(index)
        return self.ds[index]
