"""Checks on numbers before they become metrics or baselines, each failing with one line that names
the model, the quantizer, the dataset and how many samples are affected.

Pure numpy (no torch, no pytest); every function raises :class:`~pytest_qrel.errors.NumericsError`
(a :class:`~pytest_qrel.errors.QrelError` and a ``ValueError``) and returns nothing otherwise. The
engine calls them where it knows the names:

==============================  =========================================================================
function                        when
==============================  =========================================================================
:func:`check_logits_finite`     after every forward pass (FP32 and quantized), before any metric
:func:`check_labels_in_range`   once per (model, labelled set): ID test split, shifted sets, train split
:func:`check_class_folders`     once per (model, labelled set) whose class order was inferred from folders
:func:`check_ood_set_size`      once per OOD set, when it is loaded
:func:`check_ood_scores`        before the OOD metrics of one (model, quantizer, score, OOD set)
:func:`refuse_chance_level`     before an FP32 baseline is written (``--qrel-update-baselines``)
:func:`refuse_input_independent` before an FP32 baseline is written, on the reproduction pass's logits
==============================  =========================================================================

Decisions (also in the README's Troubleshooting section):

- :data:`MIN_OOD_SAMPLES` = 10. FPR@95 moves in steps of ``1 / N_ood`` and AUPR-Out's chance level
  is the OOD fraction, so with fewer than 10 OOD images one image moves FPR@95 by more than 10
  percentage points: no bound on it means anything.
- All-equal scores (every ID and OOD score identical, e.g. a collapsed 2-bit model whose MSP is
  ``1 / C`` everywhere) make AUROC 0.5 and FPR@95 1.0 by construction; that is reported as a
  degenerate metric, not scored.
- Chance level: FP32 top-1 within :data:`CHANCE_SIGMAS` binomial standard errors of
  ``1 / n_classes`` (the accuracy of guessing) means the labels do not match what the model predicts
  (class folders in another order, the wrong split) far more often than a model this bad; its
  baseline is refused.
- Input independence: a model whose logits do not depend on its input (a forward that ignores
  ``x``, a head fed a constant) scores at chance and gives AUROC 0.5, yet nothing else would stop
  its baseline. Its outputs are refused when the logits of the reproduction images
  (:data:`pytest_qrel.reproduction.REPRODUCE_IMAGES` different images) agree to within
  :data:`INPUT_INDEPENDENT_RTOL` of their scale *and* the confidence and every score of every set
  do too: float noise (a one-ulp wobble between batches) is not dependence on the input.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from .errors import NumericsError

MIN_OOD_SAMPLES = 10
"""The smallest OOD set whose OOD metrics are computed (see the module docstring)."""

CHANCE_SIGMAS = 3.0
"""FP32 top-1 within this many binomial standard errors of chance is refused as a baseline."""

INPUT_INDEPENDENT_RTOL = 1e-5
"""Outputs that vary by at most this times max(1, their magnitude) across images are float noise,
not a dependence on the input (a float32 step is 1.2e-7 relative: this allows about 100 of them)."""


def _unit(model: str, quantizer: str | None, dataset: str) -> str:
    q = f" {quantizer}" if quantizer else ""
    return f"model '{model}'{q} on '{dataset}'"


class LogitsTally:
    """Counts non-finite logits batch by batch, so a whole pass gives one message (how many of the
    set's samples, the first one) without keeping the logits."""

    def __init__(self, *, model: str, quantizer: str, dataset: str) -> None:
        self.model, self.quantizer, self.dataset = model, quantizer, dataset
        self.n = self.bad = self.nan = self.inf = 0
        self.first: int | None = None

    def add(self, logits: Any) -> None:
        arr = np.asarray(logits, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[0] == 0:
            raise NumericsError(
                f"{_unit(self.model, self.quantizer, self.dataset)}: expected logits of shape (N, C) with N >= 1, got shape {arr.shape}"
            )
        bad_rows = ~np.isfinite(arr).all(axis=1)
        if bad_rows.any():
            if self.first is None:
                self.first = self.n + int(np.argmax(bad_rows))
            self.bad += int(bad_rows.sum())
            self.nan += int(np.isnan(arr).any(axis=1).sum())
            self.inf += int(np.isinf(arr).any(axis=1).sum())
        self.n += arr.shape[0]

    def check(self) -> None:
        """Raise the one-line NumericsError if any sample had a NaN or infinite logit."""
        model, quantizer, dataset = self.model, self.quantizer, self.dataset
        if not self.bad:
            return
        if quantizer == "FP32":
            fix = "the FP32 model itself produces them: check its weights, checkpoint and forward"
        else:
            fix = f"FP32 is finite, so {quantizer} breaks the model: try more bits, more calibration samples or another method"
        raise NumericsError(
            f"{_unit(model, quantizer, dataset)}: {self.bad} of {self.n} samples have non-finite logits "
            f"({self.nan} with NaN, {self.inf} with inf; first at sample {self.first}) (fix: {fix})"
        )


def check_logits_finite(logits: Any, *, model: str, quantizer: str, dataset: str) -> None:
    """Every logit of ``logits`` (N, C) is finite.

    Raises:
        NumericsError: ``"model 'vit' W4A4 on 'digits': 12 of 480 samples have non-finite logits
            (7 NaN, 5 inf; first at sample 3) (fix: ...)"``; the fix differs for FP32 (the model
            itself) and for a quantizer (its settings).
    """
    tally = LogitsTally(model=model, quantizer=quantizer, dataset=dataset)
    tally.add(logits)
    tally.check()


def check_labels_in_range(labels: Any, num_classes: int, *, model: str, dataset: str, allow_ood: bool = False) -> None:
    """Every label of a labelled set is a class of the model: ``0 <= label < num_classes``.

    ``allow_ood``: labels of -1 (OOD samples) are accepted (a shifted set used with ``as_ood``).

    Raises:
        NumericsError: labels at or above ``num_classes`` (the set has more classes than the
            model), or -1 labels in a set used as labelled (an OOD folder under ``id:``).
    """
    y = np.asarray(labels)
    if y.ndim != 1 or y.size == 0:
        raise NumericsError(f"dataset '{dataset}': expected labels of shape (N,) with N >= 1, got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise NumericsError(f"dataset '{dataset}': labels must be integer class indices, got dtype {y.dtype}")
    high = y >= num_classes
    if high.any():
        raise NumericsError(
            f"dataset '{dataset}' has labels up to {int(y.max())} but model '{model}' has {num_classes} classes "
            f"(0..{num_classes - 1}): {int(high.sum())} of {y.size} samples are out of range "
            "(fix: map the set onto the model's classes with 'classes:' or 'class_index:', or use a model with that many classes)"
        )
    ood = y < 0
    if ood.any() and not allow_ood:
        raise NumericsError(
            f"dataset '{dataset}' is used as a labelled set with model '{model}' but {int(ood.sum())} of {y.size} samples "
            "have no class (label -1, an OOD image) (fix: give the set class folders or labels, or list it under 'datasets: ood:')"
        )


def check_class_folders(
    class_order: Sequence[str] | None,
    class_order_from: str | None,
    model_classes: Sequence[str] | None,
    *,
    model: str,
    dataset: str,
    model_class_ids: Sequence[str] | None = None,
) -> None:
    """A set whose label order was inferred from its folder names must agree with the model's own
    classes: the folder at sorted position ``i`` must be the model's class ``i``.

    ``class_order`` / ``class_order_from`` are the dataset's attributes of those names
    (:class:`~pytest_qrel.data.folders.FileImageSet`); ``model_classes`` / ``model_class_ids`` the
    model's ``class_names`` and ``class_ids`` (:class:`~pytest_qrel.models.LoadedModel`; folders may
    be named by either, e.g. ImageNet WordNet ids). Nothing is checked when the order was given
    explicitly (``classes:``, ``class_index:``), is unknown, or the model names no classes; the
    order used is then what the report shows.

    Raises:
        NumericsError: folder names that are not classes of the model (``zero..four`` against a
            model whose classes are ``0..7``), or folders whose sorted position is not the model's
            index (``10`` sorts before ``2``).
    """
    from .data.folders import ORDER_FROM_FOLDERS

    candidates = [[str(n) for n in c] for c in (model_class_ids, model_classes) if c]
    if class_order is None or class_order_from != ORDER_FROM_FOLDERS or not candidates:
        return

    def few(items: Sequence[str]) -> str:
        return ", ".join(items[:8]) + (", ..." if len(items) > 8 else "")

    names = max(candidates, key=lambda c: len(set(class_order) & set(c)))  # the list the folders use
    index = {n: i for i, n in enumerate(names)}
    unknown = [c for c in class_order if c not in index]
    splits = [c for c in class_order if c in ("train", "val", "test")]
    if unknown and splits:  # the root/{train,val,test}/<class> layout read as if its splits were classes
        dirs = ", ".join(f"{c}: {c}" for c in splits)
        raise NumericsError(
            f"dataset '{dataset}': its folders {few(class_order)} are splits, not classes of model '{model}' "
            f"(fix: add 'split_dirs: {{{dirs}}}' to the dataset's options; `qrel init` writes it for this layout)"
        )
    if unknown:
        raise NumericsError(
            f"dataset '{dataset}': {len(unknown)} of {len(class_order)} class folders ({few(unknown)}) are not classes of "
            f"model '{model}' ({few(names)}), so their labels (the sorted folder order) would not be the model's "
            "(fix: rename the folders to the model's class names, or give 'classes:' in the model's index order)"
        )
    moved = [(i, c) for i, c in enumerate(class_order) if index[c] != i]
    if moved:
        shown = ", ".join(f"'{c}' is label {i} but class {index[c]}" for i, c in moved[:3])
        raise NumericsError(
            f"dataset '{dataset}': the sorted class folders do not follow the class order of model '{model}' ({shown}"
            f"{', ...' if len(moved) > 3 else ''}) (fix: give 'classes:' with the model's class names in index order)"
        )


def check_ood_set_size(n: int, *, dataset: str, minimum: int = MIN_OOD_SAMPLES) -> None:
    """An OOD set has at least ``minimum`` samples.

    Raises:
        NumericsError: ``"OOD set 'noise' has 4 samples; OOD metrics need at least 10 ..."``.
    """
    if n < minimum:
        raise NumericsError(
            f"OOD set '{dataset}' has {n} sample{'s' if n != 1 else ''}; OOD metrics need at least {minimum} "
            f"(with fewer, one image moves FPR@95 by more than {100 / minimum:g} points) (fix: add images to the set, or remove it)"
        )


def check_ood_scores(id_scores: Any, ood_scores: Any, *, model: str, quantizer: str, dataset: str, score: str) -> None:
    """OOD scores that can be ranked: enough OOD samples, finite, not all equal.

    Raises:
        NumericsError: fewer than :data:`MIN_OOD_SAMPLES` OOD scores, non-finite scores, or every
            ID and OOD score equal (AUROC 0.5 and FPR@95 1.0 by construction).
    """
    s_id = np.asarray(id_scores, dtype=np.float64).ravel()
    s_ood = np.asarray(ood_scores, dtype=np.float64).ravel()
    check_ood_set_size(s_ood.size, dataset=dataset)
    where = f"{_unit(model, quantizer, dataset)}, score '{score}'"
    for name, arr in (("ID", s_id), ("OOD", s_ood)):
        bad = ~np.isfinite(arr)
        if bad.any():
            raise NumericsError(f"{where}: {int(bad.sum())} of {arr.size} {name} scores are NaN or inf (fix: check the model's logits on that set)")
    both = np.concatenate([s_id, s_ood])
    if both.size and both.min() == both.max():
        raise NumericsError(
            f"{where}: all {s_id.size} ID and {s_ood.size} OOD scores equal {both[0]:.6g}, so the OOD metrics are degenerate "
            "(AUROC 0.5 and FPR@95 1.0 by construction): the outputs do not depend on the input "
            "(fix: for a quantizer, more bits or another method; for FP32, check the model)"
        )


def refuse_chance_level(
    top1: float,
    n_classes: int,
    n_samples: int,
    *,
    model: str,
    dataset: str,
    class_order: Sequence[str] | None = None,
    class_order_from: str | None = None,
    sigmas: float = CHANCE_SIGMAS,
) -> None:
    """Refuse an FP32 baseline whose top-1 is indistinguishable from guessing.

    Chance is ``1 / n_classes`` (``n_classes``: the classes present in the set's labels). The
    baseline is refused when ``top1 < chance + sigmas * sqrt(chance * (1 - chance) / n_samples)``.
    ``class_order`` / ``class_order_from`` (the dataset's attributes) are quoted in the message.

    Raises:
        NumericsError: ``"refusing to store ... FP32 top-1 20.83% on 'folders' is at chance level
            (20.00% for 5 classes, 1000 samples) ..."``.
    """
    if n_classes < 2 or n_samples < 1:
        return
    chance = 1.0 / n_classes
    limit = chance + sigmas * math.sqrt(chance * (1.0 - chance) / n_samples)
    if top1 >= limit:
        return
    order = ""
    if class_order is not None:
        shown = ", ".join(list(class_order)[:8]) + (", ..." if len(class_order) > 8 else "")
        order = f"; its labels follow {class_order_from or 'the class list'} ({shown})"
    raise NumericsError(
        f"refusing to store the FP32 baseline of model '{model}': FP32 top-1 {100 * top1:.2f}% on '{dataset}' is at chance level "
        f"({100 * chance:.2f}% for {n_classes} classes, {n_samples} samples){order}"
        "; either its labels are not the model's classes (their order comes from the sorted folder names) or the model is "
        "untrained (fix: give 'classes:' or 'class_index:' in the model's class order, or check the weights and the data; "
        "a random-init dry run is 'pretrained: false', which is stored at chance with a warning)"
    )


def _spread(values: np.ndarray) -> tuple[float, float]:
    """``(max - min, max(1, max |x|))`` of a float array (0, 1 when empty)."""
    if values.size == 0:
        return 0.0, 1.0
    return float(values.max() - values.min()), max(1.0, float(np.abs(values).max()))


def refuse_input_independent(
    probe_logits: Any, arrays: Any, *, model: str, dataset: str, rtol: float = INPUT_INDEPENDENT_RTOL
) -> None:
    """Refuse an FP32 baseline from a model whose outputs do not depend on its input.

    ``probe_logits`` (n, C): the FP32 logits of the first ``n`` images of the ID set ``dataset``;
    ``arrays``: ``{dataset: SampleArrays}`` of the whole pass (ID and OOD sets). Refused when the
    logits rows agree to within ``rtol`` x max(1, max |logit|) and so do ``confidence`` and every
    ``score.<s>`` over all samples of all sets (predictions may still differ: equal logits broken by
    one float step pick different classes).

    Raises:
        NumericsError: ``"refusing to store the FP32 baseline of model 'm': its outputs do not
            depend on its input ..."``.
    """
    x = np.asarray(probe_logits, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        return
    wobble = float(np.abs(x - x[:1]).max())
    if wobble > rtol * max(1.0, float(np.abs(x).max())):
        return
    fields: dict[str, list[np.ndarray]] = {}
    for per in arrays.values():
        for name, a in per.items():
            if name == "confidence" or name.startswith("score."):
                fields.setdefault(name, []).append(np.asarray(a, dtype=np.float64).ravel())
    for name, parts in fields.items():
        spread, scale = _spread(np.concatenate(parts))
        if spread > rtol * scale:
            return
    n = sum(len(per.get("confidence", ())) for per in arrays.values())
    conf = np.concatenate(fields["confidence"]) if "confidence" in fields else np.zeros(0)
    shown = f"; all {n} images of {', '.join(repr(d) for d in arrays)} get confidence {float(conf[0]):.4g}" if conf.size else ""
    raise NumericsError(
        f"refusing to store the FP32 baseline of model '{model}': its outputs do not depend on its input "
        f"(the logits of {x.shape[0]} different '{dataset}' images agree to within {wobble:.2g}, float noise{shown}) "
        "(fix: check that the model's forward computes from its input; a model that ignores it scores at chance on every check)"
    )


__all__ = [
    "CHANCE_SIGMAS", "INPUT_INDEPENDENT_RTOL", "MIN_OOD_SAMPLES", "LogitsTally", "check_class_folders", "check_labels_in_range", "check_logits_finite",
    "check_ood_scores", "check_ood_set_size", "refuse_chance_level", "refuse_input_independent",
]
