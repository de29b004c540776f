"""Verdicts of checks that produced no number, and the run's policies over verdicts.

One place decides what a raised :class:`~pytest_qrel.errors.QrelError` means for a check, so
:func:`pytest_qrel.run` and the pytest plugin's items give the same outcome for the same error:

=====================================================  ===========  ==============================
error raised while evaluating the check                outcome      pytest item
=====================================================  ===========  ==============================
:class:`DataMissingError` (a dataset root is absent)   ``skipped``  skipped, with the path
... under ``strict`` (``--qrel-strict``)               ``error``    failed, one line
every other :class:`QrelError`: missing or stale       ``error``    failed, one line
baseline, spec, model, data, user code, numerics,
device, storage, simulation
=====================================================  ===========  ==============================

A missing or stale baseline is an ``error``, not ``failed``: nothing was measured against a
bound (the pytest item fails all the same, with the command that fixes it). ``failed`` is kept
for a check whose numbers violated its bound. The verdict keeps the error's one-line message
and, for user code, the stage it failed in (``forward``, ``calibration``, ...).

Plain Python: no pytest, no torch.
"""

from __future__ import annotations

from .errors import DataMissingError, QrelError, UserCodeError
from .policy import outcome_of
from .results import Outcome, Verdict
from .spec import PlannedCheck


def verdict_without_result(p: PlannedCheck, outcome: Outcome, message: str, *, stage: str = "") -> Verdict:
    """The verdict of a planned check that produced no value: ``skipped`` (data missing),
    ``error`` (the one-line message of what went wrong) or ``not run``."""
    return Verdict(
        suite=p.suite.name, model=p.model, quantizer=p.quantizer, dataset=p.dataset, metric=p.check.metric,
        score=p.score, check=p.check.text, bound=str(p.check.bound), fp32=None, value=None, delta=None,
        delta_display="", passed=False, expect_fail=p.check.expect == "fail", outcome=outcome, message=message, stage=stage,
        source=str(p.check.where) if p.check.where else "",
    )


def error_outcome(exc: QrelError, *, strict: bool = False) -> Outcome:
    """``skipped`` for missing data (unless ``strict``), ``error`` for every other user error."""
    return "skipped" if isinstance(exc, DataMissingError) and not strict else "error"


def verdict_for_error(p: PlannedCheck, exc: QrelError, *, strict: bool = False) -> Verdict:
    """The verdict of ``p`` whose evaluation raised ``exc`` (the table in the module docstring)."""
    stage = exc.stage if isinstance(exc, UserCodeError) else ""
    return verdict_without_result(p, error_outcome(exc, strict=strict), str(exc), stage=stage)


def settle_inconclusive(p: PlannedCheck, verdict: Verdict, policy: str | None = None) -> Verdict:
    """Apply the inconclusive policy to the verdict of ``p``: ``policy`` (``fail`` / ``warn`` /
    ``pass``; ``--qrel-inconclusive``) or else the suite's ``inconclusive:`` decides whether an
    ``inconclusive`` verdict ``passed``, through :func:`pytest_qrel.policy.outcome_of`. Other
    verdicts are returned unchanged."""
    if verdict.outcome == "inconclusive":
        # Only a check demanding confidence is inconclusive (evaluate.decide); were one not to,
        # outcome_of would keep it from passing.
        _, verdict.passed = outcome_of(
            "inconclusive", confidence=getattr(p.check, "confidence", None), expect_fail=verdict.expect_fail,
            inconclusive=policy or p.suite.inconclusive,
        )
    return verdict
