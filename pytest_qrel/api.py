"""The library entry points, usable from Python without pytest."""

from __future__ import annotations

from pathlib import Path

from .engine import Engine
from .errors import QrelError
from .results import Verdict
from .spec import Suite, plan
from .verdicts import settle_inconclusive, verdict_for_error, verdict_without_result

__all__ = ["run", "verdict_without_result"]


def run(
    suite: Suite,
    *,
    baseline_dir: str | Path = "baselines",
    cache_dir: str | Path | None = None,
    update_baselines: bool = False,
    engine: Engine | None = None,
    strict: bool = False,
    inconclusive: str | None = None,
) -> list[Verdict]:
    """Evaluate every planned check of ``suite``; problems become verdicts, never exceptions.

    A missing dataset gives outcome ``skipped`` (``error`` with ``strict``); any other
    user-caused problem (missing or stale baseline, bad data, a model file that raises or exits)
    gives ``error`` with the one-line message: :func:`pytest_qrel.verdicts.verdict_for_error`,
    the policy the pytest plugin's items use too. An ``inconclusive`` verdict passes or not by
    ``inconclusive`` (``fail`` / ``warn`` / ``pass``), by default the suite's ``inconclusive:``.
    """
    engine = engine or Engine(baseline_dir=baseline_dir, cache_dir=cache_dir, update_baselines=update_baselines)
    planned = plan(suite)
    engine.expect(planned)
    verdicts = []
    for p in planned:
        try:
            verdict = engine.evaluate(p)
        except QrelError as exc:
            verdict = verdict_for_error(p, exc, strict=strict)
        verdicts.append(settle_inconclusive(p, verdict, inconclusive))
    return verdicts
