"""The engine: planned checks -> units (each computed once) -> per-sample arrays -> verdicts.

Collaborators, one job each:

- :class:`~.loading.Loader` loads models, datasets and calibration images (user code is wrapped);
- :class:`~.runner.Runner` streams a dataset through a module (DataLoader, decode-once image store);
- :class:`~.units.UnitComputer` quantizes per seed and produces a unit's per-sample arrays, through
  the outputs cache (:mod:`pytest_qrel.cache`);
- the baseline store (:mod:`pytest_qrel.baselines`) writes and verifies FP32 baselines;
- :class:`Engine` (here) ties them together: it is told which checks will run (:meth:`Engine.expect`),
  so it knows what each unit must compute and when a unit's last check has run; it then releases
  the unit's per-sample arrays, keeping only the small record the report shows
  (:class:`~pytest_qrel.results.UnitMetrics`). Checks only read metrics; the report only reads records.

FP32 values are read from the stored baseline, which ``update_baselines=True`` (re)writes from a
fresh FP32 run; quantized results are never stored as baselines. Before a model's first check, the
FP32 model re-runs the first :data:`~pytest_qrel.reproduction.REPRODUCE_IMAGES` ID test images
once (a separate small pass, counted in :attr:`Engine.reproduction_passes`) and must reproduce the
stored per-sample outputs (:mod:`pytest_qrel.reproduction`); the same pass refuses, when a
baseline is written, a model whose outputs do not depend on its input.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .. import fingerprint as fp
from ..baselines import Baseline, baseline_path, check_writable, read_baseline, write_baseline
from ..errors import BaselineError, BaselineMissingError, BaselineStaleError, NumericsError, QrelError
from ..evaluate import decide
from ..results import UnitMetrics, Verdict
from ..spec.plan import PlannedCheck, base_quantizer
from ..spec.schema import FP32, HELDOUT, Suite, mean_members
from .loading import HELDOUT_SPLIT, Loader, user_stage
from .runner import PassResult, Runner, Want
from .samples import SampleArrays
from .units import (
    BASE, Needs, SeedOutputs, UnitComputer, mean_metrics, metrics_of, score_functions, seed_names, wants_spectrum,
)

__all__ = ["HELDOUT_SPLIT", "Engine", "UnitState"]

UnitKey = tuple[str, str, str]  # (suite file, model, base quantizer)


@dataclass
class UnitState:
    """A unit's outputs while its checks run (``seeds``), its metrics and records for good."""

    suite: Suite
    model: str
    base: str
    needs: Needs = field(default_factory=Needs)
    seeds: list[SeedOutputs] | None = None
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)  # variant -> mean over seeds
    per_seed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    params: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    info: list[dict[str, Any]] = field(default_factory=list)
    spectra: list[np.ndarray] = field(default_factory=list)
    error: QrelError | None = None
    errors: dict[tuple[str, str], str] = field(default_factory=dict)  # (score, OOD set) -> why it has no metrics

    @property
    def live(self) -> bool:
        return self.seeds is not None


def _check_needs(p: PlannedCheck, base: str) -> Needs:
    from ..metrics import METRICS

    datasets = {d for d in p.datasets if d != HELDOUT}
    variants = {tuple(q.split("+")[1:]) for q in p.quantizers_read if base_quantizer(q) == base and "+" in q}
    return Needs(datasets, variants, METRICS.meta(p.check.metric)["kind"] == "spectral")


class Engine:
    """Computes everything checks read, each unit once per process (see the module docstring).

    ``baseline_dir``: root of the baselines. ``cache_dir``: the outputs cache and the decode-once
    image store live under it (None disables both). ``update_command``: the exact command a user
    should run to (re)create baselines, quoted in messages (``{suite}`` is the suite's path).
    ``workers``: DataLoader worker processes for image files. ``progress`` (optional) has
    ``update(what, done, total)``, called as passes advance, and ``unit(what, seconds, passes,
    images)``, called when a unit is computed; ``warn(message)`` receives one-line warnings (a
    corrupt cache entry). ``compile``: forward passes through :func:`torch.compile` (same logits).
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
        workers: int = 0,
        progress: Any = None,
        warn: Callable[[str], None] | None = None,
        compile: bool = False,
    ) -> None:
        from ..cache import OutputsCache
        from .imagestore import ImageStore

        self.baseline_dir = Path(baseline_dir)
        self.warn = warn or (lambda message: None)
        root = Path(cache_dir) if cache_dir is not None else None
        self.cache_dir = root
        self.cache = OutputsCache(root / "outputs", warn=self.warn) if root is not None else None
        self.images = ImageStore(root / "images", warn=self.warn) if root is not None else None
        self.update_baselines = update_baselines
        self.device = device
        self.run_id = run_id or uuid.uuid4().hex
        self._update_command = update_command
        self.loader = Loader(device)
        self.progress = progress
        self.runner = Runner(
            device=device, workers=workers, store=self.images, progress=progress.update if progress else None, compile=compile,
        )
        self.units = UnitComputer(self.loader, self.runner, cache=self.cache, device=device, progress=progress.update if progress else None)
        self._states: dict[UnitKey, UnitState] = {}
        self._pending: Counter[UnitKey] = Counter()
        self._model_pending: Counter[tuple[str, str]] = Counter()
        self._needs: dict[UnitKey, Needs] = {}
        self._baselines: dict[tuple[str, str], Baseline] = {}
        self._baseline_suites: dict[tuple[str, str], Suite] = {}
        self._written: set[tuple[str, str]] = set()
        self._records: dict[tuple[str, str, str], UnitMetrics] = {}
        self._new_records: list[UnitMetrics] = []
        self._announced: dict[UnitKey, list[PlannedCheck]] = {}
        self._intervals: dict[tuple[str, str, str, str], Any] = {}
        # The FP32 reproduction check: its own runner (no image store, no outputs cache), so its one
        # small pass per model is counted apart from the units' passes.
        self.reproduction_runner = Runner(device=device, workers=workers, store=None, trace_event="reproduce")
        self._probes: dict[tuple[str, str], PassResult] = {}
        self._reproduced: dict[tuple[str, str], QrelError | None] = {}

    # ------------------------------------------------------------------ counters tests read
    @property
    def forward_passes(self) -> Counter[tuple[str, str, str, str]]:
        """Passes computed in this process by (suite, model, quantizer or seed name, dataset);
        ``heldout`` is the split post-hoc steps are fitted on."""
        return self.runner.forward_passes

    @property
    def reproduction_passes(self) -> Counter[tuple[str, str, str, str]]:
        """Passes of the FP32 reproduction check by (suite, model, ``FP32``, ID set): at most one
        per model per engine, over :data:`~pytest_qrel.reproduction.REPRODUCE_IMAGES` images."""
        return self.reproduction_runner.forward_passes

    @property
    def cache_hits(self) -> dict[tuple[str, str, str, str], int]:
        return self.units.cache_hits

    @property
    def verified(self) -> dict[str, Any]:
        """Quantizer name -> :class:`~pytest_qrel.quantize.SimulationReport` (``verify: true``)."""
        return self.units.verified

    def live_units(self) -> int:
        """Units whose per-sample arrays are held right now."""
        return sum(1 for s in self._states.values() if s.live)

    def live_modules(self) -> int:
        """Quantized modules alive right now."""
        import gc

        gc.collect()
        return len(self.units.live_modules)

    # ------------------------------------------------------------------ loading (public helpers)
    def update_command(self, suite: Suite) -> str:
        if self._update_command:
            return self._update_command.format(suite=suite.path)
        return f"pytest --qrel-suite {suite.path} --qrel-update-baselines"

    def model(self, suite: Suite, name: str) -> Any:
        return self.loader.model(suite, name)

    def dataset(self, suite: Suite, name: str, split: str = "test") -> Any:
        return self.loader.dataset(suite, name, split)

    def quantized_module(self, suite: Suite, model: str, quantizer: str) -> Any:
        """A freshly quantized module for ``quantizer`` (``name@seed`` for one seed); not memoised:
        the engine itself never keeps one beyond its unit."""
        base, _, seed = quantizer.partition("@")
        spec = suite.quantizers.get(base)
        return self.units.build_module(suite, model, base, int(seed) if seed else (spec.calibration.seed if spec else None), {})

    # ------------------------------------------------------------------ planning
    def expect(self, planned: Iterable[PlannedCheck]) -> None:
        """Announce the checks of this run: a unit computes what all of them read, once, and is
        released when the last of them is done (:meth:`done`)."""
        for p in planned:
            key_model = (str(p.suite.path), p.model)
            self._model_pending[key_model] += 1
            for model, base in p.units:
                key = (str(p.suite.path), model, base)
                self._pending[key] += 1
                self._needs.setdefault(key, Needs()).merge(_check_needs(p, base))
                self._announced.setdefault(key, []).append(p)

    def done(self, p: PlannedCheck) -> None:
        """``p`` has its verdict: release every unit (and model) no announced check still reads."""
        for model, base in p.units:
            key = (str(p.suite.path), model, base)
            if self._pending[key] > 0:
                self._pending[key] -= 1
                if self._pending[key] == 0:
                    self._release(key)
        key_model = (str(p.suite.path), p.model)
        if self._model_pending[key_model] > 0:
            self._model_pending[key_model] -= 1
            if self._model_pending[key_model] == 0:
                self.loader.release_model(p.suite, p.model)

    def _release(self, key: UnitKey) -> None:
        state = self._states.get(key)
        if state is not None:
            state.seeds = None
            state.spectra = []

    # ------------------------------------------------------------------ units
    def unit(self, suite: Suite, model: str, base: str, needs: Needs | None = None, *, arrays: bool = False) -> UnitState:
        """The state of unit (suite, model, base), computed now if it does not cover ``needs`` yet
        (or, with ``arrays``, if its per-sample arrays were released already)."""
        key = (str(suite.path), model, base)
        want = Needs()
        want.merge(self._needs.get(key, Needs()))
        if needs is not None:
            want.merge(needs)
        state = self._states.setdefault(key, UnitState(suite, model, base))
        if state.error is not None:
            raise state.error
        if state.metrics and state.needs.covers(want) and (state.live or not arrays):
            return state
        want.merge(state.needs)
        available = set(self.loader.available(suite, sorted(want.datasets)))
        want.datasets = available
        started, passes_before = time.monotonic(), sum(self.runner.forward_passes.values())
        try:
            seeds = [
                self.units.compute_seed(suite, model, base, name, seed, want)
                for name, seed in seed_names(base, suite.quantizers.get(base))
            ]
        except QrelError as exc:
            state.error = exc
            raise
        state.seeds, state.needs = seeds, want
        self._summarise(state)
        if self.progress is not None:
            images = sum(len(a.get("label", ())) for s in seeds for a in s.arrays.get(BASE, {}).values())
            passes = sum(self.runner.forward_passes.values()) - passes_before
            self.progress.unit(f"{model} {base}", time.monotonic() - started, passes, images if passes else 0)
        return state

    def _summarise(self, state: UnitState) -> None:
        """Metrics (mean over seeds), parameters and the report's records from the seeds' arrays."""
        assert state.seeds is not None
        suite = state.suite
        variants = sorted({v for s in state.seeds for v in s.arrays})
        for v in variants:
            per = [
                metrics_of(suite, s.arrays.get(v, {}), conventions=suite.conventions, model=state.model, quantizer=state.base + v, errors=state.errors)
                for s in state.seeds
            ]
            state.per_seed[v] = per
            state.metrics[v] = mean_metrics(per)
            state.params[v] = [s.params[v] for s in state.seeds if v in s.params]
        state.info = [dict(s.info) for s in state.seeds]
        if "runtime" in state.info[0]:  # what runtime checks read (parity, int8 share, latency ratios)
            from ..runtimes.audit import runtime_metrics

            for v in variants:
                state.metrics[v]["runtime"] = runtime_metrics(state.info[0]["runtime"])
        state.spectra = [s.spectrum for s in state.seeds if s.spectrum is not None]
        b = self._baselines.get((suite.name, state.model))
        if state.spectra and b is not None:
            self._spectral(state, b)
        for v in variants:
            self._add_record(self._unit_record(state, v))

    def _spectral(self, state: UnitState, b: Baseline) -> None:
        from ..metrics import compute_spectral_metrics

        ref = b.spectrum(state.suite.id_dataset.name)
        if ref is None or not state.spectra:
            return
        for mine in state.spectra:
            if mine.shape != ref.shape:
                raise BaselineStaleError(
                    f"FP32 baseline {b.path} stores a {ref.shape} feature spectrum, the model now gives {mine.shape}; "
                    f"re-create it with: {self.update_command(state.suite)}"
                )
        spectral = mean_metrics([compute_spectral_metrics(m, ref) for m in state.spectra])
        for v in state.metrics:
            state.metrics[v]["spectral"] = spectral

    # ------------------------------------------------------------------ records for the report
    def _add_record(self, record: UnitMetrics) -> None:
        self._new_records.append(record)
        self._records[(record.suite, record.model, record.quantizer)] = record

    def take_new_records(self) -> list[UnitMetrics]:
        """Records made since the last call (the plugin ships them with the item's report)."""
        out, self._new_records = self._new_records, []
        return out

    def _unit_record(self, state: UnitState, variant: str) -> UnitMetrics:
        suite = state.suite
        spec = suite.quantizers[state.base]
        m = state.metrics[variant]
        info: dict[str, Any] = {}
        params = state.params.get(variant) or []
        if params:
            info.update(params[0] if len(params) == 1 else {k: [p[k] for p in params] for k in params[0]})
        per_seed: dict[str, list[float]] = {}
        if len(state.per_seed.get(variant, [])) > 1:
            for metric in m.get("id", {}):
                per_seed[metric] = [s["id"][metric] for s in state.per_seed[variant]]
            info["top1 per seed"] = per_seed.get("top1", [])
        qat = [i["qat_steps"] for i in state.info if "qat_steps" in i]
        if qat:
            info["QAT steps"] = qat[0] if len(qat) == 1 else qat
        spectral_map: list[list[float]] = []
        b = self._baselines.get((suite.name, state.model))
        if state.spectra and b is not None and b.spectrum(suite.id_dataset.name) is not None:
            from ..spectral import relative_spectral_error_map

            ref = b.spectrum(suite.id_dataset.name)
            spectral_map = np.mean([relative_spectral_error_map(s, ref) for s in state.spectra], axis=0).tolist()
        return UnitMetrics(
            suite=suite.name, model=state.model, quantizer=state.base + variant, id=m.get("id", {}), ood=m.get("ood", {}),
            info=info, conventions=suite.conventions, method=spec.method, shifted=m.get("shifted", {}), pairs=m.get("pairs", {}),
            spectral=m.get("spectral", {}), spectral_map=spectral_map, base=state.base, posthoc=[s for s in variant.split("+") if s],
            weight_bits=spec.weight_bits, act_bits=spec.act_bits, bits_label=f"W{spec.weight_bits}A{spec.act_bits or 16}",
            seeds=list(spec.calibration.seeds or (spec.calibration.seed,)), calibration_samples=spec.calibration.samples,
            options=dict(spec.options), per_seed=per_seed, curves=self._curves(state.seeds[0].arrays.get(variant, {}) if state.seeds else {}, suite, b),
            diagnostics=dict(state.seeds[0].diagnostics) if state.seeds and not variant else {},
            runtime=dict(state.info[0].get("runtime", {})) if state.info and not variant else {},
        )

    def _curves(self, arrays: dict[str, SampleArrays], suite: Suite, baseline: Baseline | None = None) -> dict[str, Any]:
        """The report's small plot data from one seed's per-sample arrays (see UnitMetrics.curves);
        with the FP32 ``baseline``, the bin-wise reliability shift of the same samples."""
        from ..curves import unit_curves
        from ..reliability_shift import shift_curve

        if suite.id_dataset.name not in arrays:
            return {}
        ood = [d for d in suite.ood_datasets if d in arrays]
        out = unit_curves(arrays, suite.id_dataset.name, ood, list(suite.scores))
        if baseline is not None:
            out.update(shift_curve(baseline.samples(FP32), arrays, suite.id_dataset.name))
        return out

    def _baseline_records(self, suite: Suite, model: str, b: Baseline) -> None:
        diagnostics: dict[str, Any] = {}
        if suite.diagnostics:  # the FP32 side of the diagnostics: the loaded model on the same few images
            diagnostics = self.units.diagnostics(suite, model, self.loader.model(suite, model).module.to(self.device))
        for name in [FP32, *b.variants]:
            m = b.metrics if name == FP32 else b.variants[name].get("metrics", {})
            arrays = b.samples(name)
            info = {} if name == FP32 else dict(b.variants[name].get("params", {}))
            self._add_record(UnitMetrics(
                suite=suite.name, model=model, quantizer=name, id=m.get("id", {}), ood=m.get("ood", {}), info=info,
                conventions=suite.conventions, shifted=m.get("shifted", {}), pairs=m.get("pairs", {}), spectral=m.get("spectral", {}),
                base=FP32, posthoc=[s for s in name.split("+")[1:]], curves=self._curves(arrays, suite),
                baseline={"file": str(b.path), "created": b.created, "fingerprint": b.fingerprint} if name == FP32 else {},
                diagnostics=diagnostics if name == FP32 else {},
            ))

    def report_units(self) -> list[UnitMetrics]:
        """The records of every unit computed here and the FP32 baselines read, FP32 first per model."""
        records = list(self._records.values())
        return sorted(records, key=lambda r: (r.suite, r.model, r.quantizer.split("+")[0] != FP32))

    # ------------------------------------------------------------------ baselines
    def current_fingerprint(self, suite: Suite, model: str, datasets: list[str]) -> dict[str, Any]:
        return {
            "model": self.loader.identity(suite, model),
            "datasets": {
                d: {
                    "source": suite.all_datasets[d].source if d != HELDOUT else f"{suite.id_dataset.source} ({HELDOUT_SPLIT} split)",
                    "fingerprint": self.loader.dataset(suite, d).fingerprint,
                    "samples": len(self.loader.dataset(suite, d)),
                }
                for d in datasets
            },
            "versions": fp.versions_major_minor(),
            "conventions": suite.conventions,
        }

    def write_baseline(self, suite: Suite, model: str) -> Path:
        """Run FP32 over every available dataset of ``suite`` and store its metrics and arrays."""
        from ..metrics import compute_spectral_metrics
        from ..posthoc import POSTHOC

        path = baseline_path(self.baseline_dir, suite.name, model)
        check_writable(path)  # before the FP32 pass, not after it
        heldout = self.loader.heldout_available(suite)
        datasets = self.loader.available(suite, [suite.id_dataset.name, *suite.ood_datasets, *suite.shifted_datasets])
        if suite.id_dataset.name not in datasets:
            self.loader.dataset(suite, suite.id_dataset.name)  # raises the missing-data error
        needs = Needs(set(datasets), {(s,) for s in POSTHOC.names()} if heldout else set(), wants_spectrum(suite))
        seed = self.units.compute_seed(suite, model, FP32, FP32, None, needs)
        loaded = self.loader.model(suite, model)
        self._refuse_chance_level(suite, model, seed.arrays[BASE][suite.id_dataset.name], loaded.num_classes, path)
        self._refuse_unreproducible(suite, model, seed)
        arrays: dict[str, np.ndarray] = {}
        variants: dict[str, Any] = {}
        metrics = metrics_of(suite, seed.arrays[BASE], conventions=suite.conventions, model=model, quantizer=FP32)
        for v, per in seed.arrays.items():
            for d, fields in per.items():
                for name, a in fields.items():
                    arrays[f"{FP32}{v}|{d}|{name}"] = a
            if v != BASE:
                variants[f"{FP32}{v}"] = {"metrics": metrics_of(suite, per, conventions=suite.conventions, model=model, quantizer=FP32 + v), "params": seed.params.get(v, {})}
        if seed.spectrum is not None:
            arrays[f"{FP32}|{suite.id_dataset.name}|spectrum"] = seed.spectrum
            zero = compute_spectral_metrics(seed.spectrum, seed.spectrum)
            for m in (metrics, *(v["metrics"] for v in variants.values())):
                m["spectral"] = zero
        write_baseline(
            path, suite=suite.name, model=model,
            fingerprint=self.current_fingerprint(suite, model, [*datasets, *([HELDOUT] if heldout else [])]),
            metrics=metrics, variants=variants, arrays=arrays, run_id=self.run_id, created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            id_dataset=suite.id_dataset.name, pairs=dict(suite.pairs), device=self.device,
        )
        self._reproduced[(suite.name, model)] = None  # the probe just reproduced what is stored
        return path

    def _refuse_unreproducible(self, suite: Suite, model: str, seed: SeedOutputs) -> None:
        """Before a baseline is stored: the FP32 outputs must depend on the input, and a second pass
        over the first ID images must give what the full pass gave (else the baseline would record
        one draw of a random model)."""
        from ..validation import refuse_input_independent

        id_name = suite.id_dataset.name
        probe = self._probe(suite, model)
        refuse_input_independent(probe.logits, seed.arrays[BASE], model=model, dataset=id_name)
        n, differences, tol = self._reproduction_problem(suite, model, seed.arrays[BASE][id_name], self.device)
        if differences:
            raise BaselineError(
                f"refusing to store the FP32 baseline of model '{model}': the FP32 model does not reproduce its own outputs: on the "
                f"first {n} '{id_name}' test images a second pass gives {', '.join(differences)} (tolerance: {tol.describe()}) "
                "(fix: make the forward deterministic: no unseeded randomness, no dropout in train mode)"
            )

    def _refuse_chance_level(self, suite: Suite, model: str, arrays: SampleArrays, n_classes: int, path: Path) -> None:
        """Refuse a baseline whose FP32 top-1 is at chance level when the set's label order was only
        inferred from folder names that no class list of the model could confirm: then a wrong
        order (``zero..four`` sorted alphabetically) is far likelier than a model that bad. A model
        at chance on labels in a known order (a random-init dry run) is stored as it is."""
        from ..data.folders import ORDER_FROM_FOLDERS
        from ..validation import refuse_chance_level

        ds = self.loader.dataset(suite, suite.id_dataset.name)
        loaded = self.loader.model(suite, model)
        order_from = getattr(ds, "class_order_from", None)
        if order_from != ORDER_FROM_FOLDERS or loaded.class_names or getattr(loaded, "class_ids", None):
            return
        labels = arrays["label"]
        refuse_chance_level(
            float(np.mean(arrays["correct"])), len(np.unique(labels[labels >= 0])), len(labels), model=model,
            dataset=suite.id_dataset.name, class_order=getattr(ds, "class_order", None), class_order_from=order_from,
        )

    def baseline(self, suite: Suite, model: str) -> Baseline:
        """The stored FP32 baseline of (suite, model); (re)written first when updating baselines."""
        key = (suite.name, model)
        if key in self._baselines:
            return self._baselines[key]
        path = baseline_path(self.baseline_dir, suite.name, model)
        if self.update_baselines and key not in self._written:
            self._update_once(suite, model, path)
            self._written.add(key)
        b = read_baseline(path, update_command=self.update_command(suite))
        self._baselines[key] = b
        self._baseline_records(suite, model, b)
        return b

    def _update_once(self, suite: Suite, model: str, path: Path) -> None:
        """Write the baseline once per run: several xdist workers of one run share the cache
        directory, and the first one to get the lock writes it."""
        def update() -> None:
            try:
                if read_baseline(path, update_command="").run_id == self.run_id:
                    return  # another worker of this run already wrote it
            except QrelError:
                pass
            self.write_baseline(suite, model)

        if self.cache_dir is None:
            update()
            return
        from filelock import FileLock

        lock = self.cache_dir / "locks" / f"{fp.digest(['baseline', str(path.resolve())])[:32]}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            update()

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
        self._check_reproduction(suite, model, b)
        return b

    # ------------------------------------------------------------------ the FP32 reproduction check
    def _probe(self, suite: Suite, model: str) -> PassResult:
        """FP32 on the first few ID test images, logits kept; once per (suite, model) and engine."""
        from ..reproduction import REPRODUCE_IMAGES, FirstImages
        from .runner import _decodes

        key = (suite.name, model)
        if key not in self._probes:
            id_name = suite.id_dataset.name
            ds = self.loader.dataset(suite, id_name)
            n = min(REPRODUCE_IMAGES, len(ds))
            loaded = self.loader.model(suite, model)
            module = self.units.build_module(suite, model, FP32, None, {})
            clip = loaded.info.get("clip")
            with_clip = clip is not None and hasattr(module, "forward_with_features")
            scores = {s: f for s, f in score_functions(suite).items() if f[1] != "clip" or with_clip}
            what = f"model '{model}' FP32 on the first {n} '{id_name}' test images (reproduction check)"
            try:
                with user_stage("the forward pass", what):
                    self._probes[key] = self.reproduction_runner.run(
                        module, FirstImages(ds, n, decodes=_decodes(ds)), loaded.preprocess, batch_size=suite.batch_size,
                        want=Want(labelled=True, scores=scores, clip=clip, keep_logits=True), what=what,
                        preprocessing=loaded.preprocessing, key=(suite.name, model, FP32, id_name),
                    )
            except NumericsError as exc:  # NaN / inf logits: say which pass found them
                raise exc.with_context(f"the FP32 reproduction check on the first {n} '{id_name}' test images") from None
        return self._probes[key]

    def _reproduction_problem(self, suite: Suite, model: str, stored: SampleArrays, stored_device: str) -> tuple[int, list[str], Any]:
        """``(images, differences, tolerance)`` of the probe against ``stored`` (the ID set's arrays)."""
        from ..reproduction import reproduction_differences, tolerance_for

        probe = self._probe(suite, model)
        tol = tolerance_for(stored_device, self.device)
        return len(probe.arrays["pred"]), reproduction_differences(stored, probe.arrays, probe.logits, tol), tol

    def _check_reproduction(self, suite: Suite, model: str, b: Baseline) -> None:
        """Fail (every check of the model, with one and the same line) when the FP32 model no longer
        gives the stored outputs of the first ID images; computed once per model. Skipped where the
        comparison cannot mean anything and the checks say so themselves: the ID set missing here,
        or its fingerprint not the stored one (stale)."""
        from ..errors import DataMissingError
        from ..reproduction import device_type

        key = (suite.name, model)
        if key not in self._reproduced:
            error: QrelError | None = None
            id_name = suite.id_dataset.name
            stored = b.samples(FP32).get(id_name)
            try:
                ds = self.loader.dataset(suite, id_name)
                same_data = ((b.fingerprint.get("datasets") or {}).get(id_name) or {}).get("fingerprint") == ds.fingerprint
                if stored is not None and same_data and b.id_dataset == id_name and len(ds):
                    n, differences, tol = self._reproduction_problem(suite, model, stored, b.device)
                    if differences:
                        error = BaselineError(
                            f"model '{model}': the FP32 model no longer reproduces its baseline {b.path}: on the first {n} '{id_name}' "
                            f"test images {', '.join(differences)} (tolerance: {tol.describe()}; baseline computed on {b.device}, "
                            f"this run on {device_type(self.device)}): a nondeterministic forward (unseeded randomness, dropout in "
                            "train mode) or a changed model, code or environment (fix: make the forward deterministic; if the change "
                            f"is intended, re-create the baseline with: {self.update_command(suite)})"
                        )
            except DataMissingError:
                pass
            except QrelError as exc:
                error = exc
            self._reproduced[key] = error
        found = self._reproduced[key]
        if found is not None:
            raise found

    # ------------------------------------------------------------------ checks
    def _value_from(self, metrics: dict[str, Any], p: PlannedCheck, where: str, errors: dict[tuple[str, str], str] | None = None) -> float:
        """The planned check's metric from a stored ``{"id", "ood", "shifted", "pairs", "spectral"}``
        dict; ``errors`` says why an OOD (score, set) has no metrics (degenerate scores)."""
        from ..errors import NumericsError
        from ..metrics import METRICS

        suite = p.suite
        kind = METRICS.meta(p.check.metric)["kind"]
        try:
            if kind == "pair":
                return float(metrics["pairs"][p.dataset][p.check.metric])
            if kind == "spectral":
                return float(metrics["spectral"][p.check.metric])
            if kind == "runtime":
                from ..runtimes.checks import runtime_value

                return runtime_value(metrics, p.check.metric, p.score, f"{p.model} {p.quantizer}")
            if kind != "ood":
                section = metrics["id"] if p.dataset == suite.id_dataset.name else metrics["shifted"][p.dataset]
                return float(section[p.check.metric])
            sets = mean_members(p.dataset, list(suite.ood_datasets)) or [p.dataset]
            assert p.score is not None  # an OOD check names its score
            for d in sets:
                if errors and (p.score, d) in errors:
                    raise NumericsError(errors[(p.score, d)])
            return float(np.mean([metrics["ood"][p.score][d][p.check.metric] for d in sets]))
        except KeyError as exc:
            raise BaselineMissingError(
                f"{where} has no {p.check.metric} for {exc}; re-create it with: {self.update_command(suite)}"
            ) from None

    def value(self, p: PlannedCheck, quantizer: str, b: Baseline) -> float:
        """The check's metric for ``quantizer`` (FP32 and its variants from the stored baseline)."""
        base = base_quantizer(quantizer)
        if base == FP32:
            if quantizer == FP32:
                return self._value_from(b.metrics, p, f"FP32 baseline {b.path}")
            variant = (b.variants or {}).get(quantizer, {}).get("metrics", {})
            return self._value_from(variant, p, f"FP32 baseline {b.path} ({quantizer})")
        state = self.unit(p.suite, p.model, base, _check_needs(p, base))
        variant = quantizer[len(base):]
        if "spectral" not in state.metrics.get(variant, {}) and state.spectra:
            self._spectral(state, b)
        return self._value_from(state.metrics.get(variant, {}), p, "outputs", state.errors)

    def evaluate(self, p: PlannedCheck) -> Verdict:
        """Decide one planned check. Raises QrelError subclasses for missing data / baselines and
        for failures of the units it reads; always counts the check as done (:meth:`done`)."""
        try:
            return self._evaluate(p)
        finally:
            self.done(p)

    def _evaluate(self, p: PlannedCheck) -> Verdict:
        from ..metrics import METRICS

        suite = p.suite
        for d in p.datasets:  # missing data skips the check before anything else can fail
            self.loader.dataset(suite, d)
        b = self.checked_baseline(suite, p.model, list(p.datasets))
        meta = METRICS.meta(p.check.metric)
        fp32 = self.value(p, FP32, b) if meta["kind"] != "runtime" else None  # runtime checks compare with the simulation or are ratios to FP32
        value = self.value(p, p.quantizer, b)
        ref = p.check.bound.ref
        ref_value = self.value(p, ref, b) if ref is not None else None
        interval = self.interval(p)
        return decide(
            p, value, fp32, higher_is_better=meta["higher_is_better"], fraction=meta["fraction"], ref_value=ref_value,
            interval=interval,
        )

    # ------------------------------------------------------------------ intervals
    @staticmethod
    def _check_key(p: PlannedCheck) -> tuple[str, str, str, str]:
        return (str(p.suite.path), p.model, p.quantizer, p.name)

    def _arrays_of(self, suite: Suite, model: str, quantizer: str) -> list[dict[str, SampleArrays]]:
        """Per-seed ``{dataset: SampleArrays}`` of ``quantizer`` (FP32 from the baseline)."""
        base, _, variant = self._parse(quantizer)
        if base == FP32:
            return [self.baseline(suite, model).samples(FP32 + variant)]
        state = self._states[(str(suite.path), model, base)]
        if not state.live:
            state = self.unit(suite, model, base, arrays=True)
        assert state.seeds is not None
        return [s.arrays[variant] for s in state.seeds]

    def interval(self, p: PlannedCheck) -> Any:
        """The paired bootstrap interval of ``p``'s quantity (:mod:`pytest_qrel.stats`), or None for
        metrics without a per-sample form. Computed for every announced check of ``p``'s units at
        once (each dataset is resampled once for all of them) while their arrays are held."""
        from ..stats import intervals_for

        key = self._check_key(p)
        if key not in self._intervals:
            batch = [p]
            for model, base in p.units:
                for q in self._announced.get((str(p.suite.path), model, base), []):
                    k = self._check_key(q)
                    if k not in self._intervals and k != key and all(
                        self._states.get((str(q.suite.path), m, b)) is not None and self._states[(str(q.suite.path), m, b)].live
                        for m, b in q.units
                    ) and self._datasets_here(q):
                        batch.append(q)
            results = intervals_for(batch, lambda model, quantizer: self._arrays_of(p.suite, model, quantizer))
            for q, r in zip(batch, results):
                self._intervals[self._check_key(q)] = r
        return self._intervals.pop(key)

    def _datasets_here(self, p: PlannedCheck) -> bool:
        """Every dataset ``p`` reads is in its units' arrays and the baseline (not skipped, not degenerate)."""
        from ..errors import DataMissingError

        try:
            for d in p.datasets:
                self.loader.dataset(p.suite, d)
        except DataMissingError:
            return False
        b = self._baselines.get((p.suite.name, p.model))
        if b is None:
            return False
        needed = [d for d in p.datasets if d != HELDOUT]
        fp32 = b.samples(FP32)
        if not all(d in fp32 for d in needed):
            return False
        for model, base in p.units:
            state = self._states[(str(p.suite.path), model, base)]
            if any((p.score, d) in state.errors for d in needed) or not all(d in state.needs.datasets for d in needed):
                return False
        return True

    # ------------------------------------------------------------------ conveniences (Python API, tests)
    @staticmethod
    def _parse(quantizer: str) -> tuple[str, int | None, str]:
        """``"W4A4@13+temperature"`` -> ``("W4A4", 13, "+temperature")``."""
        head, plus, steps = quantizer.partition("+")
        base, _, seed = head.partition("@")
        return base, int(seed) if seed else None, plus + steps

    def samples(self, suite: Suite, model: str, quantizer: str, dataset: str) -> SampleArrays:
        """Per-sample arrays of ``quantizer`` (``W8A8``, ``W8A8@13``, ``W8A8+temperature``;
        FP32 from the baseline) on ``dataset``; computes the unit if needed (first seed by default)."""
        base, seed, variant = self._parse(quantizer)
        if base == FP32:
            return self.baseline(suite, model).samples(FP32 + variant)[dataset]
        needs = Needs({dataset}, {tuple(variant.split("+")[1:])} if variant else set(), False)
        state = self.unit(suite, model, base, needs, arrays=True)
        assert state.seeds is not None
        picked = [s for s in state.seeds if seed is None or s.seed == seed]
        return picked[0].arrays[variant][dataset]

    def metrics(self, suite: Suite, model: str, quantizer: str, datasets: Iterable[str] | None = None) -> dict[str, Any]:
        """``{"id", "ood", "shifted", "pairs", "spectral"}`` of ``quantizer`` (mean over seeds, or
        one seed with ``W8A8@13``)."""
        base, seed, variant = self._parse(quantizer)
        if base == FP32:
            b = self.baseline(suite, model)
            return b.metrics if not variant else b.variants[FP32 + variant]["metrics"]
        names = list(datasets) if datasets is not None else [suite.id_dataset.name, *suite.ood_datasets, *suite.shifted_datasets]
        state = self.unit(suite, model, base, Needs(set(names), {tuple(variant.split("+")[1:])} if variant else set(), False))
        if seed is None:
            return state.metrics[variant]
        seeds = [s for s, _ in (seed_names(base, suite.quantizers.get(base)))]
        return state.per_seed[variant][seeds.index(f"{base}@{seed}")]

    def id_metrics(self, suite: Suite, model: str, quantizer: str, dataset: str | None = None) -> dict[str, float]:
        dataset = dataset or suite.id_dataset.name
        m = self.metrics(suite, model, quantizer, [dataset])
        return m["id"] if dataset == suite.id_dataset.name else m["shifted"][dataset]

    def ood_metrics(self, suite: Suite, model: str, quantizer: str, score: str, dataset: str) -> dict[str, float]:
        return self.metrics(suite, model, quantizer, [suite.id_dataset.name, dataset])["ood"][score][dataset]

    def posthoc_params(self, suite: Suite, model: str, quantizer: str) -> dict[str, Any]:
        """Fitted parameters of ``quantizer``'s post-hoc steps (``{"temperature": T}``; a list per seed)."""
        base = base_quantizer(quantizer)
        if base == FP32:
            return dict(self.baseline(suite, model).variants[quantizer]["params"])
        variant = quantizer[len(base):]
        state = self.unit(suite, model, base, Needs({suite.id_dataset.name}, {tuple(variant.split("+")[1:])}, False))
        params = state.params[variant]
        return params[0] if len(params) == 1 else {k: [p[k] for p in params] for k in params[0]}

    def spectral_metrics(self, suite: Suite, model: str, quantizer: str) -> dict[str, float]:
        base = base_quantizer(quantizer)
        if base == FP32:
            return dict(self.baseline(suite, model).metrics.get("spectral", {}))
        b = self.baseline(suite, model)
        if b.spectrum(suite.id_dataset.name) is None:
            raise BaselineMissingError(
                f"FP32 baseline {b.path} has no feature spectrum (spectrum.{suite.id_dataset.name}) for spectral metrics; "
                f"re-create it with: {self.update_command(suite)}"
            )
        state = self.unit(suite, model, base, Needs({suite.id_dataset.name}, set(), True))
        if "spectral" not in state.metrics.get("", {}):
            self._spectral(state, b)
        return state.metrics[""]["spectral"]

    def spectrum(self, suite: Suite, model: str, quantizer: str) -> np.ndarray:
        """The last-block feature spectrum (h, w) of ``quantizer`` on the ID test split (first seed;
        FP32 from the baseline), for suites with spectral checks."""
        base, seed, _ = self._parse(quantizer)
        if base == FP32:
            found = self.baseline(suite, model).spectrum(suite.id_dataset.name)
            if found is None:
                raise BaselineMissingError(f"FP32 baseline of {model} has no feature spectrum; re-create it with: {self.update_command(suite)}")
            return found
        state = self.unit(suite, model, base, Needs({suite.id_dataset.name}, set(), True), arrays=True)
        assert state.seeds is not None
        picked = [s for s in state.seeds if seed is None or s.seed == seed]
        if picked[0].spectrum is None:
            raise ValueError(f"suite {suite.name} has no spectral check, so no spectrum is recorded")
        return picked[0].spectrum

    def unit_info(self, suite: Suite, model: str, quantizer: str) -> list[dict[str, Any]]:
        """Per seed: what quantizing recorded (``qat_steps``, ``qat_losses``, ``qat_options``, ``verify``)."""
        return self.unit(suite, model, base_quantizer(quantizer)).info

