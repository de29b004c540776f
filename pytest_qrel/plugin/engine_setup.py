"""The session's engine: built when the first check runs, from the options, never before.

Collection, ``--collect-only`` and a run of other tests never import torch or the engine: both
load here, inside :func:`engine`, the first time an item needs them. Also here: torch's thread
count under xdist (set with the engine, restored at the end) and the unit records that travel
from a worker to the controller with each report.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from .progress import PROGRESS, warn_line
from .state import PLANNED, STATE, relative, xdist_workers


def choose_threads(config: pytest.Config) -> None:
    """Under ``-n N`` (no ``OMP_NUM_THREADS``), each worker's torch gets ``cores / N`` threads."""
    workers = xdist_workers()
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        config.stash[STATE].threads = max(1, (os.cpu_count() or 1) // workers)  # avoid oversubscribing the cores


def resolve_device(config: pytest.Config) -> str:
    """``--qrel-device`` made concrete (``auto`` -> cuda / mps / cpu); worker K of an xdist run
    uses GPU ``K mod count``. Imports torch."""
    import torch

    device = config.getoption("qrel_device")
    if device == "auto":
        mps = getattr(torch.backends, "mps", None)
        device = "cuda" if torch.cuda.is_available() else ("mps" if mps and mps.is_available() else "cpu")
    workerinput = getattr(config, "workerinput", None)
    if device == "cuda" and workerinput and torch.cuda.device_count() > 1:
        k = int(str(workerinput.get("workerid", "gw0")).lstrip("gw") or 0)
        device = f"cuda:{k % torch.cuda.device_count()}"
    return device


def _cache_dir(config: pytest.Config) -> Any:
    if config.getoption("qrel_no_cache") or getattr(config, "cache", None) is None:
        return None
    from ..cache import cache_folder

    # a read-only or full .pytest_cache: one warning, then no cache
    return cache_folder(lambda: config.cache.mkdir("qrel"), lambda message: warn_line(config, message))


def shared_dir(config: pytest.Config) -> Any:
    """The folder the xdist workers of this run share: their basetemp's parent, the controller's
    basetemp (xdist gives worker ``gwN`` ``<basetemp>/popen-gwN``; pytest keeps the last few runs'
    and removes older ones). None outside xdist (one process shares with nobody) and where a worker
    has no basetemp (``-p no:tmpdir``)."""
    from pathlib import Path

    basetemp = getattr(config.option, "basetemp", None)
    if not getattr(config, "workerinput", None) or not basetemp:
        return None
    return Path(basetemp).parent / "qrel-shared"


def engine(config: pytest.Config) -> Any:
    """The session's :class:`pytest_qrel.Engine`, built on first use."""
    state = config.stash[STATE]
    if state.engine is not None:
        return state.engine
    from ..engine import Engine

    if state.threads:
        import torch

        state.threads_before = torch.get_num_threads()
        torch.set_num_threads(state.threads)
    workerinput = getattr(config, "workerinput", None)
    workers = config.getoption("qrel_workers")
    if workers is None:  # one decoding process per spare core of this pytest worker
        workers = max(0, min(4, (os.cpu_count() or 1) // xdist_workers() - 1))
    state.engine = Engine(
        baseline_dir=relative(config.rootpath / config.getini("qrel_baseline_dir"), config.invocation_params.dir),
        cache_dir=_cache_dir(config),
        update_baselines=config.getoption("qrel_update_baselines"),
        device=resolve_device(config),
        run_id=workerinput.get("testrunuid") if workerinput else None,
        workers=workers,
        progress=config.stash.get(PROGRESS, None),
        warn=lambda message: warn_line(config, message),
        compile=config.getoption("qrel_compile"),
        shared_dir=shared_dir(config),
    )
    # Every selected check is announced, so each unit computes what all its checks read, once,
    # and is released after its last check.
    state.engine.expect(state.selected)
    return state.engine


def release_models_for(config: pytest.Config, nextitem: pytest.Item | None) -> None:
    """On a pytest-xdist worker, between two checks: the engine keeps only the model the next
    check reads. A worker is announced every selected check, so a model's count of pending checks
    never reaches zero there and it would hold every model it met; the scheduler queues units model
    by model (:mod:`.xdist_sched`), so a released model is rarely met again (then it is loaded again)."""
    state = config.stash[STATE]
    if state.engine is None:
        return
    nxt = nextitem.stash.get(PLANNED, None) if nextitem is not None else None
    state.engine.next_check(nxt)


def take_unit_records(config: pytest.Config) -> list[dict[str, Any]] | None:
    """The unit records the engine finished since the last call, as plain dicts (``None``
    before the engine exists). They travel with the report of the check that finished them
    (xdist serialises a report's plain attributes), so a worker that crashes later has already
    delivered what it computed."""
    state = config.stash[STATE]
    if state.engine is None:
        return None
    return [u.to_dict() for u in state.engine.take_new_records()]


#: What a worker puts in its ``workeroutput`` (xdist's channel for a worker's results, read by
#: the controller in ``pytest_testnodedown``): the device its engine ran on.
DEVICE_KEY = "qrel_device"


def report_device(config: pytest.Config) -> None:
    """In an xdist worker, at its session's end: tell the controller the device it ran on."""
    engine = config.stash[STATE].engine
    workeroutput = getattr(config, "workeroutput", None)
    if engine is not None and workeroutput is not None:
        workeroutput[DEVICE_KEY] = str(engine.device)


def run_device(config: pytest.Config, *, resolve: bool) -> str:
    """The device the checks ran on, for the results file: the engine's; under xdist the
    workers' (each says so at its end, :func:`report_device`), one if they agree, else each;
    else, with ``resolve``, what ``--qrel-device`` resolves to here (imports torch)."""
    state = config.stash[STATE]
    if state.engine is not None:
        return str(state.engine.device)
    devices = sorted(set(state.worker_devices.values()))
    if devices:
        return ", ".join(devices)
    return resolve_device(config) if resolve else ""


def restore(config: pytest.Config) -> None:
    """Leave the process as the session found it (torch's thread count)."""
    state = config.stash.get(STATE, None)
    if state is not None and state.threads_before is not None:
        import torch

        torch.set_num_threads(state.threads_before)
        state.threads_before = None
