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

The run (:func:`run_verdict`) counts **checks** only. A report-only item (a suite's ``report:``,
:func:`is_report_only`) computes numbers for the report and judges nothing: it is never counted
as a check nor as passed, and :attr:`RunVerdict.tally` names such items apart ("+ 6 report-only
items"); one that errors or did not run still blocks (its pytest item fails, and the report
would lack what the suite asked for).

=================  ==========================================================  =========
run status         when                                                        exit code
=================  ==========================================================  =========
``FAIL``           any verdict blocks (a check, or a report-only item)         1
``NOT VERIFIED``   checks ran, none blocks, and none was verified: each was    1 (*)
                   skipped (data missing) or inconclusive under a policy
                   that lets it pass
``NO CHECKS``      nothing was planned or run                                  1 (*)
``INCOMPLETE``     some checks verified, but something was not (skipped,       0
                   inconclusive let pass, planned checks without a verdict)
``PASS``           every planned check produced a verdict and passed or        0
                   failed as expected
=================  ==========================================================  =========

(*) 0 where the user accepts a run that verifies nothing (``--qrel-allow-skip-all``,
``qrel merge --allow-skip-all``): e.g. a CI job on a machine without the datasets.

Decision (recorded here and in ``docs/exit-codes.md``): a run in which nothing was verified does
not pass the gate. A green exit code means "verified", so a suite whose every check was skipped
(an unset ``QREL_*`` variable, a dataset root absent on this machine) or could not decide must
not be green by default, in a run and in ``qrel merge`` of its shards alike. One shard
(``--qrel-shard``) does not apply this rule to itself: whether the run verified anything depends on
every shard, so the merge decides (a shard whose data is missing beside one that verified is an
``INCOMPLETE`` run, as the same run unsharded is); its failures fail it as usual. Checks
that ``-k`` / ``--deselect`` leave out are not skipped: they are "planned without a result"
(``INCOMPLETE``, exit 0: the user chose them), and a pytest run that collected nothing keeps
pytest's own exit code (5). :meth:`RunVerdict.exit_code` is the one function that turns a run's verdicts
into the exit code: the plugin sets pytest's exit status from it, and ``qrel merge`` exits with it.
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
    "REPORT_ONLY",
    "InconclusivePolicy",
    "Outcome",
    "RunVerdict",
    "Standing",
    "Status",
    "is_failing",
    "is_report_only",
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

Status = Literal["PASS", "FAIL", "INCOMPLETE", "NOT VERIFIED", "NO CHECKS"]


class VerdictLike(Protocol):
    """What the policy reads of a :class:`pytest_qrel.results.Verdict`."""

    @property
    def outcome(self) -> str: ...

    @property
    def passed(self) -> bool: ...

    @property
    def metric(self) -> str: ...


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

#: The metric (and item name) of a report-only item's verdict: ``pytest_qrel.spec.schema.REPORT_ONLY``
#: (written out here because this module imports nothing of the package; a test holds them equal).
REPORT_ONLY = "report-only"


def is_report_only(v: VerdictLike) -> bool:
    """``v`` is a report-only item's verdict (a suite's ``report:``): it computes numbers for the
    report and judges nothing, so it is not a check (see the module docstring)."""
    return v.metric == REPORT_ONLY


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _outcome_list(counts: dict[str, int]) -> str:
    """``"1 error, 2 passed"``: the non-zero counts, outcomes in alphabetical order."""
    return ", ".join(f"{n} {o}" for o, n in sorted(counts.items()) if n)


@dataclass(frozen=True)
class RunVerdict:
    """What a run's verdicts add up to (:func:`run_verdict`). Everything here counts **checks**;
    report-only items only in ``report_only`` and ``report_only_failing``.

    ``counts``: check verdicts per outcome (every outcome of :data:`OUTCOMES`, then any unknown
    one); ``total``: check verdicts; ``planned``: checks planned (``None``: not known); ``of``: the
    number a sentence counts against (``planned`` when known and not below ``total``);
    ``missing``: planned checks without a verdict; ``n_failing``: check verdicts that block;
    ``unverified``: the not-verified check verdicts per outcome (``missing`` not included);
    ``n_verified``: checks verified; ``report_only``: report-only items per outcome (non-zero
    only); ``report_only_failing``: report-only items that block.
    """

    status: Status
    counts: dict[str, int]
    total: int
    planned: int | None
    n_failing: int
    unverified: dict[str, int] = field(default_factory=dict)
    n_verified: int = 0
    report_only: dict[str, int] = field(default_factory=dict)
    report_only_failing: int = 0

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
    def n_report_only(self) -> int:
        return sum(self.report_only.values())

    @property
    def n_blocking(self) -> int:
        """Verdicts that block the release: checks and report-only items."""
        return self.n_failing + self.report_only_failing

    def exit_code(self, *, allow_nothing_verified: bool = False) -> int:
        """The gate's exit code: 1 for ``FAIL``; 1 for ``NOT VERIFIED`` and ``NO CHECKS`` unless
        ``allow_nothing_verified`` (``--qrel-allow-skip-all``, ``qrel merge --allow-skip-all``);
        else 0. The one rule: pytest's exit status (the plugin) and ``qrel merge`` both read it."""
        if self.status == "FAIL":
            return 1
        if self.status in ("NOT VERIFIED", "NO CHECKS"):
            return 0 if allow_nothing_verified else 1
        return 0

    @property
    def tally(self) -> str:
        """The count every output prints (terminal, ``qrel merge``, HTML banner, Markdown summary):
        ``"76 checks (of 80 planned): 1 error, 75 passed + 6 report-only items"``. Report-only
        items are named apart, with their outcomes only when one did not pass (never as passed)."""
        planned = f" (of {self.planned} planned)" if self.planned is not None and self.planned != self.total else ""
        text = f"{_plural(self.total, 'check')}{planned}"
        if self.total:
            text += f": {_outcome_list(self.counts)}"
        if self.report_only:
            others = {o: n for o, n in self.report_only.items() if o != "passed"}
            text += f" + {_plural(self.n_report_only, 'report-only item')}" + (f" ({_outcome_list(others)})" if others else "")
        return text

    @property
    def headline(self) -> str:
        """The banner's sentence."""
        if self.status == "FAIL":
            parts = [f"{self.n_failing} of {self.of} checks"] if self.n_failing else []
            if self.report_only_failing:
                parts.append(f"{self.report_only_failing} of {_plural(self.n_report_only, 'report-only item')}")
            return f"{' and '.join(parts)} block the release."
        if self.status == "NO CHECKS":
            return "No checks were planned or run: nothing was verified."
        if self.status == "NOT VERIFIED":
            return f"No check was verified: each of the {_plural(self.total, 'check')} that ran was skipped or could not decide."
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
            # the usual cause first: a check the user did not select (-k, node ids) is not run, not skipped
            parts.append(f"{self.missing} planned without a result: not selected in this run, or not reached")
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
    unknown; then only the verdicts count). ``planned`` counts checks, not report-only items."""
    vs: Sequence[VerdictLike] = list(verdicts)
    counts = dict.fromkeys(OUTCOMES, 0)
    unverified: dict[str, int] = {}
    report_only: dict[str, int] = {}
    n_failing = n_verified = report_only_failing = total = 0
    for v in vs:
        where = standing(v)
        if is_report_only(v):
            report_only[v.outcome] = report_only.get(v.outcome, 0) + 1
            report_only_failing += where is Standing.BLOCKS
            continue
        total += 1
        counts[v.outcome] = counts.get(v.outcome, 0) + 1
        n_failing += where is Standing.BLOCKS
        n_verified += where is Standing.VERIFIED
        if where is Standing.NOT_VERIFIED:
            unverified[v.outcome] = unverified.get(v.outcome, 0) + 1
    status: Status
    if n_failing or report_only_failing:
        status = "FAIL"
    elif not total and not planned:
        status = "NO CHECKS"
    elif total and not n_verified:
        status = "NOT VERIFIED"
    elif unverified or (planned is not None and planned > total) or not total:
        status = "INCOMPLETE"
    else:
        status = "PASS"
    return RunVerdict(status=status, counts=counts, total=total, planned=planned, n_failing=n_failing, unverified=unverified,
                      n_verified=n_verified, report_only=report_only, report_only_failing=report_only_failing)
