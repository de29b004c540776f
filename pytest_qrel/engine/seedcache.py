"""The outputs cache as a unit sees it: per seed, which arrays, fitted post-hoc parameters,
diagnostics and runtime audits the cache (:mod:`pytest_qrel.cache`) already holds, under keys that
fingerprint everything the outputs depend on (model, quantizer config, data, code, torch, device)."""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .. import fingerprint as fp
from ..spec.schema import HELDOUT, QuantizerSpec, Suite
from .loading import Loader
from .outputs import Needs, SeedOutputs, variant_name


class SeedCache:
    """Reads and fills the outputs cache for one engine (``cache`` None: a cache that holds nothing).
    ``hits``: (suite, model, seed name, dataset) -> times a dataset's arrays came from the cache."""

    def __init__(self, loader: Loader, cache: Any, device: str) -> None:
        self.loader, self.cache, self.device = loader, cache, device
        self.hits: dict[tuple[str, str, str, str], int] = {}

    def key(self, suite: Suite, model: str, qconf: Any, dataset: str, variant: str) -> str:
        ds = self.loader.dataset(suite, dataset)
        spec = suite.id_dataset if dataset == HELDOUT else suite.all_datasets[dataset]
        import torch

        # A fingerprint need not hash file contents, so the key also names where the data came from.
        source = [os.path.expandvars(spec.source), spec.options, str(suite.path.parent.resolve()), "val" if dataset == HELDOUT else "test"]
        return fp.digest(
            {
                "model": self.loader.identity(suite, model),
                "model_code": self.loader.code(suite, model),  # its classes and their source files
                "quantizer": qconf,
                "dataset": ds.fingerprint,
                # the files' stat records: an edit that keeps the fingerprint (same size) is a miss
                "files": fp.data_stamp(ds),
                "source": source,
                "variant": variant,
                "scores": list(suite.scores),
                "code": fp.code_digest(),
                "torch": torch.__version__,
                "packages": fp.versions_exact(),
                "device": str(self.device).split(":")[0],
            }
        )

    def get(self, suite: Suite, model: str, qconf: Any, dataset: str, variant: str) -> dict[str, np.ndarray] | None:
        if self.cache is None:
            return None
        return self.cache.get(self.key(suite, model, qconf, dataset, variant))

    def put(self, suite: Suite, model: str, qconf: Any, dataset: str, variant: str, arrays: dict[str, np.ndarray]) -> None:
        if self.cache is not None:
            try:
                self.cache.put(self.key(suite, model, qconf, dataset, variant), arrays)
            except OSError:  # a read-only or full cache costs reuse, not the run
                pass

    def arrays(self, suite: Suite, model: str, name: str, qconf: Any, needs: Needs, out: SeedOutputs) -> list[str]:
        """Fill ``out`` with every dataset the cache holds complete (every variant, every score, NLL
        for labelled sets, the spectrum where asked); return the datasets still to compute."""
        todo: list[str] = []
        for d in sorted(needs.datasets):
            found = self._dataset(suite, model, qconf, d, needs)
            if found is None:
                todo.append(d)
                continue
            spectrum, per_variant = found
            if spectrum is not None:
                out.spectrum = spectrum
            for v, entry in per_variant.items():
                out.arrays.setdefault(v, {})[d] = entry
            self.hits[(suite.name, model, name, d)] = self.hits.get((suite.name, model, name, d), 0) + 1
        return todo

    def _dataset(self, suite: Suite, model: str, qconf: Any, d: str, needs: Needs) -> tuple[np.ndarray | None, dict[str, Any]] | None:
        """``(spectrum, {variant: arrays})`` of dataset ``d`` if the cache holds all of it, else None."""
        required = {f"score.{s}" for s in suite.scores}
        spectrum_wanted = needs.spectrum and d == suite.id_dataset.name
        labelled = d in suite.labelled_datasets
        spectrum, per_variant = None, {}
        for steps in [(), *sorted(needs.variants)]:
            entry = self.get(suite, model, qconf, d, variant_name(steps))
            if entry is None or not required <= set(entry) or (labelled and "nll" not in entry):
                return None
            if spectrum_wanted and not steps:
                if "spectrum" not in entry:
                    return None
                spectrum = entry.pop("spectrum")
            entry.pop("spectrum", None)
            per_variant[variant_name(steps)] = entry
        return spectrum, per_variant

    def params(self, suite: Suite, model: str, qconf: Any, variants: list[tuple[str, ...]], out: SeedOutputs) -> list[tuple[str, ...]]:
        """Fitted post-hoc parameters from the cache into ``out``; return the chains still to fit."""
        for steps in variants:
            params = self.get(suite, model, qconf, HELDOUT, variant_name(steps) + "#params")
            if params is not None:
                out.params[variant_name(steps)] = {k: float(v) for k, v in params.items()}
        return [s for s in variants if variant_name(s) not in out.params]

    def diagnostics(self, suite: Suite, model: str, qconf: Any, out: SeedOutputs) -> None:
        cached = self.get(suite, model, qconf, suite.id_dataset.name, "#diagnostics")
        if cached is not None and "json" in cached:
            out.diagnostics = json.loads(str(cached["json"]))

    def runtime(self, suite: Suite, model: str, spec: QuantizerSpec, qconf: Any, out: SeedOutputs) -> None:
        """A runtime unit's cached audit into ``out.info``; a cached census that the spec now refuses raises."""
        from ..runtimes.audit import census_failure

        cached = self.get(suite, model, qconf, suite.id_dataset.name, "#runtime")
        if cached is not None and "json" in cached:
            record = json.loads(str(cached["json"]))
            failure = census_failure(spec, record.get("census", {}))
            if failure is not None:
                raise failure
            out.info["runtime"] = record
