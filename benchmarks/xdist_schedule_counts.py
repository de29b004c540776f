"""Counts of a ``pytest -n N`` run of suites/clip.yaml through the real xdist scheduler, nothing computed.

Every check of the suite is a node id as pytest collects it; :class:`~pytest_qrel.plugin.xdist_sched.UnitScheduling`
hands units to N simulated workers, each finishing its units in turn by a simulated clock (a QAT unit
costs ``--qat-cost`` units of time when it trains and 1 when its worker's memo has the training; a
PTQ unit costs 1). Counted per policy:

- ``qat trained``: QAT units that train (a worker trains a quantizer of a backbone the first time it
  meets it; its memo, unbounded here, serves it in the other scenarios, except a loss on the zero-shot
  logits, ``qat_distill``, which trains in every scenario);
- ``model loads``: times a worker starts a unit of a model other than the one it holds (the worker
  releases the model it leaves); ``most models one worker met``: what a worker held before it released the model it left (it released none);
- ``makespan``: the simulated time the last worker finishes (a balance check).

Policies: ``now`` (the scheduler as shipped: units model by model, quantizer ownership) and
``before`` (units largest first over the whole run, the queue's head to whichever worker asks: the
scheduler before this change).

    python benchmarks/xdist_schedule_counts.py [--workers 2] [--qat-cost 20]
"""

from __future__ import annotations

import argparse
import heapq
import types
from pathlib import Path
from typing import Any

from _pytest.config import _prepareconfig

import pytest_qrel.engine.trainmemo as tm
from pytest_qrel import load_suite
from pytest_qrel.plugin import xdist_sched
from pytest_qrel.quantize import validate_quantizer
from pytest_qrel.quantize.qat import RECIPES
from pytest_qrel.spec.plan import plan
from pytest_qrel.spec.scenarios import split_scenario

ROOT = Path(__file__).resolve().parents[1]
SUITE = "suites/clip.yaml"


class Node:
    def __init__(self, name: str) -> None:
        self.gateway, self.shutting_down, self.sent = types.SimpleNamespace(id=name), False, []

    def send_runtest_some(self, indexes: list[int]) -> None:
        self.sent.extend(indexes)

    def shutdown(self) -> None:
        self.shutting_down = True


class Before(xdist_sched.UnitScheduling):
    """The scheduler before this change: largest units first, the queue's head to whoever asks."""

    def schedule(self) -> None:
        super().schedule()
        self.workqueue = type(self.workqueue)(sorted(self.workqueue.items(), key=lambda su: -len(su[1])))
        self.shared = False


def simulate(policy: str, workers: int, qat_cost: float) -> dict[str, Any]:
    import os

    os.chdir(ROOT)
    suite = load_suite(ROOT / SUITE)
    collection = [f"{SUITE}::{p.model}::{p.quantizer}::{p.name}" for p in plan(suite)]
    configs = {q: validate_quantizer(spec.method, spec.weight_bits, spec.act_bits, spec.options, seed=spec.calibration.seed)
               for q, spec in suite.quantizers.items()}
    config = _prepareconfig(["-p", "xdist", "--tx", f"{workers}*popen", "-p", "no:cacheprovider"])
    sched = (Before if policy == "before" else xdist_sched.UnitScheduling)(config)
    nodes = [Node(f"gw{i}") for i in range(workers)]
    for node in nodes:
        sched.add_node(node)
        sched.add_node_collection(node, collection)
    sched.schedule()
    done: set[int] = set()
    trained: dict[str, set[tuple[str, str]]] = {n.gateway.id: set() for n in nodes}
    held: dict[str, list[str]] = {n.gateway.id: [] for n in nodes}
    counts = {"qat trained": 0, "qat units": 0, "model loads": 0, "most models one worker met": 0}
    clock = [(0.0, i) for i in range(workers)]  # (time the worker is free, worker)
    end = 0.0
    while sched.has_pending:
        now, i = heapq.heappop(clock)
        node = nodes[i]
        todo = [j for j in node.sent if j not in done]
        if not todo:
            if any(j not in done for n in nodes for j in n.sent):
                heapq.heappush(clock, (min(t for t, _ in clock) + 1e-9, i))  # wait for the others
                continue
            break
        _, model, quantizer, _ = collection[todo[0]].split("::")
        unit = [j for j in todo if collection[j].split("::")[1] == model and collection[j].split("::")[2].split("+", 1)[0] == quantizer.split("+", 1)[0]]
        name = node.gateway.id
        if not held[name] or held[name][-1] != model:
            counts["model loads"] += 1
            held[name].append(model)
            counts["most models one worker met"] = max(counts["most models one worker met"], len(set(held[name])))
        base = quantizer.split("+", 1)[0]
        cost = 1.0
        if base in configs and configs[base].method in RECIPES:
            counts["qat units"] += 1
            backbone, scenario = split_scenario(model)
            reads_head = tm.reads_head(configs[base], labels=False, targets=True)  # CC3M captions: QAT's targets
            group = (backbone, base, scenario if reads_head else None)  # a loss on the logits trains per scenario
            if group not in trained[name]:
                trained[name].add(group)
                counts["qat trained"] += 1
                cost = qat_cost
        finish = now + cost
        end = max(end, finish)
        for j in unit:
            done.add(j)
            sched.mark_test_complete(node, j)
        heapq.heappush(clock, (finish, i))
    return {**counts, "makespan": round(end), "checks": len(done)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--qat-cost", type=float, default=20.0, help="a QAT training's time in PTQ units (default 20)")
    args = parser.parse_args()
    for policy in ("before", "now"):
        print(f"{policy:>6} (-n {args.workers}):", simulate(policy, args.workers, args.qat_cost))


if __name__ == "__main__":
    main()
