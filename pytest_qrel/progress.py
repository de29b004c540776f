"""A progress hook long-running library code reports to, without knowing who listens.

The engine sets a listener around the work of one unit (:func:`reporting`); code deep inside a
step -- the QAT training loop, for one -- calls :func:`step` (``"QAT step", 40, 100``) and the
listener (the pytest plugin's progress line) shows it. Nothing happens when nobody listens. Plain
Python: no torch, no pytest.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar

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
