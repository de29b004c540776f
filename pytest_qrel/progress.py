"""A progress hook long-running library code reports to, without knowing who listens.

The engine sets a listener around the work of one unit (:func:`reporting`); code deep inside a
step -- the QAT training loop, for one -- calls :func:`step` (``"QAT step", 40, 100``) and the
listener (the pytest plugin's progress line) shows it. Nothing happens when nobody listens. Plain
Python: no torch, no pytest.

:class:`Meter` turns the reports into what a listener shows: counts and rates of the work
actually seen (:class:`Reading`), and when a log without a terminal gets a line.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass

Listener = Callable[[str, int, int, str], None]
"""``listener(what, done, total, unit)``: e.g. ``("model 'vit' W8A8-qat: QAT", 40, 100, "steps")``."""

_LISTENER: ContextVar[tuple[Listener, str] | None] = ContextVar("qrel_progress", default=None)


@contextlib.contextmanager
def reporting(listener: Listener | None, what: str) -> Iterator[None]:
    """Send :func:`step` reports made inside to ``listener``, prefixed with ``what``."""
    if listener is None:
        yield
        return
    token = _LISTENER.set((listener, what))
    try:
        yield
    finally:
        _LISTENER.reset(token)


def step(phase: str, done: int, total: int, unit: str = "steps") -> None:
    """Report that ``done`` of ``total`` ``unit`` of ``phase`` are done (no-op without a listener)."""
    current = _LISTENER.get()
    if current is not None:
        listener, what = current
        listener(f"{what}: {phase}", done, total, unit)


# ---------------------------------------------------------------------------- what a listener shows
@dataclass
class Reading:
    """Where one phase stands: ``done`` of ``total`` ``unit`` of ``what``; ``rate`` in ``unit``
    per second since the phase began (``None`` until measurable: two reports apart in time),
    ``eta`` in seconds (``None`` without a rate or once finished), ``elapsed`` seconds since the
    phase began."""

    what: str
    done: int
    total: int
    unit: str
    rate: float | None
    eta: float | None
    elapsed: float

    @property
    def finished(self) -> bool:
        return self.done >= self.total

    def line(self) -> str:
        """``vit W8A8-qat: QAT: 40/100 steps, 2.5 steps/s, ETA 24 s`` (``img/s`` for images); a
        phase of one step (``calibrating``) shows no count, only its time."""
        if self.total <= 1:
            return f"{self.what}: {'done' if self.finished else 'running'}, {self.elapsed:.0f} s"
        text = f"{self.what}: {self.done}/{self.total} {self.unit}"
        if self.rate is not None:
            per = "img/s" if self.unit == "images" else f"{self.unit}/s"
            text += f", {_rate(self.rate)} {per}"
        if self.finished:
            return text + f", {self.elapsed:.1f} s"
        return text + (f", ETA {self.eta:.0f} s" if self.eta is not None else "")


def _rate(rate: float) -> str:
    return f"{rate:.0f}" if rate >= 10 else f"{rate:.2g}"


@dataclass
class _Phase:
    started: float
    done_at_start: int
    done: int = 0
    total: int = 0
    printed: float = 0.0  # when its last cadence line was due (``started`` until then)
    lines: int = 0


class Meter:
    """Turns a listener's reports into true readings, and decides when a log (no terminal to
    rewrite) gets a line.

    A phase is one ``what`` from its first report to its last (``done >= total``); the same
    ``what`` reported again after it finished, or going backwards, starts a new phase (a second
    pass over a set), never a replay of the old counter. The rate counts only the work seen
    since the phase began (a phase first reported at step 1 of 100 has no rate until step 2),
    so it is never the ``1e9 steps/s`` of a division by a zero interval.

    :meth:`due`: a phase still running gets a line once ``every`` seconds have passed since it
    began or since its last line (``every`` = 10 s: CI logs see a QAT or a long pass advance at
    least that often as long as a single step is shorter); a phase that had such lines gets one
    more when it ends. Short phases get none. ``clock`` (seconds, monotonic) is injectable.
    """

    def __init__(self, *, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every, self.clock = every, clock
        self.phases: dict[str, _Phase] = {}

    def read(self, what: str, done: int, total: int, unit: str = "steps") -> Reading:
        now = self.clock()
        phase = self.phases.get(what)
        if phase is None or phase.done >= phase.total or done < phase.done:
            phase = self.phases[what] = _Phase(started=now, done_at_start=done, printed=now)
        phase.done, phase.total = done, total
        elapsed = now - phase.started
        work = done - phase.done_at_start
        rate = work / elapsed if elapsed > 0 and work > 0 else None
        eta = (total - done) / rate if rate and done < total else None
        return Reading(what, done, total, unit, rate, eta, elapsed)

    def due(self, reading: Reading) -> bool:
        """Whether a log should get ``reading.line()`` now (see the class docstring)."""
        phase = self.phases.get(reading.what)
        if phase is None:
            return False
        if reading.finished:
            return phase.lines > 0
        now = phase.started + reading.elapsed
        if now - phase.printed >= self.every:
            phase.printed, phase.lines = now, phase.lines + 1
            return True
        return False
