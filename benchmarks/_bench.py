"""Shared helpers of the benchmark scripts: run pytest (or Python) in a fresh process outside the
repository, with its own rootdir, cache directory and baseline directory, and measure it.

A benchmark runs the plugin the way a user's project would: from a directory of its own (a bare
``pytest.ini``), so that this repository's ``tests/conftest.py`` is not part of the measurement, with
``PYTHONPATH`` pointing at this checkout. :func:`measure` reports wall seconds, CPU seconds (user +
system of the process and every process it waited for: xdist workers, DataLoader workers) and the
peak RSS of the largest of them (``ru_maxrss``; a subprocess's own pages, not the sum over
processes).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Measured:
    wall_s: float
    cpu_s: float
    max_rss_mb: float
    returncode: int
    output: str


def measure(cmd: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float | None = None) -> Measured:
    """Run ``cmd`` to completion and measure it (see the module docstring)."""
    with tempfile.TemporaryFile(mode="w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, text=True)
        deadline = None if timeout is None else started + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if deadline is not None and time.perf_counter() > deadline:
                proc.kill()
            time.sleep(0.02)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    return Measured(wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024.0, proc.returncode, text)


def user_project(where: Path) -> Path:
    """A directory that looks like a user's project: a bare ``pytest.ini`` (rootdir) and nothing else."""
    where.mkdir(parents=True, exist_ok=True)
    (where / "pytest.ini").write_text("[pytest]\n")
    return where


def env(**extra: str) -> dict[str, str]:
    """The environment of a benchmark subprocess: this checkout first on ``PYTHONPATH``."""
    out = {k: v for k, v in os.environ.items() if k not in ("PYTEST_ADDOPTS", "PYTEST_QREL_TRACE", "OMP_NUM_THREADS")}
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH", "")])])
    out["PYTHONDONTWRITEBYTECODE"] = "1"
    out.update(extra)
    return out


def pytest_cmd(suite: Path, *, cache_dir: Path, baseline_dir: Path, extra: tuple[str, ...] = ()) -> list[str]:
    """``pytest --qrel-suite SUITE`` with the cache and baselines in the given folders, quiet."""
    return [
        sys.executable, "-m", "pytest", "--qrel-suite", str(suite), "-q", "-p", "no:randomly",
        "-o", f"cache_dir={cache_dir}", "-o", f"qrel_baseline_dir={baseline_dir}", *extra,
    ]


def summary_line(output: str) -> str:
    """pytest's last line ("12 passed in 3.4s")."""
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return lines[-1].strip("= ") if lines else ""


def tree_bytes(path: Path, pattern: str = "*") -> tuple[int, int]:
    """(bytes, files) of the files under ``path`` matching ``pattern``."""
    files = [p for p in Path(path).rglob(pattern) if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"
