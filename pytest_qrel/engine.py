"""The engine: plan -> units -> outputs, each computed once, then values for checks.

A *unit* is the expensive thing: forward passes of one (model, quantizer) over a dataset. The
engine memoises every stage in-process (loaded models, datasets, quantized models, outputs,
metrics) by content, and optionally on disk (:mod:`pytest_qrel.cache`) so that xdist workers and
later runs reuse outputs. Checks only read outputs; ``forward_passes`` counts real computations.

FP32 values are read from the stored baseline (:mod:`pytest_qrel.baselines`), which
``update_baselines=True`` (re)writes from a fresh FP32 run; quantized results are never stored as
baselines.
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import fingerprint as fp
from .baselines import Baseline, baseline_path, read_baseline, write_baseline
from .errors import (
    BaselineMissingError,
    BaselineStaleError,
    DataError,
    DataMissingError,
    ModelError,
    QrelError,
    SimulationError,
    SpecError,
    UnknownNameError,
)
from .evaluate import decide
from .results import UnitMetrics, Verdict
from .spec.plan import PlannedCheck
from .posthoc import POSTHOC, split_name
from .spec.schema import FP32, HELDOUT, Suite, mean_members

HELDOUT_SPLIT = "val"
"""The ID split post-hoc steps (``+temperature``) are fitted on: held out from both the model's
training data and the test split. Calibration and QAT draw from ``train``."""


@dataclass
class DatasetOutputs:
    """Logits (N, C) float32 of one model on one dataset, with labels (N,) (-1 for OOD), for
    CLIP models whose suite uses CLIP scores, normalized image features (N, D), and on the ID test
    split of a suite with spectral checks, the last-block feature spectrum (h, w) float64
    (:mod:`pytest_qrel.spectral`), accumulated during the same forward pass."""

    logits: np.ndarray
    labels: np.ndarray
    features: np.ndarray | None = None
    spectrum: np.ndarray | None = None

    def has(self, arrays: set[str]) -> bool:
        """True when every named array (``logits``, ``labels``, ``features``, ``spectrum``) is present."""
        return all(getattr(self, name) is not None for name in arrays)


def model_input_fn(ds: Any, preprocess: Any) -> Any:
    """``i -> model input tensor`` for sample ``i`` of ``ds``.

    A set that corrupts in the model's geometry (``corrupt_unit``, e.g. a covariate-shifted set)
    gets its corruption between the model's resize / crop and its normalisation when the model's
    preprocessing splits there (:func:`~pytest_qrel.models.base.preprocess_stages`); any other set,
    or a model whose preprocessing does not split, is ``preprocess(ds[i][0])``.
    """
    from .models.base import preprocess_stages

    stages = preprocess_stages(preprocess) if hasattr(ds, "corrupt_unit") else None
    if stages is None:
        return lambda i: preprocess(ds[i][0])
    to_unit, normalize = stages

    def sample(i: int) -> Any:
        x = to_unit(ds.raw(i))
        if not (hasattr(x, "is_floating_point") and x.is_floating_point() and x.ndim == 3):
            raise DataError(
                f"{getattr(ds, 'name', 'dataset')}: the model's preprocessing before Normalize returned "
                f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}, not a float tensor (C, H, W) to corrupt "
                "(fix: put ToTensor before Normalize in the model's transform)"
            )
        return normalize(ds.corrupt_unit(x, i))

    return sample


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: float(np.mean([d[k] for d in dicts])) for k in dicts[0]}


def _json_key(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, default=str)


class Engine:
    """Computes and memoises everything checks read. One engine per process (per pytest session).

    ``baseline_dir``: root of ``<suite>/<model>.json`` baselines. ``cache_dir``: on-disk outputs
    cache (None disables it). ``update_command``: the exact command a user should run to (re)create
    baselines, quoted in error messages.
    """

    def __init__(
        self,
        *,
        baseline_dir: str | Path = "baselines",
        cache_dir: str | Path | None = None,
        update_baselines: bool = False,
        device: str = "cpu",
        run_id: str | None = None,
        update_command: str | None = None,
    ) -> None:
        self.baseline_dir = Path(baseline_dir)
        from .cache import OutputsCache

        self.cache = OutputsCache(Path(cache_dir)) if cache_dir is not None else None
        self.update_baselines = update_baselines
        self.device = device
        self.run_id = run_id or uuid.uuid4().hex
        self._update_command = update_command
        self.forward_passes: Counter[tuple[str, str, str, str]] = Counter()
        self.cache_hits: Counter[tuple[str, str, str, str]] = Counter()
        self._models: dict[str, Any] = {}
        self._datasets: dict[str, Any] = {}
        self._qmodels: dict[str, Any] = {}
        self._outputs: dict[str, DatasetOutputs] = {}
        self._id_metrics: dict[str, dict[str, float]] = {}
        self._scores: dict[tuple[str, str], np.ndarray] = {}
        self._ood_metrics: dict[tuple[str, str, str], dict[str, float]] = {}
        self._baselines: dict[tuple[str, str], Baseline] = {}
        self._posthoc: dict[Any, dict[str, float]] = {}
        self._spectra: dict[tuple[str, str, str], np.ndarray] = {}  # FP32 spectra read from baselines
        self.verified: dict[str, Any] = {}  # quantizer name -> SimulationReport (verify: true)
        self._written: set[tuple[str, str]] = set()
        self.touched_units: dict[tuple[str, str, str], Suite] = {}

    # ------------------------------------------------------------------ loading
    def update_command(self, suite: Suite) -> str:
        if self._update_command:
            return self._update_command.format(suite=suite.path)
        return f"pytest --qrel-suite {suite.path} --qrel-update-baselines"

    def model(self, suite: Suite, name: str) -> Any:
        """The loaded FP32 :class:`~pytest_qrel.models.LoadedModel` named ``name`` in ``suite``."""
        from .models import load_model
        from .models.base import model_source_meta

        spec = suite.models[name]
        options = dict(spec.options)
        if model_source_meta(spec.source).get("zero_shot") and "class_names" not in options:
            # A zero-shot head is built from the ID dataset's class names unless the suite names them.
            names = self.dataset(suite, suite.id_dataset.name).class_names
            if names:
                options["class_names"] = list(names)
        key = _json_key([spec.source, options])
        if key not in self._models:
            try:
                loaded = load_model(spec.source, options=options, base_dir=suite.path.parent)
            except QrelError as exc:
                raise type(exc)(f"{spec.where or suite.path}: model '{name}': {exc}") from None
            loaded.module.eval()
            self._models[key] = loaded
        return self._models[key]

    def dataset(self, suite: Suite, name: str, split: str = "test") -> Any:
        """The :class:`~pytest_qrel.data.ImageSet` named ``name`` (``split`` train/test); ``HELDOUT``
        is the held-out part of the ID train split used to fit post-hoc steps."""
        from .data import load_dataset

        if name == HELDOUT:
            try:
                return self.dataset(suite, suite.id_dataset.name, HELDOUT_SPLIT)
            except DataMissingError:
                raise
            except QrelError as exc:
                raise type(exc)(
                    f"post-hoc steps (+temperature) are fitted on the '{HELDOUT_SPLIT}' split of the in-distribution set, "
                    f"which is not available: {exc}"
                ) from None
        spec = suite.all_datasets[name]
        key = _json_key([spec.source, spec.options, split])
        if key not in self._datasets:
            try:
                ds = load_dataset(spec.source, split=split, options=spec.options, base_dir=suite.path.parent)
            except QrelError as exc:
                raise type(exc)(f"{spec.where or suite.path}: dataset '{name}': {exc}") from None
            self._datasets[key] = ds
        return self._datasets[key]

    def _model_identity(self, suite: Suite, name: str) -> dict[str, Any]:
        spec = suite.models[name]
        loaded = self.model(suite, name)
        identity = {
            "source": spec.source,
            "options": spec.options,
            "weights_sha256": loaded.weights_sha256,
            "preprocessing": loaded.preprocessing,
        }
        if "clip_text_sha256" in loaded.info:  # negative labels / generic prompts of CLIP scores
            identity["clip_text_sha256"] = loaded.info["clip_text_sha256"]
        return identity

    def _wants_features(self, suite: Suite) -> bool:
        from .scores import SCORES

        return any(SCORES.meta(s).get("needs") == "clip" for s in suite.scores)

    @staticmethod
    def _wants_spectrum(suite: Suite) -> bool:
        """A suite records feature spectra only when one of its checks is on a spectral metric."""
        from .metrics import METRICS

        return any(METRICS.meta(c.metric)["kind"] == "spectral" for c in suite.checks)

    def _needs(self, suite: Suite, dataset: str) -> set[str]:
        """The arrays an outputs entry of ``suite`` on ``dataset`` must hold."""
        need = {"logits", "labels"}
        if self._wants_features(suite):
            need.add("features")
        if dataset == suite.id_dataset.name and self._wants_spectrum(suite):
            need.add("spectrum")
        return need

    # ------------------------------------------------------------------ quantization
    def calibration_images(self, suite: Suite, model: str, samples: int, seed: int, where: str) -> tuple[Any, Any]:
        """``samples`` preprocessed images (N, C, H, W) of the ID *train* split drawn with ``seed``,
        and their labels (N,)."""
        import torch

        train = self.dataset(suite, suite.id_dataset.name, "train")
        if samples > len(train):
            raise SpecError(
                f"asks for {samples} calibration images but the train split of '{suite.id_dataset.name}' has {len(train)}",
                file=suite.path,
                field=where,
                fix=f"use at most {len(train)}",
            )
        index = np.random.default_rng(seed).permutation(len(train))[:samples]
        preprocess = self.model(suite, model).preprocess
        images = torch.stack([preprocess(train[int(i)][0]) for i in index]).to(self.device)
        labels = torch.as_tensor(np.asarray(train.labels)[index], dtype=torch.int64).to(self.device)
        return images, labels

    def quantizer_spec(self, suite: Suite, quantizer: str) -> Any:
        """The spec of a base quantizer name; ``name@seed`` is one seed of a multi-seed quantizer."""
        from dataclasses import replace

        name, _, seed = quantizer.partition("@")
        spec = suite.quantizers[name]
        if seed:
            spec = replace(spec, calibration=replace(spec.calibration, seed=int(seed), seeds=()))
        return spec

    def seed_variants(self, suite: Suite, quantizer: str) -> list[str]:
        """``["W8A8@0", "W8A8@13", "W8A8@37"]`` for a multi-seed quantizer (post-hoc steps kept), else ``[quantizer]``."""
        base, steps = split_name(quantizer)
        spec = suite.quantizers.get(base)
        if spec is None or len(spec.calibration.seeds) < 2:
            return [quantizer]
        suffix = "".join(f"+{s}" for s in steps)
        return [f"{base}@{seed}{suffix}" for seed in spec.calibration.seeds]

    def quantized_module(self, suite: Suite, model: str, quantizer: str) -> Any:
        """The module that computes ``quantizer``'s outputs (the FP32 module itself for FP32)."""
        loaded = self.model(suite, model)
        if split_name(quantizer)[1]:
            raise ValueError(f"post-hoc steps have no module of their own: {quantizer}")
        if quantizer == FP32:
            return loaded.module.to(self.device)
        spec = self.quantizer_spec(suite, quantizer)
        if len(spec.calibration.seeds) > 1:
            raise ValueError(f"{quantizer} has several seeds: ask for one of {self.seed_variants(suite, quantizer)}")
        key = _json_key([self._model_identity(suite, model), spec.config_dict()])
        if key not in self._qmodels:
            from .quantize import quantize

            images, labels = self.calibration_images(
                suite, model, spec.calibration.samples, spec.calibration.seed, f"quantizers.{quantizer.partition('@')[0]}.calibration.samples"
            )
            from .quantize import QUANTIZERS

            if spec.method not in QUANTIZERS:
                where = spec.where
                raise SpecError(
                    str(UnknownNameError("quantization method", spec.method, QUANTIZERS.names())),
                    file=where.file if where else suite.path, line=where.line if where else None,
                    field=f"quantizers.{spec.name}.method", fix="use one of the known methods",
                )
            from .errors import QuantOptionError
            from .quantize import validate_quantizer
            from .spec.quantizers import spec_error_for

            try:
                config = validate_quantizer(spec.method, spec.weight_bits, spec.act_bits, spec.options,
                                            seed=spec.calibration.seed)
                qmodel = quantize(loaded.module.to(self.device), config, images, labels=labels).eval()
            except QuantOptionError as exc:
                raise spec_error_for(exc, spec) from None
            if spec.verify:
                self._verify(spec, qmodel, images)
            self._qmodels[key] = qmodel
        return self._qmodels[key]

    def _verify(self, spec: Any, qmodel: Any, images: Any) -> None:
        """``verify: true``: count distinct values per quantized tensor on the calibration images."""
        from .quantize import verify_simulation

        report = verify_simulation(qmodel, images)
        self.verified[spec.name] = report
        if not report.passes(allow_float_paths=spec.allow_float_paths):
            hint = ""
            if report.ok:  # on its grids, but some matmul / linear / conv computes in float
                hint = " (fix: quantize those operations, or set 'allow_float_paths: true' on the quantizer to accept them)"
            raise SimulationError(f"{spec.where or spec.name}: quantizer '{spec.name}' failed verify_simulation: {report.summary()}{hint}")

    # ------------------------------------------------------------------ outputs
    def _outputs_key(self, suite: Suite, model: str, quantizer: str, dataset: str) -> str:
        import torch

        import os

        base, steps = split_name(quantizer)
        qconf = "FP32" if base == FP32 else self.quantizer_spec(suite, base).config_dict()
        ds = self.dataset(suite, dataset)
        spec = suite.id_dataset if dataset == HELDOUT else suite.all_datasets[dataset]
        # A fingerprint need not hash file contents, so the key also names where the data came from.
        source = [os.path.expandvars(spec.source), spec.options, str(suite.path.parent.resolve()), HELDOUT if dataset == HELDOUT else "test"]
        return fp.digest(
            {
                "model": self._model_identity(suite, model),
                "quantizer": qconf,
                "posthoc": steps,
                "dataset": ds.fingerprint,
                "source": source,
                "code": fp.code_digest(),
                "torch": torch.__version__,
                "device": self.device,
            }
        )

    def outputs(self, suite: Suite, model: str, quantizer: str, dataset: str) -> DatasetOutputs:
        """Logits of (model, quantizer) on ``dataset``'s test split: computed once, then reused."""
        key = self._outputs_key(suite, model, quantizer, dataset)
        need = self._needs(suite, dataset)
        if key in self._outputs and self._outputs[key].has(need):
            return self._outputs[key]
        base, steps = split_name(quantizer)
        if steps:  # post-hoc: cheap maps of the base outputs (features unchanged), never cached on disk
            prefix = quantizer.rsplit("+", 1)[0]
            params = self.posthoc_params(suite, model, quantizer)
            inner = self.outputs(suite, model, prefix, dataset)
            out = DatasetOutputs(POSTHOC.get(steps[-1]).apply(inner.logits, params), inner.labels, inner.features, inner.spectrum)
            self._outputs[key] = out
            return out
        label = (suite.name, model, quantizer, dataset)
        if self.cache is None:
            out = self._forward(suite, model, quantizer, dataset, spectrum="spectrum" in need)
        else:
            with self.cache.lock(key):
                cached = self.cache.get(key)
                if cached is not None and set(cached) >= need:
                    self.cache_hits[label] += 1
                    out = DatasetOutputs(cached["logits"], cached["labels"], cached.get("features"), cached.get("spectrum"))
                else:
                    out = self._forward(suite, model, quantizer, dataset, spectrum="spectrum" in need)
                    arrays = {k: getattr(out, k) for k in ("logits", "labels", "features", "spectrum") if getattr(out, k) is not None}
                    self.cache.put(key, arrays)
        self._outputs[key] = out
        return out

    def posthoc_params(self, suite: Suite, model: str, quantizer: str) -> dict[str, float]:
        """Parameters of the last post-hoc step of ``quantizer`` (e.g. ``{"temperature": 1.3}``),
        fitted on the held-out ID train split outputs of everything before it."""
        key = (self._outputs_key(suite, model, quantizer, HELDOUT), "params")
        if key not in self._posthoc:
            prefix, step = quantizer.rsplit("+", 1)
            held = self.outputs(suite, model, prefix, HELDOUT)
            self._posthoc[key] = POSTHOC.get(step).fit(held.logits, held.labels)
        return self._posthoc[key]

    def _forward(self, suite: Suite, model: str, quantizer: str, dataset: str, *, spectrum: bool = False) -> DatasetOutputs:
        """One pass over ``dataset``; with ``spectrum``, a forward hook on the last transformer block
        accumulates the feature spectrum in the same pass (:func:`pytest_qrel.spectral.record_spectrum`)."""
        import contextlib

        import torch

        module = self.quantized_module(suite, model, quantizer)
        ds = self.dataset(suite, dataset)
        sample = model_input_fn(ds, self.model(suite, model).preprocess)
        with_features = self._wants_features(suite) and hasattr(module, "forward_with_features")
        chunks, feats = [], []
        recording: Any = contextlib.nullcontext(None)
        if spectrum:
            from .models.features import last_block_feature_map
            from .spectral import record_spectrum

            name = f"model '{model}' ({suite.models[model].source})"
            recording = record_spectrum(last_block_feature_map(module, name))
        with torch.inference_mode(), recording as acc:
            for start in range(0, len(ds), suite.batch_size):
                batch = torch.stack([sample(i) for i in range(start, min(start + suite.batch_size, len(ds)))])
                if with_features:  # one pass gives both: CLIP scores read image features
                    logits_b, feats_b = module.forward_with_features(batch.to(self.device))
                    feats.append(feats_b.float().cpu())
                else:
                    logits_b = module(batch.to(self.device))
                chunks.append(logits_b.float().cpu())
        logits = torch.cat(chunks).numpy() if chunks else np.zeros((0, 0), np.float32)
        features = np.ascontiguousarray(torch.cat(feats).numpy(), dtype=np.float32) if feats else None
        self.forward_passes[(suite.name, model, quantizer, dataset)] += 1
        try:
            spec = acc.spectrum() if acc is not None else None
        except ValueError as exc:
            raise ModelError(f"model '{model}' {quantizer} on {dataset}: no feature spectrum: {exc}") from None
        return DatasetOutputs(np.ascontiguousarray(logits, dtype=np.float32), np.asarray(ds.labels, dtype=np.int64), features, spec)

    # ------------------------------------------------------------------ metrics
    def id_metrics(self, suite: Suite, model: str, quantizer: str, dataset: str | None = None) -> dict[str, float]:
        """Classification/calibration metrics on a labelled set (default: the ID test split); mean over
        seeds for multi-seed quantizers."""
        from .metrics import compute_id_metrics

        dataset = dataset or suite.id_dataset.name
        variants = self.seed_variants(suite, quantizer)
        if len(variants) > 1:
            return _mean_dicts([self.id_metrics(suite, model, v, dataset) for v in variants])
        key = self._outputs_key(suite, model, quantizer, dataset)
        if key not in self._id_metrics:
            out = self.outputs(suite, model, quantizer, dataset)
            self._id_metrics[key] = compute_id_metrics(out.logits, out.labels)
        return self._id_metrics[key]

    def pair_metrics(self, suite: Suite, model: str, quantizer: str, pair: str) -> dict[str, float]:
        """Metrics of a (common, counter) pair of labelled sets, e.g. ``vulnerability``."""
        from .metrics import compute_pair_metrics

        variants = self.seed_variants(suite, quantizer)
        if len(variants) > 1:
            return _mean_dicts([self.pair_metrics(suite, model, v, pair) for v in variants])
        common, counter = (self.outputs(suite, model, quantizer, d) for d in suite.pairs[pair])
        return compute_pair_metrics(common.logits, common.labels, counter.logits, counter.labels)

    def spectrum(self, suite: Suite, model: str, quantizer: str) -> np.ndarray:
        """The last-block feature spectrum (h, w) of (model, quantizer) on the ID test split; post-hoc
        steps only rescale logits, so ``W8A8+temperature`` has the spectrum of ``W8A8``."""
        out = self.outputs(suite, model, split_name(quantizer)[0], suite.id_dataset.name)
        if out.spectrum is None:
            raise ValueError(f"suite {suite.name} has no spectral check, so no spectrum is recorded")
        return out.spectrum

    def baseline_spectrum(self, suite: Suite, model: str) -> np.ndarray:
        """The FP32 spectrum stored with the baseline (``spectrum.<id set>`` in its npz)."""
        b = self.baseline(suite, model)
        key = f"spectrum.{suite.id_dataset.name}"
        memo = (str(b.path), b._npz_sha256, key)
        if memo not in self._spectra:
            arrays = b.arrays()
            if key not in arrays:
                raise BaselineMissingError(
                    f"FP32 baseline {b.path} has no feature spectrum ({key}) for spectral metrics; re-create it with: {self.update_command(suite)}"
                )
            self._spectra[memo] = np.asarray(arrays[key], dtype=np.float64)
        return self._spectra[memo]

    def spectral_metrics(self, suite: Suite, model: str, quantizer: str) -> dict[str, float]:
        """Spectral metrics of ``quantizer`` against the FP32 spectrum of the stored baseline (FP32 and
        its post-hoc variants against their own spectrum: all 0); mean over seeds for multi-seed quantizers."""
        from .metrics import compute_spectral_metrics

        variants = self.seed_variants(suite, quantizer)
        if len(variants) > 1:
            return _mean_dicts([self.spectral_metrics(suite, model, v) for v in variants])
        mine = self.spectrum(suite, model, quantizer)
        fp32 = mine if split_name(quantizer)[0] == FP32 else self.baseline_spectrum(suite, model)
        if fp32.shape != mine.shape:
            raise BaselineStaleError(
                f"FP32 baseline of {model} stores a {fp32.shape} feature spectrum, the model now gives {mine.shape}; "
                f"re-create it with: {self.update_command(suite)}"
            )
        return compute_spectral_metrics(mine, fp32)

    def spectral_error_map(self, suite: Suite, model: str, quantizer: str) -> np.ndarray:
        """The RSE map (h, w) of ``quantizer`` against the stored FP32 spectrum (mean over seeds)."""
        from .spectral import relative_spectral_error_map

        maps = [
            relative_spectral_error_map(self.spectrum(suite, model, v), self.baseline_spectrum(suite, model))
            for v in self.seed_variants(suite, quantizer)
        ]
        return np.mean(maps, axis=0)

    def scores(self, suite: Suite, model: str, quantizer: str, dataset: str, score: str) -> np.ndarray:
        from .scores import SCORES

        key = (self._outputs_key(suite, model, quantizer, dataset), score)
        if key not in self._scores:
            fn, needs = SCORES.get(score), SCORES.meta(score).get("needs", "logits")
            out = self.outputs(suite, model, quantizer, dataset)
            if needs == "clip":
                # The text side (class, negative and generic prompt embeddings) is the FP32 model's:
                # only the visual encoder is ever quantized.
                clip = self.model(suite, model).info.get("clip")
                if clip is None or out.features is None:
                    raise SpecError(
                        f"score '{score}' needs a CLIP model (image features and text embeddings); model '{model}' is not one",
                        file=suite.path, field="scores", fix="use msp, energy or maxlogit for this model, or an open_clip: source",
                    )
                self._scores[key] = np.asarray(fn(out.logits, out.features, clip))
            else:
                self._scores[key] = np.asarray(fn(out.logits))
        return self._scores[key]

    def ood_metrics(self, suite: Suite, model: str, quantizer: str, score: str, dataset: str) -> dict[str, float]:
        """OOD metrics of ``score`` on ID test vs ``dataset`` (mean over seeds for multi-seed quantizers)."""
        from .metrics import compute_ood_metrics

        variants = self.seed_variants(suite, quantizer)
        if len(variants) > 1:
            return _mean_dicts([self.ood_metrics(suite, model, v, score, dataset) for v in variants])
        key = (
            self._outputs_key(suite, model, quantizer, dataset),
            self._outputs_key(suite, model, quantizer, suite.id_dataset.name),
            score,
            suite.conventions,
        )
        if key not in self._ood_metrics:
            id_s = self.scores(suite, model, quantizer, suite.id_dataset.name, score)
            ood_s = self.scores(suite, model, quantizer, dataset, score)
            self._ood_metrics[key] = compute_ood_metrics(id_s, ood_s, conventions=suite.conventions)
        return self._ood_metrics[key]

    def available_ood(self, suite: Suite) -> list[str]:
        """The suite's OOD sets whose data exists here (missing ones are skipped, not fatal)."""
        return self._available(suite, suite.ood_datasets)

    def _available(self, suite: Suite, names: Any) -> list[str]:
        out = []
        for d in names:
            try:
                self.dataset(suite, d)
            except DataMissingError:
                continue
            out.append(d)
        return out

    def all_metrics(self, suite: Suite, model: str, quantizer: str) -> dict[str, Any]:
        """``{"id": {...}, "ood": {score: {dataset: {...}}}, "shifted": {dataset: {...}}, "pairs": {pair: {...}}}``
        over every available dataset and score."""
        ood = self.available_ood(suite)
        shifted = self._available(suite, suite.shifted_datasets)
        pairs = [p for p, members in suite.pairs.items() if all(m == suite.id_dataset.name or m in shifted for m in members)]
        out: dict[str, Any] = {
            "id": dict(self.id_metrics(suite, model, quantizer)),
            "ood": {s: {d: dict(self.ood_metrics(suite, model, quantizer, s, d)) for d in ood} for s in suite.scores},
        }
        if suite.shifted_datasets:
            out["shifted"] = {d: dict(self.id_metrics(suite, model, quantizer, d)) for d in shifted}
        if suite.pairs:
            out["pairs"] = {p: dict(self.pair_metrics(suite, model, quantizer, p)) for p in pairs}
        return out

    # ------------------------------------------------------------------ baselines
    def current_fingerprint(self, suite: Suite, model: str, datasets: list[str]) -> dict[str, Any]:
        return {
            "model": self._model_identity(suite, model),
            "datasets": {
                d: {
                    "source": suite.all_datasets[d].source if d != HELDOUT else f"{suite.id_dataset.source} ({HELDOUT_SPLIT} split)",
                    "fingerprint": self.dataset(suite, d).fingerprint,
                    "samples": len(self.dataset(suite, d)),
                }
                for d in datasets
            },
            "versions": fp.versions_major_minor(),
            "conventions": suite.conventions,
        }

    def write_baseline(self, suite: Suite, model: str) -> Path:
        """Run FP32 over every dataset of ``suite`` and store its metrics and per-sample arrays."""
        from .metrics import softmax

        path = baseline_path(self.baseline_dir, suite.name, model)
        metrics = self.all_metrics(suite, model, FP32)
        out = self.outputs(suite, model, FP32, suite.id_dataset.name)
        probs = softmax(out.logits)
        correct = probs.argmax(1) == out.labels
        nll = -np.log(np.clip(probs[np.arange(len(out.labels)), out.labels], 1e-300, None))
        arrays: dict[str, np.ndarray] = {
            "id.correct": correct,
            "id.nll": nll.astype(np.float32),
            "id.confidence": probs.max(1).astype(np.float32),
        }
        available = [suite.id_dataset.name, *self.available_ood(suite), *self._available(suite, suite.shifted_datasets)]
        for s in suite.scores:
            for d in available:
                if d in suite.shifted_datasets:
                    continue
                arrays[f"score.{s}.{d}"] = self.scores(suite, model, FP32, d, s).astype(np.float32)
        variants = {}
        for step in POSTHOC.names() if self._heldout_if_available(suite) else ():  # FP32+temperature etc.
            name = f"{FP32}+{step}"
            variants[name] = {"metrics": self.all_metrics(suite, model, name), "params": self.posthoc_params(suite, model, name)}
        if self._wants_spectrum(suite):  # only suites with spectral checks store a spectrum
            arrays[f"spectrum.{suite.id_dataset.name}"] = self.spectrum(suite, model, FP32)
            for m in (metrics, *(v["metrics"] for v in variants.values())):
                m["spectral"] = self.spectral_metrics(suite, model, FP32)
        write_baseline(
            path,
            suite=suite.name,
            model=model,
            fingerprint=self.current_fingerprint(suite, model, [*available, *self._heldout_if_available(suite)]),
            metrics=metrics,
            variants=variants,
            arrays=arrays,
            run_id=self.run_id,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        return path

    def _heldout_if_available(self, suite: Suite) -> list[str]:
        try:
            self.dataset(suite, HELDOUT)
        except QrelError:
            return []
        return [HELDOUT]

    def baseline(self, suite: Suite, model: str) -> Baseline:
        """The stored FP32 baseline of (suite, model); (re)written first when updating baselines."""
        key = (suite.name, model)
        if key in self._baselines:
            return self._baselines[key]
        path = baseline_path(self.baseline_dir, suite.name, model)
        if self.update_baselines and key not in self._written:
            if self.cache is not None:  # several xdist workers: write once per run
                with self.cache.lock(fp.digest(["baseline", str(path.resolve())])):
                    self._update_once(suite, model, path)
            else:
                self._update_once(suite, model, path)
            self._written.add(key)
        b = read_baseline(path, update_command=self.update_command(suite))
        self._baselines[key] = b
        return b

    def _update_once(self, suite: Suite, model: str, path: Path) -> None:
        try:
            existing = read_baseline(path, update_command="")
            if existing.run_id == self.run_id:
                return  # another worker of this run already wrote it
        except QrelError:
            pass
        self.write_baseline(suite, model)

    def checked_baseline(self, suite: Suite, model: str, datasets: list[str]) -> Baseline:
        """The baseline, after checking its fingerprint for the parts ``datasets`` depend on."""
        b = self.baseline(suite, model)
        current = self.current_fingerprint(suite, model, datasets)
        stored = {
            "model": b.fingerprint.get("model"),
            "datasets": {d: v for d, v in (b.fingerprint.get("datasets") or {}).items() if d in datasets},
            "versions": b.fingerprint.get("versions"),
            "conventions": b.fingerprint.get("conventions", "hendrycks"),
        }
        missing = [d for d in datasets if d not in stored["datasets"]]
        if missing:
            raise BaselineMissingError(
                f"FP32 baseline {b.path} has no results for dataset(s) {', '.join(missing)}; re-create it with: {self.update_command(suite)}"
            )
        changes = fp.diff(stored, current)
        if changes:
            raise BaselineStaleError(
                f"FP32 baseline {b.path} is stale: {'; '.join(changes)}; if the change is intended, re-create it with: {self.update_command(suite)}"
            )
        return b

    # ------------------------------------------------------------------ checks
    def _datasets_read(self, p: PlannedCheck) -> list[str]:
        suite = p.suite
        if p.dataset in suite.labelled_datasets:
            return [p.dataset]
        if p.dataset in suite.pairs:
            return list(dict.fromkeys(suite.pairs[p.dataset]))
        ood = mean_members(p.dataset, list(suite.ood_datasets)) or [p.dataset]
        return [suite.id_dataset.name, *ood]

    def datasets_read(self, p: PlannedCheck) -> list[str]:
        """Every dataset whose fingerprint a check depends on (post-hoc steps add the held-out split)."""
        names = [p.quantizer] + ([p.check.bound.ref] if p.check.bound.ref else [])
        extra = [HELDOUT] if any(split_name(q)[1] for q in names) else []
        return [*self._datasets_read(p), *extra]

    def _value_from(self, source: Any, p: PlannedCheck, where: str) -> float:
        """Read the planned check's metric from ``source(section, *keys)``, which returns the metrics
        dict of a section: ``("id", dataset)``, ``("ood", score, dataset)``, ``("pairs", pair)`` or
        ``("spectral",)`` (the ID test split's spectral metrics)."""
        from .metrics import METRICS

        suite = p.suite
        kind = METRICS.meta(p.check.metric)["kind"]
        try:
            if kind == "pair":
                return float(source("pairs", p.dataset)[p.check.metric])
            if kind == "spectral":
                return float(source("spectral")[p.check.metric])
            if kind != "ood":
                return float(source("id", p.dataset)[p.check.metric])
            sets = mean_members(p.dataset, list(suite.ood_datasets)) or [p.dataset]
            return float(np.mean([source("ood", p.score, d)[p.check.metric] for d in sets]))
        except KeyError as exc:
            raise BaselineMissingError(
                f"{where} has no {p.check.metric} for {exc}; re-create it with: {self.update_command(suite)}"
            ) from None

    @staticmethod
    def _stored(metrics: dict[str, Any], suite: Suite) -> Any:
        """A ``source`` for :meth:`_value_from` over a stored ``all_metrics``-shaped dict."""

        def source(section: str, *keys: str) -> dict[str, float]:
            if section == "id":
                return metrics["id"] if keys[0] == suite.id_dataset.name else metrics["shifted"][keys[0]]
            if section == "ood":
                return metrics["ood"][keys[0]][keys[1]]
            if section == "spectral":
                return metrics["spectral"]
            return metrics["pairs"][keys[0]]

        return source

    def _live(self, p: PlannedCheck, quantizer: str) -> Any:
        """A ``source`` for :meth:`_value_from` computing ``quantizer``'s metrics on demand."""

        def source(section: str, *keys: str) -> dict[str, float]:
            if section == "id":
                return self.id_metrics(p.suite, p.model, quantizer, keys[0])
            if section == "ood":
                return self.ood_metrics(p.suite, p.model, quantizer, keys[0], keys[1])
            if section == "spectral":
                return self.spectral_metrics(p.suite, p.model, quantizer)
            return self.pair_metrics(p.suite, p.model, quantizer, keys[0])

        return source

    def evaluate(self, p: PlannedCheck) -> Verdict:
        """Decide one planned check. Raises QrelError subclasses for missing data/baselines."""
        from .metrics import METRICS

        suite = p.suite
        self.touched_units[(str(suite.path), p.model, p.quantizer)] = suite
        for d in self.datasets_read(p):  # missing data skips the check before anything else can fail
            self.dataset(suite, d)
        b = self.checked_baseline(suite, p.model, self.datasets_read(p))
        fp32 = self._value_from(self._stored(b.metrics, suite), p, f"FP32 baseline {b.path}")
        value = self._quantized_value(p, p.quantizer, b, fp32)
        ref = p.check.bound.ref
        ref_value = self._quantized_value(p, ref, b, fp32) if ref is not None else None
        if ref is not None:
            self.touched_units[(str(suite.path), p.model, ref)] = suite
        meta = METRICS.meta(p.check.metric)
        return decide(p, value, fp32, higher_is_better=meta["higher_is_better"], fraction=meta["fraction"], ref_value=ref_value)

    def _quantized_value(self, p: PlannedCheck, quantizer: str, b: Baseline, fp32: float) -> float:
        """The check's metric for ``quantizer`` (FP32 variants come from the stored baseline)."""
        if quantizer == FP32:
            return fp32
        if split_name(quantizer)[0] == FP32:  # FP32+temperature: stored with the baseline
            variant = (b.variants or {}).get(quantizer, {}).get("metrics", {})
            return self._value_from(self._stored(variant, p.suite), p, f"FP32 baseline {b.path} ({quantizer})")
        return self._value_from(self._live(p, quantizer), p, "outputs")

    def unit_metrics(self, suite: Suite, model: str, quantizer: str) -> UnitMetrics | None:
        """Every metric of one unit for the report (FP32 from its baseline); None if unavailable."""
        info: dict[str, Any] = {}
        try:
            if quantizer == FP32:
                m = self.baseline(suite, model).metrics
            elif split_name(quantizer)[0] == FP32:
                variant = (self.baseline(suite, model).variants or {}).get(quantizer)
                if not variant:
                    return None
                m, info = variant["metrics"], dict(variant.get("params", {}))
            else:
                m = self.all_metrics(suite, model, quantizer)
                variants = self.seed_variants(suite, quantizer)
                if len(variants) > 1:
                    info["seeds"] = list(self.quantizer_spec(suite, split_name(quantizer)[0]).calibration.seeds)
                    info["top1 per seed"] = [self.id_metrics(suite, model, v)["top1"] for v in variants]
                if split_name(quantizer)[1]:
                    params = [self.posthoc_params(suite, model, v) for v in variants]
                    info.update(params[0] if len(params) == 1 else {k: [p[k] for p in params] for k in params[0]})
        except QrelError:
            return None
        spectral, rse_map = dict(m.get("spectral", {})), []
        if split_name(quantizer)[0] != FP32 and self._wants_spectrum(suite):
            try:  # a baseline without a spectrum costs the report these numbers, not the unit
                spectral = self.spectral_metrics(suite, model, quantizer)
                rse_map = self.spectral_error_map(suite, model, quantizer).tolist()
            except QrelError:
                pass
        return UnitMetrics(
            suite=suite.name, model=model, quantizer=quantizer, id=m.get("id", {}), ood=m.get("ood", {}), info=info,
            conventions=suite.conventions, shifted=m.get("shifted", {}), pairs=m.get("pairs", {}),
            method="" if split_name(quantizer)[0] == FP32 else self.quantizer_spec(suite, split_name(quantizer)[0]).method,
            spectral=spectral, spectral_map=rse_map,
        )

    def report_units(self) -> list[UnitMetrics]:
        """Unit metrics of every (model, quantizer) a check touched, FP32 first, in suite order."""
        out: list[UnitMetrics] = []
        seen = set()
        for (_, model, _q), suite in list(self.touched_units.items()):
            touched = [q for (path, m, q) in self.touched_units if path == str(suite.path) and m == model]
            for q in dict.fromkeys([FP32, *suite.quantizers, *touched]):
                key = (str(suite.path), model, q)
                if key in seen or (q != FP32 and key not in self.touched_units):
                    continue
                seen.add(key)
                um = self.unit_metrics(suite, model, q)
                if um is not None:
                    out.append(um)
        return out
