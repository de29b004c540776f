"""The run's files: the HTML report (with its Markdown summary) and the results file.

``--qrel-report`` / ``--qrel-results`` are checked when the session is configured, before any
check runs: neither may overwrite a file pytest-qrel did not write. A shard run without
``--qrel-results`` writes its results to :func:`pytest_qrel.shards.default_results_path`. The
writing itself is :mod:`pytest_qrel.shards`' (``run_results``, ``write_results``,
``write_report``), imported only when a file is written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ..results import Verdict
from .collect import checks_of, suite_of
from .engine_setup import run_device
from .state import STATE, relative


def check_output_paths(config: pytest.Config) -> None:
    """``--qrel-report`` / ``--qrel-results`` never overwrite a file pytest-qrel did not write."""
    from ..shards import report_path_problem, results_path_problem

    report, results = config.getoption("qrel_report"), config.getoption("qrel_results")
    if report and (problem := report_path_problem(Path(report))):
        raise pytest.UsageError(f"--qrel-report {report}: {problem}")
    url = config.getoption("qrel_report_url")
    if url is not None:
        from ..output_paths import report_url_problem

        if problem := report_url_problem(url, report_given=bool(report), report_flag="--qrel-report"):
            raise pytest.UsageError(f"--qrel-report-url {url}: {problem}")
    if results and (problem := results_path_problem(Path(results))):
        raise pytest.UsageError(f"--qrel-results {results}: {problem}")
    shard = config.getoption("qrel_shard")
    if shard and not results:
        from ..shards import default_results_path

        default = config.rootpath / default_results_path(shard)
        if problem := results_path_problem(default):
            raise pytest.UsageError(f"--qrel-shard {shard[0]}/{shard[1]} writes its results to {default} without --qrel-results: {problem}")


def results_path(config: pytest.Config) -> Path | None:
    """``--qrel-results``, or for a shard run without it :func:`pytest_qrel.shards.default_results_path`
    under the rootdir (a shard's results are only useful to ``qrel merge``)."""
    given = config.getoption("qrel_results")
    if given:
        return Path(given)
    shard = config.getoption("qrel_shard")
    if shard is None:
        return None
    from ..shards import default_results_path

    return relative(config.rootpath / default_results_path(shard), config.invocation_params.dir)


@dataclass
class Written:
    """What :func:`write_outputs` wrote (``None``: not asked for)."""

    report: Path | None = None
    results: Path | None = None


def _suites(config: pytest.Config) -> dict[str, tuple[Any, str]]:
    """``{suite name: (Suite, file as written in node ids)}`` of the checks this run expected; with
    none (an empty shard), the suites collected."""
    state = config.stash[STATE]
    out: dict[str, tuple[Any, str]] = {}
    for nodeid in state.expected:
        file = nodeid.split("::", 1)[0]
        found = suite_of(config, file)
        if found is not None and found[0].name not in out:
            out[found[0].name] = (found[0], file)
    if not out:
        out = {name: (suite, state.files.get(name, str(suite.path))) for name, suite in state.suites_loaded.items()}
    return out


def prestart_figure_worker(session: pytest.Session) -> None:
    """A serial run that will draw a report starts its figure worker now, before the first check
    imports torch (:mod:`pytest_qrel.figure_pool`: it imports matplotlib on the other core).
    Not under xdist (the workers keep every core busy) nor for ``--collect-only``."""
    config = session.config
    if (config.getoption("qrel_report") and not config.getoption("collectonly")
            and config.pluginmanager.getplugin("dsession") is None and any(checks_of(session.items))):
        from ..figure_pool import prestart

        prestart()


def stop_figure_worker() -> None:
    """The session is over: its figure worker (if one was started) goes with it."""
    import sys

    if "pytest_qrel.figure_pool" in sys.modules:
        sys.modules["pytest_qrel.figure_pool"].shutdown()


def write_outputs(config: pytest.Config, verdicts: list[Verdict], note: str = "") -> Written:
    """Write the report and / or results file the options ask for, from ``verdicts`` and the
    unit records the run collected."""
    report_path, results_to = config.getoption("qrel_report"), results_path(config)
    if not (report_path or results_to):
        return Written()
    from ..shards import planned_check_count, planned_ids, run_results, write_report, write_results
    from ..spec import plan

    state = config.stash[STATE]
    suites = _suites(config)
    plan_ids = {name: planned_ids(suite, file) for name, (suite, file) in suites.items()}
    results = run_results(
        verdicts, list(state.units.values()), suites=[s for s, _ in suites.values()],
        planned=state.planned or {name: planned_check_count(plan(suite)) for name, (suite, _) in suites.items()}, started=state.started,
        command=" ".join(map(str, config.invocation_params.args)),
        device=run_device(config, resolve=bool(verdicts)),
        shard=config.getoption("qrel_shard"),
    )
    written = Written()
    if results_to:
        written.results = write_results(results, results_to, plan_ids=plan_ids, note=note)
    if report_path:
        written.report = write_report(results, Path(report_path), report_url=config.getoption("qrel_report_url"))
    return written
