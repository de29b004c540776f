"""The garbage collector held off while a run imports torch, then pointed at new objects only.

Why: a cold demo audit spent 0.9 s in Python's cyclic garbage collector, most of it in full
collections while its first check imported torch and timm (each full collection walks every
object those imports created, and the heap grows by millions of them), and 0.4 s more when pytest
collected twice at the end to report unraisable exceptions. Those objects live as long as the
process: scanning them finds nothing.

How: the process that runs the checks turns automatic collection off when its checks start
(:class:`GcHold`); after the first check (torch, the model and the first unit loaded) it collects
once -- everything that became garbage meanwhile is freed, and unraisable exceptions still surface
-- then moves every surviving object out of the collector's reach (:func:`gc.freeze`) and turns
collection back on. Later collections scan only objects made after that.

Only in a process that ends with the run (:func:`.fast_exit.should_arm`: pytest the program, a
run of qrel suites, not nested, not an xdist worker) and where the collector was on; frozen
objects are never collected, which only matters to a process that goes on. ``QREL_GC_HOLD=0``
turns it off.
"""

from __future__ import annotations

import gc
import os

import pytest

ENV_SWITCH = "QREL_GC_HOLD"


class GcHold:
    """Registered as a plugin when the checks start; see the module doc."""

    def __init__(self) -> None:
        self.holding = False

    def hold(self) -> bool:
        """Turn automatic collection off (when it was on and not switched off); returns whether it did."""
        if os.environ.get(ENV_SWITCH, "1") != "0" and gc.isenabled():
            gc.disable()
            self.holding = True
        return self.holding

    def release(self) -> None:
        """Collect once, freeze what survives and turn collection back on (once)."""
        if self.holding:
            self.holding = False
            gc.collect()
            gc.freeze()
            gc.enable()

    @pytest.hookimpl(trylast=True)
    def pytest_runtest_teardown(self, item: pytest.Item) -> None:
        self.release()

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.release()  # a run whose first check never reached its teardown
