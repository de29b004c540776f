"""The bin-wise reliability shift (the CLIP paper's Fig. 6b / 7b): the same samples followed from
the FP32 model to a quantized one.

A reliability diagram compares bins whose members change when the model changes. Here the samples
are binned **once, by their FP32 confidence** (15 equal-width bins on [0, 1], as ECE), and each bin
reports the FP32 model's mean confidence and accuracy on its members and the quantized model's
mean confidence and accuracy on the *same* members: an arrow per bin from (FP32 confidence, FP32
accuracy) to (quantized confidence, quantized accuracy). Confidences and accuracies are fractions.
"""

from __future__ import annotations

from typing import Any

import numpy as np

N_BINS = 15


def reliability_shift(ref_confidence: Any, ref_correct: Any, confidence: Any, correct: Any, n_bins: int = N_BINS) -> dict[str, list[Any]]:
    """``{"edges", "count", "ref_confidence", "ref_accuracy", "confidence", "accuracy"}`` per FP32
    confidence bin (empty bins: ``None`` values, count 0); plain lists.

    Raises:
        ValueError: the four arrays do not have one entry per sample each.
    """
    rc, ra = np.asarray(ref_confidence, dtype=np.float64), np.asarray(ref_correct, dtype=np.float64)
    qc, qa = np.asarray(confidence, dtype=np.float64), np.asarray(correct, dtype=np.float64)
    if not (rc.shape == ra.shape == qc.shape == qa.shape) or rc.ndim != 1:
        raise ValueError(f"reliability_shift(): arrays of one value per sample expected, got shapes {rc.shape}, {ra.shape}, {qc.shape}, {qa.shape}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(rc, edges) - 1, 0, n_bins - 1)  # the bins of curves.reliability_bins / ECE
    out: dict[str, list[Any]] = {"edges": edges.tolist(), "count": [], "ref_confidence": [], "ref_accuracy": [], "confidence": [], "accuracy": []}
    for k in range(n_bins):
        members = which == k
        n = int(members.sum())
        out["count"].append(n)
        for key, a in (("ref_confidence", rc), ("ref_accuracy", ra), ("confidence", qc), ("accuracy", qa)):
            out[key].append(float(a[members].mean()) if n else None)
    return out


def shift_curve(ref_arrays: Any, arrays: Any, id_set: str) -> dict[str, Any]:
    """``{"reliability_shift": {...}}`` of one unit against its FP32 baseline on ``id_set``, or ``{}``
    when either side lacks the arrays or the samples differ in number."""
    ref, mine = (ref_arrays or {}).get(id_set), (arrays or {}).get(id_set)
    need = ("confidence", "correct")
    if ref is None or mine is None or any(k not in ref or k not in mine for k in need):
        return {}
    if len(ref["confidence"]) != len(mine["confidence"]):
        return {}
    shift = reliability_shift(ref["confidence"], ref["correct"], mine["confidence"], mine["correct"])
    return {"reliability_shift": {**shift, "dataset": id_set}}
