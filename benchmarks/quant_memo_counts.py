"""Counts of the quantization memo (pytest_qrel/engine/trainmemo.py) over a full suites/clip.yaml run.

Nothing is trained or calibrated: every unit of the suite is visited in pytest's order (backbone by
backbone, as ``pytest --co`` lists it), keyed as the engine keys it (the same ``reads_head`` rule per
method; the model, method, bits, options and seed, and the scenario where the key holds the head), and
looked up / stored in a real :class:`~pytest_qrel.engine.trainmemo.TrainMemo` driven by a real
:class:`~pytest_qrel.engine.lifecycle.UnitLifecycle` (which releases a backbone after its last check).
A stored module is a tensor of the backbone's FP32 visual-tower size divided by ``--scale`` (and the
budget and the disk reserve with it), so the run writes a few hundred MB at most.

Prints, per budget: the QAT units that train and that reuse a training, the PTQ units that calibrate
and that reuse a calibration, the entries evicted and released, and the largest disk use (unscaled).
``--no-release`` leaves the checks unannounced, as a pytest-xdist worker sees them (eviction only).

    python benchmarks/quant_memo_counts.py [--budget 16 --budget 48] [--scale 1024] [--no-release]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import Any

import torch

import pytest_qrel.engine.trainmemo as tm
from pytest_qrel import load_suite
from pytest_qrel.engine.lifecycle import UnitLifecycle
from pytest_qrel.quantize import validate_quantizer
from pytest_qrel.quantize.qat import RECIPES
from pytest_qrel.spec.plan import plan
from pytest_qrel.spec.scenarios import split_scenario

SUITE = Path(__file__).resolve().parents[1] / "suites" / "clip.yaml"
VISUAL_MB = {"vit_b32": 352, "vit_b16": 345, "vit_l14": 1216}
"""FP32 size of each backbone's visual tower and projection (open_clip ViT-B/32, B/16, L/14), in MB."""


def run(budget_gib: float, scale: int, release: bool) -> dict[str, Any]:
    suite = load_suite(SUITE)
    planned = plan(suite)
    backbones = list(dict.fromkeys(split_scenario(p.model)[0] for p in planned))
    order = sorted(planned, key=lambda p: backbones.index(split_scenario(p.model)[0]))  # pytest's order
    memo = tm.TrainMemo(budget_bytes=int(budget_gib * 2**30 / scale))

    class Units:
        train_memo = memo

    class Loader:
        def release_model(self, suite: Any, model: str) -> None:
            pass

    lifecycle = UnitLifecycle(Loader(), Units(), None, None, baseline_of=lambda s, m: None, update_command=lambda s: "")
    if release:
        lifecycle.expect(order)
    modules: dict[str, torch.nn.Module] = {}
    counts = {"qat computed": 0, "qat reused": 0, "ptq computed": 0, "ptq reused": 0}
    built: set[tuple[str, str]] = set()
    peak = 0
    for p in order:
        for model, base in p.units:
            if (model, base) in built:
                continue
            built.add((model, base))
            backbone, scenario = split_scenario(model)
            spec = p.suite.quantizers[base]
            config = validate_quantizer(spec.method, spec.weight_bits, spec.act_bits, spec.options, seed=spec.calibration.seed)
            kind = "qat" if config.method in RECIPES else "ptq"
            with_head = tm.reads_head(config, labels=False, targets=kind == "qat")  # captions: QAT's targets
            if with_head is None:
                counts[f"{kind} computed"] += 1
                continue
            inputs = (backbone, config.method, config.weight_bits, config.act_bits, repr(config.options), config.seed,
                      scenario if with_head else None)
            key = tm.MemoKey(hashlib.sha256(repr(inputs).encode()).hexdigest(), with_head, kind == "qat")
            if backbone not in modules:
                modules[backbone] = torch.nn.Linear(1, 1)
                modules[backbone].weight = torch.nn.Parameter(torch.zeros(VISUAL_MB[backbone[:7]] * 2**20 // scale // 4, 1))
            owner = (str(p.suite.path), backbone)
            if memo.get(key, modules[backbone], "cpu", owner) is not None:
                counts[f"{kind} reused"] += 1
                continue
            counts[f"{kind} computed"] += 1
            memo.put(key, modules[backbone], owner)
            peak = max(peak, memo.used_bytes)
        if release:
            lifecycle.done(p)
    return {**counts, "evicted": sum(memo.evicted.values()), "released": sum(memo.released.values()),
            "peak disk GiB": round(peak * scale / 2**30, 1), "units": len(built)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, action="append", help="GiB (repeatable; default 16 and 48)")
    parser.add_argument("--scale", type=int, default=1024, help="sizes divided by this (default 1024)")
    parser.add_argument("--no-release", action="store_true", help="announce no checks (as under pytest-xdist)")
    args = parser.parse_args()
    tm.RESERVE_BYTES //= args.scale
    for budget in args.budget or [16.0, 48.0]:
        print(f"budget {budget:g} GiB:", run(budget, args.scale, not args.no_release))


if __name__ == "__main__":
    main()
