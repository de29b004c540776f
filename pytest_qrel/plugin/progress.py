"""What the plugin writes to the terminal while checks run: progress and warnings.

- :class:`Progress` listens to the engine (:mod:`pytest_qrel.progress`): on a terminal, the phase
  that is running (a pass: images done / total, images/s, ETA; a QAT: steps) is shown after what
  pytest has written on its current line, rewritten at most every 0.5 s and erased when the
  phase ends, leaving the cursor where pytest left it; off a terminal (CI logs), a line every
  10 s for each phase still running (:class:`pytest_qrel.progress.Meter`) and one per finished
  unit; nothing under ``-q``. Counts and rates are those of the work seen since the phase
  began. An xdist worker writes its line to a status file instead, which :class:`StatusPoller`
  shows in the controller.
- :func:`warn_line` prints a warning mid-test (cache unusable, watchdog action) past pytest's
  output capture, after erasing the progress text.

Only public pytest API: the terminal reporter's ``write_raw`` / ``write_line`` / ``write`` and its
``currentfspath`` / ``startpath`` (:func:`_write_line_mid_run`), the terminal
writer's ``fullwidth`` / ``width_of_current_line`` (``config.get_terminal_writer()``). The
progress text goes through ``write_raw``, which pytest does not count as part of its line, and is
erased with backspaces, so pytest's own line (and its ``[ 50%]`` column) is never rewritten.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from ..progress import Meter
from .state import is_worker, quiet, run_id, worker_id

PROGRESS = pytest.StashKey["Progress"]()


@contextlib.contextmanager
def _uncaptured(config: pytest.Config) -> Iterator[None]:
    # Items generated from YAML have no fixtures, so `capsys.disabled()` is not available; the
    # capture manager's own switch is what pytest's logging and terminal plugins use.
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        yield


def _write_line_mid_run(tr: Any, line: str, **markup: bool) -> None:
    """``write_line`` while an item runs, then pytest's ``<suite file> `` prefix again (without
    ``-v``): the letters of this item and the next continue under their file's name, not as a
    lone ``.`` line followed by the prefix a second time. Under ``-v`` pytest writes each item's
    id before its word itself (its prefix is then a string, not a path)."""
    fspath = getattr(tr, "currentfspath", None)
    tr.write_line(line, **markup)
    if isinstance(fspath, Path):
        tr.write(os.path.relpath(fspath, tr.startpath) + " ")
        tr.currentfspath = fspath


def warn_line(config: pytest.Config, message: str) -> None:
    """One yellow line on the terminal now (mid-test too); on stderr in an xdist worker."""
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is None or is_worker(config):
        sys.stderr.write(message + "\n")
        return
    progress = config.stash.get(PROGRESS, None)
    if progress is not None:
        progress.clear()
    with _uncaptured(config):
        _write_line_mid_run(tr, message, yellow=True)


class Progress:
    """The engine's progress listener (``update`` / ``unit``); see the module docstring.

    ``every``: seconds between the lines of a running phase off a terminal (:class:`Meter`);
    ``clock``: injectable for tests. Under ``-q`` it prints nothing but still times the units
    (for ``--durations``: :meth:`take_units`).
    """

    def __init__(self, config: pytest.Config, *, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        self.tr = config.pluginmanager.get_plugin("terminalreporter")
        self.quiet = quiet(config)
        # write_raw: pytest >= 8.? has it on the reporter; without it, no live text (unit lines stay)
        self.tty = bool(self.tr is not None and self.tr.isatty and hasattr(self.tr, "write_raw"))
        self.worker = worker_id(config)
        self.status: Path | None = None  # the status folder, made on the first line a worker writes
        self.clock = clock
        self.meter = Meter(every=every, clock=clock)
        self.last = -1.0  # when the live text or status file was last rewritten (at most every 0.5 s)
        self.shown = 0  # characters of progress text on screen after pytest's own
        self.units: list[dict[str, Any]] = []  # units finished since the last take_units()

    def update(self, what: str, done: int, total: int, unit: str = "images") -> None:
        """A pass advanced (``done`` of ``total`` images), or a calibration / QAT (``unit`` steps)."""
        reading = self.meter.read(what, done, total, unit)
        if self.quiet:
            return
        line = f"qrel: {reading.line()}"
        if self.worker is None and not self.tty:  # a log: a line per running phase every `every` s
            if self.tr is not None and self.meter.due(reading):
                with _uncaptured(self.config):
                    _write_line_mid_run(self.tr, line)
            return
        now = self.clock()
        if not reading.finished and now - self.last < 0.5:
            return
        self.last = now
        if self.worker is not None:
            self._status(line, reading.finished)
        elif reading.finished:
            self.clear()
        else:
            self._show(line)

    def unit(self, what: str, seconds: float, passes: int, images: int) -> None:
        """A unit finished: ``passes`` passes over ``images`` images in ``seconds``."""
        self.units.append({"unit": what, "seconds": round(seconds, 3), "passes": passes, "images": images})
        if self.quiet:
            return
        line = f"qrel: {what}: {passes} passes, {images} images in {seconds:.1f} s"
        if self.worker is not None:
            self._status(line, True)
        elif self.tr is not None and not self.tr.isatty and passes:
            with _uncaptured(self.config):
                _write_line_mid_run(self.tr, line)

    def take_units(self) -> list[dict[str, Any]]:
        """The units finished since the last call: ``{"unit", "seconds", "passes", "images"}``."""
        units, self.units = self.units, []
        return units

    def _show(self, line: str) -> None:
        tw = self.config.get_terminal_writer()
        # pytest does not count raw text in its line's width. The last column stays free: a line
        # that fills it wraps, and backspaces do not cross lines.
        room = tw.fullwidth - tw.width_of_current_line - 1
        text = (" " + line).encode("ascii", "replace").decode("ascii")  # one terminal cell per character
        self._replace(text[:room] if room >= 16 else "")

    def clear(self) -> None:
        """Erase the progress text, if any: the cursor is back where pytest left it."""
        if self.shown:
            self._replace("")

    def _replace(self, text: str) -> None:
        pad = max(0, self.shown - len(text))
        if self.tr is None or not (self.shown or text):
            return
        with _uncaptured(self.config):
            self.tr.write_raw("\b" * self.shown + text + " " * pad + "\b" * pad, flush=True)
        self.shown = len(text)

    def _status(self, line: str, finished: bool) -> None:
        self.status = self.status or status_dir(self.config)
        if self.status is None:
            return
        from ..io import atomic_write_text

        try:
            atomic_write_text(self.status / f"{self.worker}.json", json.dumps({"line": line, "finished": finished, "time": time.time()}))
        except OSError:
            pass


def status_dir(config: pytest.Config) -> Path | None:
    """The run's folder of worker status files (``.pytest_cache/d/qrel-status/<run id>``): the
    workers and the controller agree on xdist's ``testrunuid`` (:func:`.state.run_id`)."""
    cache = getattr(config, "cache", None)  # absent under -p no:cacheprovider
    if cache is None:
        return None
    try:
        return cache.mkdir("qrel-status") / (run_id(config) or "run")
    except OSError:  # a read-only or full .pytest_cache: no worker status lines (the engine warns once)
        return None


class StatusPoller:
    """In the xdist controller: every ``poll`` s, the workers' newest status lines, at most one
    line every ``every`` s (``[gw0] qrel: vit W4A4 on digits: 120/385 images ... | [gw1] ...``)."""

    def __init__(self, config: pytest.Config, *, poll: float = 2.0, every: float = 5.0,
                 write: Callable[[str], None] | None = None) -> None:
        self.config = config
        self.poll, self.every = poll, every
        tr = config.pluginmanager.get_plugin("terminalreporter")
        self.write = write or (tr.write_line if tr is not None else None)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.shown: dict[str, float] = {}

    def start(self) -> None:
        if self._thread is None and self.write is not None:
            self._thread = threading.Thread(target=self._run, name="qrel-status", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        status = status_dir(self.config)
        if status is None:
            return
        last_print = 0.0
        while not self._stop.wait(self.poll):
            lines = self.new_lines(status)
            if lines and time.monotonic() - last_print >= self.every:
                last_print = time.monotonic()
                self.write(" | ".join(lines))  # type: ignore[misc]

    def new_lines(self, status: Path) -> list[str]:
        """The status lines written since the last call, one per worker."""
        lines = []
        for path in sorted(status.glob("gw*.json")):
            try:
                info: dict[str, Any] = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if info.get("time", 0) > self.shown.get(path.stem, 0):
                self.shown[path.stem] = info["time"]
                lines.append(f"[{path.stem}] {info['line']}")
        return lines
