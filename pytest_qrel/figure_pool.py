"""A second process that draws the report's figures next to this one, started early on an idle core.

Why: matplotlib is the largest cost of a cold audit after importing torch (the demo: 7 figures,
about 2 s with its import on a 2-core machine), and the report is drawn at the very end, one
figure after the other, on one core. Meanwhile the run's first seconds (importing torch and timm)
use one core too. So the plugin starts one worker process at the start of the checks of a run
that asks for a report (:func:`prestart`); it imports matplotlib and the figure code while this
process imports torch, then waits. At report time :func:`draw_all` hands it every other figure
and draws the rest here; what the worker has not started when this process is done is drawn here
too.

Nothing depends on the worker: without one (one core, ``QREL_FIGURE_WORKER=0``, xdist, the Python
API), or when it died, every figure is drawn in this process, and the figures are the same either
way (drawing is deterministic: :data:`pytest_qrel.report.figures.RC`). A figure that raises is
a figure error wherever it was drawn (the caller turns it into a visible note).

This module lives outside :mod:`pytest_qrel.report` so that starting the worker imports neither
Jinja2 nor matplotlib here; the worker is a *spawned* interpreter (not forked: by then this
process may run torch's thread pools, which a fork must not copy).
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = ["ENV_SWITCH", "FigureJob", "draw_all", "prestart", "running", "shutdown"]

ENV_SWITCH = "QREL_FIGURE_WORKER"
"""``QREL_FIGURE_WORKER=0`` never starts the worker (the project's own test runs set it: their
cores are all busy with xdist workers already)."""


@dataclass(frozen=True)
class FigureJob:
    """One figure to draw: :func:`pytest_qrel.report.figures.draw`'s arguments (plain, picklable data)."""

    kind: str
    data: dict[str, Any]
    prefix: str
    title: str = ""


class FigureError(Exception):
    """A figure's drawer raised (in this process or the worker): ``kind`` and ``message`` say how."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


_POOL: list[ProcessPoolExecutor] = []
_DRAWN_BY_WORKER: list[int] = [0]


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def prestart() -> bool:
    """Start the worker (once per process) when this machine has a core to spare for it; returns
    whether one runs. It begins importing matplotlib at once."""
    if _POOL:
        return True
    if os.environ.get(ENV_SWITCH, "1") == "0" or _cores() < 2:
        return False
    import multiprocessing

    try:
        pool = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        pool.submit(_warm)  # starts the process; its imports run while this one works
    except (OSError, RuntimeError):  # no process to spare (limits, a sandbox): the figures are drawn here
        return False
    _POOL.append(pool)
    atexit.register(shutdown)
    return True


def running() -> bool:
    """Whether a worker was started (and not shut down) in this process."""
    return bool(_POOL)


def shutdown() -> None:
    """Stop the worker (pending jobs are dropped; the process is not waited for)."""
    while _POOL:
        _POOL.pop().shutdown(wait=False, cancel_futures=True)


def drawn_by_worker() -> int:
    """How many figures the worker has drawn in this process so far (the tests count them)."""
    return _DRAWN_BY_WORKER[0]


def _warm() -> None:
    import matplotlib.backends.backend_agg  # noqa: F401  (the worker's imports, ahead of its first figure)
    import matplotlib.figure  # noqa: F401

    from .report import figures  # noqa: F401


def _draw(job: FigureJob) -> Any:
    """Draw ``job``: its SVG markup, or a :class:`FigureError` (returned, not raised: a drawer's
    failure is the figure's result, not the worker's)."""
    from .report.figures import draw

    try:
        return draw(job.kind, job.data, job.prefix, job.title)
    except Exception as exc:  # noqa: BLE001 - any drawer error becomes that figure's note
        return FigureError(job.kind, f"{type(exc).__name__}: {exc}")


def draw_all(jobs: Sequence[FigureJob]) -> list[Any]:
    """Every job's SVG markup (or :class:`FigureError`), in order. With a worker running, every
    other job goes to it and this process draws the rest, then whatever the worker had not begun;
    a worker that fails or dies costs no figure (its jobs are drawn here)."""
    out: list[Any] = [None] * len(jobs)
    remote: dict[int, Future[Any]] = {}
    if _POOL and len(jobs) > 1:
        pool = _POOL[0]
        try:
            remote = {i: pool.submit(_draw, jobs[i]) for i in range(1, len(jobs), 2)}
        except Exception:  # noqa: BLE001 - a broken or shut-down pool: draw everything here
            shutdown()
            remote = {}
    for i, job in enumerate(jobs):
        if i not in remote:
            out[i] = _draw(job)
    for i in sorted(remote, reverse=True):  # the last submitted are the likeliest not to have started
        future = remote[i]
        if future.cancel():
            out[i] = _draw(jobs[i])
            continue
        try:
            out[i] = future.result()
            _DRAWN_BY_WORKER[0] += 1
        except Exception:  # noqa: BLE001 - the worker died or could not take the job
            shutdown()
            out[i] = _draw(jobs[i])
    return out
