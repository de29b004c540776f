"""The one pass/fail policy: what a check's evidence decides, what each outcome means for the
gate, and what a run's verdicts add up to.

Every place that says whether a release may go reads this module: the checks
(:func:`pytest_qrel.evaluate.decide`), the plugin's terminal summary, the HTML report's banner, the
Markdown summary, the junit XML and ``qrel merge`` (its recomputation and its exit code). It
imports nothing of the package, so anything can use it.

Outcomes of one check (:data:`OUTCOMES`) and where each stands (:func:`standing`):

============================  ==============  ==================================================
outcome                       standing        junit
============================  ==============  ==================================================
``passed``                    verified        a passing testcase
``xfailed`` (expect: fail)    verified        skipped (as pytest writes an expected failure)
``failed``                    blocks          failure
``xpassed`` (strict xfail)    blocks          failure
``error``                     blocks          error
``not run``                   blocks          error (a green run means every check ran)
``inconclusive``, ``fail``    blocks          failure
``inconclusive``, ``warn``    not verified    a passing testcase (the policy let it pass)
``inconclusive``, ``pass``    not verified    a passing testcase
``skipped``                   not verified    skipped
an unknown outcome            blocks          failure
============================  ==============  ==================================================

``inconclusive`` only arises for a check that demands ``confidence:``: the suite's (or
``--qrel-inconclusive``'s) policy has then set the verdict's ``passed`` (:func:`outcome_of`).

The run (:func:`run_verdict`): ``FAIL`` when any verdict blocks; else ``INCOMPLETE`` when anything
was not verified (skipped, inconclusive let pass, or planned checks without a verdict); else
``PASS`` (every planned check produced a verdict and passed or failed as expected); ``NO
CHECKS`` when nothing was planned or run. Only ``FAIL`` fails the gate (exit code 1).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypeVar

__all__ = [
    "FAILING",
    "INCONCLUSIVE_POLICIES",
    "NOT_VERIFIED",
    "OUTCOMES",
    "InconclusivePolicy",
    "Outcome",
    "RunVerdict",
    "Standing",
    "Status",
    "is_failing",
    "is_unverified",
    "junit_result",
    "outcome_of",
    "run_verdict",
    "sort_failing",
    "standing",
]

Outcome = Literal["passed", "failed", "xfailed", "xpassed", "skipped", "error", "inconclusive", "not run"]
"""``inconclusive``: a check with ``confidence:`` whose interval straddles its bound; ``not run``: a
planned check that produced no verdict (a crashed worker, ``-x``, an interrupted run)."""

#: Every outcome, in the order reports count them.
OUTCOMES: tuple[str, ...] = ("passed", "failed", "xfailed", "xpassed", "skipped", "error", "inconclusive", "not run")
#: Outcomes that can block the release, in the order reports list failing checks.
#: ``inconclusive`` blocks only where the policy did not let it pass (see :func:`standing`).
FAILING: tuple[str, ...] = ("failed", "error", "xpassed", "not run", "inconclusive")
#: Outcomes that can leave a check not verified (neither passed nor failed).
NOT_VERIFIED: tuple[str, ...] = ("skipped", "inconclusive")

InconclusivePolicy = Literal["fail", "warn", "pass"]
INCONCLUSIVE_POLICIES: tuple[str, ...] = ("fail", "warn", "pass")

Status = Literal["PASS", "FAIL", "INCOMPLETE", "NO CHECKS"]


class VerdictLike(Protocol):
    """What the policy reads of a :class:`pytest_qrel.results.Verdict`."""

    @property
    def outcome(self) -> str: ...

    @property
    def passed(self) -> bool: ...


V = TypeVar("V", bound=VerdictLike)


class Standing(enum.Enum):
    """Where one verdict leaves the gate."""

    VERIFIED = "verified"  # passed, or failed as expected
    BLOCKS = "blocks"  # blocks the release
    NOT_VERIFIED = "not verified"  # ran (or was meant to) but verified nothing, without failing


# ------------------------------------------------------------------------------------ one check


def inconclusive_passes(policy: str) -> bool:
    """Whether an inconclusive check passes under ``policy`` (``warn`` / ``pass``: it does)."""
    return policy != "fail"


def outcome_of(
    evidence: str, *, confidence: float | None, expect_fail: bool, inconclusive: str = "fail"
) -> tuple[Outcome, bool]:
    """``(outcome, passed)`` of a check whose numbers gave ``evidence`` (``"passed"`` /
    ``"failed"`` / ``"inconclusive"``, :func:`pytest_qrel.stats.decision.judge`).

    ``inconclusive`` only arises for a check that demands ``confidence``; the policy
    ``inconclusive`` (``fail`` / ``warn`` / ``pass``) then decides ``passed``. ``expect: fail``
    folds a decided outcome into ``xfailed`` (it failed, as expected) or ``xpassed`` (it held: a
    failure of the gate).

    >>> outcome_of("failed", confidence=None, expect_fail=False)
    ('failed', False)
    >>> outcome_of("inconclusive", confidence=0.95, expect_fail=False, inconclusive="warn")
    ('inconclusive', True)
    >>> outcome_of("failed", confidence=None, expect_fail=True)
    ('xfailed', False)
    """
    passed = evidence == "passed"
    if confidence is not None and evidence == "inconclusive":
        return "inconclusive", inconclusive_passes(inconclusive)
    if expect_fail:
        return ("xpassed" if passed else "xfailed"), passed
    return ("passed" if passed else "failed"), passed


def standing(v: VerdictLike) -> Standing:
    """Where ``v`` leaves the gate (the table of the module docstring)."""
    if v.outcome == "inconclusive":
        return Standing.NOT_VERIFIED if v.passed else Standing.BLOCKS
    if v.outcome == "skipped":
        return Standing.NOT_VERIFIED
    if v.outcome in ("passed", "xfailed"):
        return Standing.VERIFIED
    return Standing.BLOCKS  # failed, error, xpassed, not run, and any outcome this version does not know


def is_failing(v: VerdictLike) -> bool:
    """The verdict blocks the release (an unknown outcome does too)."""
    return standing(v) is Standing.BLOCKS


def is_unverified(v: VerdictLike) -> bool:
    """The check verified nothing, without failing the gate (skipped; inconclusive let pass)."""
    return standing(v) is Standing.NOT_VERIFIED


def junit_result(v: VerdictLike) -> Literal["failure", "error", "skipped"] | None:
    """The junit XML element of ``v``'s testcase (``None``: a passing testcase)."""
    if is_failing(v):
        return "error" if v.outcome in ("error", "not run") else "failure"
    return "skipped" if v.outcome in ("skipped", "xfailed") else None


def sort_failing(verdicts: Iterable[V]) -> list[V]:
    """The blocking verdicts of ``verdicts``, in the order of :data:`FAILING` (stable)."""
    rank = {o: i for i, o in enumerate(FAILING)}
    return sorted((v for v in verdicts if is_failing(v)), key=lambda v: rank.get(v.outcome, len(rank)))


# ------------------------------------------------------------------------------------ the run


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


@dataclass(frozen=True)
class RunVerdict:
    """What a run's verdicts add up to (:func:`run_verdict`).

    ``counts``: verdicts per outcome (every outcome of :data:`OUTCOMES`, then any unknown one);
    ``total``: verdicts; ``planned``: checks planned (``None``: not known); ``of``: the number a
    sentence counts against (``planned`` when known and not below ``total``); ``missing``:
    planned checks without a verdict; ``n_failing``: verdicts that block; ``unverified``: the
    not-verified verdicts per outcome (``missing`` not included).
    """

    status: Status
    counts: dict[str, int]
    total: int
    planned: int | None
    n_failing: int
    unverified: dict[str, int] = field(default_factory=dict)

    @property
    def missing(self) -> int:
        return max(0, (self.planned or 0) - self.total)

    @property
    def of(self) -> int:
        return self.planned if self.planned is not None and self.planned >= self.total else self.total

    @property
    def n_unverified(self) -> int:
        """Checks not verified: skipped, inconclusive let pass, and planned without a verdict."""
        return sum(self.unverified.values()) + self.missing

    @property
    def exit_code(self) -> int:
        """1 when the gate fails (``FAIL``), else 0: what ``qrel merge`` exits with."""
        return 1 if self.status == "FAIL" else 0

    @property
    def headline(self) -> str:
        """The banner's sentence."""
        if self.status == "FAIL":
            return f"{self.n_failing} of {self.of} checks block the release."
        if self.status == "NO CHECKS":
            return "No checks were planned or run: nothing was verified."
        if self.status == "INCOMPLETE":
            return "No check failed, but the run did not verify everything."
        xf = self.counts.get("xfailed", 0)
        text = f"All {_plural(self.of, 'check')} verified: {self.counts.get('passed', 0)} passed"
        return text + (f", {xf} failed as expected (see Expected failures)." if xf else ".")

    @property
    def unverified_line(self) -> str:
        """``"N of M checks did not run or could not decide (...): not verified."`` (``""``: all verified)."""
        if not self.n_unverified:
            return ""
        parts = [f"{n} {o}" for o, n in self.unverified.items()]
        if self.missing:
            parts.append(f"{self.missing} planned without a result")
        return f"{self.n_unverified} of {self.of} checks did not run or could not decide ({', '.join(parts)}): not verified."

    def lines(self) -> list[str]:
        """The terminal summary's lines: ``qrel: FAIL: 2 of 40 checks block the release.`` and
        the not-verified line when there is one."""
        out = [f"qrel: {self.status}: {self.headline}"]
        if self.unverified_line:
            out.append(f"qrel: {self.unverified_line}")
        return out


def run_verdict(verdicts: Iterable[VerdictLike], planned: int | None = None) -> RunVerdict:
    """The :class:`RunVerdict` of ``verdicts`` when ``planned`` checks were planned (``None``:
    unknown; then only the verdicts count)."""
    vs: Sequence[VerdictLike] = list(verdicts)
    counts = dict.fromkeys(OUTCOMES, 0)
    unverified: dict[str, int] = {}
    n_failing = 0
    for v in vs:
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
        where = standing(v)
        n_failing += where is Standing.BLOCKS
        if where is Standing.NOT_VERIFIED:
            unverified[v.outcome] = unverified.get(v.outcome, 0) + 1
    status: Status
    if n_failing:
        status = "FAIL"
    elif not vs and not planned:
        status = "NO CHECKS"
    elif unverified or (planned is not None and planned > len(vs)) or not vs:
        status = "INCOMPLETE"
    else:
        status = "PASS"
    return RunVerdict(status=status, counts=counts, total=len(vs), planned=planned, n_failing=n_failing, unverified=unverified)
