"""The engine's Python conveniences (the API and the tests read a unit's arrays and metrics by
quantizer name): per-sample arrays, metrics, fitted post-hoc parameters, spectra. Each name is
parsed once into a :class:`~pytest_qrel.spec.quantizer_ref.QuantizerRef`; FP32 and its post-hoc
variants come from the stored baseline (read, never recomputed)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import BaselineMissingError
from ..spec.quantizer_ref import QuantizerRef
from ..spec.schema import FP32, Suite
from .samples import SampleArrays
from .units import Needs, seed_names

if TYPE_CHECKING:
    from ..baselines import Baseline
    from .lifecycle import UnitLifecycle, UnitState


def _needs(datasets: Iterable[str], ref: QuantizerRef, spectrum: bool = False) -> Needs:
    return Needs(set(datasets), {ref.steps} if ref.steps else set(), spectrum)


class UnitViews:
    """Mixed into :class:`~pytest_qrel.engine.Engine`: reads by quantizer name (``W8A8``,
    ``W8A8@13`` for one seed, ``W8A8+temperature``; ``FP32`` from the baseline)."""

    lifecycle: UnitLifecycle
    baseline: Callable[[Suite, str], Baseline]
    update_command: Callable[[Suite], str]

    def _unit(self, suite: Suite, model: str, ref: QuantizerRef, needs: Needs, *, arrays: bool = False) -> UnitState:
        return self.lifecycle.unit(suite, model, ref.base, needs, arrays=arrays)

    def samples(self, suite: Suite, model: str, quantizer: str, dataset: str) -> SampleArrays:
        """Per-sample arrays of ``quantizer`` on ``dataset``; computes the unit if needed (first seed by default)."""
        ref = QuantizerRef.parse(quantizer)
        if ref.is_fp32:
            return self.baseline(suite, model).samples(FP32 + ref.variant)[dataset]
        state = self._unit(suite, model, ref, _needs([dataset], ref), arrays=True)
        assert state.seeds is not None
        picked = [s for s in state.seeds if ref.seed is None or s.seed == ref.seed]
        return picked[0].arrays[ref.variant][dataset]

    def metrics(self, suite: Suite, model: str, quantizer: str, datasets: Iterable[str] | None = None) -> dict[str, Any]:
        """``{"id", "ood", "shifted", "pairs", "spectral"}`` of ``quantizer`` (mean over seeds, or
        one seed with ``W8A8@13``)."""
        ref = QuantizerRef.parse(quantizer)
        if ref.is_fp32:
            b = self.baseline(suite, model)
            return b.metrics if not ref.variant else b.variants[FP32 + ref.variant]["metrics"]
        names = list(datasets) if datasets is not None else [suite.id_dataset.name, *suite.ood_datasets, *suite.shifted_datasets]
        state = self._unit(suite, model, ref, _needs(names, ref))
        if ref.seed is None:
            return state.metrics[ref.variant]
        seeds = [s for s, _ in seed_names(ref.base, suite.quantizers.get(ref.base))]
        return state.per_seed[ref.variant][seeds.index(f"{ref.base}@{ref.seed}")]

    def id_metrics(self, suite: Suite, model: str, quantizer: str, dataset: str | None = None) -> dict[str, float]:
        dataset = dataset or suite.id_dataset.name
        m = self.metrics(suite, model, quantizer, [dataset])
        return m["id"] if dataset == suite.id_dataset.name else m["shifted"][dataset]

    def ood_metrics(self, suite: Suite, model: str, quantizer: str, score: str, dataset: str) -> dict[str, float]:
        return self.metrics(suite, model, quantizer, [suite.id_dataset.name, dataset])["ood"][score][dataset]

    def posthoc_params(self, suite: Suite, model: str, quantizer: str) -> dict[str, Any]:
        """Fitted parameters of ``quantizer``'s post-hoc steps (``{"temperature": T}``; a list per seed)."""
        ref = QuantizerRef.parse(quantizer)
        if ref.is_fp32:
            return dict(self.baseline(suite, model).variants[ref.unseeded]["params"])
        params = self._unit(suite, model, ref, _needs([suite.id_dataset.name], ref)).params[ref.variant]
        return params[0] if len(params) == 1 else {k: [p[k] for p in params] for k in params[0]}

    def spectral_metrics(self, suite: Suite, model: str, quantizer: str) -> dict[str, float]:
        from .lifecycle import spectral_metrics

        ref = QuantizerRef.parse(quantizer)
        b = self.baseline(suite, model)
        if ref.is_fp32:
            return dict(b.metrics.get("spectral", {}))
        if b.spectrum(suite.id_dataset.name) is None:
            raise BaselineMissingError(
                f"FP32 baseline {b.path} has no feature spectrum (spectrum.{suite.id_dataset.name}) for spectral metrics; "
                f"re-create it with: {self.update_command(suite)}"
            )
        state = self._unit(suite, model, QuantizerRef(ref.base), Needs({suite.id_dataset.name}, set(), True))
        if "spectral" not in state.metrics.get("", {}):
            spectral_metrics(state, b, self.update_command(suite))
        return state.metrics[""]["spectral"]

    def spectrum(self, suite: Suite, model: str, quantizer: str) -> np.ndarray:
        """The last-block feature spectrum (h, w) of ``quantizer`` on the ID test split (first seed;
        FP32 from the baseline), for suites with spectral checks."""
        ref = QuantizerRef.parse(quantizer)
        if ref.is_fp32:
            found = self.baseline(suite, model).spectrum(suite.id_dataset.name)
            if found is None:
                raise BaselineMissingError(f"FP32 baseline of {model} has no feature spectrum; re-create it with: {self.update_command(suite)}")
            return found
        state = self._unit(suite, model, ref, Needs({suite.id_dataset.name}, set(), True), arrays=True)
        assert state.seeds is not None
        picked = [s for s in state.seeds if ref.seed is None or s.seed == ref.seed]
        if picked[0].spectrum is None:
            raise ValueError(f"suite {suite.name} has no spectral check, so no spectrum is recorded")
        return picked[0].spectrum

    def unit_info(self, suite: Suite, model: str, quantizer: str) -> list[dict[str, Any]]:
        """Per seed: what quantizing recorded (``qat_steps``, ``qat_losses``, ``qat_options``, ``verify``)."""
        return self.lifecycle.unit(suite, model, QuantizerRef.parse(quantizer).base).info
