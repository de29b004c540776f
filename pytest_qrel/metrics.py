"""Reliability metrics: pure numpy functions over per-sample model outputs.

Everything here is a fraction in [0, 1] except :func:`nll` (nats). No pytest, no torch.

Conventions (they must not drift; see DESIGN.md):

- **OOD scores**: higher means *more in-distribution*. OOD is the positive class for
  :func:`aupr_out`; ID is the positive class for :func:`aupr_in` and for the 95% TPR of
  :func:`fpr_at_95_tpr`. AUPR is average precision (step-wise), not a trapezoidal area.
- **Direction**: each metric is registered in :data:`METRICS` with ``higher_is_better``;
  top1, auroc, aupr_in and aupr_out get worse when they go *down*; nll, ece and fpr_at_95_tpr
  get worse when they go *up*.

Each public function validates its arguments first (``check_*`` helpers, raising
:class:`ValueError` that names the argument and what was found) and then computes. Problems of the
*data* rather than of the call (NaN / inf values, labels out of range, all-equal OOD scores, fewer
than :data:`~pytest_qrel.validation.MIN_OOD_SAMPLES` OOD scores in :func:`compute_ood_metrics`)
raise :class:`~pytest_qrel.errors.NumericsError`, a ``ValueError`` that the plugin prints as one line.
All-equal scores are rejected by every OOD metric: AUROC 0.5 and FPR@95 1.0 would be an artefact,
not a measurement. The engine
calls :func:`compute_id_metrics` and :func:`compute_ood_metrics`, which iterate over the registry:
a newly registered metric shows up in their output without further changes.

Registry metadata of every metric:

``higher_is_better`` (bool)
    True when a larger value is better.
``kind`` (``"id"`` | ``"ood"`` | ``"pair"`` | ``"spectral"`` | ``"runtime"``)
    ``"id"`` metrics read ``(outputs, labels)`` of one in-distribution set; ``"ood"`` metrics
    read ``(id_scores, ood_scores)``; ``"pair"`` metrics the outputs and labels of two labelled
    sets; ``"spectral"`` metrics ``(quantized_spectrum, fp32_spectrum)``, the last-block feature
    spectra of :mod:`pytest_qrel.spectral` on the ID test split; ``"runtime"`` metrics a runtime
    unit's audit record (parity to the simulation, int8 share, latency: :mod:`pytest_qrel.runtimes.checks`).
``fraction`` (bool)
    True when values are fractions in [0, 1], so percentage points ("pp") make sense.
``input`` (``"logits"`` | ``"probs"`` | ``"scores"`` | ``"pair"`` | ``"spectra"``)
    What the first argument is.
``samples`` (id and pair metrics)
    The same metric from per-sample arrays (:mod:`pytest_qrel.engine.samples`): ``fn(arrays)`` of
    one labelled set, or ``fn(common, counter)`` for a pair; what the engine evaluates.
``unit`` (str, default "")
    The display unit of a non-fraction metric ("nats").
``delta_bounds`` (bool, default True)
    False for metrics that already measure a distance from FP32 (0 for FP32 itself): the spec
    loader rejects ``delta`` bounds on them and asks for a value bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .metric_inputs import (  # the input checks, in a leaf module that conventions.py imports too
    check_labels,
    check_logits,
    check_n_bins,
    check_not_degenerate,
    check_ood_sizes,
    check_probs,
    check_scores,
)
from .ranking import average_precision, roc_auc, roc_curve
from .spectral import spectral_error, spectral_error_high
from .registry import Registry

__all__ = [
    "METRICS",
    "aupr_in",
    "aupr_out",
    "auroc",
    "check_labels",
    "check_logits",
    "check_not_degenerate",
    "check_ood_sizes",
    "check_probs",
    "check_scores",
    "compute_id_metrics",
    "compute_ood_metrics",
    "compute_spectral_metrics",
    "ece",
    "ece_from_confidence",
    "fpr_at_95_tpr",
    "id_metrics_from_samples",
    "pair_metrics_from_samples",
    "logsumexp",
    "nll",
    "softmax",
    "spectral_error",
    "spectral_error_high",
    "top1",
]

#: Every metric under its YAML name, with the metadata described in the module docstring.
METRICS: Registry[Callable[..., float]] = Registry("metric")

# --------------------------------------------------------------------------------------------
# Numerics shared with scores.py
# --------------------------------------------------------------------------------------------


def logsumexp(logits: Any) -> np.ndarray:
    """Row-wise ``log(sum(exp(logits)))``, stable for large logits; shape (N,), float64.

    >>> float(logsumexp([[0.0, 0.0]])[0]) == float(np.log(2.0))
    True
    >>> float(logsumexp([[1e4, 1e4]])[0]) == 1e4 + float(np.log(2.0))
    True
    """
    x = check_logits(logits)
    m = x.max(axis=1)
    return m + np.log(np.exp(x - m[:, None]).sum(axis=1))


def softmax(logits: Any) -> np.ndarray:
    """Row-wise softmax of (N, C) logits, computed stably (max subtracted); float64 (N, C).

    >>> softmax([[0.0, 0.0]]).tolist()
    [[0.5, 0.5]]
    >>> softmax([[1e4, 1e4, 1e4, 1e4]]).tolist()
    [[0.25, 0.25, 0.25, 0.25]]
    """
    x = check_logits(logits)
    z = np.exp(x - x.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# In-distribution metrics
# --------------------------------------------------------------------------------------------


@METRICS.register("top1", higher_is_better=True, kind="id", fraction=True, input="logits", samples=lambda a: float(np.mean(a["correct"])))
def top1(logits: Any, labels: Any) -> float:
    """Top-1 accuracy: fraction in [0, 1] of samples whose arg-max logit is the label.

    Ties between logits go to the lowest class index (``np.argmax``). Higher is better.

    Args:
        logits: (N, C) logits (or probabilities: the arg-max is the same).
        labels: (N,) integer class indices in [0, C).

    >>> top1([[2.0, 1.0], [0.0, 3.0], [5.0, 4.0]], [0, 1, 1])
    0.6666666666666666
    """
    x = check_logits(logits)
    y = check_labels(labels, x.shape[0], x.shape[1])
    return float(np.mean(x.argmax(axis=1) == y))


@METRICS.register("nll", higher_is_better=False, kind="id", fraction=False, input="logits", unit="nats",
                  samples=lambda a: float(np.mean(a["nll"], dtype=np.float64)))
def nll(logits: Any, labels: Any) -> float:
    """Mean negative log-likelihood of the labels, in nats, from logits via log-softmax.

    .. math:: \\mathrm{NLL} = \\frac{1}{N}\\sum_i \\big(\\log\\textstyle\\sum_c e^{z_{ic}} - z_{i,y_i}\\big)

    Computed with a max-shifted logsumexp, so logits of 1e4 are fine. Lower is better; not a
    fraction (0 is perfect, log(C) is a uniform prediction).

    Args:
        logits: (N, C) logits (not probabilities).
        labels: (N,) integer class indices in [0, C).

    >>> round(nll([[0.0, 0.0]], [1]), 12) == round(float(np.log(2.0)), 12)
    True
    """
    x = check_logits(logits)
    y = check_labels(labels, x.shape[0], x.shape[1])
    per_sample = logsumexp(x) - x[np.arange(x.shape[0]), y]
    return float(np.mean(per_sample))


@METRICS.register("ece", higher_is_better=False, kind="id", fraction=True, input="probs",
                  samples=lambda a: ece_from_confidence(a["confidence"], a["correct"]))
def ece(probs: Any, labels: Any, n_bins: int = 15) -> float:
    """Expected calibration error (top-label, L1), a fraction in [0, 1]; lower is better.

    .. math:: \\mathrm{ECE} = \\sum_{b} \\frac{|B_b|}{N}\\,\\big|\\mathrm{acc}(B_b) - \\mathrm{conf}(B_b)\\big|

    where the confidence of a sample is its max probability, it is correct when the arg-max is
    the label, and empty bins contribute 0.

    Binning convention: ``n_bins`` equal-width bins with edges ``np.linspace(0, 1, n_bins + 1)``,
    every bin closed on the left and open on the right, ``[e_k, e_{k+1})``, except the last,
    which is closed on both sides, ``[e_{n-1}, 1]``. A confidence exactly on an inner edge goes
    to the bin on its right; a confidence of exactly 1.0 goes to the last bin. This is
    ``np.digitize(conf, edges) - 1`` clipped to ``n_bins - 1``, the same as torchmetrics'
    ``torch.bucketize(conf, edges, right=True) - 1`` for every confidence below 1.0.

    Difference from torchmetrics (``multiclass_calibration_error(norm="l1")``): torchmetrics
    does not clip, so a confidence of exactly 1.0 lands in an extra, (n_bins + 1)-th bin of its
    own (torchmetrics issue #3510). The two agree unless some confidences are exactly 1.0 *and*
    the last bin also holds confidences below 1.0. torchmetrics also computes in float32, we in
    float64, so results can differ at the 1e-7 level and for confidences within float32
    rounding of a bin edge.

    Args:
        probs: (N, C) probabilities (rows sum to 1), e.g. ``softmax(logits)``; not logits.
        labels: (N,) integer class indices in [0, C).
        n_bins: number of equal-width bins on [0, 1].

    >>> ece([[0.5, 0.5], [0.0, 1.0]], [0, 1], n_bins=2)  # conf 0.5 right, conf 1.0 right
    0.25
    """
    p = check_probs(probs)
    y = check_labels(labels, p.shape[0], p.shape[1])
    n_bins = check_n_bins(n_bins)

    return ece_from_confidence(p.max(axis=1), p.argmax(axis=1) == y, n_bins)


def ece_bin_index(confidence: Any, n_bins: int = 15) -> np.ndarray:
    """The ECE bin (0 .. n_bins - 1) of each confidence: the binning convention of :func:`ece`."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.clip(np.digitize(np.asarray(confidence, dtype=np.float64), edges) - 1, 0, n_bins - 1)


def ece_from_confidence(confidence: Any, correct: Any, n_bins: int = 15) -> float:
    """:func:`ece` from per-sample max-softmax ``confidence`` (N,) and ``correct`` (N,) flags."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.ndim != 1 or conf.shape != hit.shape or conf.size == 0:
        raise ValueError(f"confidence and correct must be non-empty 1-D arrays of one length; got {conf.shape} and {hit.shape}")
    idx = ece_bin_index(conf, check_n_bins(n_bins))
    conf_sum = np.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(idx, weights=hit, minlength=n_bins)
    # sum_b |B_b|/N * |acc_b - conf_b| == sum_b |acc_sum_b - conf_sum_b| / N
    return float(np.abs(acc_sum - conf_sum).sum() / conf.size)


# --------------------------------------------------------------------------------------------
# OOD-detection metrics (scores: higher = more in-distribution)
# --------------------------------------------------------------------------------------------


def _ood_inputs(id_scores: Any, ood_scores: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and stack: returns (scores, is_id) with ID samples first, ``is_id`` in {0, 1}."""
    s_id = check_scores(id_scores, "id_scores")
    s_ood = check_scores(ood_scores, "ood_scores")
    check_not_degenerate(s_id, s_ood)
    scores = np.concatenate([s_id, s_ood])
    is_id = np.concatenate([np.ones(s_id.shape[0], dtype=np.int64), np.zeros(s_ood.shape[0], dtype=np.int64)])
    return scores, is_id


@METRICS.register("auroc", higher_is_better=True, kind="ood", fraction=True, input="scores")
def auroc(id_scores: Any, ood_scores: Any) -> float:
    """Area under the ROC curve of separating ID from OOD by score; fraction in [0, 1].

    ID is the positive class and the score the decision value (the value is the same with OOD
    positive and ``-score``). 1 = perfect separation, 0.5 = chance, 0 = reversed. Ties count
    one half. Higher is better. This is ``sklearn.metrics.roc_auc_score``.

    Args:
        id_scores: (N_id,) scores of in-distribution samples, higher = more ID.
        ood_scores: (N_ood,) scores of OOD samples.

    >>> auroc([3.0, 2.0], [1.0, 0.0])
    1.0
    """
    scores, is_id = _ood_inputs(id_scores, ood_scores)
    return roc_auc(is_id, scores)


@METRICS.register("aupr_in", higher_is_better=True, kind="ood", fraction=True, input="scores")
def aupr_in(id_scores: Any, ood_scores: Any) -> float:
    """Area under the precision-recall curve with **ID as the positive class**; in [0, 1].

    Computed as average precision (step-wise sum of precision times recall increments, as in
    Hendrycks & Gimpel's baseline), ``sklearn.metrics.average_precision_score(is_id, score)``,
    not a trapezoidal area. Chance level is the ID fraction N_id / (N_id + N_ood). Higher is
    better.

    >>> aupr_in([3.0, 2.0], [1.0, 0.0])
    1.0
    """
    scores, is_id = _ood_inputs(id_scores, ood_scores)
    return average_precision(is_id, scores)


@METRICS.register("aupr_out", higher_is_better=True, kind="ood", fraction=True, input="scores")
def aupr_out(id_scores: Any, ood_scores: Any) -> float:
    """Area under the precision-recall curve with **OOD as the positive class**; in [0, 1].

    The decision value is ``-score`` (low score = more OOD) and OOD samples are labelled 1:
    ``sklearn.metrics.average_precision_score(is_ood, -score)``, step-wise average precision.
    Chance level is the OOD fraction N_ood / (N_id + N_ood). Higher is better.

    >>> aupr_out([3.0, 2.0], [1.0, 0.0])
    1.0
    """
    scores, is_id = _ood_inputs(id_scores, ood_scores)
    return average_precision(1 - is_id, -scores)


@METRICS.register("fpr_at_95_tpr", higher_is_better=False, kind="ood", fraction=True, input="scores")
def fpr_at_95_tpr(id_scores: Any, ood_scores: Any) -> float:
    """False-positive rate on OOD at 95% true-positive rate on ID; fraction in [0, 1].

    **ID is the positive class.** Thresholding ``score >= t`` accepts a sample as ID; TPR is
    the fraction of ID samples accepted, FPR the fraction of OOD samples accepted. The value is
    the FPR at the first ROC operating point, in order of decreasing threshold, whose TPR is
    >= 0.95 (``sklearn.metrics.roc_curve(..., drop_intermediate=False)``; one point per
    distinct score, no interpolation). Lower is better; 0 = perfect.

    >>> fpr_at_95_tpr([3.0, 2.0], [1.0, 0.0])
    0.0
    >>> fpr_at_95_tpr([0.0, 1.0], [2.0, 3.0])  # reversed: all OOD accepted before all ID
    1.0
    """
    scores, is_id = _ood_inputs(id_scores, ood_scores)
    fpr, tpr, _ = roc_curve(is_id, scores, drop_intermediate=False)
    # tpr is non-decreasing and ends at 1.0, so the search always succeeds.
    i = int(np.searchsorted(tpr, 0.95, side="left"))
    return float(fpr[i])


# --------------------------------------------------------------------------------------------
# What the engine calls
# --------------------------------------------------------------------------------------------


def compute_id_metrics(logits: Any, labels: Any) -> dict[str, float]:
    """Every registered metric of kind ``"id"``, as ``{name: float}``.

    Softmax is computed once; each metric gets the input its ``input`` metadata names
    (``"logits"`` or ``"probs"``) and the labels.
    """
    x = check_logits(logits)
    y = check_labels(labels, x.shape[0], x.shape[1])
    inputs = {"logits": x, "probs": softmax(x)}
    out: dict[str, float] = {}
    for name in METRICS:
        meta = METRICS.meta(name)
        if meta["kind"] != "id":
            continue
        if meta["input"] not in inputs:
            raise LookupError(
                f"metric '{name}' has kind 'id' but input '{meta['input']}'; "
                f"id metrics take one of {sorted(inputs)}"
            )
        out[name] = float(METRICS.get(name)(inputs[meta["input"]], y))
    return out


@METRICS.register("vulnerability", higher_is_better=False, kind="pair", fraction=True, input="pair",
                  samples=lambda common, counter: float(np.mean(common["correct"]) - np.mean(counter["correct"])))
def vulnerability(common_logits: Any, common_labels: Any, counter_logits: Any, counter_labels: Any) -> float:
    """Spurious-correlation vulnerability: ``top1(common) - top1(counter)``, a signed fraction.

    ``common`` holds images with their usual context (e.g. animals on typical backgrounds),
    ``counter`` the same classes in unusual contexts (CounterAnimals). Higher means the model leans
    more on the context; lower is better. Comparable across precisions of one model.
    """
    return float(top1(common_logits, common_labels) - top1(counter_logits, counter_labels))


def compute_pair_metrics(common_logits: Any, common_labels: Any, counter_logits: Any, counter_labels: Any) -> dict[str, float]:
    """Every registered metric of kind ``"pair"``, as ``{name: float}``."""
    return {
        name: float(METRICS.get(name)(common_logits, common_labels, counter_logits, counter_labels))
        for name in METRICS
        if METRICS.meta(name)["kind"] == "pair"
    }


def compute_ood_metrics(id_scores: Any, ood_scores: Any, conventions: str = "hendrycks", *, min_ood: int | None = None) -> dict[str, float]:
    """Every registered metric of kind ``"ood"``, as ``{name: float}``.

    Both arguments are 1-D scores where higher means more in-distribution. ``conventions`` names an
    entry of :data:`pytest_qrel.conventions.CONVENTIONS` whose definitions override the defaults.

    Raises:
        NumericsError: fewer than ``min_ood`` OOD scores (default
            :data:`~pytest_qrel.validation.MIN_OOD_SAMPLES`), non-finite or all-equal scores.
    """
    from .conventions import CONVENTIONS
    from .validation import MIN_OOD_SAMPLES

    overrides = CONVENTIONS.get(conventions)
    s_id = check_scores(id_scores, "id_scores")
    s_ood = check_scores(ood_scores, "ood_scores")
    check_ood_sizes(s_ood, MIN_OOD_SAMPLES if min_ood is None else min_ood)
    check_not_degenerate(s_id, s_ood)
    out: dict[str, float] = {}
    for name in METRICS:
        if METRICS.meta(name)["kind"] != "ood":
            continue
        out[name] = float(overrides.get(name, METRICS.get(name))(s_id, s_ood))
    return out


# Spectral metrics: distances of a quantized model's feature spectrum from the FP32 one (see
# pytest_qrel.spectral for the definitions). FP32 against itself is 0, so only value bounds apply.
for _name, _fn in (("spectral_error", spectral_error), ("spectral_error_high", spectral_error_high)):
    METRICS.add(_name, _fn, higher_is_better=False, kind="spectral", fraction=False, input="spectra", delta_bounds=False)


def id_metrics_from_samples(arrays: Any) -> dict[str, float]:
    """Every registered ``"id"`` metric from one labelled set's per-sample arrays."""
    return {name: float(METRICS.meta(name)["samples"](arrays)) for name in METRICS if METRICS.meta(name)["kind"] == "id"}


def pair_metrics_from_samples(common: Any, counter: Any) -> dict[str, float]:
    """Every registered ``"pair"`` metric from the per-sample arrays of the (common, counter) sets."""
    return {
        name: float(METRICS.meta(name)["samples"](common, counter)) for name in METRICS if METRICS.meta(name)["kind"] == "pair"
    }


def compute_spectral_metrics(quantized_spectrum: Any, fp32_spectrum: Any) -> dict[str, float]:
    """Every registered metric of kind ``"spectral"``, as ``{name: float}``, from two (h, w) spectra."""
    return {
        name: float(METRICS.get(name)(quantized_spectrum, fp32_spectrum))
        for name in METRICS
        if METRICS.meta(name)["kind"] == "spectral"
    }


# Runtime metrics (parity to the simulation, int8 share, latency / memory / size ratios to FP32):
# kind "runtime", read from a runtime unit's audit record. Registered here, not in
# pytest_qrel.runtimes.checks (which validates and reads these checks and imports this table), so that
# this module needs nothing from runtimes/: importing METRICS gives every metric, with no import cycle.
RUNTIME_METRICS: dict[str, dict[str, Any]] = {
    "parity": {"higher_is_better": False, "fraction": False, "label": "Parity to the simulation", "unit": "floors", "ref": True},
    "logit_diff": {"higher_is_better": False, "fraction": False, "label": "Mean |logit diff| to the simulation", "unit": "logits", "ref": True, "fmt": ".3g"},
    "agreement": {"higher_is_better": True, "fraction": True, "label": "Top-1 agreement with the simulation", "ref": True},
    "int8_share": {"higher_is_better": True, "fraction": True, "label": "Int8 share of MACs", "ref": False},
    "latency": {"higher_is_better": False, "fraction": False, "label": "Latency / FP32", "unit": "x FP32", "ref": False, "timed": True},
    "latency_b1": {"higher_is_better": False, "fraction": False, "label": "Latency at batch 1 / FP32", "unit": "x FP32", "ref": False, "timed": True},
    "memory": {"higher_is_better": False, "fraction": False, "label": "Working memory / FP32", "unit": "x FP32", "ref": False, "timed": True},
    "size": {"higher_is_better": False, "fraction": False, "label": "Artifact size / FP32", "unit": "x FP32", "ref": False},
}


def _reader(name: str) -> Any:
    def read(values: dict[str, Any], ref: str | None = None) -> float:
        value = values[name]
        return float(value[ref] if ref is not None else value)

    read.__name__ = f"runtime_{name}"
    return read


for _name, _meta in RUNTIME_METRICS.items():
    METRICS.add(_name, _reader(_name), kind="runtime", input="runtime", delta_bounds=False,
                **{k: v for k, v in _meta.items() if k in ("higher_is_better", "fraction", "label", "unit", "fmt")})

