"""``--qrel-shard K/N``: keep this shard's checks, and finish a shard that got none.

The partition is :func:`pytest_qrel.shards.assign` (deterministic, cost-balanced, whole units);
the other shards' checks are deselected through pytest's ``pytest_deselected`` hook, so
``-k``-style bookkeeping (counts, ``--lf``) sees them as deselected, not as missing.
"""

from __future__ import annotations

import pytest

from ..errors import QrelError
from ..spec import load_suite, plan
from .collect import CheckItem
from .outputs import Written, write_outputs
from .state import STATE, relative


def select_shard(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Deselect the checks of the other shards (other tests are kept)."""
    shard = config.getoption("qrel_shard")
    if shard is None:
        return
    from ..shards import assign

    checks = [i for i in items if isinstance(i, CheckItem)]
    mine = {id(i) for i, keep in zip(checks, assign([i.planned for i in checks], *shard)) if keep}
    config.stash[STATE].shard_empty = bool(checks) and not mine
    keep: list[pytest.Item] = []
    drop: list[pytest.Item] = []
    for i in items:
        (keep if not isinstance(i, CheckItem) or id(i) in mine else drop).append(i)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def shard_is_empty(config: pytest.Config) -> bool:
    """``--qrel-shard K/N`` gave this shard no check of the suites. Serial runs know it from
    their collection; the xdist controller collects nothing, so it plans ``--qrel-suite``'s
    suites itself (no torch)."""
    state, shard = config.stash[STATE], config.getoption("qrel_shard")
    if shard is None:
        return False
    if state.shard_empty:
        return True
    if state.suites_loaded or not state.suites:
        return False
    from ..shards import assign

    try:
        for path in state.suites:
            suite = load_suite(relative(path, config.invocation_params.dir))
            state.suites_loaded[suite.name] = suite
            state.files.setdefault(suite.name, relative(path, config.rootpath).as_posix())
    except QrelError:
        return False
    planned = [p for suite in state.suites_loaded.values() for p in plan(suite)]
    return bool(planned) and not any(assign(planned, *shard))


def finish_empty_shard(config: pytest.Config) -> tuple[str, Written]:
    """A shard the partition gave no unit: the line to print, and a results file that says so
    (no verdicts, the full plan), so ``qrel merge`` knows the shard ran. Raises what writing
    raised."""
    from ..spec.plan import scopes

    state = config.stash[STATE]
    k, n = config.getoption("qrel_shard")
    names = sorted(state.suites_loaded)
    units = sum(len(set(scopes(plan(state.suites_loaded[name])).values())) for name in names)
    written = write_outputs(config, [], note=f"shard {k}/{n} has no units: the suite(s) have {units} unit group(s) for {n} shards")
    line = (
        f"qrel: shard {k}/{n} has no units of {', '.join(names)} ({units} unit group(s) for {n} shards): nothing to run; "
        f"its results file says so, for qrel merge"
    )
    return line, written
