"""Headless Chromium for report checks: dump the DOM after scripts ran, take screenshots, and
collect what the page wrote to the console (every console message, error or not, is a line
``...:CONSOLE(...)] "message", source: ...`` on stderr with ``--enable-logging=stderr``)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CONSOLE = re.compile(r":CONSOLE[(:]\S*\]\s*(.*)$")
FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--hide-scrollbars", "--enable-logging=stderr", "--v=0",
)


def find_chromium() -> str | None:
    """The Chromium executable (``$QREL_CHROMIUM`` first), or ``None``."""
    explicit = os.environ.get("QREL_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else shutil.which(explicit)
    return next((p for p in map(shutil.which, NAMES) if p), None)


def run_chromium(page: Path, *args: str, window: tuple[int, int] = (1400, 2400), timeout: float = 120) -> tuple[str, str]:
    """Open ``page`` (a local file) with ``args`` (``--dump-dom``, ``--screenshot=PATH``, ...) in a
    fresh profile; returns (stdout, stderr)."""
    exe = find_chromium()
    if exe is None:
        raise RuntimeError("chromium is not installed")
    with tempfile.TemporaryDirectory(prefix="qrel-chromium-") as profile:
        cmd = [exe, *FLAGS, f"--user-data-dir={profile}", f"--window-size={window[0]},{window[1]}", *args, Path(page).resolve().as_uri()]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    return out.stdout, out.stderr


def console_messages(stderr: str) -> list[str]:
    """Every message the page logged to its console (errors, uncaught exceptions, warnings, logs)."""
    return [m.group(1) for line in stderr.splitlines() if (m := CONSOLE.search(line))]
