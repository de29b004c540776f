"""Suite files as pytest collectors and checks as items, following pytest's YAML example.

Node ids: ``<suite file>::<model>::<quantizer>::<metric>[(<score>)] on <dataset> <bound>``, e.g.
``suites/demo.yaml::vit_digits::W4A4::aupr_out(msp) on textures delta<=12%``. They contain no
``[`` (pytest reads one as the start of parameters), so ``--lf``, ``--sw``, ``--deselect``, pasting an
id back and junit names all work. :func:`unit_scope` maps an id to the unit it reads.

A :class:`CheckItem` evaluates its check through the session's engine and records the verdict in
its ``user_properties`` (what reaches the controller under xdist, and junit XML). What a raised
:class:`~pytest_qrel.errors.QrelError` means is :func:`pytest_qrel.verdicts.verdict_for_error`'s
decision, the same as :func:`pytest_qrel.run`'s; a failure is one line (:meth:`repr_failure`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ..errors import QrelError
from ..results import Verdict
from ..spec import PlannedCheck, load_suite, plan
from .state import BASELINE_FOLDERS, PLANNED, PROP_PREFIX, STATE, relative


class CheckFailed(AssertionError):
    """A check's bound was violated; the message is the one-line verdict with its numbers."""


class QrelInconclusiveWarning(UserWarning):
    """A check passed only because the suite lets inconclusive checks pass with a warning."""


class QrelUnreadWarning(UserWarning):
    """A suite declares a model, quantizer or dataset that no selected check reads."""


def collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    """A :class:`SuiteFile` for a ``--qrel-suite`` file or one matching ``qrel_suite_glob``."""
    if file_path.suffix not in (".yaml", ".yml"):
        return None
    config = parent.config
    if file_path.resolve() in config.stash[STATE].suites or _matches_glob(config, file_path):
        return SuiteFile.from_parent(parent, path=file_path)
    return None


def _matches_glob(config: pytest.Config, path: Path) -> bool:
    try:
        rel = path.resolve().relative_to(config.rootpath.resolve()).as_posix()
    except ValueError:
        return False
    return any(fnmatch.fnmatch(rel, g) for g in config.getini("qrel_suite_glob").split())


def _one_line(excinfo: pytest.ExceptionInfo[BaseException], config: pytest.Config) -> str | None:
    if isinstance(excinfo.value, (QrelError, CheckFailed)) and config.getoption("tbstyle") not in ("long", "native"):
        return str(excinfo.value)
    return None


#: The one-line errors shown so far in this process, each with the node id that showed it: a unit's
#: error (a broken data folder) fails every check that reads the unit, and is printed in full once.
_SHOWN = pytest.StashKey[dict[str, str]]()


def _line_repr(path: Path, line: int | None, text: str) -> Any:
    """``--tb=line``: pytest prints a failure's ``longrepr`` and then its crash line; a plain string
    is both (printed twice). An exception repr with no traceback entries prints only its crash
    line, ``suites/x.yaml:12: <message>`` (the check's line in the suite). pytest has no public
    type for it; without the private one, the plain string (printed twice) is the fallback."""
    try:
        from _pytest._code.code import ReprExceptionInfo, ReprFileLocation, ReprTraceback
    except ImportError:  # pragma: no cover - a pytest that moved them
        return text
    return ReprExceptionInfo(reprtraceback=ReprTraceback([], None, "line"),
                             reprcrash=ReprFileLocation(str(path), line or 0, text))


class SuiteFile(pytest.File):
    """A suite YAML file: validated, planned, and split into model / quantizer collectors."""

    def collect(self) -> Any:
        suite = load_suite(relative(self.path, self.config.invocation_params.dir))
        from ..baselines import claim_baseline_folder  # two suites with one name would share one baseline folder

        folders = self.config.stash.setdefault(BASELINE_FOLDERS, {})
        claim_baseline_folder(folders, suite.name, suite.path)
        planned = plan(suite)
        self._unread(suite, planned)
        state = self.config.stash[STATE]
        from ..shards import planned_check_count  # checks only: report-only items judge nothing

        state.planned[suite.name] = state.planned.get(suite.name, 0) + planned_check_count(planned)
        state.suites_loaded[suite.name] = suite
        state.files.setdefault(suite.name, self.nodeid)
        from ..spec.plan import in_scope_order

        # Items of one scope are adjacent, so a unit's module and arrays are released soon after
        # its scope's last check runs.
        models: dict[str, dict[str, list[PlannedCheck]]] = {}
        for p in in_scope_order(planned):
            models.setdefault(p.model, {}).setdefault(p.quantizer, []).append(p)
        for model, quantizers in models.items():
            yield ModelNode.from_parent(self, name=model, quantizers=quantizers)

    def _unread(self, suite: Any, planned: list[PlannedCheck]) -> None:
        """Nothing declared is silently skipped: a model, quantizer or dataset no item reads is a
        warning naming it and the suite file (an error under ``--qrel-strict``)."""
        from ..errors import SpecError
        from ..spec.report_keys import unread_declarations

        from .state import worker_id

        # Every xdist worker collects the same plan: the first one alone warns, so a run shows each
        # warning once (a replaced worker, gw2 and on, repeats nothing). Strict errors stay everywhere.
        quiet = worker_id(self.config) not in (None, "gw0")
        for line in unread_declarations(suite, planned):
            if self.config.getoption("qrel_strict"):
                raise SpecError(line, file=suite.path, fix="or run without --qrel-strict to only warn")
            if not quiet:
                warnings.warn(QrelUnreadWarning(f"{suite.path}: {line}"), stacklevel=1)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        return _one_line(excinfo, self.config) or super().repr_failure(excinfo)


class ModelNode(pytest.Collector):
    """The checks of one model: ``vit_digits``."""

    def __init__(self, *, quantizers: dict[str, list[PlannedCheck]], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.quantizers = quantizers

    def collect(self) -> Any:
        for q, planned in self.quantizers.items():
            yield QuantizerNode.from_parent(self, name=q, planned=planned)


class QuantizerNode(pytest.Collector):
    """The checks of one (model, quantizer): ``vit_digits::W4A4``."""

    def __init__(self, *, planned: list[PlannedCheck], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned

    def collect(self) -> Any:
        for p in self.planned:
            yield CheckItem.from_parent(self, name=p.name, planned=p)


_DEFAULTS = {f.name: f.default for f in dataclasses.fields(Verdict) if f.default is not dataclasses.MISSING}


class CheckItem(pytest.Item):
    """One check on one unit; reads outputs through the session's engine, never runs twice."""

    def __init__(self, *, planned: PlannedCheck, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.planned = planned
        self.stash[PLANNED] = planned
        self.add_marker(pytest.mark.qrel)
        check = planned.check
        if check.expect == "fail":
            reason = check.reason or f"expected to fail: {check.text}"
            self.add_marker(pytest.mark.xfail(reason=reason, strict=True, raises=CheckFailed))

    def runtest(self) -> None:
        __tracebackhide__ = True
        from ..verdicts import settle_inconclusive, verdict_for_error
        from .engine_setup import engine

        p = self.planned
        try:
            verdict = engine(self.config).evaluate(p)
        except QrelError as exc:
            verdict = verdict_for_error(p, exc, strict=self.config.getoption("qrel_strict"))
            self._record(verdict)
            if verdict.outcome == "skipped":
                pytest.skip(verdict.message)  # reported at the check's line in the suite (pytest_runtest_makereport)
            raise
        # The interval straddles the bound: the suite's policy (or --qrel-inconclusive) decides.
        policy = self.config.getoption("qrel_inconclusive") or p.suite.inconclusive
        settle_inconclusive(p, verdict, policy)
        if verdict.outcome == "inconclusive" and policy == "warn":
            warnings.warn(QrelInconclusiveWarning(verdict.message), stacklevel=1)
        self._record(verdict)
        if not verdict.passed:
            raise CheckFailed(verdict.message)

    def _record(self, verdict: Verdict) -> None:
        verdict.nodeid = self.nodeid
        # Plain types only (to_dict): xdist silently drops reports carrying numpy scalars.
        for key, value in verdict.to_dict().items():
            if key not in _DEFAULTS or value != _DEFAULTS[key]:  # optional fields only when set: small junit
                self.user_properties.append((PROP_PREFIX + key, value))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        text = _one_line(excinfo, self.config)
        if text is None:
            return super().repr_failure(excinfo)
        if isinstance(excinfo.value, QrelError):
            first = self.config.stash.setdefault(_SHOWN, {}).setdefault(text, self.nodeid)
            if first != self.nodeid:
                text = f"the same error as {first}"
        if self.config.getoption("tbstyle") == "line":
            path, line, _ = self.reportinfo()
            return _line_repr(relative(path, self.config.invocation_params.dir), None if line is None else line + 1, text)
        return text

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """The check's line in the suite, and the headline of its failure (``vit W8A8: ece on digits
        value<=0.05``). The headline is not the tail of the node id on purpose: ``pytest -v`` prints
        an item's id with ``.`` replaced by ``::`` in the part that equals that tail, and
        ``value<=0::05`` selects nothing; with another headline ``-v`` prints the id as it is."""
        where = self.planned.check.where
        line = (where.line - 1) if where and where.line else None
        return self.path, line, f"{self.planned.model} {self.planned.quantizer}: {self.name}"


def skip_at_check(item: CheckItem, report: pytest.TestReport) -> None:
    """A check skipped for missing data is reported at its line in the suite (``-rs``: ``SKIPPED
    [1] suites/mini.yaml:12: dataset 'ghost' ...``), not at the line of the plugin that skipped."""
    longrepr = report.longrepr
    if report.skipped and not hasattr(report, "wasxfail") and isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, line, _ = item.reportinfo()
        if line is not None:
            report.longrepr = (str(path), line + 1, longrepr[2])


# ---------------------------------------------------------------------------- node ids -> suites, units
_SUITES = pytest.StashKey[dict[str, Any]]()


def suite_of(config: pytest.Config, file: str) -> tuple[Any, dict[tuple[str, str], str]] | None:
    """The suite behind a node id's file part and its scopes (loaded once per session; no torch)."""
    cache = config.stash.setdefault(_SUITES, {})
    if file not in cache:
        from ..spec.plan import scopes

        try:
            suite = load_suite(relative(config.rootpath / file, config.invocation_params.dir))
            cache[file] = (suite, scopes(plan(suite)))
        except QrelError:
            cache[file] = None
    return cache[file]


def suite_name_of(config: pytest.Config, nodeid: str) -> str:
    suite = suite_of(config, nodeid.split("::", 1)[0])
    return suite[0].name if suite else ""


def is_check_id(nodeid: str) -> bool:
    """The node id of a check (``suite.yaml::model::quantizer::check``), not of another test."""
    return nodeid.count("::") == 3 and nodeid.split("::", 1)[0].endswith((".yaml", ".yml"))


def unit_scope(nodeid: str, config: pytest.Config | None = None) -> str:
    """The xdist scope of a node id: every check reading one unit -- its post-hoc variants and the
    checks comparing it with another quantizer included -- goes to one worker, so each forward
    pass and calibration runs once across workers. Other node ids are their own scope."""
    if not is_check_id(nodeid):
        return nodeid
    file, model, quantizer = nodeid.split("::")[:3]
    found = suite_of(config, file) if config is not None else None
    if found is not None and (model, quantizer) in found[1]:
        return f"{file}::{found[1][(model, quantizer)]}"
    return f"{file}::{model}::{quantizer.split('+', 1)[0]}"


def checks_of(items: list[pytest.Item]) -> Iterator[CheckItem]:
    return (i for i in items if isinstance(i, CheckItem))
