"""What the plugin writes to the terminal while checks run: progress and warnings.

- :class:`Progress` listens to the engine (:mod:`pytest_qrel.progress`): on a terminal, the pass
  that is running (images done / total, images/s, ETA) is shown after what pytest has written
  on its current line, and erased when the pass ends, leaving the cursor where pytest left it;
  off a terminal, one line per finished unit; nothing under ``-q``. An xdist worker writes its
  line to a status file instead, which :class:`StatusPoller` shows in the controller.
- :func:`warn_line` prints a warning mid-test (cache unusable, watchdog action) past pytest's
  output capture, after erasing the progress text.

Only public pytest API: the terminal reporter's ``write_raw`` / ``write_line``, the terminal
writer's ``fullwidth`` / ``width_of_current_line`` (``config.get_terminal_writer()``). The
progress text goes through ``write_raw``, which pytest does not count as part of its line, and is
erased with backspaces, so pytest's own line (and its ``[ 50%]`` column) is never rewritten.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .state import is_worker, run_id, worker_id

PROGRESS = pytest.StashKey["Progress"]()


@contextlib.contextmanager
def _uncaptured(config: pytest.Config) -> Iterator[None]:
    # Items generated from YAML have no fixtures, so `capsys.disabled()` is not available; the
    # capture manager's own switch is what pytest's logging and terminal plugins use.
    capture = config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        yield


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
        tr.write_line(message, yellow=True)


class Progress:
    """The engine's progress listener (``update`` / ``unit``); see the module docstring."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tr = config.pluginmanager.get_plugin("terminalreporter")
        # write_raw: pytest >= 8.? has it on the reporter; without it, no live text (unit lines stay)
        self.tty = bool(self.tr is not None and self.tr.isatty and hasattr(self.tr, "write_raw"))
        self.worker = worker_id(config)
        self.status: Path | None = None  # the status folder, made on the first line a worker writes
        self.last = 0.0
        self.start: dict[str, float] = {}
        self.shown = 0  # characters of progress text on screen after pytest's own

    def update(self, what: str, done: int, total: int, unit: str = "images") -> None:
        """A pass advanced (``done`` of ``total`` images), or a calibration / QAT (``unit`` steps)."""
        now = time.monotonic()
        if done == 0:
            self.start[what] = now
        elapsed = max(1e-9, now - self.start.get(what, now))
        rate = done / elapsed if done else 0.0
        finished = done >= total
        if not finished and now - self.last < 0.5:
            return
        self.last = now
        eta = f", ETA {int((total - done) / rate)} s" if rate and not finished else ""
        per = "img/s" if unit == "images" else f"{unit}/s"
        line = f"qrel: {what}: {done}/{total} {unit}, {rate:.0f} {per}{eta}"
        if self.worker is not None:
            self._status(line, finished)
        elif self.tty and finished:
            self.clear()
        elif self.tty:
            self._show(line)

    def unit(self, what: str, seconds: float, passes: int, images: int) -> None:
        """A unit finished: ``passes`` passes over ``images`` images in ``seconds``."""
        line = f"qrel: {what}: {passes} passes, {images} images in {seconds:.1f} s"
        if self.worker is not None:
            self._status(line, True)
        elif self.tr is not None and not self.tr.isatty and passes:
            with _uncaptured(self.config):
                self.tr.write_line(line)

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
