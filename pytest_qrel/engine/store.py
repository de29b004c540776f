"""The engine's baseline store: read, verify (fingerprint diff, FP32 reproduction), lock and write
the FP32 baselines of :mod:`pytest_qrel.baselines`.

FP32 values are read from the stored baseline, which ``update=True`` (re)writes once per run from a
fresh FP32 run; quantized results are never stored as baselines. Reading (:meth:`BaselineStore.read`)
runs no forward pass: it parses the file. Verifying (:meth:`BaselineStore.checked`) compares the
stored fingerprint with the current one and, once per model, runs the small FP32 reproduction pass
(:mod:`.reproduce`). Writing runs FP32 over every dataset of the suite.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .. import fingerprint as fp
from ..baselines import Baseline, baseline_path, check_writable, read_baseline, write_baseline
from ..errors import BaselineMissingError, BaselineStaleError, QrelError
from ..spec.schema import FP32, HELDOUT, Suite
from .loading import HELDOUT_SPLIT, Loader
from .reproduce import Reproduction
from .samples import SampleArrays
from .units import BASE, Needs, UnitComputer, metrics_of, wants_spectrum


class BaselineStore:
    """The FP32 baselines of one engine: each read once, verified once per (suite, model, datasets).

    ``root``: the baselines folder. ``lock_dir``: where the write lock lives (the cache folder,
    shared by the xdist workers of one run; None: no lock). ``run_id``: written into a baseline so
    that the other workers of this run do not write it again. ``warn(message)``: one-line warnings."""

    def __init__(
        self, root: Path, loader: Loader, units: UnitComputer, reproduction: Reproduction, *, update: bool, run_id: str,
        device: str, lock_dir: Path | None, update_command: Callable[[Suite], str], warn: Callable[[str], None],
    ) -> None:
        self.root, self.loader, self.units, self.reproduction = root, loader, units, reproduction
        self.update, self.run_id, self.device, self.lock_dir = update, run_id, device, lock_dir
        self.update_command, self.warn = update_command, warn
        self._read: dict[tuple[str, str], Baseline] = {}
        self._written: set[tuple[str, str]] = set()
        self._verified: dict[tuple[str, str], set[str]] = {}  # (suite, model) -> datasets verified

    # ------------------------------------------------------------------ read
    def peek(self, suite: Suite, model: str) -> Baseline | None:
        """The baseline if it was read already (reads nothing)."""
        return self._read.get((suite.name, model))

    def read(self, suite: Suite, model: str) -> Baseline:
        """The stored FP32 baseline of (suite, model), parsed once; runs no forward pass."""
        key = (suite.name, model)
        if key not in self._read:
            self._read[key] = read_baseline(baseline_path(self.root, suite.name, model), update_command=self.update_command(suite))
        return self._read[key]

    def fresh(self, suite: Suite, model: str) -> Baseline:
        """:meth:`read`, after (re)writing the baseline once per run when updating baselines."""
        key = (suite.name, model)
        if self.update and key not in self._written and key not in self._read:
            self._update_once(suite, model, baseline_path(self.root, suite.name, model))
            self._written.add(key)
        return self.read(suite, model)

    # ------------------------------------------------------------------ verify
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

    def verified(self, suite: Suite, model: str, datasets: list[str]) -> Baseline | None:
        """The baseline if :meth:`checked` passed already for these datasets (or more), else None.
        A passed check holds for the engine's life: nothing it compares changes within a process
        (datasets and models are loaded once), and a subset of verified datasets verifies too."""
        done = self._verified.get((suite.name, model))
        return self._read[(suite.name, model)] if done is not None and done.issuperset(datasets) else None

    def checked(self, suite: Suite, model: str, datasets: list[str]) -> Baseline:
        """The baseline, after checking its fingerprint for the parts ``datasets`` depend on and the
        FP32 reproduction (remembered: :meth:`verified`)."""
        b = self.fresh(suite, model)
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
        changes = fp.diff(stored, self.current_fingerprint(suite, model, datasets))
        if changes:
            raise BaselineStaleError(
                f"FP32 baseline {b.path} is stale: {'; '.join(changes)}; if the change is intended, re-create it with: {self.update_command(suite)}"
            )
        self.reproduction.check(suite, model, b)
        self._verified.setdefault((suite.name, model), set()).update(datasets)
        return b

    # ------------------------------------------------------------------ write
    def _update_once(self, suite: Suite, model: str, path: Path) -> None:
        """Write the baseline once per run: several xdist workers of one run share the cache
        directory, and the first one to get the lock writes it."""
        def update() -> None:
            try:
                if read_baseline(path, update_command="").run_id == self.run_id:
                    return  # another worker of this run already wrote it
            except QrelError:
                pass
            self.write(suite, model)

        if self.lock_dir is None:
            update()
            return
        from filelock import FileLock

        lock = self.lock_dir / "locks" / f"{fp.digest(['baseline', str(path.resolve())])[:32]}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            update()

    def write(self, suite: Suite, model: str) -> Path:
        """Run FP32 over every available dataset of ``suite`` and store its metrics and arrays."""
        from ..metrics import compute_spectral_metrics
        from ..posthoc import POSTHOC

        path = baseline_path(self.root, suite.name, model)
        check_writable(path)  # before the FP32 pass, not after it
        heldout = self.loader.heldout_available(suite)
        datasets = self.loader.available(suite, [suite.id_dataset.name, *suite.ood_datasets, *suite.shifted_datasets])
        if suite.id_dataset.name not in datasets:
            self.loader.dataset(suite, suite.id_dataset.name)  # raises the missing-data error
        needs = Needs(set(datasets), {(s,) for s in POSTHOC.names()} if heldout else set(), wants_spectrum(suite))
        seed = self.units.compute_seed(suite, model, FP32, FP32, None, needs)
        loaded = self.loader.model(suite, model)
        self._refuse_chance_level(suite, model, seed.arrays[BASE][suite.id_dataset.name], loaded.num_classes)
        self.reproduction.refuse_unreproducible(suite, model, seed)
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
        self.reproduction.reproduced(suite, model)  # the probe just reproduced what is stored
        return path

    def _refuse_chance_level(self, suite: Suite, model: str, arrays: SampleArrays, n_classes: int) -> None:
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
        weights = str(loaded.info.get("weights_from", ""))
        if weights.startswith("random init"):  # a dry run (pretrained: false): chance is what it should score
            top1 = 100 * float(np.mean(arrays["correct"]))
            self.warn(f"qrel: model '{model}' has random weights ({weights}; pretrained: false): its FP32 top-1 {top1:.1f}% on "
                      f"'{suite.id_dataset.name}' is at chance level, as a dry run's is; this baseline checks the pipeline, not "
                      "the model (for a real audit give options.checkpoint or drop pretrained: false)")
            return
        refuse_chance_level(
            float(np.mean(arrays["correct"])), len(np.unique(labels[labels >= 0])), len(labels), model=model,
            dataset=suite.id_dataset.name, class_order=getattr(ds, "class_order", None), class_order_from=order_from,
        )
