"""The report's records (:class:`~pytest_qrel.results.UnitMetrics`) built from a computed unit or a
read baseline: metrics, fitted post-hoc parameters, display labels (``QAT steps``, ``top1 per
seed``), the small plot data (:mod:`pytest_qrel.curves`) and the spectral error map. The report
renders these and computes nothing; the engine keeps only these once a unit's arrays are released.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from ..baselines import Baseline
from ..results import UnitMetrics
from ..spec.quantizer_ref import QuantizerRef
from ..spec.schema import FP32, Suite
from .samples import SampleArrays

if TYPE_CHECKING:
    from .lifecycle import UnitState


def curves(arrays: dict[str, SampleArrays], suite: Suite, baseline: Baseline | None = None) -> dict[str, Any]:
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


def _display_info(state: UnitState, variant: str) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The record's ``info`` (fitted parameters, ``top1 per seed``, ``QAT steps``) and ``per_seed``."""
    info: dict[str, Any] = {}
    params = state.params.get(variant) or []
    if params:
        info.update(params[0] if len(params) == 1 else {k: [p[k] for p in params] for k in params[0]})
    per_seed: dict[str, list[float]] = {}
    if len(state.per_seed.get(variant, [])) > 1:
        for metric in state.metrics[variant].get("id", {}):
            per_seed[metric] = [s["id"][metric] for s in state.per_seed[variant]]
        info["top1 per seed"] = per_seed.get("top1", [])
    qat = [i["qat_steps"] for i in state.info if "qat_steps" in i]
    if qat:
        info["QAT steps"] = qat[0] if len(qat) == 1 else qat
    return info, per_seed


def _spectral_map(state: UnitState, b: Baseline | None) -> list[list[float]]:
    """Mean over seeds of the relative spectral error map against the baseline's spectrum."""
    ref = b.spectrum(state.suite.id_dataset.name) if b is not None and state.spectra else None
    if ref is None:
        return []
    from ..spectral import relative_spectral_error_map

    return np.mean([relative_spectral_error_map(s, ref) for s in state.spectra], axis=0).tolist()


class RecordBuilder:
    """Every record made in this process, by (suite, model, quantizer); the new ones since the last
    :meth:`take_new` are shipped with each pytest item's report."""

    def __init__(self) -> None:
        self._records: dict[tuple[str, str, str], UnitMetrics] = {}
        self._new: list[UnitMetrics] = []
        self.baselines: set[tuple[str, str]] = set()  # (suite, model) recorded

    def add(self, record: UnitMetrics) -> None:
        self._new.append(record)
        self._records[(record.suite, record.model, record.quantizer)] = record

    def take_new(self) -> list[UnitMetrics]:
        out, self._new = self._new, []
        return out

    def all(self) -> list[UnitMetrics]:
        """The records of every unit computed here and the FP32 baselines recorded, FP32 first per model."""
        return sorted(self._records.values(), key=lambda r: (r.suite, r.model, QuantizerRef.parse(r.quantizer).base != FP32))

    def unit(self, state: UnitState, variant: str, b: Baseline | None) -> None:
        """Record one variant of a computed unit (``b``: the baseline, if read, for the spectral map)."""
        suite, spec, m = state.suite, state.suite.quantizers[state.base], state.metrics[variant]
        info, per_seed = _display_info(state, variant)
        first = state.seeds[0] if state.seeds else None
        self.add(UnitMetrics(
            suite=suite.name, model=state.model, quantizer=state.base + variant, id=m.get("id", {}), ood=m.get("ood", {}),
            info=info, conventions=suite.conventions, method=spec.method, shifted=m.get("shifted", {}), pairs=m.get("pairs", {}),
            spectral=m.get("spectral", {}), spectral_map=_spectral_map(state, b), base=state.base,
            posthoc=list(QuantizerRef.parse(variant).steps) if variant else [],
            weight_bits=spec.weight_bits, act_bits=spec.act_bits, bits_label=f"W{spec.weight_bits}A{spec.act_bits or 16}",
            seeds=list(spec.calibration.seeds or (spec.calibration.seed,)), calibration_samples=spec.calibration.samples,
            options=dict(spec.options), per_seed=per_seed, curves=curves(first.arrays.get(variant, {}) if first else {}, suite, b),
            diagnostics=dict(first.diagnostics) if first and not variant else {},
            runtime=dict(state.info[0].get("runtime", {})) if state.info and not variant else {},
            calibration=[dict(i["calibration"]) for i in state.info if "calibration" in i],
        ))

    def baseline(self, suite: Suite, model: str, b: Baseline, diagnostics: dict[str, Any]) -> None:
        """Record the FP32 baseline and its post-hoc variants (``diagnostics``: the FP32 side of the
        suite's diagnostics, computed by the caller's explicit step)."""
        self.baselines.add((suite.name, model))
        for name in [FP32, *b.variants]:
            m = b.metrics if name == FP32 else b.variants[name].get("metrics", {})
            self.add(UnitMetrics(
                suite=suite.name, model=model, quantizer=name, id=m.get("id", {}), ood=m.get("ood", {}),
                info={} if name == FP32 else dict(b.variants[name].get("params", {})),
                conventions=suite.conventions, shifted=m.get("shifted", {}), pairs=m.get("pairs", {}), spectral=m.get("spectral", {}),
                base=FP32, posthoc=list(QuantizerRef.parse(name).steps), curves=curves(b.samples(name), suite),
                baseline={"file": str(b.path), "created": b.created, "fingerprint": b.fingerprint} if name == FP32 else {},
                diagnostics=diagnostics if name == FP32 else {},
            ))
