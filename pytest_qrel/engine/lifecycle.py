"""The unit lifecycle: the engine is told which checks will run (:meth:`UnitLifecycle.expect`), so it
knows what each unit must compute and when a unit's last check has run (:meth:`UnitLifecycle.done`);
it then releases the unit's per-sample arrays, keeping only its metrics and the records the report
shows, and once no check of any scenario of a backbone is left, the quantizations memoised for that
backbone (:meth:`~.trainmemo.TrainMemo.release`). A unit is computed at most once per process for what its checks read
(:meth:`UnitLifecycle.unit`), seed by seed through :class:`~.units.UnitComputer`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..baselines import Baseline
from ..errors import BaselineStaleError, QrelError
from ..metric_table import MetricsTable
from ..spec.plan import PlannedCheck
from ..spec.quantizer_ref import QuantizerRef
from ..spec.schema import HELDOUT, Suite
from .loading import Loader
from .records import RecordBuilder
from .runner import Runner
from .trainmemo import Backbone, backbone_of
from .units import BASE, Needs, SeedOutputs, UnitComputer, mean_metrics, metrics_of, seed_names

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

    def table(self, variant: str) -> MetricsTable:
        """The metrics of ``variant`` (mean over seeds) as a table checks read."""
        return MetricsTable(self.metrics.get(variant, {}), self.errors)


def check_needs(p: PlannedCheck, base: str) -> Needs:
    """What ``p`` needs of the unit ``base``: its datasets, post-hoc chains and the spectrum."""
    from ..metrics import METRICS

    refs = [QuantizerRef.parse(q) for q in p.quantizers_read]
    variants = {r.steps for r in refs if r.base == base and r.steps}
    spectral = p.check.metric in METRICS and METRICS.meta(p.check.metric)["kind"] == "spectral"  # not a report-only unit's
    return Needs({d for d in p.datasets if d != HELDOUT}, variants, spectral)


def spectral_metrics(state: UnitState, b: Baseline, update_command: str) -> None:
    """Add ``spectral`` to every variant's metrics: the unit's spectra against the baseline's."""
    from ..metrics import compute_spectral_metrics

    ref = b.spectrum(state.suite.id_dataset.name)
    if ref is None or not state.spectra:
        return
    for mine in state.spectra:
        if mine.shape != ref.shape:
            raise BaselineStaleError(
                f"FP32 baseline {b.path} stores a {ref.shape} feature spectrum, the model now gives {mine.shape}; "
                f"re-create it with: {update_command}"
            )
    spectral = mean_metrics([compute_spectral_metrics(m, ref) for m in state.spectra])
    for v in state.metrics:
        state.metrics[v]["spectral"] = spectral


class UnitLifecycle:
    """Units by (suite file, model, base quantizer): announced, computed once, released after their
    last check. ``baseline_of(suite, model)``: the baseline if already read (for spectral metrics
    and maps); ``update_command(suite)`` for messages; ``progress`` as :class:`~pytest_qrel.engine.Engine`'s."""

    def __init__(
        self, loader: Loader, units: UnitComputer, runner: Runner, records: RecordBuilder, *,
        baseline_of: Callable[[Suite, str], Baseline | None], update_command: Callable[[Suite], str], progress: Any = None,
    ) -> None:
        self.loader, self.units, self.runner, self.records = loader, units, runner, records
        self.baseline_of, self.update_command, self.progress = baseline_of, update_command, progress
        self.states: dict[UnitKey, UnitState] = {}
        self.announced: dict[UnitKey, list[PlannedCheck]] = {}
        self._pending: Counter[UnitKey] = Counter()
        self._model_pending: Counter[tuple[str, str]] = Counter()
        self._backbone_pending: Counter[Backbone] = Counter()  # a scenario model's backbone: its memo entries
        self._needs: dict[UnitKey, Needs] = {}

    def expect(self, planned: Iterable[PlannedCheck]) -> None:
        """Announce the checks of this run: a unit computes what all of them read, once, and is
        released when the last of them is done (:meth:`done`)."""
        for p in planned:
            self._model_pending[(str(p.suite.path), p.model)] += 1
            backbone = backbone_of(str(p.suite.path), p.model)
            if backbone is not None:
                self._backbone_pending[backbone] += 1
            for model, base in p.units:
                key = (str(p.suite.path), model, base)
                self._pending[key] += 1
                self._needs.setdefault(key, Needs()).merge(check_needs(p, base))
                self.announced.setdefault(key, []).append(p)

    def done(self, p: PlannedCheck) -> None:
        """``p`` has its verdict: release every unit (and model) no announced check still reads."""
        for model, base in p.units:
            key = (str(p.suite.path), model, base)
            if self._pending[key] > 0:
                self._pending[key] -= 1
                if self._pending[key] == 0 and key in self.states:
                    self.states[key].seeds, self.states[key].spectra = None, []
        key_model = (str(p.suite.path), p.model)
        if self._model_pending[key_model] > 0:
            self._model_pending[key_model] -= 1
            if self._model_pending[key_model] == 0:
                self.loader.release_model(p.suite, p.model)
        backbone = backbone_of(str(p.suite.path), p.model)
        if backbone is not None and self._backbone_pending[backbone] > 0:
            self._backbone_pending[backbone] -= 1
            if self._backbone_pending[backbone] == 0:  # no scenario of it left: its memoised quantizations go
                self.units.train_memo.release(backbone)

    def live_units(self) -> int:
        return sum(1 for s in self.states.values() if s.live)

    def live(self, suite: Suite, model: str, base: str) -> UnitState | None:
        """The unit's state if its per-sample arrays are held now (computes nothing)."""
        state = self.states.get((str(suite.path), model, base))
        return state if state is not None and state.live else None

    def unit(self, suite: Suite, model: str, base: str, needs: Needs | None = None, *, arrays: bool = False) -> UnitState:
        """The state of unit (suite, model, base), computed now if it does not cover ``needs`` yet
        (or, with ``arrays``, if its per-sample arrays were released already)."""
        key = (str(suite.path), model, base)
        want = Needs()
        want.merge(self._needs.get(key, Needs()))
        if needs is not None:
            want.merge(needs)
        state = self.states.setdefault(key, UnitState(suite, model, base))
        if state.error is not None:
            raise state.error
        if state.metrics and state.needs.covers(want) and (state.live or not arrays):
            return state
        want.merge(state.needs)
        want.datasets = set(self.loader.available(suite, sorted(want.datasets)))
        self._compute(state, want)
        return state

    def _compute(self, state: UnitState, want: Needs) -> None:
        suite, model, base = state.suite, state.model, state.base
        started, passes_before = time.monotonic(), sum(self.runner.forward_passes.values())
        try:
            seeds = [self.units.compute_seed(suite, model, base, name, seed, want) for name, seed in seed_names(base, suite.quantizers.get(base))]
        except QrelError as exc:
            state.error = exc
            raise
        state.seeds, state.needs = seeds, want
        self._summarise(state)
        if self.progress is not None:
            images = sum(len(a.get("label", ())) for s in seeds for a in s.arrays.get(BASE, {}).values())
            passes = sum(self.runner.forward_passes.values()) - passes_before
            self.progress.unit(f"{model} {base}", time.monotonic() - started, passes, images if passes else 0)

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
        b = self.baseline_of(suite, state.model)
        if state.spectra and b is not None:
            spectral_metrics(state, b, self.update_command(suite))
        for v in variants:
            self.records.unit(state, v, b)

    def table(self, p: PlannedCheck, b: Baseline, ref: QuantizerRef) -> tuple[MetricsTable, str]:
        """The metrics table ``p`` reads for ``ref`` and where it comes from (for messages): FP32
        and its variants from the baseline ``b``, a unit's from its outputs (computed if needed)."""
        if ref.is_fp32:
            if not ref.variant:
                return MetricsTable(b.metrics), f"FP32 baseline {b.path}"
            return MetricsTable((b.variants or {}).get(str(ref), {}).get("metrics", {})), f"FP32 baseline {b.path} ({ref})"
        state = self.states.get((str(p.suite.path), p.model, ref.base))
        if state is None or state.error is not None or not state.metrics or not state.needs.covers(check_needs(p, ref.base)):
            state = self.unit(p.suite, p.model, ref.base, check_needs(p, ref.base))
        if "spectral" not in state.metrics.get(ref.variant, {}) and state.spectra:
            spectral_metrics(state, b, self.update_command(p.suite))
        return state.table(ref.variant), "outputs"
