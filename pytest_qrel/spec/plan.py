"""Expand a suite's checks over models x quantizers x datasets into planned checks (one per item),
and say which *units* each one reads.

A unit is the expensive thing: one (model, base quantizer) of a suite, quantized once per seed and
run over every dataset its checks read. Post-hoc variants (``W8A8+temperature``) are computed inside
the unit of their base (``W8A8``); FP32 and its post-hoc variants come from the stored baseline and
read no unit. Checks that compare two quantizers (``delta <= delta(W4A4)``) read two units, which
therefore belong to one *scope*: the units a pytest-xdist worker (or a shard) must run together so
that every forward pass and every calibration happens once across workers.

Pure and cheap (no torch): pytest collection calls it, and so does ``pytest_qrel.run``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from .quantizer_ref import QuantizerRef
from .schema import FP32, HELDOUT, MEAN_OOD, REPORT_ONLY, CheckSpec, Suite, mean_members


@dataclass(frozen=True)
class PlannedCheck:
    """One check applied to one model, quantizer, dataset (or ``mean(...)``) and score."""

    suite: Suite
    check: CheckSpec
    model: str
    quantizer: str
    dataset: str
    score: str | None
    name: str  # item name, unique within its (model, quantizer), e.g. "aupr_out(msp) on textures delta<=12%"

    @property
    def quantizers_read(self) -> tuple[str, ...]:
        """The quantizer and, for ``delta <= delta(ref)`` bounds, the reference quantizer."""
        ref = self.check.bound.ref
        return (self.quantizer,) if ref is None else (self.quantizer, ref)

    @property
    def refs_read(self) -> tuple[QuantizerRef, ...]:
        """:attr:`quantizers_read`, parsed."""
        return tuple(QuantizerRef.parse(q) for q in self.quantizers_read)

    @property
    def units(self) -> tuple[tuple[str, str], ...]:
        """The units ``(model, base quantizer)`` this check reads; FP32 variants come from the baseline."""
        out = []
        for ref in self.refs_read:
            if not ref.is_fp32 and (self.model, ref.base) not in out:
                out.append((self.model, ref.base))
        return tuple(out)

    @property
    def posthoc(self) -> tuple[str, ...]:
        """Post-hoc quantizer names this check reads (``W8A8+temperature``), FP32 ones excluded."""
        return tuple(str(r) for r in self.refs_read if r.steps and not r.is_fp32)

    @property
    def datasets(self) -> tuple[str, ...]:
        """Every dataset the check's value depends on; post-hoc steps add the held-out split."""
        suite = self.suite
        if self.check.metric == REPORT_ONLY:  # a report-only unit (suite 'report:'): every dataset
            return (suite.id_dataset.name, *suite.ood_datasets, *suite.shifted_datasets)
        if self.dataset in suite.labelled_datasets:
            names = [self.dataset]
        elif self.dataset in suite.pairs:
            names = list(dict.fromkeys(suite.pairs[self.dataset]))
        else:
            names = [suite.id_dataset.name, *(mean_members(self.dataset, list(suite.ood_datasets)) or [self.dataset])]
        if any(r.steps for r in self.refs_read):
            names.append(HELDOUT)
        return tuple(names)


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


def item_name(check: CheckSpec, dataset: str) -> str:
    """``aupr_out(msp) on textures delta<=12%``: metric, score, dataset and bound, no brackets
    (pytest reads a ``[`` in a node id as the start of parameters)."""
    metric = f"{check.metric}({check.score})" if check.score else check.metric
    return f"{metric} on {dataset} {check.bound}"


def plan(suite: Suite) -> list[PlannedCheck]:
    """Every (check, model, quantizer, dataset) of ``suite``, in spec order (the loader has
    already refused two checks that expand to the same item)."""
    from ..metrics import METRICS

    if suite.scenarios:  # one ordinary suite per scenario (spec/scenarios.py)
        return [p for sub in suite.scenarios.values() for p in plan(sub)]
    planned: list[PlannedCheck] = []
    for check in suite.checks:
        kind = METRICS.meta(check.metric)["kind"]
        for model in suite.models:
            for quantizer in expand_quantizers(check, suite):
                for dataset in expand_datasets(check, suite, kind):
                    planned.append(PlannedCheck(suite, check, model, quantizer, dataset, check.score, item_name(check, dataset)))
    for check in suite.report.checks:  # report-only units: computed and shown, no bound (spec/report_keys.py)
        for model in suite.models:
            planned.append(PlannedCheck(suite, check, model, check.quantizers[0], suite.id_dataset.name, None, REPORT_ONLY))
    return planned


def scopes(planned: Iterable[PlannedCheck]) -> dict[tuple[str, str], str]:
    """``(model, quantizer) -> scope`` for every (model, quantizer) of the planned checks.

    Units joined by a check that reads both (``delta(ref)``) share a scope; a post-hoc variant is in
    the scope of its base. The scope's name is its first unit in plan order, ``model::quantizer``;
    a check that reads no unit (an FP32 value bound) is in the scope ``model::FP32``.
    """
    parent: dict[tuple[str, str], tuple[str, str]] = {}

    def find(x: tuple[str, str]) -> tuple[str, str]:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    members: list[tuple[tuple[str, str], tuple[tuple[str, str], ...]]] = []
    for p in planned:
        units = p.units or ((p.model, FP32),)
        for u in units:
            find(u)
        for u in units[1:]:
            a, b = find(units[0]), find(u)
            if a != b:
                parent[b] = a
        members.append(((p.model, p.quantizer), units))
    out: dict[tuple[str, str], str] = {}
    for key, units in members:
        root = find(units[0])
        out[key] = f"{root[0]}::{root[1]}"
    return out


def in_scope_order(planned: Iterable[PlannedCheck]) -> list[PlannedCheck]:
    """``planned`` reordered so that the checks of one scope are adjacent (models in suite order,
    scopes by their first check, plan order otherwise): run in this order, every unit's module and
    arrays can be released right after its scope's last check. The plugin collects in this order."""
    planned = list(planned)
    scope = scopes(planned)
    first: dict[str, int] = {}
    for i, p in enumerate(planned):
        first.setdefault(scope[(p.model, p.quantizer)], i)
    models: dict[str, int] = {}
    for p in planned:
        models.setdefault(p.model, list(p.suite.models).index(p.model))
    return sorted(planned, key=lambda p: (models[p.model], first[scope[(p.model, p.quantizer)]]))

