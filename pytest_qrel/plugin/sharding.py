"""``--qrel-shard K/N``: keep this shard's checks, count them as the run's plan, and finish a
shard that got none.

The partition is :func:`pytest_qrel.shards.assign` over the whole plan of the collected suites
(deterministic, cost-balanced, whole units): the one ``qrel merge`` computes, so a shard runs the
checks the merge expects of it, whatever ``-k`` / ``--deselect`` / node ids leave of them. The
other shards' checks are deselected through pytest's ``pytest_deselected`` hook, so ``-k``-style
bookkeeping (counts, ``--lf``) sees them as deselected, not as missing; and they are not this run's
plan (:func:`shard_planned`): a shard whose own checks all passed is ``PASS``, not "N checks planned
without a result". The merge still knows the whole plan: each results file records every node id
of the suites (``plan``).
"""

from __future__ import annotations

from typing import Any

import pytest

from ..errors import QrelError
from ..spec import PlannedCheck, load_suite, plan
from .collect import CheckItem
from .outputs import Written, write_outputs
from .state import STATE, relative


def _key(p: PlannedCheck) -> tuple[str, str, str, str]:
    return p.suite.name, p.model, p.quantizer, p.name


def _whole_plan(suites: Any) -> list[PlannedCheck]:
    return [p for suite in suites for p in plan(suite)]


def select_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the checks of the other shards (other tests are kept), and make this shard's
    checks the run's plan (``RunState.planned``)."""
    shard = config.getoption("qrel_shard")
    if shard is None:
        return
    from ..shards import assign, planned_counts

    state = config.stash[STATE]
    whole = _whole_plan(state.suites_loaded.values())
    mine = {_key(p) for p, keep in zip(whole, assign(whole, *shard)) if keep}
    state.planned = planned_counts(whole, shard)
    state.shard_empty = bool(whole) and not mine
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for i in items:
        (keep if not isinstance(i, CheckItem) or _key(i.planned) in mine else drop).append(i)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def _load_suites(config: pytest.Config) -> bool:
    """Load ``--qrel-suite``'s suites where this process did not collect them (the xdist
    controller collects nothing; no torch). False: one cannot be read (its collection says why)."""
    state = config.stash[STATE]
    if state.suites_loaded:
        return True
    try:
        for path in state.suites:
            suite = load_suite(relative(path, config.invocation_params.dir))
            state.suites_loaded[suite.name] = suite
            state.files.setdefault(suite.name, relative(path, config.rootpath).as_posix())
    except QrelError:
        return False
    return bool(state.suites_loaded)


def shard_planned(config: pytest.Config) -> dict[str, int] | None:
    """``{suite name: checks planned for this shard}`` (report-only items not counted; ``None``:
    not a shard run, or its suites cannot be read). Serial runs and workers know it from their
    collection (:func:`select_shard`); the xdist controller plans the suites itself."""
    shard, state = config.getoption("qrel_shard"), config.stash[STATE]
    if shard is None:
        return None
    if state.planned:
        return state.planned
    if not _load_suites(config):
        return None
    from ..shards import planned_counts

    state.planned = planned_counts(_whole_plan(state.suites_loaded.values()), shard)
    return state.planned


def shard_is_empty(config: pytest.Config) -> bool:
    """``--qrel-shard K/N`` gave this shard no check of the suites. Serial runs know it from
    their collection; the xdist controller collects nothing, so it plans ``--qrel-suite``'s
    suites itself (no torch)."""
    state, shard = config.stash[STATE], config.getoption("qrel_shard")
    if shard is None:
        return False
    if state.shard_empty:
        return True
    if state.suites_loaded or not _load_suites(config):
        return False
    from ..shards import assign

    planned = _whole_plan(state.suites_loaded.values())
    return bool(planned) and not any(assign(planned, *shard))


def finish_empty_shard(config: pytest.Config) -> tuple[str, Written]:
    """A shard the partition gave no unit: the line to print, and a results file that says so
    (no verdicts, none planned for it, the full plan), so ``qrel merge`` knows the shard ran.
    Raises what writing raised."""
    from ..spec.plan import scopes

    state = config.stash[STATE]
    shard_planned(config)
    k, n = config.getoption("qrel_shard")
    names = sorted(state.suites_loaded)
    units = sum(len(set(scopes(plan(state.suites_loaded[name])).values())) for name in names)
    written = write_outputs(config, [], note=f"shard {k}/{n} has no units: the suite(s) have {units} unit group(s) for {n} shards")
    line = (
        f"qrel: shard {k}/{n} has no units of {', '.join(names)} ({units} unit group(s) for {n} shards): nothing to run; "
        f"its results file says so, for qrel merge"
    )
    return line, written
