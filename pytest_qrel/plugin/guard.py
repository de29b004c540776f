"""The session guard: the exit code is the verdict, whatever the checks' code does to the process.

Active in the process that owns the session: never in an xdist worker, nor in a session nested in
another one in the same process (pytester's in-process runs).

- **SIGTERM** (what CI sends before SIGKILL) stops the run like Ctrl-C: pytest finishes the
  session, so the summary, report and results file are written, with the checks that did not run
  red (:class:`.supervisor.InterruptHandlers`).
- **A serial run that collected checks** runs them in a supervised child process
  (:mod:`.supervisor`): if user code ends that process (``os._exit(0)``, a crash, a kill) before
  the session finished, the parent replays what the child reported (:class:`JournalWriter` wrote
  it), counts the check that was running as an error and the rest as not run, writes the outputs
  and exits red.

All through public hooks: ``pytest_runtestloop`` (the parent runs no loop of its own),
``pytest_report_to_serializable`` / ``pytest_report_from_serializable`` (the journal), and the
``pytest_runtest_log*`` hooks (the replay, so terminal, junit XML, ``--lf`` and the recorder see
every report the child sent).
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

import pytest

from .collect import checks_of
from .recorder import CRASH_WHEN
from .state import NESTED, STATE, RunState

_SESSIONS = 0  # pytest sessions configured in this process; > 1: nested (pytester's in-process runs)


def enter(config: pytest.Config) -> None:
    """A session is configured: note whether it is nested in another one of this process."""
    global _SESSIONS
    _SESSIONS += 1
    config.stash[NESTED] = _SESSIONS > 1


def leave(config: pytest.Config) -> None:
    """A session ends: its SIGTERM handler goes, and the next session is not nested in it."""
    global _SESSIONS
    _SESSIONS = max(0, _SESSIONS - 1)
    state = config.stash.get(STATE, None)
    if state is not None and state.signals is not None:
        state.signals.restore()
        state.signals = None


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


class SessionGuard:
    """See the module docstring."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.state: RunState = config.stash[STATE]
        self.exitstatus: int | None = None

    def arm(self) -> None:
        """Install the SIGTERM handler, once the session has checks to protect (a run of the
        project's own tests keeps pytest's default behaviour)."""
        if self.state.signals is not None or self.config.stash[NESTED] or not _main_thread():
            return
        from .supervisor import InterruptHandlers

        handlers = InterruptHandlers()
        if handlers.install():
            self.state.signals = handlers

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any(checks_of(session.items)):
            self.arm()

    def _supervise(self, session: pytest.Session) -> bool:
        from .supervisor import pytest_is_the_program, supported

        config = self.config
        return (
            supported() and pytest_is_the_program() and not config.stash[NESTED] and _main_thread()
            and not config.getoption("collectonly")
            and config.pluginmanager.getplugin("dsession") is None  # xdist's controller: it sees its workers die
            and not (session.testsfailed and not config.getoption("continue_on_collection_errors"))
            and any(checks_of(session.items))
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if not self._supervise(session):
            return None
        from .supervisor import fork_session

        end = fork_session(self._become_child)
        if end is None:
            return None  # the child: pytest runs the checks here
        if end.finished:
            # The child ran the whole session (summary, report, junit, cache): nothing is left to
            # do here but to exit as it did, without running this session's end a second time.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(end.exit_code)
        self._recover(session, end)
        return True

    def _become_child(self, journal: Any) -> None:
        from .supervisor import InterruptHandlers

        if self.state.signals is not None:
            self.state.signals.restore()
            self.state.signals = None
        handlers = InterruptHandlers(dedupe_sigint=True)  # Ctrl-C reaches us directly and through the parent
        if handlers.install():
            self.state.signals = handlers
        self.config.pluginmanager.register(JournalWriter(self.config, journal, self), "qrel-journal")

    def _recover(self, session: pytest.Session, end: Any) -> None:
        """The child ended without finishing: replay its events here; the check it was running
        is an error, the rest are ``not run`` (the recorder's session end), and the run is red."""
        what = f"the process running the checks {end.describe()}"
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("")
            tr.write_sep("!", f"qrel: {what} before the run finished; what it reported:", red=True)
        running, last = self._replay(end.events)
        hook = self.config.hook
        for nodeid, location in running.items():
            report = pytest.TestReport(
                nodeid=nodeid, location=location, keywords={}, outcome="failed", when=CRASH_WHEN,  # type: ignore[arg-type]
                longrepr=f"{what} while running this check (os._exit, a crash or a kill in the model's code?); "
                         "the checks after it did not run",
            )
            hook.pytest_runtest_logreport(report=report)
            hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
        state = self.state
        total = len(state.expected)
        missing = sum(1 for n in state.expected if n not in state.verdicts or n in state.crashed)
        current = next(iter(running), "")
        parts = (current or last).split("::")
        unit = "::".join(parts[1:3]) if len(parts) >= 3 else "none started"
        during = f" during {current}" if current else (f" after {last}" if last else " before any check started")
        state.ended = f"the run ended without finishing ({what})"
        state.ended_line = (
            f"ERROR: the run ended without finishing: {missing} of {total} checks produced no verdict; "
            f"last unit: {unit} ({what}{during})"
        )
        session.testsfailed += 1  # red even when every verdict had arrived (it died at the end)

    def _replay(self, events: list[dict[str, Any]]) -> tuple[dict[str, tuple[str, int | None, str]], str]:
        """Send the journal's events through this session's hooks; returns the checks that had
        started and not finished, and the last check that started."""
        config, hook = self.config, self.config.hook
        running: dict[str, tuple[str, int | None, str]] = {}
        last = ""
        for event in events:
            kind = event.get("kind")
            try:
                if kind == "logstart":
                    nodeid, location = str(event["nodeid"]), _location(event["location"])
                    running[nodeid], last = location, nodeid
                    hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
                elif kind == "logfinish":
                    nodeid, location = str(event["nodeid"]), _location(event["location"])
                    running.pop(nodeid, None)
                    hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
                elif kind == "report":
                    report = hook.pytest_report_from_serializable(config=config, data=event["data"])
                    if report is not None:
                        report.location = _location(report.location)
                        hook.pytest_runtest_logreport(report=report)
            except Exception:  # a damaged entry: that check then has no verdict, and is named as such
                continue
        return running, last


def _location(raw: Any) -> tuple[str, int | None, str]:
    fspath, lineno, domain = raw
    return str(fspath), (int(lineno) if lineno is not None else None), str(domain)


class JournalWriter:
    """In the supervised child: every test event goes to the journal the parent reads if this
    process ends before the session did; the last line (``done``) says it finished."""

    def __init__(self, config: pytest.Config, journal: Any, guard: SessionGuard) -> None:
        self.config = config
        self.journal = journal
        self.guard = guard
        config.add_cleanup(self._done)

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.journal.write("logstart", nodeid=nodeid, location=list(location))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.journal.write("report", data=data)

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.journal.write("logfinish", nodeid=nodeid, location=list(location))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Any:
        yield
        self.guard.exitstatus = int(session.exitstatus)

    def _done(self) -> None:
        if self.guard.exitstatus is not None:
            self.journal.write("done", status=self.guard.exitstatus)

