"""A unit -- one (suite, model, base quantizer) -- computed once: quantize per seed, stream every
dataset its checks read, keep per-sample arrays, release the module.

What a unit must produce (:class:`Needs`) comes from the planner: the datasets its checks read,
the post-hoc variants (``W8A8+temperature`` is a variant of the unit ``W8A8``, fitted on the
held-out split and applied batch by batch in the same passes) and whether the ID pass records the
feature spectrum. Per seed, cached arrays are used where the outputs cache has them; only what is
missing is computed, and the quantized module is dropped as soon as its passes are done, so the
memory a run holds does not grow with the number of units.
"""

from __future__ import annotations

import json
import weakref
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from .. import progress
from ..errors import SimulationError, SpecError, UnknownNameError
from ..fingerprint import data_stamp
from ..spec.schema import FP32, HELDOUT, QuantizerSpec, Suite
from .diagnose import Diagnose
from .loading import Loader, user_stage
from .runner import Runner, Want
from .outputs import BASE, Needs, SeedOutputs, variant_name
from .samples import SampleArrays
from .seedcache import SeedCache
from .trainmemo import TrainMemo, backbone_of
from .trace import trace

__all__ = ["BASE", "Needs", "SeedOutputs", "UnitComputer", "mean_metrics", "metrics_of", "seed_names", "variant_name"]


def seed_names(base: str, spec: QuantizerSpec | None) -> list[tuple[str, int | None]]:
    """``[("W8A8@0", 0), ("W8A8@13", 13), ...]`` for a multi-seed quantizer, else ``[(base, seed)]``."""
    if spec is None:
        return [(base, None)]
    if len(spec.calibration.seeds) > 1:
        return [(f"{base}@{s}", s) for s in spec.calibration.seeds]
    return [(base, spec.calibration.seed)]


def wants_spectrum(suite: Suite) -> bool:
    """A suite records feature spectra only when one of its checks is on a spectral metric."""
    from ..metrics import METRICS

    return any(METRICS.meta(c.metric)["kind"] == "spectral" for c in suite.checks)


def score_functions(suite: Suite) -> dict[str, tuple[Callable[..., Any], str]]:
    from ..scores import SCORES

    return {s: (SCORES.get(s), SCORES.meta(s).get("needs", "logits")) for s in suite.scores}


class UnitComputer:
    """Computes :class:`SeedOutputs` for units, reading and filling the outputs cache.

    ``live_modules`` holds weak references to the quantized modules alive right now (tests count
    them: after a unit, none may remain).
    """

    def __init__(self, loader: Loader, runner: Runner, *, cache: Any = None, device: str = "cpu", progress: Any = None) -> None:
        self.loader, self.runner, self.cache, self.device = loader, runner, cache, device
        self.progress = progress  # listener(what, done, total, unit) of calibration / QAT steps
        self.live_modules: "weakref.WeakSet[Any]" = weakref.WeakSet()
        self.quantizations: dict[str, int] = {}  # seed name -> times quantized in this process
        self.seed_cache = SeedCache(loader, cache, device)
        self.train_memo = TrainMemo()  # QAT / PTQ computed once for the units (scenarios) that share its inputs
        self._labels_checked: set[tuple[str, str]] = set()
        self._diagnose = Diagnose(loader, device)
        self.verified: dict[str, Any] = {}  # quantizer -> SimulationReport of its last verify (verify: true)

    @property
    def cache_hits(self) -> dict[tuple[str, str, str, str], int]:
        return self.seed_cache.hits

    # ------------------------------------------------------------------ quantization
    def quantizer_spec(self, suite: Suite, base: str, seed: int | None) -> QuantizerSpec:
        spec = suite.quantizers[base]
        if seed is not None and (seed != spec.calibration.seed or spec.calibration.seeds):
            spec = replace(spec, calibration=replace(spec.calibration, seed=seed, seeds=()))
        return spec

    def build_module(self, suite: Suite, model: str, base: str, seed: int | None, info: dict[str, Any],
                     key_identity: dict[str, Any] | None = None) -> Any:
        """The module computing ``base`` at ``seed`` (FP32: the loaded module itself). A runtime
        method's module is audited (:mod:`pytest_qrel.runtimes.audit`) into ``info["runtime"]``."""
        loaded = self.loader.model(suite, model)
        if base == FP32:
            return loaded.module.to(self.device)
        from ..errors import QuantOptionError
        from ..quantize import quantize, validate_quantizer
        from ..spec.quantizers import spec_error_for

        spec = self.quantizer_spec(suite, base, seed)
        try:  # the loader validated this already; a suite built in Python gets the same located error
            config = validate_quantizer(spec.method, spec.weight_bits, spec.act_bits, spec.options, seed=spec.calibration.seed)
        except QuantOptionError as exc:
            raise spec_error_for(exc, spec) from None
        except UnknownNameError as exc:
            where = spec.where
            raise SpecError(
                str(exc), file=where.file if where else suite.path, line=where.line if where else None,
                field=f"quantizers.{base}.method", fix="use one of the known methods",
            ) from None
        from ..quantize import QUANTIZERS

        bind = QUANTIZERS.meta(spec.method).get("bind")  # paths relative to the suite file (method: artifact)
        config = bind(config, suite.path.parent) if bind is not None else config
        from ..runtimes.checks import is_runtime_method

        if spec.verify and is_runtime_method(spec.method):
            where = spec.where
            raise SpecError(f"verify: true checks a fake-quant simulation; '{spec.method}' runs a deployed artifact, which its census "
                            "checks against the declared bits instead", file=where.file if where else suite.path,
                            line=where.line if where else None, field=f"quantizers.{base}.verify", fix="remove 'verify: true'")
        images, labels = self.loader.calibration_images(
            suite, model, spec.calibration.samples, spec.calibration.seed, f"quantizers.{base}.calibration.samples",
            draw=spec.calibration.draw, data=spec.calibration.data,
        )
        from ..quantize import QUANTIZERS as _Q
        from ..quantize.qat import TextTargets

        targets = labels if isinstance(labels, TextTargets) else None
        if targets is not None or spec.calibration.data is not None:  # image-text data: captions, never labels
            labels = None
            if not _Q.meta(spec.method).get("accepts_targets"):
                targets = None  # PTQ methods calibrate on the images alone
        what = f"model '{model}' quantizer '{base}'"
        name = f"{base}@{seed}" if len(suite.quantizers[base].calibration.seeds) > 1 else base
        try:
            with user_stage("quantization (calibration / QAT)", what), progress.reporting(self.progress, f"{model} {name}"):
                progress.step("calibrating", 0, 1)
                fp32 = loaded.module.to(self.device)
                memo, backbone = None, backbone_of(str(suite.path), model)
                if backbone is not None:
                    memo = self.train_memo.key(self.loader.identity(suite, model), fp32, config, images, labels, targets, self.device)
                module = None if memo is None else self.train_memo.get(memo, fp32, self.device, backbone)
                if module is not None:
                    trace("reuse", suite.name, model, name)
                else:
                    module = quantize(fp32, config, images, labels=labels, targets=targets).eval()
                    if memo is not None:
                        self.train_memo.put(memo, module, backbone)
                progress.step("calibrating", 1, 1)
        except QuantOptionError as exc:  # found only now, on the model (e.g. no timm Attention)
            raise spec_error_for(exc, spec) from None
        self.quantizations[name] = self.quantizations.get(name, 0) + 1
        trace("quantize", suite.name, model, name)
        from ..runtimes.module import runtime_info

        if runtime_info(module) is not None:
            from ..runtimes.audit import audit_runtime

            with user_stage("the runtime audit (census, parity, latency)", what):
                info["runtime"] = audit_runtime(self, suite, model, base, spec, module, key_identity)
        for attr in ("qat_steps", "qat_options", "qat_task"):
            if hasattr(module, attr):
                info[attr] = getattr(module, attr)
        losses = getattr(module, "qat_losses", None)
        if losses is not None:
            info["qat_losses"] = len(losses)
        if spec.verify:
            from ..quantize import verify_simulation

            with user_stage("verify_simulation", what):
                report = verify_simulation(module, images)
            info["verify"] = report.summary()
            self.verified[base] = report
            if not report.passes(allow_float_paths=spec.allow_float_paths):
                hint = ""
                if report.ok:  # on its grids, but some matmul / linear / conv computes in float
                    hint = " (fix: quantize those operations, or set 'allow_float_paths: true' on the quantizer to accept them)"
                raise SimulationError(f"{spec.where or base}: quantizer '{base}' failed verify_simulation: {report.summary()}{hint}")
        self.live_modules.add(module)
        return module

    # ------------------------------------------------------------------ one seed
    def compute_seed(self, suite: Suite, model: str, base: str, name: str, seed: int | None, needs: Needs) -> SeedOutputs:
        """Every array ``needs`` asks for, for one seed: from the cache where possible, else by
        quantizing once and streaming each missing dataset through the module."""
        out = SeedOutputs(name=name, seed=seed)
        qconf: Any = "FP32" if base == FP32 else self.quantizer_spec(suite, base, seed).config_dict()
        data = None if base == FP32 else suite.quantizers[base].calibration.data
        if data is not None:  # what the calibration / QAT images and captions are, not only where
            qconf = {**qconf, "calibration_data": self.loader.calibration_data(suite, data, f"quantizers.{base}.calibration.data").fingerprint}
        if base != FP32:  # which images it calibrates on, not only how they were asked for (a changed train split)
            cal = self.quantizer_spec(suite, base, seed).calibration
            split, drawn = self.loader.calibration_draw(suite, cal.samples, cal.seed, f"quantizers.{base}.calibration.samples", cal.draw, data)
            # the drawn files' stat records too: an in-place edit of a calibration image keeps the split's fingerprint
            qconf = {**qconf, "drawn_sha256": drawn.sha256, "drawn_files": data_stamp(split, drawn.positions)}
            out.info["calibration"] = drawn.record()
        runtime = base != FP32 and self._runtime_key(suite, base, seed, qconf)
        todo = self.seed_cache.arrays(suite, model, name, qconf, needs, out)
        missing_params = self.seed_cache.params(suite, model, qconf, sorted(needs.variants), out)
        first_seed = seed_names(base, suite.quantizers.get(base))[0][0] == name
        want_diagnostics = bool(suite.diagnostics) and first_seed
        if want_diagnostics:
            self.seed_cache.diagnostics(suite, model, qconf, out)
        if runtime:  # a runtime unit's audit (census, parity, latency) is cached with its arrays
            self.seed_cache.runtime(suite, model, self.quantizer_spec(suite, base, seed), qconf, out)
        if not todo and not missing_params and (out.diagnostics or not want_diagnostics) and (not runtime or "runtime" in out.info):
            return out
        module = self.build_module(suite, model, base, seed, out.info, key_identity=qconf.get("identity") if runtime else None)
        try:
            if runtime:
                self.seed_cache.put(suite, model, qconf, suite.id_dataset.name, "#runtime", {"json": np.array(json.dumps(out.info["runtime"]))})
            if want_diagnostics and not out.diagnostics:
                out.diagnostics = self.diagnostics(suite, model, module)
                self.seed_cache.put(suite, model, qconf, suite.id_dataset.name, "#diagnostics", {"json": np.array(json.dumps(out.diagnostics))})
            self._fit_posthoc(suite, model, qconf, module, name, missing_params, out)
            self._stream(suite, model, name, qconf, module, todo, needs, out)
        finally:
            del module
        return out

    def _stream(self, suite: Suite, model: str, name: str, qconf: Any, module: Any, todo: list[str], needs: Needs, out: SeedOutputs) -> None:
        """Stream each dataset of ``todo`` through ``module`` once (post-hoc variants applied batch
        by batch), keeping the arrays in ``out`` and putting them in the cache."""
        loaded = self.loader.model(suite, model)
        clip = loaded.info.get("clip")
        self._check_clip_scores(suite, model, module, clip)
        variants, scores = sorted(needs.variants), score_functions(suite)
        for d in todo:
            self.check_labels(suite, model, d)
            want = Want(
                labelled=d in suite.labelled_datasets,
                scores=scores,
                clip=clip,
                variants={variant_name(s): self._apply(s, out.params) for s in variants},
                spectrum=needs.spectrum and d == suite.id_dataset.name,
            )
            what = f"model '{model}' {name} on {d}"
            with user_stage("the forward pass", what):
                result = self.runner.run(
                    module, self.loader.dataset(suite, d), loaded.preprocess, batch_size=suite.batch_size, want=want,
                    what=what, preprocessing=loaded.preprocessing, key=(suite.name, model, name, d),
                )
            out.arrays.setdefault(BASE, {})[d] = result.arrays
            entry = dict(result.arrays)
            if result.spectrum is not None:
                out.spectrum = result.spectrum
                entry["spectrum"] = result.spectrum
            self.seed_cache.put(suite, model, qconf, d, BASE, entry)
            for v, arrays in result.variants.items():
                out.arrays.setdefault(v, {})[d] = arrays
                self.seed_cache.put(suite, model, qconf, d, v, arrays)

    def diagnostic_images(self, suite: Suite, model: str) -> tuple[Any, list[dict[str, Any]]]:
        return self._diagnose.images(suite, model)

    def diagnostics(self, suite: Suite, model: str, module: Any) -> dict[str, Any]:
        """Every diagnostic the suite asks for, on ``module`` (:class:`~.diagnose.Diagnose`)."""
        return self._diagnose.run(suite, model, module)

    def check_labels(self, suite: Suite, model: str, dataset: str) -> None:
        """A labelled set's labels are classes of the model, in the model's order when the order
        came from folder names (once per model and set)."""
        from ..validation import check_class_folders, check_labels_in_range

        if dataset not in suite.labelled_datasets or (model, dataset) in self._labels_checked:
            return
        ds, loaded = self.loader.dataset(suite, dataset), self.loader.model(suite, model)
        check_labels_in_range(ds.labels, loaded.num_classes, model=model, dataset=dataset)
        check_class_folders(
            getattr(ds, "class_order", None), getattr(ds, "class_order_from", None), loaded.class_names,
            model_class_ids=getattr(loaded, "class_ids", None) or self.loader.class_ids_from_id_set(suite, model),
            model=model, dataset=dataset,
        )
        self._labels_checked.add((model, dataset))

    def _check_clip_scores(self, suite: Suite, model: str, module: Any, clip: Any) -> None:
        from ..scores import SCORES

        for s in suite.scores:
            if SCORES.meta(s).get("needs") == "clip" and (clip is None or not hasattr(module, "forward_with_features")):
                raise SpecError(
                    f"score '{s}' needs a CLIP model (image features and text embeddings); model '{model}' is not one",
                    file=suite.path, field="scores", fix="use msp, energy or maxlogit for this model, or an open_clip: source",
                )

    @staticmethod
    def _apply(steps: tuple[str, ...], params: dict[str, dict[str, float]]) -> Callable[[np.ndarray], np.ndarray]:
        from ..posthoc import POSTHOC

        def apply(logits: np.ndarray) -> np.ndarray:
            for i, step in enumerate(steps):
                logits = POSTHOC.get(step).apply(logits, params[variant_name(steps[: i + 1])])
            return logits

        return apply

    def _fit_posthoc(self, suite: Suite, model: str, qconf: Any, module: Any, name: str, chains: list[tuple[str, ...]], out: SeedOutputs) -> None:
        """Fit every missing post-hoc chain on the held-out split's logits (one pass for all)."""
        if not chains:
            return
        from ..posthoc import POSTHOC

        loaded = self.loader.model(suite, model)
        what = f"model '{model}' {name} on the held-out split"
        held = self.loader.dataset(suite, HELDOUT)
        with user_stage("the forward pass", what):
            result = self.runner.run(
                module, held, loaded.preprocess, batch_size=suite.batch_size, want=Want(labelled=True, keep_logits=True),
                what=what, preprocessing=loaded.preprocessing, key=(suite.name, model, name, HELDOUT),
            )
        labels = np.asarray(held.labels, dtype=np.int64)
        for steps in chains:
            logits = result.logits
            assert logits is not None  # keep_logits=True
            for i, step in enumerate(steps):
                v = variant_name(steps[: i + 1])
                if v not in out.params:
                    out.params[v] = POSTHOC.get(step).fit(logits, labels)
                    self.seed_cache.put(suite, model, qconf, HELDOUT, v + "#params", {k: np.array(x) for k, x in out.params[v].items()})
                logits = POSTHOC.get(step).apply(logits, out.params[v])

    # ------------------------------------------------------------------ runtime units
    def _runtime_key(self, suite: Suite, base: str, seed: int | None, qconf: dict[str, Any]) -> bool:
        """Put the identity hook's answer (artifact hashes, runtime version, threads, ...) into
        ``qconf``, the cache key's quantizer part; True for a runtime unit."""
        from ..runtimes.checks import is_runtime_method
        from ..runtimes.identity import unit_identity

        spec = self.quantizer_spec(suite, base, seed)
        identity = unit_identity(spec, suite.path.parent)
        if identity is not None:
            qconf["identity"] = identity
        return is_runtime_method(spec.method)



def mean_metrics(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """Element-wise mean of nested metric dicts over seeds (the keys every seed has)."""
    first = dicts[0]
    out: dict[str, Any] = {}
    for k, v in first.items():
        if not all(k in d for d in dicts):
            continue
        if isinstance(v, dict):
            out[k] = mean_metrics([d[k] for d in dicts])
        else:
            out[k] = float(np.mean([d[k] for d in dicts]))
    return out


def metrics_of(
    suite: Suite, arrays: dict[str, SampleArrays], *, conventions: str, model: str, quantizer: str,
    errors: dict[tuple[str, str], str] | None = None,
) -> dict[str, Any]:
    """``{"id", "ood", "shifted", "pairs"}`` metrics of one seed's arrays over the datasets present.

    An OOD (score, set) whose scores cannot be ranked (too few OOD samples, all equal: see
    :func:`pytest_qrel.validation.check_ood_scores`) is left out and its one-line message put in
    ``errors[(score, set)]``: the checks reading it fail with that message, the others are unaffected.
    """
    from ..errors import NumericsError
    from ..metrics import compute_ood_metrics, id_metrics_from_samples, pair_metrics_from_samples
    from ..validation import check_ood_scores

    id_name = suite.id_dataset.name
    out: dict[str, Any] = {"id": {}, "ood": {}}
    if id_name in arrays:
        out["id"] = id_metrics_from_samples(arrays[id_name])
        for s in suite.scores:
            per = {}
            for d in suite.ood_datasets:
                if d in arrays:
                    id_s, ood_s = arrays[id_name][f"score.{s}"], arrays[d][f"score.{s}"]
                    try:
                        check_ood_scores(id_s, ood_s, model=model, quantizer=quantizer, dataset=d, score=s)
                    except NumericsError as exc:
                        if errors is None:
                            raise
                        errors[(s, d)] = str(exc)
                        continue
                    per[d] = compute_ood_metrics(id_s, ood_s, conventions=conventions)
            out["ood"][s] = per
    if suite.shifted_datasets:
        out["shifted"] = {d: id_metrics_from_samples(arrays[d]) for d in suite.shifted_datasets if d in arrays}
    if suite.pairs:
        out["pairs"] = {
            p: pair_metrics_from_samples(arrays[c], arrays[k]) for p, (c, k) in suite.pairs.items() if c in arrays and k in arrays
        }
    return out
