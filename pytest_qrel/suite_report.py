"""What a suite's ``report:`` and ``references:`` add to a run's results (plain data, no torch).

- :func:`report_verdict`: the verdict of a report-only item (``suite.yaml::model::W4A8::report-only``):
  passed, no bound, no value; its message names the datasets the unit was computed on. An error of
  the unit is the usual error verdict (:func:`pytest_qrel.verdicts.verdict_for_error`).
- :func:`fill_ood_means`: every unit record's :attr:`~pytest_qrel.results.UnitMetrics.ood_mean`,
  the mean of each OOD metric over exactly the suite's mean sets (``report: {ood_mean: [...]}``,
  default all OOD sets; in a suite with scenarios, those of the unit's scenario), and only where the
  unit has every one of them: a mean is never taken
  over fewer sets for one unit than for another (the ViT paper's Fig. 1a averages five sets for
  every bit configuration).
- :func:`report_run_info`: what the report needs of the suites beyond the records, for
  ``RunResults.run``: ``{"ood_mean": {suite: [sets]}, "references": {suite: {...}}}`` with the
  reference values matched to the suite's own model, quantizer and dataset names
  (:func:`pytest_qrel.references.suite_references`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .results import UnitMetrics, Verdict
from .spec.plan import PlannedCheck
from .spec.schema import Suite

__all__ = ["fill_ood_means", "report_run_info", "report_verdict"]


def report_verdict(p: PlannedCheck, datasets: Sequence[str]) -> Verdict:
    """The passed verdict of report-only item ``p`` whose unit was computed on ``datasets``."""
    missing = [d for d in p.datasets if d not in datasets]
    message = f"report-only: {p.model} {p.quantizer} computed on {', '.join(datasets)} and shown in the report (no bound)"
    if missing:
        message += f"; not available here: {', '.join(missing)}"
    return Verdict(
        suite=p.suite.name, model=p.model, quantizer=p.quantizer, dataset=p.dataset, metric=p.check.metric, score=None,
        check=p.check.text, bound=str(p.check.bound), fp32=None, value=None, delta=None, delta_display="", passed=True,
        expect_fail=False, outcome="passed", message=message, bound_display=str(p.check.bound),
    )


def fill_ood_means(units: Iterable[UnitMetrics], suites: Sequence[Suite]) -> None:
    """Set each record's ``ood_mean`` from its ``ood`` over its suite's mean sets (in place):
    ``{score: {metric: mean}}`` for each score that has every mean set, ``{score: {}}`` (missing,
    so no mean over fewer sets is shown) for one that lacks some."""
    by_name = {s.name: s for s in suites}
    for u in units:
        suite = _suite_of(by_name.get(u.suite), u.model)
        if suite is None or not u.ood:
            continue
        sets = suite.mean_sets
        means: dict[str, dict[str, float]] = {}
        for score, per_set in u.ood.items():
            if not sets or not all(d in per_set for d in sets):
                means[score] = {}
                continue
            common = [m for m in per_set[sets[0]] if all(per_set[d].get(m) is not None for d in sets)]
            means[score] = {m: sum(float(per_set[d][m]) for d in sets) / len(sets) for m in common}
        u.ood_mean = means


def _suite_of(suite: Suite | None, model: str) -> Suite | None:
    """The suite whose datasets ``model``'s records have: its scenario's, in a suite with scenarios."""
    if suite is None or not suite.scenarios:
        return suite
    return next((sub for sub in suite.scenarios.values() if model in sub.models), None)


def report_run_info(suites: Sequence[Suite]) -> dict[str, Any]:
    """``{"ood_mean": {suite: [sets]}, "references": {suite: {...}}}`` for ``RunResults.run``
    (a suite without ``references:`` has no entry there)."""
    from .references import suite_references

    # per suite; a suite with scenarios has other sets per scenario, so its means are named by none
    out: dict[str, Any] = {"ood_mean": {s.name: s.mean_sets for s in suites if s.ood_datasets and not s.scenarios}}
    refs = {s.name: suite_references(s) for s in suites if s.references}
    if refs:
        out["references"] = refs
    return out
