"""The pytest layer: options, suite collection, items, reporting hooks and xdist glue.

This is the only module of pytest-qrel that imports pytest; everything it does is a thin call into
the library (:func:`pytest_qrel.load_suite`, :func:`pytest_qrel.plan`, :class:`pytest_qrel.Engine`,
:mod:`pytest_qrel.report`, :mod:`pytest_qrel.shards`). Heavy imports (torch, timm) happen only
when an item runs.

Node ids: ``<suite file>::<model>::<quantizer>::<metric>[(<score>)] on <dataset> <bound>``, e.g.
``suites/demo.yaml::vit_digits::W4A4::aupr_out(msp) on textures delta<=12%``. They contain no
``[`` (pytest reads one as the start of parameters), so ``--lf``, ``--sw``, ``--deselect``, pasting an
id back and junit names all work.

A green run means every selected check ran and held: a check that produced no verdict (a crashed
xdist worker, ``-x``, an interrupted run) is ``not run`` and fails the run; a run in which every
check was skipped (data missing) fails with one line naming what is missing, unless
``--qrel-allow-skip-all``.

The exit code is the verdict: a serial run's checks execute in a child process
(:mod:`pytest_qrel.supervisor`), so user code that ends its process (``os._exit(0)``, a segfault,
SIGKILL) cannot end the run green; under xdist the controller sees a worker's death, and a
watchdog (:mod:`pytest_qrel.xdist_watchdog`) notices one whose channel stays open. SIGTERM stops
the run like Ctrl-C: the summary, report and results file are written red before it exits.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .errors import DataMissingError, QrelError, UserCodeError
from .results import UnitMetrics, Verdict
from .spec import PlannedCheck, load_suite, plan

PROP_PREFIX = "qrel."


class CheckFailed(AssertionError):
    """A check's bound was violated; the message is the one-line verdict with its numbers."""


class QrelInconclusiveWarning(UserWarning):
    """A check passed only because the suite lets inconclusive checks pass with a warning."""


@dataclass
class _State:
    suites: list[Path] = field(default_factory=list)
    expected: dict[str, str] = field(default_factory=dict)  # nodeid -> suite name
    planned: dict[str, int] = field(default_factory=dict)  # suite name -> planned checks (whole suite)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    crashed: set[str] = field(default_factory=set)
    units: dict[tuple[str, str, str], UnitMetrics] = field(default_factory=dict)
    engine: Any = None
    threads: int | None = None
    threads_before: int | None = None
    started: float = field(default_factory=time.time)
    suites_loaded: dict[str, Any] = field(default_factory=dict)  # suite name -> Suite (run info)
    selected: list[PlannedCheck] = field(default_factory=list)  # the checks this process will run
    files: dict[str, str] = field(default_factory=dict)  # suite name -> its file as written in node ids
    ended: str = ""  # why the run ended without finishing (the supervised child's death), if it did
    ended_line: str = ""  # the one line the summary prints about it
    shard_empty: bool = False  # --qrel-shard gave this shard no unit of the collected suites
    signals: Any = None  # the session's InterruptHandlers (SIGTERM), where installed


STATE = pytest.StashKey[_State]()
PLANNED = pytest.StashKey[PlannedCheck]()
BASELINE_FOLDERS = pytest.StashKey[dict[str, Path]]()  # suite name (case-folded) -> the suite file whose baselines it names


# ---------------------------------------------------------------------------- options
def _shard(value: str) -> tuple[int, int]:
    try:
        k, n = (int(x) for x in value.split("/"))
    except ValueError:
        raise pytest.UsageError(f"--qrel-shard {value}: expected K/N with integers, e.g. 1/4") from None
    if not 1 <= k <= n:
        raise pytest.UsageError(f"--qrel-shard {value}: K must be between 1 and N (shards are numbered 1..N)")
    return k, n


def _workers(value: str) -> int | None:
    if value == "auto":
        return None
    if value.isdigit():
        return int(value)
    raise pytest.UsageError(f"--qrel-workers {value}: expected 'auto' or a number of DataLoader worker processes (0 = none)")


def _device(value: str) -> str:
    import re

    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", value):
        raise pytest.UsageError(f"--qrel-device {value}: expected auto, cpu, cuda, cuda:K or mps")
    if value not in ("auto", "cpu"):  # checked once, here: not blamed on the first stage that moves a tensor
        from .engine.loading import device_problem

        if (problem := device_problem(value)) is not None:
            raise pytest.UsageError(problem)
    return value


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qrel", "pytest-qrel: reliability gates for quantized vision models")
    group.addoption("--qrel-suite", action="append", default=[], metavar="PATH",
                    help="run this reliability suite (YAML); may be given several times. Only suites are then collected.")
    group.addoption("--qrel-report", metavar="PATH", default=None,
                    help="write a self-contained HTML audit report here (and a Markdown summary next to it, .md).")
    group.addoption("--qrel-results", metavar="PATH", default=None,
                    help="write the run's results (verdicts, report tables, environment, suite hashes) as JSON, for 'qrel merge'.")
    group.addoption("--qrel-shard", metavar="K/N", default=None, type=_shard,
                    help="run shard K of N: a deterministic, cost-balanced 1/N of the units (all checks of a unit together).")
    group.addoption("--qrel-update-baselines", action="store_true", default=False,
                    help="(re)write the FP32 baselines of the collected suites before checking against them.")
    group.addoption("--qrel-strict", action="store_true", default=False,
                    help="treat missing datasets as errors instead of skipping their checks.")
    group.addoption("--qrel-allow-skip-all", action="store_true", default=False,
                    help="let a run in which every check was skipped (data missing) pass; by default it fails.")
    group.addoption("--qrel-inconclusive", default=None, choices=("fail", "warn", "pass"),
                    help="what a check demanding confidence whose interval straddles its bound does (default: the suite's "
                         "'inconclusive:', fail): fail the run, pass with a warning, or pass.")
    group.addoption("--qrel-device", default="auto", metavar="DEVICE", type=_device,
                    help="torch device: auto (cuda, else mps, else cpu), cpu, cuda, cuda:K or mps; under -n, worker K uses GPU K mod count.")
    group.addoption("--qrel-workers", default="auto", metavar="N", type=_workers,
                    help="DataLoader worker processes that decode image files (default auto: from the cores per pytest worker).")
    group.addoption("--qrel-compile", action="store_true", default=False,
                    help="run the activation fake-quantizers through torch.compile (bit-identical logits; pays off on large datasets).")
    group.addoption("--qrel-no-cache", action="store_true", default=False,
                    help="do not read or write the outputs cache and decoded-image store (.pytest_cache/d/qrel).")
    parser.addini("qrel_suite_glob", "suite files collected by path (relative to rootdir)", default="suites/*.yaml")
    parser.addini("qrel_baseline_dir", "directory of stored FP32 baselines (relative to rootdir)", default="baselines")


def _xdist_workers() -> int:
    return int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)


_SESSIONS = 0  # pytest sessions configured in this process; > 1: nested (pytester's in-process runs)
_NESTED = pytest.StashKey[bool]()


def _check_output_paths(config: pytest.Config) -> None:
    """``--qrel-report`` / ``--qrel-results`` never overwrite a file pytest-qrel did not write."""
    from .shards import report_path_problem, results_path_problem

    report, results = config.getoption("qrel_report"), config.getoption("qrel_results")
    if report and (problem := report_path_problem(Path(report))):
        raise pytest.UsageError(f"--qrel-report {report}: {problem}")
    if results and (problem := results_path_problem(Path(results))):
        raise pytest.UsageError(f"--qrel-results {results}: {problem}")
    shard = config.getoption("qrel_shard")
    if shard and not results:
        from .shards import default_results_path

        default = config.rootpath / default_results_path(shard)
        if problem := results_path_problem(default):
            raise pytest.UsageError(f"--qrel-shard {shard[0]}/{shard[1]} writes its results to {default} without --qrel-results: {problem}")


def pytest_configure(config: pytest.Config) -> None:
    global _SESSIONS
    config.addinivalue_line("markers", "qrel: an item generated by pytest-qrel from a reliability suite")
    _SESSIONS += 1
    config.stash[_NESTED] = _SESSIONS > 1
    if not hasattr(config, "workerinput"):
        _check_output_paths(config)
    state = _State()
    for raw in config.getoption("qrel_suite") or []:
        path = Path(raw)
        if not path.is_file():
            raise pytest.UsageError(f"--qrel-suite {raw}: no such file (give the path of a suite YAML file)")
        state.suites.append(path.resolve())
    if state.suites and config.args_source != pytest.Config.ArgsSource.ARGS:
        # Only the suites' items run: the project's own tests (testpaths) are not collected
        # alongside. Node ids given on the command line (a pasted id, --lf's) are kept as given.
        config.args[:] = [str(p) for p in state.suites]
    workers = _xdist_workers()
    if workers > 1 and "OMP_NUM_THREADS" not in os.environ:
        state.threads = max(1, (os.cpu_count() or 1) // workers)  # avoid oversubscribing the cores
    config.stash[STATE] = state
    config.pluginmanager.register(_Recorder(config), "qrel-recorder")
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(_SessionGuard(config), "qrel-session-guard")
    if config.pluginmanager.hasplugin("xdist") and not hasattr(config, "workerinput"):
        config.pluginmanager.register(_XdistController(config), "qrel-xdist-controller")


def _relative(path: Path, start: Path) -> Path:
    try:
        rel = Path(os.path.relpath(path, start))
    except ValueError:
        return path
    return path if rel.parts[:1] == ("..",) else rel


def _resolve_device(config: pytest.Config) -> str:
    import torch

    device = config.getoption("qrel_device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else ("mps" if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available() else "cpu")
    workerinput = getattr(config, "workerinput", None)
    if device == "cuda" and workerinput and torch.cuda.device_count() > 1:
        k = int(str(workerinput.get("workerid", "gw0")).lstrip("gw") or 0)
        device = f"cuda:{k % torch.cuda.device_count()}"
    return device


def _engine(config: pytest.Config) -> Any:
    state = config.stash[STATE]
    if state.engine is None:
        from .engine import Engine

        if state.threads:
            import torch

            state.threads_before = torch.get_num_threads()
            torch.set_num_threads(state.threads)
        cache_dir = None
        if not config.getoption("qrel_no_cache") and getattr(config, "cache", None) is not None:
            from .cache import cache_folder

            # a read-only or full .pytest_cache: one warning, then no cache
            cache_dir = cache_folder(lambda: config.cache.mkdir("qrel"), lambda message: _warn_line(config, message))
        workerinput = getattr(config, "workerinput", None)
        invocation = config.invocation_params.dir
        workers = config.getoption("qrel_workers")
        if workers is None:  # one decoding process per spare core of this pytest worker
            workers = max(0, min(4, (os.cpu_count() or 1) // _xdist_workers() - 1))
        progress = config.stash.get(_PROGRESS, None)
        state.engine = Engine(
            baseline_dir=_relative(config.rootpath / config.getini("qrel_baseline_dir"), invocation),
            cache_dir=cache_dir,
            update_baselines=config.getoption("qrel_update_baselines"),
            device=_resolve_device(config),
            run_id=workerinput.get("testrunuid") if workerinput else None,
            workers=workers,
            progress=progress,
            warn=lambda message: _warn_line(config, message),
            compile=config.getoption("qrel_compile"),
        )
        # Every selected check is announced, so each unit computes what all its checks read, once,
        # and is released after its last check.
        state.engine.expect(state.selected)
    return state.engine


def _warn_line(config: pytest.Config, message: str) -> None:
    tr = config.pluginmanager.get_plugin("terminalreporter")
    if tr is not None and not hasattr(config, "workerinput"):
        capture = config.pluginmanager.get_plugin("capturemanager")  # warnings come mid-test: not into its capture
        with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
            tr.write_line(message, yellow=True)
    else:
        sys.stderr.write(message + "\n")


# ---------------------------------------------------------------------------- progress
class _Progress:
    """Progress of passes and units. On a terminal, one line rewritten in place while a pass runs
    (unit, dataset, images done / total, images/s, ETA), then the line pytest was writing is put
    back; otherwise one line per finished unit. Nothing under ``-q``. An xdist worker writes its
    line to a status file that the controller shows."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.tr = config.pluginmanager.get_plugin("terminalreporter")
        self.capture = config.pluginmanager.get_plugin("capturemanager")
        self.tty = bool(self.tr is not None and self.tr.isatty)
        self.worker = getattr(config, "workerinput", {}).get("workerid")
        self.status = _status_dir(config)
        self.last = 0.0
        self.start: dict[str, float] = {}
        self.saved: str | None = None

    def _write(self, fn: Any) -> None:
        if self.capture is not None:
            with self.capture.global_and_fixture_disabled():
                fn()
        else:
            fn()

    def update(self, what: str, done: int, total: int, unit: str = "images") -> None:
        """A pass advanced (``done`` of ``total`` images), or a calibration / QAT (``unit`` steps)."""
        now = time.monotonic()
        if done == 0:
            self.start[what] = now
        elapsed = max(1e-9, now - self.start.get(what, now))
        rate = done / elapsed if done else 0.0
        finished = done >= total
        if not finished and now - self.last < 0.5:
            return
        self.last = now
        eta = f", ETA {int((total - done) / rate)} s" if rate and not finished else ""
        per = "img/s" if unit == "images" else f"{unit}/s"
        line = f"qrel: {what}: {done}/{total} {unit}, {rate:.0f} {per}{eta}"
        if self.worker is not None:
            self._status(line, finished)
            return
        if self.tr is None or not self.tty:
            return
        tw = self.tr._tw
        if finished:
            if self.saved is not None:
                saved = self.saved
                self._write(lambda: self.tr.rewrite(saved, erase=True))
                self.saved = None
        else:
            if self.saved is None:
                self.saved = getattr(tw, "_current_line", "")
            self._write(lambda: self.tr.rewrite(line[: max(20, tw.fullwidth - 1)], erase=True))

    def unit(self, what: str, seconds: float, passes: int, images: int) -> None:
        """A unit finished: ``passes`` passes over ``images`` images in ``seconds``."""
        line = f"qrel: {what}: {passes} passes, {images} images in {seconds:.1f} s"
        if self.worker is not None:
            self._status(line, True)
        elif self.tr is not None and not self.tty and passes:
            self._write(lambda: self.tr.write_line(line))

    def _status(self, line: str, finished: bool) -> None:
        if self.status is None:
            return
        from .io import atomic_write_text

        try:
            atomic_write_text(self.status / f"{self.worker}.json", json.dumps({"line": line, "finished": finished, "time": time.time()}))
        except OSError:
            pass


_PROGRESS = pytest.StashKey[_Progress]()


def _status_dir(config: pytest.Config) -> Path | None:
    cache = getattr(config, "cache", None)
    if cache is None:
        return None
    workerinput = getattr(config, "workerinput", None)
    run = workerinput.get("testrunuid") if workerinput else config.stash.get(_RUN_ID, "")
    try:
        return cache.mkdir("qrel-status") / str(run or "run")
    except OSError:  # a read-only or full .pytest_cache: no worker status lines (the engine warns once)
        return None


_RUN_ID = pytest.StashKey[str]()


def _quiet(config: pytest.Config) -> bool:
    return config.get_verbosity() < 0


# ---------------------------------------------------------------------------- collection
def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
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
    if isinstance(excinfo.value, (QrelError, CheckFailed)) and config.option.tbstyle not in ("long", "native"):
        return str(excinfo.value)
    return None


class SuiteFile(pytest.File):
    """A suite YAML file: validated, planned, and split into model / quantizer collectors."""

    def collect(self) -> Any:
        suite = load_suite(_relative(self.path, self.config.invocation_params.dir))
        from .baselines import claim_baseline_folder  # two suites with one name would share one baseline folder

        claim_baseline_folder(self.config.stash.setdefault(BASELINE_FOLDERS, {}), suite.name, suite.path)
        planned = plan(suite)
        state = self.config.stash[STATE]
        state.planned[suite.name] = state.planned.get(suite.name, 0) + len(planned)
        state.suites_loaded[suite.name] = suite
        state.files.setdefault(suite.name, self.nodeid)
        from .spec.plan import in_scope_order

        # Items of one scope are adjacent, so a unit's module and arrays are released soon after
        # its scope's last check runs.
        models: dict[str, dict[str, list[PlannedCheck]]] = {}
        for p in in_scope_order(planned):
            models.setdefault(p.model, {}).setdefault(p.quantizer, []).append(p)
        for model, quantizers in models.items():
            yield ModelNode.from_parent(self, name=model, quantizers=quantizers)

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
        from .api import verdict_without_result

        engine = _engine(self.config)
        p = self.planned
        try:
            verdict = engine.evaluate(p)
        except QrelError as exc:
            skipped = isinstance(exc, DataMissingError) and not self.config.getoption("qrel_strict")
            stage = exc.stage if isinstance(exc, UserCodeError) else ""
            self._record(verdict_without_result(p, "skipped" if skipped else "error", str(exc), stage=stage))
            if skipped:
                # Report the suite's location, not this line (the reason names the missing path).
                raise pytest.skip.Exception(str(exc), _use_item_location=True) from None
            raise
        if verdict.outcome == "inconclusive":
            # The interval straddles the bound: the suite's policy (or --qrel-inconclusive) decides.
            policy = self.config.getoption("qrel_inconclusive") or p.suite.inconclusive
            verdict.passed = policy != "fail"
            if policy == "warn":
                import warnings

                warnings.warn(QrelInconclusiveWarning(verdict.message), stacklevel=1)
        self._record(verdict)
        if not verdict.passed:
            raise CheckFailed(verdict.message)

    def _record(self, verdict: Verdict) -> None:
        verdict.nodeid = self.nodeid
        # Plain types only: xdist silently drops reports carrying numpy scalars.
        import dataclasses

        defaults = {f.name: f.default for f in dataclasses.fields(Verdict) if f.default is not dataclasses.MISSING}
        for key, value in verdict.to_dict().items():
            if key not in defaults or value != defaults[key]:  # optional fields only when set: small junit
                self.user_properties.append((PROP_PREFIX + key, value))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:  # type: ignore[override]
        return _one_line(excinfo, self.config) or super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int | None, str]:
        where = self.planned.check.where
        line = (where.line - 1) if where and where.line else None
        return self.path, line, f"{self.planned.model}::{self.planned.quantizer}::{self.name}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    if call.when == "call" and isinstance(item, CheckItem):
        engine = item.config.stash[STATE].engine
        if engine is not None:
            # Unit records travel with the report (xdist serialises plain attributes), so a worker
            # that crashes later has already delivered what it computed.
            outcome.get_result().qrel_units = [u.to_dict() for u in engine.take_new_records()]


# ---------------------------------------------------------------------------- results
class _Recorder:
    """Collects verdicts and unit records from reports (in the controller under xdist), names the
    checks that produced none, writes the report and results file and prints the summary."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.state: _State = config.stash[STATE]
        self.not_run: list[str] = []
        self.report_written: Path | None = None
        self.results_written: Path | None = None
        self.all_skipped = False
        self.problems: list[str] = []

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        import uuid

        self.config.stash[_RUN_ID] = uuid.uuid4().hex
        if not _quiet(self.config):
            self.config.stash[_PROGRESS] = _Progress(self.config)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_modifyitems(self, session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
        shard = config.getoption("qrel_shard")
        if shard is None:
            return
        from .shards import assign

        checks = [i for i in items if isinstance(i, CheckItem)]
        mine = {id(i) for i, keep in zip(checks, assign([i.planned for i in checks], *shard)) if keep}
        self.state.shard_empty = bool(checks) and not mine
        keep, drop = [], []
        for i in items:
            (keep if not isinstance(i, CheckItem) or id(i) in mine else drop).append(i)
        if drop:
            config.hook.pytest_deselected(items=drop)
            items[:] = keep

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        checks = [i for i in session.items if isinstance(i, CheckItem)]
        self.state.expected.update({i.nodeid: i.planned.suite.name for i in checks})
        self.state.selected = [i.planned for i in checks]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        state = self.state
        for raw in getattr(report, "qrel_units", None) or []:
            u = UnitMetrics.from_dict(raw)
            state.units[(u.suite, u.model, u.quantizer)] = u
        props = {k[len(PROP_PREFIX):]: v for k, v in report.user_properties if isinstance(k, str) and k.startswith(PROP_PREFIX)}
        if not props:
            crashed = report.when == "???"  # xdist: the worker died before this item finished
            if report.failed and report.nodeid in state.expected and (crashed or report.nodeid not in state.verdicts):
                # No verdict came with it: a crashed worker or an error outside runtest. A crash
                # replaces a verdict that arrived before it (a worker killed in teardown): pytest
                # counts the item failed, so the summary and the report must not say it passed.
                state.verdicts[report.nodeid] = _verdict_from_nodeid(report.nodeid, state, "error", _first_line(report))
                if crashed:
                    state.crashed.add(report.nodeid)
            return
        if report.nodeid in state.crashed:
            return  # a crash is a failure for good, even if the re-scheduled item then passed
        verdict = Verdict.from_dict(props)
        verdict.nodeid = report.nodeid
        if hasattr(report, "wasxfail"):
            verdict.outcome = "xfailed" if report.skipped else "xpassed"
        state.verdicts[report.nodeid] = verdict

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        config, state = self.config, self.state
        if hasattr(config, "workerinput"):
            return
        if state.signals is not None:
            state.signals.finishing = True  # a SIGTERM from now on must not tear the outputs
        if config.option.collectonly:
            return
        if not state.expected:
            if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED and self._shard_is_empty():
                self._finish_empty_shard(session)
            return
        interrupted = exitstatus == pytest.ExitCode.INTERRUPTED
        terminated = state.signals is not None and state.signals.terminated
        self.not_run = [n for n in state.expected if n not in state.verdicts]
        if terminated:
            reason = "the run was terminated (SIGTERM)"
        elif state.ended:
            reason = state.ended
        elif interrupted:
            reason = "the run was interrupted"
        else:
            reason = "the run stopped early (-x / --maxfail)" if session.shouldstop or session.shouldfail else "no result arrived for it"
        for nodeid in self.not_run:
            state.verdicts[nodeid] = _verdict_from_nodeid(nodeid, state, "not run", f"did not run: {reason}")
        verdicts = list(state.verdicts.values())
        if (self.not_run and not interrupted) or state.ended:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        if verdicts and all(v.outcome == "skipped" for v in verdicts) and not config.getoption("qrel_allow_skip_all"):
            self.all_skipped = True
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
        try:
            self._write_outputs(verdicts)
        except Exception as exc:  # a broken report must not hide the verdicts behind an INTERNALERROR
            self.problems.append(f"ERROR: could not write the report: {type(exc).__name__}: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def _suites(self) -> dict[str, tuple[Any, str]]:
        """``{suite name: (Suite, file as written in node ids)}`` of the checks this run expected."""
        out: dict[str, tuple[Any, str]] = {}
        for nodeid in self.state.expected:
            file = nodeid.split("::", 1)[0]
            found = _suite_of(self.config, file)
            if found is not None and found[0].name not in out:
                out[found[0].name] = (found[0], file)
        return out

    def _shard_is_empty(self) -> bool:
        """``--qrel-shard K/N`` gave this shard no check of the suites. Serial runs know it from
        their collection; the xdist controller collects nothing, so it plans ``--qrel-suite``'s
        suites itself (no torch)."""
        state, shard = self.state, self.config.getoption("qrel_shard")
        if shard is None:
            return False
        if state.shard_empty:
            return True
        if state.suites_loaded or not state.suites:
            return False
        from .shards import assign

        try:
            for path in state.suites:
                suite = load_suite(_relative(path, self.config.invocation_params.dir))
                state.suites_loaded[suite.name] = suite
                state.files.setdefault(suite.name, _relative(path, self.config.rootpath).as_posix())
        except QrelError:
            return False
        planned = [p for suite in state.suites_loaded.values() for p in plan(suite)]
        return bool(planned) and not any(assign(planned, *shard))

    def _finish_empty_shard(self, session: pytest.Session) -> None:
        """A shard the partition gave no unit: exit 0 with one line and a results file that says
        so (no verdicts, the full plan), so ``qrel merge`` knows the shard ran."""
        from .spec.plan import scopes

        state = self.state
        k, n = self.config.getoption("qrel_shard")
        names = sorted(state.suites_loaded)
        units = sum(len(set(scopes(plan(state.suites_loaded[name])).values())) for name in names)
        try:
            self._write_outputs([], note=f"shard {k}/{n} has no units: the suite(s) have {units} unit group(s) for {n} shards")
        except Exception as exc:  # a broken output must not hide behind an INTERNALERROR
            self.problems.append(f"ERROR: could not write the results: {type(exc).__name__}: {exc}")
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
            return
        self.problems.append(
            f"qrel: shard {k}/{n} has no units of {', '.join(names)} ({units} unit group(s) for {n} shards): nothing to run; "
            f"its results file says so, for qrel merge"
        )
        session.exitstatus = pytest.ExitCode.OK

    def _results_path(self) -> Path | None:
        """``--qrel-results``, or for a shard run without it :func:`pytest_qrel.shards.default_results_path`
        under the rootdir (a shard's results are only useful to ``qrel merge``)."""
        given = self.config.getoption("qrel_results")
        if given:
            return Path(given)
        shard = self.config.getoption("qrel_shard")
        if shard is None:
            return None
        from .shards import default_results_path

        return _relative(self.config.rootpath / default_results_path(shard), self.config.invocation_params.dir)

    def _write_outputs(self, verdicts: list[Verdict], note: str = "") -> None:
        report_path = self.config.getoption("qrel_report")
        results_path = self._results_path()
        if not (report_path or results_path):
            return
        from .shards import planned_ids, run_results, write_report, write_results

        state = self.state
        suites = self._suites()
        plan_ids = {name: planned_ids(suite, file) for name, (suite, file) in suites.items()}
        if not suites:  # no check selected (an empty shard): the suites collected, as their node ids write them
            suites = {name: (suite, state.files.get(name, str(suite.path))) for name, suite in state.suites_loaded.items()}
            plan_ids = {name: planned_ids(suite, file) for name, (suite, file) in suites.items()}
        results = run_results(
            verdicts, list(state.units.values()), suites=[s for s, _ in suites.values()],
            planned=state.planned or {name: len(ids) for name, ids in plan_ids.items()}, started=state.started,
            command=" ".join(map(str, self.config.invocation_params.args)),
            device=state.engine.device if state.engine is not None else (_resolve_device(self.config) if verdicts else ""),
            shard=self.config.getoption("qrel_shard"),
        )
        if results_path:
            self.results_written = write_results(results, results_path, plan_ids=plan_ids, note=note)
        if report_path:
            self.report_written = write_report(results, Path(report_path))

    def pytest_terminal_summary(self, terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
        state = self.state
        if hasattr(config, "workerinput") or config.option.collectonly:
            return
        if not (state.verdicts or state.expected):
            if self.problems or self.results_written:
                terminalreporter.section("pytest-qrel")
                for line in self.problems:
                    terminalreporter.write_line(line, red=line.startswith("ERROR"))
                if self.results_written:
                    terminalreporter.write_line(self._results_line())
            return
        tr = terminalreporter
        tr.section("pytest-qrel")
        by_suite: dict[str, dict[str, int]] = {}
        for v in state.verdicts.values():
            counts = by_suite.setdefault(v.suite, {})
            counts[v.outcome] = counts.get(v.outcome, 0) + 1
        for suite, counts in sorted(by_suite.items()):
            parts = ", ".join(f"{n} {k}" for k, n in sorted(counts.items()))
            total = sum(counts.values())
            planned = state.planned.get(suite, total)
            selected = "" if planned == total else f" (of {planned} planned)"
            tr.write_line(f"{suite}: {total} checks{selected}: {parts}")
        from .policy import run_verdict  # the one policy: the same status as the report, junit and qrel merge

        verdict = run_verdict(state.verdicts.values(), sum(state.planned.values()) if state.planned else None)
        for line in verdict.lines():
            tr.write_line(line, **{{"FAIL": "red", "PASS": "green"}.get(verdict.status, "yellow"): True})
        skipped = [v for v in state.verdicts.values() if v.outcome == "skipped"]
        if skipped:
            reasons: dict[str, int] = {}
            for v in skipped:
                reasons[v.message] = reasons.get(v.message, 0) + 1
            for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
                tr.write_line(f"NOT VERIFIED: {n} check(s) skipped: {reason}", yellow=True)
        if self.all_skipped:
            tr.write_line(
                f"ERROR: no check produced a verdict: all {len(skipped)} were skipped because data is missing (see above); "
                "point the suite at the data, or pass --qrel-allow-skip-all to accept a run that verifies nothing",
                red=True,
            )
        if state.ended_line:
            tr.write_line(state.ended_line, red=True)
        elif self.not_run:
            tr.write_line(f"ERROR: {len(self.not_run)} check(s) did not run, e.g. {self.not_run[0]}; the run is marked failed", red=True)
        crashed = sorted(state.crashed)
        if crashed and not state.ended:
            tr.write_line(f"ERROR: {len(crashed)} check(s) were lost to a crashed worker, e.g. {crashed[0]}", red=True)
        for line in self.problems:
            tr.write_line(line, red=True)
        if self.report_written:
            tr.write_line(f"report: {self.report_written} (summary: {self.report_written.with_suffix('.md')})")
        if self.results_written:
            tr.write_line(self._results_line())

    def _results_line(self) -> str:
        default = "" if self.config.getoption("qrel_results") else " (no --qrel-results given: the default for a shard)"
        return f"results: {self.results_written}{default}"


def _first_line(report: pytest.TestReport) -> str:
    text = str(report.longrepr or "").strip().splitlines()
    return text[-1] if text else "failed without a message"


def _verdict_from_nodeid(nodeid: str, state: _State, outcome: Any, message: str) -> Verdict:
    """A verdict for a check known only by its node id (a crash, a check that never ran)."""
    parts = nodeid.split("::")
    model, quantizer, name = (parts + ["", "", ""])[1:4]
    return Verdict(
        suite=state.expected.get(nodeid, ""), model=model, quantizer=quantizer, dataset="", metric=name.split(" ", 1)[0],
        score=None, check=name, bound="", fp32=None, value=None, delta=None, delta_display="", passed=False,
        expect_fail=False, outcome=outcome, message=message, nodeid=nodeid,
    )


# ---------------------------------------------------------------------------- the session guard
class _SessionGuard:
    """Makes the exit code the verdict in the process that owns the session (never in an xdist
    worker, nor in a session nested in another one in the same process, as pytester's in-process
    runs are).

    - **SIGTERM** (what CI sends before SIGKILL) stops the run like Ctrl-C: pytest finishes the
      session, so the summary, report and results file are written, with the checks that did not
      run red (:class:`pytest_qrel.supervisor.InterruptHandlers`).
    - **A serial run that collected checks** runs them in a supervised child process
      (:mod:`pytest_qrel.supervisor`): if user code ends that process (``os._exit(0)``, a crash,
      a kill) before the session finished, the parent replays what the child reported, counts the
      check that was running as an error and the rest as not run, writes the outputs and exits red.
    """

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.state: _State = config.stash[STATE]
        self.exitstatus: int | None = None

    def _main_thread(self) -> bool:
        return threading.current_thread() is threading.main_thread()

    def arm(self) -> None:
        """Install the SIGTERM handler, once the session has checks to protect (a run of the
        project's own tests keeps pytest's default behaviour)."""
        if self.state.signals is not None or self.config.stash[_NESTED] or not self._main_thread():
            return
        from .supervisor import InterruptHandlers

        handlers = InterruptHandlers()
        if handlers.install():
            self.state.signals = handlers

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        if any(isinstance(i, CheckItem) for i in session.items):
            self.arm()

    def _supervise(self, session: pytest.Session) -> bool:
        from .supervisor import pytest_is_the_program, supported

        config = self.config
        return (
            supported() and pytest_is_the_program() and not config.stash[_NESTED] and self._main_thread()
            and not config.option.collectonly
            and config.pluginmanager.getplugin("dsession") is None
            and not (session.testsfailed and not config.option.continue_on_collection_errors)
            and any(isinstance(i, CheckItem) for i in session.items)
        )

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtestloop(self, session: pytest.Session) -> bool | None:
        if not self._supervise(session):
            return None
        from .supervisor import fork_session

        end = fork_session(self._become_child)
        if end is None:
            return None  # the child: pytest runs the checks here
        if end.finished:
            # The child ran the whole session (summary, report, junit, cache): nothing is left to
            # do here but to exit as it did, without running this session's end a second time.
            for stream in (sys.stdout, sys.stderr):
                try:
                    stream.flush()
                except (OSError, ValueError):
                    pass
            os._exit(end.exit_code)
        self._recover(session, end)
        return True

    def _become_child(self, journal: Any) -> None:
        from .supervisor import InterruptHandlers

        if self.state.signals is not None:
            self.state.signals.restore()
            self.state.signals = None
        handlers = InterruptHandlers(dedupe_sigint=True)  # Ctrl-C reaches us directly and through the parent
        if handlers.install():
            self.state.signals = handlers
        self.config.pluginmanager.register(_JournalWriter(self.config, journal, self), "qrel-journal")

    def _recover(self, session: pytest.Session, end: Any) -> None:
        """The child ended without finishing: replay its events here, so terminal, junit XML,
        ``--lf`` and the qrel records see every report it sent; the check it was running is an
        error, the rest are ``not run`` (the recorder's session end), and the run is red."""
        config, hook, state = self.config, self.config.hook, self.state
        what = f"the process running the checks {end.describe()}"
        tr = config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("")
            tr.write_sep("!", f"qrel: {what} before the run finished; what it reported:", red=True)
        running: dict[str, tuple[str, int | None, str]] = {}
        last = ""
        for event in end.events:
            kind = event.get("kind")
            try:
                if kind in ("logstart", "logfinish"):
                    nodeid, location = str(event["nodeid"]), _location(event["location"])
                    if kind == "logstart":
                        running[nodeid], last = location, nodeid
                        hook.pytest_runtest_logstart(nodeid=nodeid, location=location)
                    else:
                        running.pop(nodeid, None)
                        hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
                elif kind == "report":
                    report = hook.pytest_report_from_serializable(config=config, data=event["data"])
                    if report is not None:
                        report.location = _location(report.location)
                        hook.pytest_runtest_logreport(report=report)
            except Exception:  # a damaged entry: that check then has no verdict, and is named as such
                continue
        for nodeid, location in running.items():
            report = pytest.TestReport(
                nodeid=nodeid, location=location, keywords={}, outcome="failed", when="???",  # type: ignore[arg-type]
                longrepr=f"{what} while running this check (os._exit, a crash or a kill in the model's code?); "
                         "the checks after it did not run",
            )
            hook.pytest_runtest_logreport(report=report)
            hook.pytest_runtest_logfinish(nodeid=nodeid, location=location)
        total = len(state.expected)
        missing = sum(1 for n in state.expected if n not in state.verdicts or n in state.crashed)
        current = next(iter(running), "")
        parts = (current or last).split("::")
        unit = "::".join(parts[1:3]) if len(parts) >= 3 else "none started"
        during = f" during {current}" if current else (f" after {last}" if last else " before any check started")
        state.ended = f"the run ended without finishing ({what})"
        state.ended_line = (
            f"ERROR: the run ended without finishing: {missing} of {total} checks produced no verdict; "
            f"last unit: {unit} ({what}{during})"
        )
        session.testsfailed += 1  # red even when every verdict had arrived (it died at the end)


def _location(raw: Any) -> tuple[str, int | None, str]:
    fspath, lineno, domain = raw
    return str(fspath), (int(lineno) if lineno is not None else None), str(domain)


class _JournalWriter:
    """In the supervised child: every test event goes to the journal the parent reads if this
    process ends before the session did; the last line (``done``) says it finished."""

    def __init__(self, config: pytest.Config, journal: Any, guard: _SessionGuard) -> None:
        self.config = config
        self.journal = journal
        self.guard = guard
        config.add_cleanup(self._done)

    def pytest_runtest_logstart(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.journal.write("logstart", nodeid=nodeid, location=list(location))

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        data = self.config.hook.pytest_report_to_serializable(config=self.config, report=report)
        self.journal.write("report", data=data)

    def pytest_runtest_logfinish(self, nodeid: str, location: tuple[str, int | None, str]) -> None:
        self.journal.write("logfinish", nodeid=nodeid, location=list(location))

    @pytest.hookimpl(hookwrapper=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> Any:
        yield
        self.guard.exitstatus = int(session.exitstatus)

    def _done(self) -> None:
        if self.guard.exitstatus is not None:
            self.journal.write("done", status=self.guard.exitstatus)


# ---------------------------------------------------------------------------- xdist
class _XdistController:
    """Controller-side xdist hooks: expected items, worker status lines, a unit-grouping scheduler."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._watchdog: Any = None

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        state = self.config.stash[STATE]
        for nodeid in ids:
            if nodeid.count("::") == 3 and nodeid.split("::", 1)[0].endswith((".yaml", ".yml")):
                state.expected.setdefault(nodeid, _suite_name_of(self.config, nodeid))
        if state.expected:
            guard = self.config.pluginmanager.get_plugin("qrel-session-guard")
            if guard is not None:
                guard.arm()
            if self._watchdog is None:
                from .xdist_watchdog import WorkerWatchdog

                self._watchdog = WorkerWatchdog(self.config, warn=lambda line: _warn_line(self.config, line))
                self._watchdog.start()
        if self._thread is None and not _quiet(self.config):
            self._thread = threading.Thread(target=self._show_status, daemon=True)
            self._thread.start()

    def _show_status(self) -> None:
        status = _status_dir(self.config)
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if status is None or tr is None:
            return
        shown: dict[str, float] = {}
        last_print = 0.0
        while not self._stop.wait(2.0):
            lines = []
            for path in sorted(status.glob("gw*.json")):
                try:
                    info = json.loads(path.read_text())
                except (OSError, ValueError):
                    continue
                if info.get("time", 0) > shown.get(path.stem, 0):
                    shown[path.stem] = info["time"]
                    lines.append(f"[{path.stem}] {info['line']}")
            if lines and time.monotonic() - last_print >= 5.0:
                last_print = time.monotonic()
                tr.write_line(" | ".join(lines))

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        pass

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self._stop.set()
        if self._watchdog is not None:
            self._watchdog.stop()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getoption("dist") != "load":
            return None
        return _make_unit_scheduler(config, log)


_SUITES = pytest.StashKey[dict[str, Any]]()


def _suite_name_of(config: pytest.Config, nodeid: str) -> str:
    suite = _suite_of(config, nodeid.split("::", 1)[0])
    return suite[0].name if suite else ""


def _suite_of(config: pytest.Config, file: str) -> tuple[Any, dict[tuple[str, str], str]] | None:
    """The suite behind a node id's file part and its scopes (loaded once per session; no torch)."""
    cache = config.stash.setdefault(_SUITES, {})
    if file not in cache:
        from .spec.plan import scopes

        try:
            suite = load_suite(_relative(config.rootpath / file, config.invocation_params.dir))
            cache[file] = (suite, scopes(plan(suite)))
        except QrelError:
            cache[file] = None
    return cache[file]


def unit_scope(nodeid: str, config: pytest.Config | None = None) -> str:
    """The xdist scope of a node id: every check reading one unit -- its post-hoc variants and the
    checks comparing it with another quantizer included -- goes to one worker, so each forward
    pass and calibration runs once across workers. Other node ids are their own scope."""
    parts = nodeid.split("::")
    if len(parts) != 4 or not parts[0].endswith((".yaml", ".yml")):
        return nodeid
    file, model, quantizer = parts[:3]
    found = _suite_of(config, file) if config is not None else None
    if found is not None and (model, quantizer) in found[1]:
        return f"{file}::{found[1][(model, quantizer)]}"
    return f"{file}::{model}::{quantizer.split('+', 1)[0]}"


def _make_unit_scheduler(config: pytest.Config, log: Any) -> Any:
    # xdist's `--dist loadgroup` does not keep a group on one worker with pytest 9 (xdist#1386),
    # so group by unit through LoadScopeScheduling's documented extension point.
    from xdist.scheduler import LoadScopeScheduling

    class UnitScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_scope(nodeid, config)

        def _reschedule(self, node: Any) -> None:
            # xdist 3.8 reschedules every node when a worker goes down or finishes collecting,
            # including a replacement worker that is still collecting: _assign_work_unit then
            # raises KeyError (an INTERNALERROR that ends the run) when two workers crash close
            # together. Such a node gets its work once its collection arrives (schedule()).
            if node not in self.registered_collections or node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # A node gets its next unit when at most one of its items is pending (xdist's own
            # threshold is two). A unit's first check does all of its work and the others finish
            # at once, so with two a worker finishing a unit took the next two units in one burst
            # and left the other worker idle (4 units on 2 workers ran 3 + 1). One, not zero: a
            # worker does not run its last queued item before it knows the next one.
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return UnitScheduling(config, log)


def pytest_unconfigure(config: pytest.Config) -> None:
    global _SESSIONS
    _SESSIONS = max(0, _SESSIONS - 1)
    state = config.stash.get(STATE, None)
    if state is not None and state.signals is not None:
        state.signals.restore()
        state.signals = None
    if state is not None and state.threads_before is not None:
        import torch

        torch.set_num_threads(state.threads_before)  # leave the process as we found it


def pytest_report_header(config: pytest.Config) -> list[str] | None:
    suites = config.stash[STATE].suites
    if not suites:
        return None
    return [f"qrel: suites {', '.join(str(_relative(s, config.invocation_params.dir)) for s in suites)}; baselines in {config.getini('qrel_baseline_dir')}/"]
