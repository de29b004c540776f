"""What one pytest session of pytest-qrel knows, kept in ``config.stash`` under :data:`STATE`.

Every module of the plugin reads and writes this one record; none keeps state of its own on the
config (pytest's ``Stash`` is the public place for it). Also here: small helpers every module
needs (which process this is, paths as the user wrote them). No torch, no engine.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ..results import UnitMetrics, Verdict
from ..spec import PlannedCheck

#: A report's ``user_properties`` carry a verdict's fields under this prefix (``qrel.outcome``, ...):
#: they are what travels from an xdist worker to the controller and into junit XML.
PROP_PREFIX = "qrel."


@dataclass
class RunState:
    """The session's record of suites, expected checks, verdicts and unit records."""

    suites: list[Path] = field(default_factory=list)  # --qrel-suite files, resolved
    expected: dict[str, str] = field(default_factory=dict)  # nodeid -> suite name
    planned: dict[str, int] = field(default_factory=dict)  # suite name -> planned checks (a shard's: its own)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)  # node ids lost to a crashed worker or child
    units: dict[tuple[str, str, str], UnitMetrics] = field(default_factory=dict)
    engine: Any = None  # the Engine, built on the first check that runs (pytest_qrel.plugin.session)
    threads: int | None = None  # torch threads per xdist worker, where the plugin chose them
    threads_before: int | None = None
    started: float = field(default_factory=time.time)
    suites_loaded: dict[str, Any] = field(default_factory=dict)  # suite name -> Suite (run info)
    selected: list[PlannedCheck] = field(default_factory=list)  # the checks this process will run
    files: dict[str, str] = field(default_factory=dict)  # suite name -> its file as written in node ids
    ended: str = ""  # why the run ended without finishing (the supervised child's death), if it did
    ended_line: str = ""  # the one line the summary prints about it
    shard_empty: bool = False  # --qrel-shard gave this shard no unit of the collected suites
    signals: Any = None  # the session's InterruptHandlers (SIGTERM), where installed
    worker_devices: dict[str, str] = field(default_factory=dict)  # xdist worker id -> the device it ran on


STATE = pytest.StashKey[RunState]()
PLANNED = pytest.StashKey[PlannedCheck]()
NESTED = pytest.StashKey[bool]()  # this session runs inside another one in the same process (pytester)
RUN_ID = pytest.StashKey[str]()
BASELINE_FOLDERS = pytest.StashKey[dict[str, Path]]()  # suite name (case-folded) -> the suite file whose baselines it names


def is_worker(config: pytest.Config) -> bool:
    """An xdist worker (xdist's documented test: the config carries ``workerinput``)."""
    return hasattr(config, "workerinput")


def worker_id(config: pytest.Config) -> str | None:
    """``gw0``, ``gw1``, ... in an xdist worker; ``None`` elsewhere."""
    workerinput = getattr(config, "workerinput", None)
    return str(workerinput.get("workerid")) if workerinput else None


def run_id(config: pytest.Config) -> str:
    """One id for the whole run: xdist's ``testrunuid`` in a worker, the session's own elsewhere."""
    workerinput = getattr(config, "workerinput", None)
    if workerinput:
        return str(workerinput.get("testrunuid") or "")
    return config.stash.get(RUN_ID, "")


def xdist_workers() -> int:
    """The number of xdist workers of this run (1 without xdist)."""
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)


def quiet(config: pytest.Config) -> bool:
    return config.get_verbosity() < 0


def relative(path: Path, start: Path) -> Path:
    """``path`` relative to ``start`` when it lies below it, else as given."""
    try:
        rel = Path(os.path.relpath(path, start))
    except ValueError:
        return path
    return path if rel.parts[:1] == ("..",) else rel
