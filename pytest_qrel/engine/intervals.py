"""Batching of the checks' bootstrap intervals (:mod:`pytest_qrel.stats`): the first check of a unit
asks for the intervals of every announced check whose arrays are held now, so each dataset is
resampled once for all of them; the others find theirs ready."""

from __future__ import annotations

from typing import Any

from ..errors import DataMissingError
from ..spec.plan import PlannedCheck
from ..spec.quantizer_ref import QuantizerRef
from ..spec.schema import FP32, HELDOUT, Suite
from .lifecycle import UnitLifecycle
from .loading import Loader
from .samples import SampleArrays
from .store import BaselineStore

CheckKey = tuple[str, str, str, str]


def check_key(p: PlannedCheck) -> CheckKey:
    return (str(p.suite.path), p.model, p.quantizer, p.name)


class IntervalBatcher:
    """Intervals by check, computed in batches while their units' arrays are held."""

    def __init__(self, loader: Loader, store: BaselineStore, lifecycle: UnitLifecycle) -> None:
        self.loader, self.store, self.lifecycle = loader, store, lifecycle
        self._ready: dict[CheckKey, Any] = {}

    def arrays_of(self, suite: Suite, model: str, quantizer: str) -> list[dict[str, SampleArrays]]:
        """Per-seed ``{dataset: SampleArrays}`` of ``quantizer`` (FP32 from the baseline)."""
        ref = QuantizerRef.parse(quantizer)
        if ref.is_fp32:
            return [self.store.read(suite, model).samples(FP32 + ref.variant)]
        state = self.lifecycle.live(suite, model, ref.base) or self.lifecycle.unit(suite, model, ref.base, arrays=True)
        assert state.seeds is not None
        return [s.arrays[ref.variant] for s in state.seeds]

    def interval(self, p: PlannedCheck) -> Any:
        """The paired bootstrap interval of ``p``'s quantity, or None for metrics without a
        per-sample form (popped: each check reads its interval once)."""
        key = check_key(p)
        if key not in self._ready:
            self._compute([p, *self._batchable(p, key)])
        return self._ready.pop(key)

    def _batchable(self, p: PlannedCheck, key: CheckKey) -> list[PlannedCheck]:
        """The other announced checks of ``p``'s units whose intervals can be computed now."""
        out = []
        for model, base in p.units:
            for q in self.lifecycle.announced.get((str(p.suite.path), model, base), []):
                k = check_key(q)
                if k not in self._ready and k != key and all(self.lifecycle.live(q.suite, m, b) for m, b in q.units) and self._datasets_here(q):
                    out.append(q)
        return out

    def _compute(self, batch: list[PlannedCheck]) -> None:
        from ..stats import intervals_for

        suite = batch[0].suite
        results = intervals_for(batch, lambda model, quantizer: self.arrays_of(suite, model, quantizer))
        for q, r in zip(batch, results):
            self._ready[check_key(q)] = r

    def _datasets_here(self, p: PlannedCheck) -> bool:
        """Every dataset ``p`` reads is in its units' arrays and the baseline (not skipped, not degenerate)."""
        try:
            for d in p.datasets:
                self.loader.dataset(p.suite, d)
        except DataMissingError:
            return False
        b = self.store.peek(p.suite, p.model)
        if b is None:
            return False
        needed = [d for d in p.datasets if d != HELDOUT]
        fp32 = b.samples(FP32)
        if not all(d in fp32 for d in needed):
            return False
        for model, base in p.units:
            state = self.lifecycle.states[(str(p.suite.path), model, base)]
            if any((p.score, d) in state.errors for d in needed) or not all(d in state.needs.datasets for d in needed):
                return False
        return True
