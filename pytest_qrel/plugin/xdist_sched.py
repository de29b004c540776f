"""pytest-xdist glue, imported only in an xdist controller (the plugin's ``pytest_configure``).

- :class:`XdistController`, registered only there (as xdist registers its ``DSession``, and
  syrupy its xdist plugin): the expected checks from each worker's collection, worker status
  lines, the watchdog's view of which workers are up (``pytest_testnodeready`` /
  ``pytest_testnodedown``), the device each worker ran on (its ``workeroutput``), and
  :class:`UnitScheduling` for ``--dist load`` (``-n N``'s default) through
  ``pytest_xdist_make_scheduler``.
- :class:`UnitScheduling`: every check reading one unit goes to one worker, so each forward pass
  and calibration runs once across workers. It implements xdist's public ``Scheduling`` protocol
  (the interface ``pytest_xdist_make_scheduler`` returns) on its own rather than subclassing
  ``LoadScopeScheduling``: that class's only extension points are private methods (``_split_scope``,
  ``_reschedule``), and xdist's ``--dist loadgroup`` does not keep a group on one worker with
  pytest 9 (xdist#1386).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import pytest

from .collect import is_check_id, suite_name_of, unit_scope
from .engine_setup import DEVICE_KEY
from .progress import StatusPoller, warn_line
from .state import RUN_ID, STATE, quiet
from .watchdog import WorkerWatchdog, pending_items


class XdistController:
    """See the module docstring."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.status = StatusPoller(config)
        self.watchdog = WorkerWatchdog(pending=self._pending, warn=lambda line: warn_line(config, line))

    def _pending(self, node: Any) -> int | None:
        dsession = self.config.pluginmanager.getplugin("dsession")
        return pending_items(getattr(dsession, "sched", None), node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_configure_node(self, node: Any) -> None:
        """The run's id is the one xdist gives its workers: their status files are found under it."""
        self.config.stash[RUN_ID] = str(node.workerinput["testrunuid"])

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodeready(self, node: Any) -> None:
        self.watchdog.watch(node)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node: Any, error: Any) -> None:
        """A worker finished or died: the watchdog stops guarding it; a finished worker's
        ``workeroutput`` says which device it ran on (the results file's ``device``)."""
        self.watchdog.forget(node)
        output = getattr(node, "workeroutput", None) or {}
        if error is None and output.get(DEVICE_KEY):
            self.config.stash[STATE].worker_devices[str(node.gateway.id)] = str(output[DEVICE_KEY])

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node: Any, ids: list[str]) -> None:
        state = self.config.stash[STATE]
        for nodeid in ids:
            if is_check_id(nodeid):
                state.expected.setdefault(nodeid, suite_name_of(self.config, nodeid))
        if state.expected:
            guard = self.config.pluginmanager.get_plugin("qrel-session-guard")
            if guard is not None:
                guard.arm()
            self.watchdog.start()
        if not quiet(self.config):
            self.status.start()

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        self.status.stop()
        self.watchdog.stop()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_make_scheduler(self, config: pytest.Config, log: Any) -> Any:
        if config.getoption("dist") != "load":
            return None
        return UnitScheduling(config)


WorkUnit = dict[str, bool]  # node id -> completed


def model_of_scope(scope: str) -> str:
    """``suite.yaml::model::quantizer`` (a unit's scope, :func:`.collect.unit_scope`) ->
    ``suite.yaml::model``; any other scope (a plain test's node id) is its own."""
    parts = scope.split("::")
    return "::".join(parts[:2]) if len(parts) == 3 and parts[0].endswith((".yaml", ".yml")) else scope


def affinity_group(scope: str) -> str:
    """The units whose quantization a worker's memo can share: ``suite.yaml::vit@cifar10::W4A4-qat``
    -> ``suite.yaml::vit::W4A4-qat`` (the scenario, seed and post-hoc steps dropped). A model of a suite
    without scenarios keeps its name, so each of its units is a group of its own."""
    from ..spec.quantizer_ref import QuantizerRef
    from ..spec.scenarios import split_scenario

    parts = scope.split("::")
    if len(parts) != 3 or not parts[0].endswith((".yaml", ".yml")):
        return scope
    file, model, quantizer = parts
    return f"{file}::{split_scenario(model)[0]}::{QuantizerRef.parse(quantizer).base}"


class UnitScheduling:
    """xdist's ``Scheduling`` protocol over units (:func:`.collect.unit_scope`).

    The bookkeeping follows ``LoadScopeScheduling`` (``workqueue``: scope -> work unit, largest
    first; ``assigned_work``: node -> scope -> work unit; ``registered_collections``), with two
    rules of its own:

    - a worker gets its next unit when at most **one** of its checks is pending (xdist's
      threshold is two). A unit's first check does all of its work and the others finish at
      once, so with two a worker finishing a unit took the next two units in one burst and left
      the other worker idle (4 units on 2 workers ran 3 + 1). One, not zero: a worker does not
      run its last queued item before it knows the next one;
    - a worker that has not sent its collection yet (a replacement for a crashed one) gets work
      only once it has: xdist 3.8 re-schedules every node when one goes down, and assigning to a
      collecting node raised ``KeyError`` (an INTERNALERROR) when two workers crashed close together;
    - units are queued model by model in plan order (the larger first within a model, as xdist
      orders scopes), not largest first over the whole run: a worker then holds one model at a
      time (it releases the others when its next check reads another model:
      :func:`pytest_qrel.plugin.engine_setup.release_models_for`), instead of every model it met;
    - in a suite with ``scenarios:`` a worker *owns* the quantizer groups it takes first
      (:func:`affinity_group`: the same quantizer of the same backbone in every scenario) and never
      takes another worker's group while a unit of its own or of nobody's is queued: each QAT
      training and PTQ calibration the scenarios share is then computed by one worker, which
      reuses it from its memo (:mod:`pytest_qrel.engine.trainmemo`), instead of once per worker that
      meets it. Within that, it finishes the model (scenario) it is on before it starts the next
      (:meth:`_next_scope`).
    """

    def __init__(self, config: pytest.Config) -> None:
        from xdist.workermanage import parse_tx_spec_config

        self.config = config
        self.numnodes = len(parse_tx_spec_config(config))
        self.collection: list[str] | None = None
        self.workqueue: OrderedDict[str, WorkUnit] = OrderedDict()
        self.assigned_work: dict[Any, dict[str, WorkUnit]] = {}
        self.registered_collections: dict[Any, list[str]] = {}
        self.owner: dict[str, Any] = {}  # affinity group -> the node that took its first unit
        self.group: dict[str, str] = {}  # scope -> its affinity group
        self.model: dict[str, str] = {}  # scope -> its model (model_of_scope)
        self.shared = False  # some group has several units
        self.current: dict[Any, str] = {}  # node -> the model of the unit it took last

    @property
    def nodes(self) -> list[Any]:
        return list(self.assigned_work)

    @property
    def collection_is_completed(self) -> bool:
        return len(self.registered_collections) >= self.numnodes

    @property
    def tests_finished(self) -> bool:
        if not self.collection_is_completed or self.workqueue:
            return False
        return all(self.pending(node) < 2 for node in self.assigned_work)

    @property
    def has_pending(self) -> bool:
        return bool(self.workqueue) or any(self.pending(node) for node in self.assigned_work)

    def pending(self, node: Any) -> int:
        """The checks assigned to ``node`` and not finished."""
        return sum(list(unit.values()).count(False) for unit in self.assigned_work.get(node, {}).values())

    def add_node(self, node: Any) -> None:
        assert node not in self.assigned_work
        self.assigned_work[node] = {}

    def add_node_collection(self, node: Any, collection: Sequence[str]) -> None:
        assert node in self.assigned_work
        if self.collection_is_completed and self.collection is not None and list(collection) != self.collection:
            return  # a replacement worker that collected something else gets no work (xdist logs the diff)
        self.registered_collections[node] = list(collection)

    def remove_node(self, node: Any) -> str | None:
        """``node`` finished or died; returns the check it was running if it died with work left,
        whose unit's unfinished checks go back to the queue (xdist re-runs the crashed one too)."""
        workload = self.assigned_work.pop(node)
        self.owner = {group: owner for group, owner in self.owner.items() if owner is not node}
        self.current.pop(node, None)
        unfinished = [(scope, unit) for scope, unit in workload.items() if not all(unit.values())]
        if not unfinished:
            return None
        crashed = next(nodeid for _, unit in unfinished for nodeid, done in unit.items() if not done)
        for scope, unit in unfinished:
            self.workqueue[scope] = unit
        for other in self.nodes:
            self._give_work(other)
        return crashed

    def mark_test_complete(self, node: Any, item_index: int, duration: float = 0) -> None:
        nodeid = self.registered_collections[node][item_index]
        self.assigned_work[node][unit_scope(nodeid, self.config)][nodeid] = True
        self._give_work(node)

    def mark_test_pending(self, item: str) -> None:
        raise NotImplementedError("UnitScheduling does not steal work")

    def remove_pending_tests_from_node(self, node: Any, indices: Sequence[int]) -> None:
        raise NotImplementedError("UnitScheduling does not steal work")

    def schedule(self) -> None:
        assert self.collection_is_completed
        if self.collection is not None:  # a replacement worker joined: give it work
            for node in self.nodes:
                self._give_work(node)
            return
        collections = list(self.registered_collections.values())
        if any(c != collections[0] for c in collections[1:]):
            self._report_different_collections()
            return
        self.collection = collections[0]
        if not self.collection:
            return  # nothing to run: xdist sees the tests finished and shuts the workers down
        units: dict[str, WorkUnit] = {}
        for nodeid in self.collection:
            units.setdefault(unit_scope(nodeid, self.config), {})[nodeid] = False
        self.model = {scope: model_of_scope(scope) for scope in units}
        self.group = {scope: affinity_group(scope) for scope in units}
        if self.config.getoption("loadscopereorder", True):  # model by model, the larger units first within one
            rank: dict[str, int] = {}
            for scope in units:
                rank.setdefault(self.model[scope], len(rank))
            units = dict(sorted(units.items(), key=lambda su: (rank[self.model[su[0]]], -len(su[1]))))
        self.workqueue.update(units)
        self.shared = len(set(self.group.values())) < len(self.group)
        for _ in range(len(self.nodes) - len(self.workqueue)):  # more workers than units
            unused, _work = self.assigned_work.popitem()
            unused.shutdown()
        for node in self.nodes:
            if self.workqueue:
                self._assign(node)
        for node in self.nodes:
            self._give_work(node)

    def _give_work(self, node: Any) -> None:
        if node not in self.registered_collections or node.shutting_down:
            return
        if not self.workqueue:
            node.shutdown()
        elif self.pending(node) <= 1:
            self._assign(node)

    def _next_scope(self, node: Any) -> str:
        """The queued scope ``node`` takes next (the class docstring), in this order: the first of
        the model it computed last whose group it owns or nobody owns (a worker finishes a model
        before it loads the next: loading a CLIP scenario model encodes its class names again), the
        first of a group it owns, the first of a group nobody owns, the queue's first."""
        if not self.shared:  # no two units share a group (no scenarios): the queue's order
            return next(iter(self.workqueue))
        current = self.current.get(node)
        owned = unowned = None
        for scope in self.workqueue:
            owner = self.owner.get(self.group[scope])
            if owner is not node and owner is not None:
                continue
            if self.model[scope] == current:
                return scope
            if owner is node and owned is None:
                owned = scope
            elif owner is None and unowned is None:
                unowned = scope
        return owned or unowned or next(iter(self.workqueue))

    def _assign(self, node: Any) -> None:
        scope = self._next_scope(node)
        unit = self.workqueue.pop(scope)
        self.owner.setdefault(self.group[scope], node)
        self.current[node] = self.model[scope]
        self.assigned_work[node][scope] = unit
        collection = self.registered_collections[node]
        node.send_runtest_some([collection.index(nodeid) for nodeid, done in unit.items() if not done])

    def _report_different_collections(self) -> None:
        from xdist.report import report_collection_diff

        (first, col), *others = self.registered_collections.items()
        for node, collection in others:
            if msg := report_collection_diff(col, collection, first.gateway.id, node.gateway.id):
                report = pytest.CollectReport(nodeid=node.gateway.id, outcome="failed", longrepr=msg, result=[])
                self.config.hook.pytest_collectreport(report=report)
