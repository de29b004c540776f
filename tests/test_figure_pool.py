"""The figure worker (pytest_qrel.figure_pool): the same figures as drawn in this process, a share
of them drawn by the worker, and no figure lost when the worker dies or a drawer raises."""

from __future__ import annotations

import os
import signal

import pytest

import reportdata as rd
from pytest_qrel import figure_pool
from pytest_qrel.figure_pool import FigureError, FigureJob
from pytest_qrel.report import build_page


@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(figure_pool.ENV_SWITCH, "1")
    monkeypatch.setattr(figure_pool, "_cores", lambda: 2)
    figure_pool.shutdown()
    assert figure_pool.prestart() and figure_pool.running()
    yield figure_pool._POOL[0]
    figure_pool.shutdown()


def _jobs() -> list[FigureJob]:
    page = build_page(rd.demo_results(diagnostics=False))
    specs = [f for m in page.suites[0].models for f in m.figures]
    return [FigureJob(f.kind, f.data, f.id, f.title) for f in specs]


def test_the_worker_draws_a_share_of_the_same_figures(worker) -> None:
    jobs = _jobs()
    assert len(jobs) >= 4
    before = figure_pool.drawn_by_worker()
    shared = figure_pool.draw_all(jobs)
    assert figure_pool.drawn_by_worker() - before >= 1  # at least one came back from the other process
    figure_pool.shutdown()
    local = figure_pool.draw_all(jobs)
    assert [str(s) for s in shared] == [str(s) for s in local]  # drawing is deterministic: same SVG either way


def test_a_dead_worker_costs_no_figure(worker) -> None:
    jobs = _jobs()
    figure_pool.draw_all(jobs[:2])  # the worker is up and has drawn
    for pid in list(worker._processes):
        os.kill(pid, signal.SIGKILL)
    out = figure_pool.draw_all(jobs)
    assert all(str(s).startswith("<svg") for s in out) and not figure_pool.running()


def test_a_drawer_that_raises_is_that_figure_s_error_wherever_it_runs(worker) -> None:
    jobs = _jobs()[:3]
    broken = FigureJob("acc-ece", {"points": "not a list"}, "broken")
    out = figure_pool.draw_all([jobs[0], broken, jobs[1], broken])  # odd positions go to the worker
    assert isinstance(out[1], FigureError) and isinstance(out[3], FigureError) and out[1].kind == "acc-ece"
    assert str(out[0]).startswith("<svg") and str(out[2]).startswith("<svg")


def test_no_worker_without_a_spare_core_or_when_switched_off(monkeypatch: pytest.MonkeyPatch) -> None:
    figure_pool.shutdown()
    monkeypatch.setenv(figure_pool.ENV_SWITCH, "1")
    monkeypatch.setattr(figure_pool, "_cores", lambda: 2)

    def no_process(*a, **k):
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(figure_pool, "ProcessPoolExecutor", no_process)
    assert not figure_pool.prestart() and not figure_pool.running()  # a process that cannot start: drawn here
    monkeypatch.undo()
    monkeypatch.setattr(figure_pool, "_cores", lambda: 1)
    assert not figure_pool.prestart()
    monkeypatch.setattr(figure_pool, "_cores", lambda: 8)
    monkeypatch.setenv(figure_pool.ENV_SWITCH, "0")
    assert not figure_pool.prestart() and not figure_pool.running()
