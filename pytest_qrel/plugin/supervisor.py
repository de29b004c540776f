"""Runs a serial session's checks in a child process whose death the parent sees.

Why: a model file's code can end its process in ways no exception handler sees -- ``os._exit(0)``,
a segfault, the OOM killer's SIGKILL. In a serial pytest run that process is the one whose exit
code CI reads: ``os._exit(0)`` on a model's third batch ended the run with exit 0, no summary and
no report. So a serial run that collected suite checks forks once, after collection and before
the first check runs (torch is not imported yet), and:

- the **child** runs the checks and everything after them (terminal summary, report, results
  file, junit XML, pytest's cache) exactly as an unsupervised run would, and appends every test
  event (start, report, finish) to a journal file; its last act is a ``done`` line with the
  session's exit status;
- the **parent** only waits (forwarding SIGTERM, SIGINT, SIGHUP to the child; on Linux the child
  is killed with it if the parent is SIGKILLed) and then exits
  with the child's status -- or, when the child ended without its ``done`` line, replays the
  journal into its own pytest session, so the verdicts that arrived are kept, the check that was
  running is an error, the rest are ``not run``, and the summary, report and results file are
  written red by the parent (:mod:`pytest_qrel.plugin.guard`).

The journal is a plain file of JSON lines written with one ``write`` each (``O_APPEND``): it
survives the child's death, and a torn last line (the child killed mid-write) is ignored.

Not supervised (the plugin decides, see :class:`pytest_qrel.plugin.guard.SessionGuard`): xdist workers (the controller
already sees their death), pytest sessions nested in another one in the same process (pytester's
in-process runs), ``pytest.main()`` called by a program that goes on afterwards, ``--collect-only``,
platforms without ``os.fork`` and macOS (where forking a process that may have touched system
frameworks is unsafe), and ``QREL_SUPERVISOR=0``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

#: Signals the parent passes on to the child while it waits (CI sends SIGTERM before SIGKILL).
FORWARDED = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP") if hasattr(signal, n))

ENV_SWITCH = "QREL_SUPERVISOR"


def supported() -> bool:
    """Whether this platform and environment allow the supervisor (``QREL_SUPERVISOR=0`` turns it off)."""
    return hasattr(os, "fork") and sys.platform != "darwin" and os.environ.get(ENV_SWITCH, "1") != "0"


def pytest_is_the_program() -> bool:
    """Whether this process is ``pytest ...`` / ``python -m pytest ...`` (under ``coverage run``
    too). The parent exits the process when the child has finished, which a program that calls
    ``pytest.main()`` and then goes on would not expect: such runs are not supervised."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name in ("pytest", "pytest.__main__", "py.test"):
        return True
    argv0 = Path(sys.argv[0]) if sys.argv and sys.argv[0] else Path()
    return argv0.name in ("pytest", "py.test", "pytest.exe", "py.test.exe") or argv0.parts[-2:] == ("pytest", "__main__.py")


class Journal:
    """The child's side: one JSON line per event, appended with a single ``os.write``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def write(self, kind: str, **data: Any) -> None:
        line = json.dumps({"kind": kind, **data}, allow_nan=True, default=str) + "\n"
        try:
            os.write(self._fd, line.encode("utf-8"))
        except OSError:
            pass  # a full disk must not end the run; the parent then knows less, and says so


def read_journal(path: Path) -> list[dict[str, Any]]:
    """The events in ``path``; a line that does not parse (torn by a kill) ends the list."""
    events: list[dict[str, Any]] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return events
    for line in text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            break
        if isinstance(event, dict):
            events.append(event)
    return events


@dataclass
class ChildEnd:
    """How the child ended: ``status`` as a shell reports it (``128 + N`` for signal N);
    ``signal`` the signal that ended it, if any; ``events`` its journal; ``done_status`` the
    session's exit status from its ``done`` line (``None``: it ended without finishing)."""

    status: int
    signal: int | None
    events: list[dict[str, Any]] = field(default_factory=list)
    done_status: int | None = None

    @property
    def finished(self) -> bool:
        return self.done_status is not None

    @property
    def exit_code(self) -> int:
        """The parent's exit code when the child finished: its own exit code if it ended
        abnormally after finishing (a crash at interpreter exit), else the session's status
        (user code at exit, e.g. ``os._exit(0)`` in an atexit handler, cannot turn it green)."""
        if self.status != 0:
            return self.status
        return int(self.done_status or 0)

    def describe(self) -> str:
        """``exited with status 0`` / ``was killed by SIGKILL``."""
        if self.signal is not None:
            try:
                name = signal.Signals(self.signal).name
            except ValueError:
                name = f"signal {self.signal}"
            return f"was killed by {name}"
        return f"exited with status {self.status}"


def fork_session(on_child: Callable[[Journal], None]) -> ChildEnd | None:
    """Fork. In the child, call ``on_child(journal)`` and return ``None``: the child goes on with
    the session. In the parent, wait for the child, passing on :data:`FORWARDED` signals, and
    return how it ended (the journal file is removed)."""
    fd, name = tempfile.mkstemp(prefix="qrel-journal-", suffix=".jsonl")
    os.close(fd)
    path = Path(name)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()  # or both processes would write what is still buffered
        except (OSError, ValueError):
            pass
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        _die_with(parent)
        on_child(Journal(path))
        return None
    previous = {}

    def forward(signum: int, frame: FrameType | None) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in FORWARDED:
        try:
            previous[sig] = signal.signal(sig, forward)
        except (ValueError, OSError):  # not the main thread: nothing is forwarded
            pass
    try:
        while True:
            try:
                _, status = os.waitpid(pid, 0)
                break
            except ChildProcessError:  # reaped elsewhere (should not happen): treat as unfinished
                status = 1 << 8
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    code = os.waitstatus_to_exitcode(status)
    events = read_journal(path)
    try:
        path.unlink()
    except OSError:
        pass
    done = next((e for e in reversed(events) if e.get("kind") == "done"), None)
    return ChildEnd(
        status=128 - code if code < 0 else code, signal=-code if code < 0 else None, events=events,
        done_status=int(done["status"]) if done is not None else None,
    )


def _die_with(parent: int) -> None:
    """In the child: be killed when the parent is (Linux ``PR_SET_PDEATHSIG``), so ``kill -9`` of
    the pytest process CI started still ends the whole run at once, as it did unsupervised."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # 1 = PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
    if os.getppid() != parent:  # the parent died before that took effect
        os._exit(128 + int(signal.SIGKILL))


# ---------------------------------------------------------------------------- signals in the session
class Terminated(KeyboardInterrupt):
    """SIGTERM arrived: the session stops as on Ctrl-C (pytest then finishes the session, so the
    summary, report and results file are written, red), naming the signal."""


class InterruptHandlers:
    """SIGTERM (and, in a supervised child, SIGINT) handlers for the process that owns a session.

    SIGTERM raises :class:`Terminated` once; later ones are ignored, so a second SIGTERM (the
    parent forwarding one the whole process group also got, as ``timeout`` and many CI runners
    send) cannot abort the writing of the red outputs. With ``dedupe_sigint``, a SIGINT within
    one second of the previous one is ignored for the same reason (Ctrl-C reaches the child
    directly and through the parent); a later one interrupts again, as pytest's would.
    """

    def __init__(self, *, dedupe_sigint: bool = False) -> None:
        self.dedupe_sigint = dedupe_sigint
        self.terminated = False
        self.finishing = False  # the checks are over: a SIGTERM is only recorded from now on
        self._last_sigint = 0.0
        self._previous: dict[int, Any] = {}

    def install(self) -> bool:
        """Install the handlers; ``False`` where that is impossible (not the main thread)."""
        try:
            if hasattr(signal, "SIGTERM"):
                self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
            if self.dedupe_sigint:
                self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
        except (ValueError, OSError):
            self.restore()
            return False
        return True

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            try:
                signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
            except (ValueError, OSError):
                pass
        self._previous.clear()

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        if self.terminated or self.finishing:
            # Already stopping, or writing the outputs: raising now would tear them.
            self.terminated = True
            return
        self.terminated = True
        raise Terminated("SIGTERM")

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        now = time.monotonic()
        repeated = now - self._last_sigint < 1.0
        self._last_sigint = now
        if repeated or self.finishing:
            return
        raise KeyboardInterrupt
