"""The engine: planned checks -> units (each computed once) -> per-sample arrays -> verdicts.

Collaborators, one job each:

- :class:`~.loading.Loader` loads models, datasets and calibration images (user code is wrapped);
- :class:`~.runner.Runner` streams a dataset through a module (DataLoader, decode-once image store);
- :class:`~.units.UnitComputer` quantizes per seed and produces a unit's per-sample arrays, through
  the outputs cache (:mod:`pytest_qrel.cache`);
- :class:`~.store.BaselineStore` reads, verifies (fingerprint diff and the FP32 reproduction check of
  :mod:`.reproduce`), locks and writes the FP32 baselines;
- :class:`~.lifecycle.UnitLifecycle` is told which checks will run (:meth:`Engine.expect`), computes
  each unit once for all of them and releases its per-sample arrays after its last check, keeping
  the small record the report shows (:class:`~pytest_qrel.results.UnitMetrics`, built by
  :class:`~.records.RecordBuilder`);
- :class:`~.intervals.IntervalBatcher` computes the checks' bootstrap intervals in batches;
- :func:`~.evaluation.verdict_of` turns a check and the metrics tables it reads into a verdict.

:class:`Engine` (here) is the facade the plugin and :func:`pytest_qrel.run` use: :meth:`Engine.evaluate`
is the whole path of one check, in order. Checks only read metrics; the report only reads records.
"""

from __future__ import annotations

import uuid
from collections import Counter
from functools import partial
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from ..baselines import Baseline
from ..results import UnitMetrics, Verdict
from ..spec.plan import PlannedCheck
from ..spec.quantizer_ref import QuantizerRef
from ..spec.schema import REPORT_ONLY, Suite
from .evaluation import verdict_of
from .intervals import IntervalBatcher
from .lifecycle import UnitLifecycle, UnitState
from .loading import HELDOUT_SPLIT, Loader
from .records import RecordBuilder
from .reproduce import Reproduction
from .runner import Runner
from .store import BaselineStore
from .units import Needs, UnitComputer
from .views import UnitViews

__all__ = ["HELDOUT_SPLIT", "Engine", "UnitState"]


class Engine(UnitViews):
    """Computes everything checks read, each unit once per process (see the module docstring).

    ``baseline_dir``: root of the baselines. ``cache_dir``: the outputs cache and the decode-once
    image store live under it (None disables both). ``update_command``: the exact command a user
    should run to (re)create baselines, quoted in messages (``{suite}`` is the suite's path).
    ``workers``: DataLoader worker processes for image files. ``progress`` (optional) has
    ``update(what, done, total)``, called as passes advance, and ``unit(what, seconds, passes,
    images)``, called when a unit is computed; ``warn(message)`` receives one-line warnings (a
    corrupt cache entry). ``compile``: forward passes through :func:`torch.compile` (same logits).
    ``shared_dir``: a folder the processes of one run share (the xdist workers), where the FP32
    reproduction check's outcome per model is written once for all (:mod:`.reproduce`).
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
        shared_dir: str | Path | None = None,
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
        update = progress.update if progress else None
        self.runner = Runner(device=device, workers=workers, store=self.images, progress=update, compile=compile)
        self.units = UnitComputer(self.loader, self.runner, cache=self.cache, device=device, progress=update)
        self.records = RecordBuilder()
        # The FP32 reproduction check has its own runner (no image store, no outputs cache), so its
        # one small pass per model is counted apart from the units' passes.
        reproduction_runner = Runner(device=device, workers=workers, store=None, trace_event="reproduce")
        self.reproduction = Reproduction(
            self.loader, self.units, reproduction_runner, device=device, update_command=self.update_command, run_id=self.run_id,
            shared_dir=Path(shared_dir) if shared_dir is not None else None,
        )
        self.store = BaselineStore(
            self.baseline_dir, self.loader, self.units, self.reproduction, update=update_baselines, run_id=self.run_id,
            device=device, lock_dir=root, update_command=self.update_command, warn=self.warn,
        )
        self.lifecycle = UnitLifecycle(
            self.loader, self.units, self.runner, self.records, baseline_of=self.store.peek,
            update_command=self.update_command, progress=progress,
        )
        self.intervals = IntervalBatcher(self.loader, self.store, self.lifecycle)

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
        return self.reproduction.passes

    @property
    def cache_hits(self) -> dict[tuple[str, str, str, str], int]:
        return self.units.cache_hits

    @property
    def verified(self) -> dict[str, Any]:
        """Quantizer name -> :class:`~pytest_qrel.quantize.SimulationReport` (``verify: true``)."""
        return self.units.verified

    def live_units(self) -> int:
        """Units whose per-sample arrays are held right now."""
        return self.lifecycle.live_units()

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
        ref = QuantizerRef.parse(quantizer)
        spec = suite.quantizers.get(ref.base)
        seed = ref.seed if ref.seed is not None else (spec.calibration.seed if spec else None)
        return self.units.build_module(suite, model, ref.base, seed, {})

    # ------------------------------------------------------------------ lifecycle
    def expect(self, planned: Iterable[PlannedCheck]) -> None:
        """Announce the checks of this run (:meth:`UnitLifecycle.expect`)."""
        self.lifecycle.expect(planned)

    def done(self, p: PlannedCheck) -> None:
        """``p`` has its verdict: release every unit (and model) no announced check still reads."""
        self.lifecycle.done(p)

    def next_check(self, p: PlannedCheck | None) -> None:
        """The check this process runs next is ``p`` (None: none): release the loaded models it
        does not read. Called by a pytest-xdist worker between checks (it knows its next check,
        not the ones after: a model met again later is loaded again); elsewhere :meth:`done`
        releases a model after its last announced check."""
        self.loader.release_models_except([] if p is None else [(p.suite, p.model)])

    def unit(self, suite: Suite, model: str, base: str, needs: Needs | None = None, *, arrays: bool = False) -> UnitState:
        return self.lifecycle.unit(suite, model, base, needs, arrays=arrays)

    # ------------------------------------------------------------------ baselines
    def baseline(self, suite: Suite, model: str) -> Baseline:
        """The stored FP32 baseline of (suite, model), (re)written first when updating baselines.
        Reading runs no forward pass; the FP32 record of the report is :meth:`record_baseline`."""
        return self.store.fresh(suite, model)

    def checked_baseline(self, suite: Suite, model: str, datasets: list[str]) -> Baseline:
        """The baseline, after checking its fingerprint for ``datasets`` and the FP32 reproduction."""
        return self.store.checked(suite, model, datasets)

    def current_fingerprint(self, suite: Suite, model: str, datasets: list[str]) -> dict[str, Any]:
        return self.store.current_fingerprint(suite, model, datasets)

    def write_baseline(self, suite: Suite, model: str) -> Path:
        """Run FP32 over every available dataset of ``suite`` and store its metrics and arrays."""
        return self.store.write(suite, model)

    def record_baseline(self, suite: Suite, model: str) -> None:
        """The explicit step that records the FP32 baseline for the report, once per model: with
        ``diagnostics:`` in the suite it runs them on the FP32 model (a few forward passes)."""
        if (suite.name, model) in self.records.baselines:
            return
        b = self.baseline(suite, model)
        diagnostics: dict[str, Any] = {}
        if suite.diagnostics:
            diagnostics = self.units.diagnostics(suite, model, self.loader.model(suite, model).module.to(self.device))
        self.records.baseline(suite, model, b, diagnostics)

    # ------------------------------------------------------------------ records for the report
    def take_new_records(self) -> list[UnitMetrics]:
        """Records made since the last call (the plugin ships them with the item's report)."""
        return self.records.take_new()

    def report_units(self) -> list[UnitMetrics]:
        """The records of every unit computed here and the FP32 baselines recorded, FP32 first per model."""
        return self.records.all()

    # ------------------------------------------------------------------ checks
    def evaluate(self, p: PlannedCheck) -> Verdict:
        """Decide one planned check. Raises QrelError subclasses for missing data / baselines and
        for failures of the units it reads; always counts the check as done (:meth:`done`).

        The path, in order: the baseline verified for the check's datasets (the first time: the
        datasets exist, the baseline is read and recorded, its fingerprint and the FP32
        reproduction are checked); the tables of the quantizers read (units computed if needed);
        the interval; the bound."""
        try:
            if p.check.metric == REPORT_ONLY:
                return self._report_only(p)
            b = self.store.verified(p.suite, p.model, list(p.datasets)) or self._verify(p)
            return verdict_of(
                p, partial(self.lifecycle.table, p, b), partial(self.intervals.interval, p), partial(self.update_command, p.suite),
            )
        finally:
            self.lifecycle.done(p)

    def _report_only(self, p: PlannedCheck) -> Verdict:
        """A report-only unit (suite ``report:``): computed over every dataset available here (a
        missing ID set skips it), recorded for the report, no bound (:mod:`pytest_qrel.suite_report`)."""
        from ..suite_report import report_verdict

        self.loader.dataset(p.suite, p.suite.id_dataset.name)
        datasets = self.loader.available(p.suite, list(p.datasets))
        if self.store.verified(p.suite, p.model, datasets) is None:
            self.record_baseline(p.suite, p.model)
            self.store.checked(p.suite, p.model, datasets)
        self.lifecycle.unit(p.suite, p.model, QuantizerRef.parse(p.quantizer).base, Needs(set(datasets), set(), False))
        return report_verdict(p, datasets)

    def _verify(self, p: PlannedCheck) -> Baseline:
        for d in p.datasets:  # missing data skips the check before anything else can fail
            self.loader.dataset(p.suite, d)
        self.record_baseline(p.suite, p.model)
        return self.store.checked(p.suite, p.model, list(p.datasets))

    def interval(self, p: PlannedCheck) -> Any:
        """The paired bootstrap interval of ``p``'s quantity (:class:`~.intervals.IntervalBatcher`)."""
        return self.intervals.interval(p)
