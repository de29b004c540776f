"""Scenarios: one suite, several in-distribution settings (the CLIP paper's ImageNet-1k, CIFAR-10/100,
ImageNet-10 / ImageNet-20 near-OOD pairs, ...), each with its own ID set and OOD sets.

A suite with a top-level ``scenarios:`` mapping is expanded **at load time** into one ordinary
:class:`~pytest_qrel.spec.schema.Suite` per scenario, so that nothing downstream (planner, engine,
baselines, report) needs to know about scenarios:

.. code-block:: yaml

    datasets:                 # optional: shared by every scenario unless a scenario replaces a key
      ood: [...]
    scenarios:
      imagenet:
        id: {name: imagenet, source: "imagefolder:${QREL_IMAGENET_VAL}", options: {classes: imagenet1k}}
        ood: [...]            # replaces datasets.ood for this scenario
        shifted: [...]
        checks: ["W8A8 top1 on in_c_noise3 delta <= 2pp"]   # this scenario only
      cifar10:
        id: {name: cifar10, source: "torchvision:CIFAR10:${QREL_CIFAR}"}
    checks: [...]             # every scenario (each must be valid in every scenario)

- A scenario's keys are ``id`` (required), ``ood``, ``shifted``, ``pairs`` -- each replaces the
  top-level ``datasets:`` key of the same name -- and ``checks`` (appended to the top-level ones
  for this scenario only).
- Each model of the suite becomes one model per scenario named ``<model>@<scenario>``
  (:func:`scenario_model`): a CLIP model's zero-shot head is built from the ID set's class names, so
  the same weights with another ID set are another classifier. Every key derived from the model name
  follows: node ids (``suites/clip.yaml::vit_b32_openai@cifar10::W8A8::...``), units, the outputs
  cache, the baseline file (``baselines/<suite>/vit_b32_openai@cifar10.json``) and the report's model
  sections. ``@`` cannot appear in a model name a user writes, so the split is unambiguous.
- The expanded suites keep the suite's name (one baseline folder, one report section); the returned
  suite is the first scenario's, with every scenario's models and :attr:`Suite.scenarios` holding
  the per-scenario suites, which :func:`pytest_qrel.spec.plan.plan` plans one after the other.
- A quantizer is quantized once per (model, scenario) unit, except that QAT and the PTQ methods whose
  result does not read the zero-shot head reuse a module whose inputs another scenario already had
  (:mod:`pytest_qrel.engine.trainmemo`; docs/papers-clip.md).

Averages across scenarios (a model's top-1, ECE, NLL and mean-over-OOD-sets AUROC / FPR@95 averaged
over its scenarios) are computed by :func:`pytest_qrel.summary.scenario_means` and only rendered by
the report.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import SpecError
from .schema import Suite
from .yamlsrc import LineDict, LineList

SCENARIO_SEP = "@"
"""Joins a model and a scenario into the expanded model's name: ``vit_b32_openai@cifar10``."""

SCENARIO_KEYS = ("id", "ood", "shifted", "pairs", "checks")
"""The keys of one ``scenarios:`` entry."""

_SCENARIO_NAME = re.compile(r"[A-Za-z0-9_]+")


def scenario_model(model: str, scenario: str) -> str:
    """``("vit_b32_openai", "cifar10")`` -> ``"vit_b32_openai@cifar10"``."""
    return f"{model}{SCENARIO_SEP}{scenario}"


def split_scenario(model: str) -> tuple[str, str | None]:
    """``"vit_b32_openai@cifar10"`` -> ``("vit_b32_openai", "cifar10")``; a model of a suite without
    scenarios -> ``(model, None)``."""
    base, sep, scenario = model.rpartition(SCENARIO_SEP)
    return (base, scenario) if sep and base and scenario else (model, None)


def _fail(ctx: Any, problem: str, node: Any, key: Any, field: str, fix: str) -> SpecError:
    return ctx.err(problem, node=node, key=key, field=field, fix=fix)  # type: ignore[no-any-return]


def _scenario_doc(ctx: Any, doc: LineDict, name: str, entry: Any) -> LineDict:
    """The suite document of one scenario: ``doc`` without ``scenarios``, its ``datasets`` keys
    replaced by the scenario's, its checks followed by the scenario's."""
    field = f"scenarios.{name}"
    entry = ctx.mapping(entry, field, "write '{id: {name: ..., source: ...}, ood: [...]}'")
    ctx.unknown_keys(entry, SCENARIO_KEYS, field)
    if "id" not in entry:
        raise _fail(ctx, "a scenario needs its in-distribution set 'id'", entry, None, f"{field}.id",
                    "add 'id: {name: ..., source: ...}'")
    top = doc.get("datasets")
    top = ctx.mapping(top, "datasets", "write 'datasets: {ood: [...]}'") if top is not None else LineDict()
    datasets = LineDict(top)
    datasets.line, datasets.key_lines = top.line, dict(top.key_lines)
    for key in ("id", "ood", "shifted", "pairs"):
        if key in entry:
            datasets[key] = entry[key]
            datasets.key_lines[key] = entry.line_of(key) or 0
    checks = LineList()
    checks.line = doc.line_of("checks") if "checks" in doc else entry.line
    item_fields: list[str] = []
    checks.item_fields = item_fields  # type: ignore[attr-defined]
    for source in (doc.get("checks"), entry.get("checks")):
        if source is None:
            continue
        if not isinstance(source, list):
            raise _fail(ctx, "'checks' must be a list", entry if source is entry.get("checks") else doc, "checks",
                        "checks" if source is doc.get("checks") else f"{field}.checks", "start each check with '- '")
        prefix = "checks" if source is doc.get("checks") else f"{field}.checks"
        for i, item in enumerate(source):
            checks.append(item)
            checks.item_lines.append(source.line_of(i) if isinstance(source, LineList) else None)  # type: ignore[arg-type]
            item_fields.append(f"{prefix}[{i}]")  # errors name the list the user wrote it in, not the merged one
    out = LineDict({k: v for k, v in doc.items() if k != "scenarios"})
    out.line, out.key_lines = doc.line, dict(doc.key_lines)
    out["datasets"] = datasets
    out["checks"] = checks
    return out


def load_scenarios(ctx: Any, doc: LineDict, build: Callable[[Any, LineDict], Suite]) -> Suite:
    """Expand ``doc``'s ``scenarios:`` (module docstring) and return the suite holding them.

    ``build(ctx, doc) -> Suite`` is the loader's own validation of one suite document; each
    scenario's document goes through it, so every error names the file, line and field as usual.
    """
    raw = ctx.mapping(doc["scenarios"], "scenarios", "write 'scenarios: {<name>: {id: {...}, ood: [...]}}'")
    if not raw:
        raise _fail(ctx, "'scenarios' is empty", doc, "scenarios", "scenarios",
                    "name at least one scenario, or remove 'scenarios:'")
    subs: dict[str, Suite] = {}
    for name, entry in raw.items():
        if not isinstance(name, str) or not _SCENARIO_NAME.fullmatch(name):
            raise _fail(ctx, f"invalid scenario name {name!r}", raw, name, f"scenarios.{name}", "use only letters, digits and _")
        try:
            sub = build(ctx, _scenario_doc(ctx, doc, name, entry))
        except SpecError as err:
            if len(raw) < 2 or not (err.field or "").startswith("checks["):
                raise
            # A top-level check is checked in every scenario: say in which one it does not hold.
            fix = f"{err.fix}, " if err.fix else ""
            raise SpecError(f"in scenario '{name}' (top-level checks apply to every scenario): {err.problem}", file=err.file,
                            line=err.line, field=err.field,
                            fix=f"{fix}or move the check under 'scenarios.<name>.checks' of the scenarios it is about") from None
        models = {scenario_model(m, name): replace(spec, name=scenario_model(m, name)) for m, spec in sub.models.items()}
        subs[name] = replace(sub, models=models)
    first = next(iter(subs.values()))
    every_model = {m: spec for sub in subs.values() for m, spec in sub.models.items()}
    every_check = tuple(c for sub in subs.values() for c in sub.checks)
    return replace(first, models=every_model, checks=every_check, scenarios=subs)
