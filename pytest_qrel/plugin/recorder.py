"""The verdict recorder: every expected check ends the session with exactly one verdict.

Registered in every process of the run. Under xdist it works in the controller, from the reports
the workers send (a verdict travels in a report's ``user_properties``, the unit records in its
``qrel_units`` attribute); in a worker it only collects. At the session's end it names the checks
that produced no verdict (``not run``: ``-x``, an interrupted run, a crashed worker) and makes the
run red for them, makes pytest's exit status follow the one policy's exit code
(:meth:`pytest_qrel.policy.RunVerdict.exit_code`, what ``qrel merge`` exits with: e.g. a run in
which no check was verified fails unless ``--qrel-allow-skip-all``; a shard leaves that to the
merge), has the report and results file written (:mod:`.outputs`) and prints the summary lines.

A crash is recognised by xdist's crash report (``when == "???"``: the report xdist makes for the
item a worker was running when it died; the session guard makes the same for a supervised child's
death). It replaces any verdict of that check and stays, even if the re-scheduled check passes.
"""

from __future__ import annotations

from typing import Any

import pytest

from ..results import UnitMetrics, Verdict
from . import sharding
from .collect import checks_of
from .outputs import Written, write_outputs
from .state import PROP_PREFIX, STATE, RunState, is_worker

CRASH_WHEN = "???"  # the `when` of xdist's report for the item a dying worker was running


class Recorder:
    """See the module docstring."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.state: RunState = config.stash[STATE]
        self.not_run: list[str] = []
        self.written = Written()
        self.nothing_verified = False  # the policy's NOT VERIFIED failed the run (no --qrel-allow-skip-all)
        self.problems: list[str] = []
        self.paid: list[tuple[str, dict[str, Any]]] = []  # (node id of the check that computed it, unit timing)
        self.durations: dict[str, float] = {}  # node id -> seconds of its call (pytest's --durations)

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        checks = list(checks_of(session.items))
        self.state.expected.update({i.nodeid: i.planned.suite.name for i in checks})
        self.state.selected = [i.planned for i in checks]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        state = self.state
        self.paid += [(report.nodeid, u) for u in getattr(report, "qrel_paid", None) or []]
        if report.when == "call":
            self.durations[report.nodeid] = report.duration
        for raw in getattr(report, "qrel_units", None) or []:
            u = UnitMetrics.from_dict(raw)
            state.units[(u.suite, u.model, u.quantizer)] = u
        props = {k[len(PROP_PREFIX):]: v for k, v in report.user_properties if isinstance(k, str) and k.startswith(PROP_PREFIX)}
        if not props:
            self._without_verdict(report)
            return
        if report.nodeid in state.crashed:
            return  # a crash is a failure for good, even if the re-scheduled item then passed
        verdict = Verdict.from_dict(props)
        verdict.nodeid = report.nodeid
        if hasattr(report, "wasxfail"):
            verdict.outcome = "xfailed" if report.skipped else "xpassed"
        state.verdicts[report.nodeid] = verdict

    def _without_verdict(self, report: pytest.TestReport) -> None:
        """A failed report with no verdict: a crashed worker or an error outside runtest. A crash
        replaces a verdict that arrived before it (a worker killed in teardown): pytest counts
        the item failed, so the summary and the report must not say it passed."""
        state = self.state
        crashed = report.when == CRASH_WHEN
        if report.failed and report.nodeid in state.expected and (crashed or report.nodeid not in state.verdicts):
            state.verdicts[report.nodeid] = verdict_from_nodeid(report.nodeid, state, "error", _first_line(report))
            if crashed:
                state.crashed.add(report.nodeid)

    def _why_not_run(self, session: pytest.Session, exitstatus: int) -> str:
        state = self.state
        if state.signals is not None and state.signals.terminated:
            return "the run was terminated (SIGTERM)"
        if state.ended:
            return state.ended
        if exitstatus == pytest.ExitCode.INTERRUPTED:
            return "the run was interrupted"
        return "the run stopped early (-x / --maxfail)" if session.shouldstop or session.shouldfail else "no result arrived for it"

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config, state = self.config, self.state
        if is_worker(config):
            return
        if state.signals is not None:
            state.signals.finishing = True  # a SIGTERM from now on must not tear the outputs
        if config.getoption("collectonly"):
            return
        if not state.expected:
            if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and sharding.shard_is_empty(config):
                self._finish_empty_shard(session)
            return
        sharding.shard_planned(config)  # an xdist controller's shard: the checks planned for it (a serial run knows them)
        reason = self._why_not_run(session, exitstatus)
        self.not_run = [n for n in state.expected if n not in state.verdicts]
        for nodeid in self.not_run:
            state.verdicts[nodeid] = verdict_from_nodeid(nodeid, state, "not run", f"did not run: {reason}")
        verdicts = list(state.verdicts.values())
        if (self.not_run and exitstatus != pytest.ExitCode.INTERRUPTED) or state.ended:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        from ..policy import run_verdict  # the one policy: the exit code qrel merge gives the same verdicts

        verdict = run_verdict(verdicts, _planned_total(state))
        if verdict.exit_code(allow_nothing_verified=self.allow_nothing_verified()):
            self.nothing_verified = verdict.status in ("NOT VERIFIED", "NO CHECKS")
            if session.exitstatus == pytest.ExitCode.OK:
                session.exitstatus = pytest.ExitCode.TESTS_FAILED
        try:
            self.written = write_outputs(config, verdicts)
        except Exception as exc:  # a broken report must not hide the verdicts behind an INTERNALERROR
            self.problems.append(f"ERROR: could not write the report: {type(exc).__name__}: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def allow_nothing_verified(self) -> bool:
        """Whether a run that verified no check may exit 0: ``--qrel-allow-skip-all``, or a shard
        (``--qrel-shard``): whether the *run* verified anything depends on every shard, so
        ``qrel merge`` decides it, with the same rule; a shard's failures fail it all the same."""
        return bool(self.config.getoption("qrel_allow_skip_all")) or self.config.getoption("qrel_shard") is not None

    def _finish_empty_shard(self, session: pytest.Session) -> None:
        try:
            line, self.written = sharding.finish_empty_shard(self.config)
        except Exception as exc:  # a broken output must not hide behind an INTERNALERROR
            self.problems.append(f"ERROR: could not write the results: {type(exc).__name__}: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        self.problems.append(line)
        session.exitstatus = pytest.ExitCode.OK

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        if is_worker(config) or config.getoption("collectonly"):
            return
        if self.state.verdicts or self.state.expected:
            terminalreporter.section("pytest-qrel")
            for line, red, yellow in self.summary_lines():
                terminalreporter.write_line(line, red=red, yellow=yellow)
            for line in self.rerun_lines() + self.unit_durations():
                terminalreporter.write_line(line)
        elif self.problems or self.written.results:
            terminalreporter.section("pytest-qrel")
            for line in self.problems:
                terminalreporter.write_line(line, red=line.startswith("ERROR"))
            if self.written.results:
                terminalreporter.write_line(self._results_line())

    def summary_lines(self) -> list[tuple[str, bool, bool]]:
        """``(line, red, yellow)``: counts per suite, what was not verified, what went wrong, files."""
        state = self.state
        lines: list[tuple[str, bool, bool]] = [(line, False, False) for line in _counts(state)]
        from ..policy import is_report_only, run_verdict  # the one policy: the same status as the report, junit and qrel merge

        verdict = run_verdict(state.verdicts.values(), _planned_total(state))
        red = bool(verdict.exit_code(allow_nothing_verified=self.allow_nothing_verified()))
        lines += [(line, red, not red and verdict.status != "PASS") for line in verdict.lines()]

        skipped = [v for v in state.verdicts.values() if v.outcome == "skipped" and not is_report_only(v)]
        reasons: dict[str, list[int]] = {}  # reason -> [checks, report-only items] (counted apart, as everywhere)
        for v in state.verdicts.values():
            if v.outcome == "skipped":
                reasons.setdefault(v.message, [0, 0])[is_report_only(v)] += 1
        for reason, (n, n_ro) in sorted(reasons.items(), key=lambda kv: -sum(kv[1])):
            what = " + ".join([f"{n} check(s)"] * bool(n) + [f"{n_ro} report-only item(s)"] * bool(n_ro))
            lines.append((f"NOT VERIFIED: {what} skipped: {reason}", False, True))
        errors = []
        shard = self.config.getoption("qrel_shard")
        if shard is not None and verdict.status == "NOT VERIFIED" and not self.config.getoption("qrel_allow_skip_all"):
            lines.append((f"qrel: shard {shard[0]}/{shard[1]} verified no check; whether the run did is qrel merge's verdict "
                          "(it fails a run that verifies nothing unless --allow-skip-all)", False, True))
        if self.nothing_verified:
            why = (f"no check produced a verdict: all {len(skipped)} were skipped because data is missing (see above)"
                   if len(skipped) == verdict.total else f"no check was verified: each of the {verdict.total} was skipped or inconclusive (see above)")
            errors.append(f"ERROR: {why}; point the suite at the data, or pass --qrel-allow-skip-all to accept a run that verifies nothing")
        if state.ended_line:
            errors.append(state.ended_line)
        elif self.not_run:
            errors.append(f"ERROR: {len(self.not_run)} check(s) did not run, e.g. {self.not_run[0]}; the run is marked failed")
        crashed = sorted(state.crashed)
        if crashed and not state.ended:
            errors.append(f"ERROR: {len(crashed)} check(s) were lost to a crashed worker, e.g. {crashed[0]}")
        lines += [(line, True, False) for line in errors + self.problems]
        if self.written.report:
            lines.append((f"report: {self.written.report} (summary: {self.written.report.with_suffix('.md')})", False, False))
        if self.written.results:
            lines.append((self._results_line(), False, False))
        return lines

    def rerun_lines(self) -> list[str]:
        """The command that re-runs the first failing check, its id quoted for a POSIX shell (ids
        hold spaces, ``(``, ``<=``): ``pytest --qrel-suite suites/x.yaml 'suites/x.yaml::vit::W4A4::ece on digits value<=0.05'``."""
        import shlex

        failed = [n for n, v in self.state.verdicts.items() if v.outcome in ("failed", "error") and n.count("::") == 3]
        if not failed:
            return []
        nodeid = self.config.cwd_relative_nodeid(failed[0])
        suite = nodeid.split("::", 1)[0]
        return [f"re-run one: pytest --qrel-suite {shlex.quote(suite)} {shlex.quote(nodeid)}   (all failures: --lf)"]

    def unit_durations(self) -> list[str]:
        """Under ``--durations``: pytest times items, and a unit runs inside the first check that
        reads it (with the loading of torch, the model, the data and the baseline when it is the
        first of all), so pytest's table charges all of it to that check. These lines say so, and
        give each such check's time to the units it computed: their passes, images and own
        seconds, slowest first (as many as ``--durations=N``; 0: all)."""
        n = self.config.getoption("durations", None)
        if n is None or not self.paid:
            return []
        by_check: dict[str, list[dict[str, Any]]] = {}
        for nodeid, unit in self.paid:
            by_check.setdefault(nodeid, []).append(unit)
        rows = sorted(by_check.items(), key=lambda kv: -self.durations.get(kv[0], 0.0))
        shown = rows if n <= 0 else rows[:n]
        lines = [f"unit durations: a unit's forward passes and calibration run in the first check that reads it, so "
                 f"--durations charges them (and any loading) to that check; the units behind {len(shown)} of {len(rows)} such checks:"]
        for nodeid, units in shown:
            own = sum(float(u.get("seconds", 0.0)) for u in units)
            what = "; ".join(f"{u['unit']}: {u['passes']} passes, {u['images']} images" for u in units)
            lines.append(f"{self.durations.get(nodeid, own):8.2f}s  {what} ({own:.2f} s computing the unit; the rest: imports "
                         f"and loading the model, data and baseline) in {nodeid}")
        return lines

    def _results_line(self) -> str:
        default = "" if self.config.getoption("qrel_results") else " (no --qrel-results given: the default for a shard)"
        return f"results: {self.written.results}{default}"


def _planned_total(state: RunState) -> int | None:
    """Checks planned for this run: the collected suites', or a shard's own (the other shards'
    checks are not this run's; :func:`.sharding.shard_planned`). ``None``: not known here, e.g.
    an unsharded run's xdist controller."""
    return sum(state.planned.values()) if state.planned else None


def _counts(state: RunState) -> list[str]:
    """``mini: 3 checks (of 5 planned): 1 failed, 2 passed + 1 report-only item``, one line per
    suite: :attr:`pytest_qrel.policy.RunVerdict.tally`, the count every output prints."""
    from ..policy import run_verdict

    by_suite: dict[str, list[Verdict]] = {}
    for v in state.verdicts.values():
        by_suite.setdefault(v.suite, []).append(v)
    return [f"{suite}: {run_verdict(vs, state.planned.get(suite)).tally}" for suite, vs in sorted(by_suite.items())]


def _first_line(report: pytest.TestReport) -> str:
    text = str(report.longrepr or "").strip().splitlines()
    return text[-1] if text else "failed without a message"


def verdict_from_nodeid(nodeid: str, state: RunState, outcome: Any, message: str) -> Verdict:
    """A verdict for a check known only by its node id (a crash, a check that never ran)."""
    parts = nodeid.split("::")
    model, quantizer, name = (parts + ["", "", ""])[1:4]
    return Verdict(
        suite=state.expected.get(nodeid, ""), model=model, quantizer=quantizer, dataset="", metric=name.split(" ", 1)[0],
        score=None, check=name, bound="", fp32=None, value=None, delta=None, delta_display="", passed=False,
        expect_fail=False, outcome=outcome, message=message, nodeid=nodeid,
    )
