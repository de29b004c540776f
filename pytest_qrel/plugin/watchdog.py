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
about 20 s for channels that do not close).

Which workers are active it learns from xdist's public hooks (``pytest_testnodeready`` /
``pytest_testnodedown``, :mod:`.xdist_sched`), how many checks a worker has left from the
scheduler (``pending``). Three xdist / execnet internals remain, for want of a public way:

- ``node.gateway._io.popen``: the worker's process (execnet gives no public handle on a popen
  gateway's process), to see that it exited and to kill it;
- ``node._down``: the flag execnet's end-of-channel callback checks and sets; the watchdog checks
  and sets it the same way, so a worker is reported down once, by whichever comes first;
- ``node.notify_inproc("errordown", ...)``: the event execnet's callback sends for a lost channel.

If they are missing (another xdist), the watchdog does nothing. No pytest import.
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
    # execnet has no public handle on a popen gateway's process (see the module docstring)
    return getattr(getattr(getattr(node, "gateway", None), "_io", None), "popen", None)


def pending_items(sched: Any, node: Any) -> int | None:
    """Checks assigned to ``node`` and not finished, from a scheduler of xdist's ``LoadScope``
    family or :class:`.xdist_sched.UnitScheduling` (their documented ``assigned_work``); ``0``
    for a scheduler without it, ``None`` without a scheduler."""
    if sched is None:
        return None
    work = getattr(sched, "assigned_work", {}).get(node)
    if work is None:
        return 0
    try:
        return sum(list(scope.values()).count(False) for scope in work.values())
    except (AttributeError, RuntimeError):
        return None


class WorkerWatchdog:
    """See the module docstring. ``pending(node)`` is the number of checks the node has left
    (``None``: unknown); ``warn`` prints one line (what the watchdog did and why)."""

    def __init__(
        self,
        *,
        pending: Callable[[Any], int | None] = lambda node: None,
        warn: Callable[[str], None] = lambda line: None,
        poll: float = POLL_S,
        dead_grace: float = DEAD_GRACE_S,
        shutdown_grace: float = SHUTDOWN_GRACE_S,
    ) -> None:
        self.pending = pending
        self.warn = warn
        self.poll = poll
        self.dead_grace = dead_grace
        self.shutdown_grace = shutdown_grace
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._nodes: dict[int, Any] = {}  # the workers xdist counts as active
        self._dead_since: dict[int, float] = {}
        self._idle_since: dict[int, float] = {}
        self.reported: list[str] = []  # the workers it reported down (for tests and the summary)

    def watch(self, node: Any) -> None:
        """xdist brought ``node`` up (``pytest_testnodeready``)."""
        with self._lock:
            self._nodes[id(node)] = node

    def forget(self, node: Any) -> None:
        """xdist took ``node`` down (``pytest_testnodedown``): nothing left to guard."""
        with self._lock:
            self._nodes.pop(id(node), None)

    def start(self) -> None:
        if self._thread is None:
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
        with self._lock:
            nodes = list(self._nodes.values())
        for node in nodes:
            popen = _popen(node)
            if popen is None or getattr(node, "_down", False):  # execnet already reported it down
                continue
            key = id(node)
            code = popen.poll()
            if code is not None:
                first = self._dead_since.setdefault(key, now)
                if now - first >= self.dead_grace:
                    self._report_down(node, code)
                continue
            if getattr(node, "shutting_down", False) and self.pending(node) == 0:
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
        # What execnet's end-of-channel callback does (workermanage.WorkerController.process_from_remote):
        # set _down, so that the channel's eventual end does not report the worker a second time,
        # and queue "errordown", which xdist handles as a crashed worker (re-schedules, restarts).
        node._down = True
        self.reported.append(_name(node))
        node.notify_inproc("errordown", node=node, error=error)


def _name(node: Any) -> str:
    return str(getattr(getattr(node, "gateway", None), "id", "?"))
