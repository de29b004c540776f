"""A controller-side guard against an xdist run that never ends.

The hang it guards against: pytest-xdist learns that a worker died only when the worker's
execnet channel (the pipes of its process) reaches end-of-file. A process the worker started by
``fork`` -- a DataLoader worker, a compile worker pool, anything a model file spawns -- inherits
those pipes, so when the worker is killed the channel stays open for as long as that descendant
lives. Until then the controller waits for a worker that no longer exists: with plain
``--dist loadscope`` too, and indefinitely if the descendant never exits (a descendant that
sleeps 90 s delayed the end of a run by 90 s; reports of 12 minutes and more).

Every ``poll`` seconds, for each worker xdist still counts as active:

- **its process has exited** but xdist has not heard it go down, for ``dead_grace`` seconds:
  the watchdog reports it down exactly as execnet's end-of-channel would (xdist's ``errordown``
  event, which names the check that was running as crashed, re-schedules the rest of its work
  on a replacement worker and stops at ``--max-worker-restart``);
- **it was told to shut down, has no checks left, and is still running** after
  ``shutdown_grace`` seconds: its process is killed, and then reported down as above.

So a run whose worker died ends, red with the lost checks named by the plugin's recorder, at
most ``poll + dead_grace`` (5 s) after the death was final, plus xdist's own teardown (at most
about 20 s for channels that do not close). It uses xdist internals read-only (the DSession's
active nodes and scheduler, the gateway's ``Popen``) and does nothing if they are missing.
No pytest import: the plugin starts it and passes the config.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

POLL_S = 1.0
DEAD_GRACE_S = 4.0
SHUTDOWN_GRACE_S = 60.0


def _popen(node: Any) -> Any:
    return getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)


def _pending(dsession: Any, node: Any) -> int | None:
    sched = getattr(dsession, "sched", None)
    work = getattr(sched, "assigned_work", {}).get(node) if sched is not None else None
    if work is None:
        return 0 if sched is not None else None
    try:
        return sum(list(scope.values()).count(False) for scope in work.values())
    except (AttributeError, RuntimeError):
        return None


class WorkerWatchdog:
    """See the module docstring. ``warn`` prints one line (what the watchdog did and why)."""

    def __init__(
        self,
        config: Any,
        *,
        warn: Callable[[str], None] = lambda line: None,
        poll: float = POLL_S,
        dead_grace: float = DEAD_GRACE_S,
        shutdown_grace: float = SHUTDOWN_GRACE_S,
    ) -> None:
        self.config = config
        self.warn = warn
        self.poll = poll
        self.dead_grace = dead_grace
        self.shutdown_grace = shutdown_grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._dead_since: dict[int, float] = {}
        self._idle_since: dict[int, float] = {}
        self.reported: list[str] = []  # the workers it reported down (for tests and the summary)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="qrel-xdist-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.poll):
            try:
                self.check(time.monotonic())
            except Exception:  # xdist changed its internals: guard nothing rather than break the run
                return

    def check(self, now: float) -> None:
        dsession = self.config.pluginmanager.getplugin("dsession")
        if dsession is None:
            return
        try:
            nodes = list(getattr(dsession, "_active_nodes", ()))
        except RuntimeError:  # changed while copied (the controller's thread): next time
            return
        for node in nodes:
            popen = _popen(node)
            if popen is None or getattr(node, "_down", False):
                continue
            key = id(node)
            code = popen.poll()
            if code is not None:
                first = self._dead_since.setdefault(key, now)
                if now - first >= self.dead_grace:
                    self._report_down(node, code)
                continue
            if getattr(node, "shutting_down", False) and _pending(dsession, node) == 0:
                first = self._idle_since.setdefault(key, now)
                if now - first >= self.shutdown_grace:
                    self._idle_since.pop(key, None)
                    self.warn(
                        f"qrel: worker {_name(node)} was told to shut down {self.shutdown_grace:.0f} s ago with no checks left "
                        "and is still running; stopping it"
                    )
                    try:
                        popen.kill()
                    except OSError:
                        pass
            else:
                self._idle_since.pop(key, None)

    def _report_down(self, node: Any, code: int) -> None:
        if getattr(node, "_down", False):
            return
        how = f"killed by signal {-code}" if code < 0 else f"exited with status {code}"
        error = f"worker process {how}, but its channel stayed open (a process it started still holds it)"
        node._down = True  # what execnet's end-of-channel callback sets: it will not report it again
        self.reported.append(_name(node))
        node.notify_inproc("errordown", node=node, error=error)


def _name(node: Any) -> str:
    return str(getattr(getattr(node, "gateway", None), "id", "?"))
