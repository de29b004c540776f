"""Expand a suite's checks over models x quantizers x datasets into planned checks (one per item).

Pure and cheap (no torch): pytest collection calls it, and so does ``pytest_qrel.run``.
"""

from __future__ import annotations

from dataclasses import dataclass

from .schema import FP32, MEAN_OOD, CheckSpec, Suite


@dataclass(frozen=True)
class PlannedCheck:
    """One check applied to one model, quantizer, dataset (or ``mean(ood)``) and score."""

    suite: Suite
    check: CheckSpec
    model: str
    quantizer: str
    dataset: str
    score: str | None
    name: str  # item name, unique within its group, e.g. "aupr_out(msp) delta<=12%"

    @property
    def group(self) -> str:
        """Collector name ``model[quantizer-dataset]``; the xdist scheduler splits on its last '-'."""
        return f"{self.model}[{self.quantizer}-{self.dataset}]"

    @property
    def unit(self) -> tuple[str, str, str]:
        """The expensive thing this check reads: (suite, model, quantizer)."""
        return (self.suite.name, self.model, self.quantizer)


def expand_quantizers(check: CheckSpec, suite: Suite) -> list[str]:
    """``all`` means every quantizer of the suite; value bounds include FP32, delta bounds cannot."""
    if check.quantizers == ("all",):
        names = list(suite.quantizers)
        return [FP32, *names] if check.bound.kind == "value" else names
    return list(check.quantizers)


def expand_datasets(check: CheckSpec, suite: Suite, kind: str) -> list[str]:
    """ID metrics: the ID test set unless ``on`` names labelled sets (``shifted`` = all shifted sets);
    pair metrics: every pair unless named; OOD metrics: each OOD set unless named or averaged."""
    if kind == "pair":
        return list(check.datasets or suite.pairs)
    if kind != "ood":
        if not check.datasets:
            return [suite.id_dataset.name]
        out: list[str] = []
        for d in check.datasets:
            out.extend(suite.shifted_datasets if d == "shifted" else [d])
        return out
    if check.datasets is None:
        return list(suite.ood_datasets)
    return [MEAN_OOD if d == MEAN_OOD else d for d in check.datasets]


def plan(suite: Suite) -> list[PlannedCheck]:
    """Every (check, model, quantizer, dataset) of ``suite``, in spec order."""
    from ..metrics import METRICS

    planned: list[PlannedCheck] = []
    seen: dict[tuple[str, str], int] = {}
    for check in suite.checks:
        kind = METRICS.meta(check.metric)["kind"]
        for model in suite.models:
            for quantizer in expand_quantizers(check, suite):
                for dataset in expand_datasets(check, suite, kind):
                    p = PlannedCheck(suite, check, model, quantizer, dataset, check.score, check.label)
                    n = seen.get((p.group, p.name), 0) + 1
                    seen[(p.group, p.name)] = n
                    if n > 1:  # the same check written twice: keep ids unique
                        p = PlannedCheck(suite, check, model, quantizer, dataset, check.score, f"{check.label}#{n}")
                    planned.append(p)
    return planned
