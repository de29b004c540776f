"""The library entry points, usable from Python without pytest."""

from __future__ import annotations

from pathlib import Path

from .engine import Engine
from .errors import DataMissingError, QrelError
from .results import Verdict
from .spec import Suite, plan


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
    baseline, bad data) gives ``error`` with the one-line message.
    """
    engine = engine or Engine(baseline_dir=baseline_dir, cache_dir=cache_dir, update_baselines=update_baselines)
    verdicts = []
    for p in plan(suite):
        try:
            verdicts.append(engine.evaluate(p))
        except QrelError as exc:
            outcome = "skipped" if isinstance(exc, DataMissingError) else "error"
            verdicts.append(
                Verdict(
                    suite=suite.name, model=p.model, quantizer=p.quantizer, dataset=p.dataset, metric=p.check.metric,
                    score=p.score, check=p.check.text, bound=str(p.check.bound), fp32=None, value=None, delta=None,
                    delta_display="", passed=False, expect_fail=p.check.expect == "fail", outcome=outcome, message=str(exc),
                )
            )
    return verdicts
