"""The library entry points, usable from Python without pytest."""

from __future__ import annotations

from pathlib import Path

from .engine import Engine
from .errors import DataMissingError, QrelError, UserCodeError
from .results import Outcome, Verdict
from .spec import PlannedCheck, Suite, plan


def verdict_without_result(p: PlannedCheck, outcome: Outcome, message: str, *, stage: str = "") -> Verdict:
    """The verdict of a planned check that produced no value: ``skipped`` (data missing),
    ``error`` (the one-line message of what went wrong) or ``not run``."""
    return Verdict(
        suite=p.suite.name, model=p.model, quantizer=p.quantizer, dataset=p.dataset, metric=p.check.metric,
        score=p.score, check=p.check.text, bound=str(p.check.bound), fp32=None, value=None, delta=None,
        delta_display="", passed=False, expect_fail=p.check.expect == "fail", outcome=outcome, message=message, stage=stage,
    )


def run(
    suite: Suite,
    *,
    baseline_dir: str | Path = "baselines",
    cache_dir: str | Path | None = None,
    update_baselines: bool = False,
    engine: Engine | None = None,
) -> list[Verdict]:
    """Evaluate every planned check of ``suite``; problems become verdicts, never exceptions.

    A missing dataset gives outcome ``skipped``; any other user-caused problem (missing or stale
    baseline, bad data, a model file that raises or exits) gives ``error`` with the one-line message.
    """
    engine = engine or Engine(baseline_dir=baseline_dir, cache_dir=cache_dir, update_baselines=update_baselines)
    planned = plan(suite)
    engine.expect(planned)
    verdicts = []
    for p in planned:
        try:
            verdicts.append(engine.evaluate(p))
        except QrelError as exc:
            outcome: Outcome = "skipped" if isinstance(exc, DataMissingError) else "error"
            stage = exc.stage if isinstance(exc, UserCodeError) else ""
            verdicts.append(verdict_without_result(p, outcome, str(exc), stage=stage))
    return verdicts
