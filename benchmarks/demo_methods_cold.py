"""Cold run of the quantization-methods demo: wall time of the README-style command in a fresh
process (``-p no:cacheprovider``: no outputs cache), then, in another fresh process, the time each
quantizer takes to quantize (calibrate, reparameterize or train) and the QAT steps it took, with its
forward passes beside it. A measurement, not a test (machines are noisy): report one run's numbers.

    python benchmarks/demo_methods_cold.py [--repeat 1] [--suite suites/demo_methods.yaml]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PER_QUANTIZER = r'''
import json, sys, time
t0 = time.perf_counter()
import torch
from pytest_qrel import load_suite, plan
from pytest_qrel.engine import Engine
suite = load_suite(sys.argv[1]); items = plan(suite)
engine = Engine(baseline_dir=sys.argv[2])
out = {"threads": torch.get_num_threads(), "quantizers": []}
t = time.perf_counter()
for m in suite.models: engine.model(suite, m)
for d in suite.all_datasets: engine.dataset(suite, d)
engine.dataset(suite, suite.id_dataset.name, "train")
out["load model + datasets"] = time.perf_counter() - t
# The engine quantizes and streams inside evaluate(): time its collaborators per quantizer there.
rows, forward = {}, {}
build, run = engine.units.build_module, engine.runner.run
def timed_build(suite_, model, base, seed, info):
    t = time.perf_counter(); module = build(suite_, model, base, seed, info); spent = time.perf_counter() - t
    spec = suite.quantizers.get(base)
    if spec is not None:
        row = rows.setdefault((model, base), {"model": model, "quantizer": base, "method": spec.method,
            "bits": f"W{spec.weight_bits}A{spec.act_bits}", "samples": spec.calibration.samples, "quantize_s": 0.0,
            "qat_steps": None, "batch": None})
        row["quantize_s"] += spent
        row["qat_steps"] = getattr(module, "qat_steps", None)
        row["batch"] = getattr(getattr(module, "qat_options", None), "batch_size", None)
    return module
def timed_run(*a, key=None, **k):
    t = time.perf_counter()
    try:
        return run(*a, key=key, **k)
    finally:
        if isinstance(key, tuple):
            q = key[2].split("@")[0]
            forward[(key[1], q)] = forward.get((key[1], q), 0.0) + time.perf_counter() - t
engine.units.build_module, engine.runner.run = timed_build, timed_run
engine.expect(items)
t = time.perf_counter(); verdicts = [engine.evaluate(p) for p in items]
spent = time.perf_counter() - t
for key, row in rows.items():
    row["forward_s"] = forward.get(key, 0.0)
    out["quantizers"].append(row)
out["checks (post-hoc fits, FP32 forward on held-out, metrics)"] = spent - sum(r["quantize_s"] + r["forward_s"] for r in rows.values())
out["outcomes"] = {o: sum(v.outcome == o for v in verdicts) for o in sorted({v.outcome for v in verdicts})}
out["total"] = time.perf_counter() - t0
print(json.dumps(out))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1, help="cold pytest runs (median reported)")
    parser.add_argument("--suite", default="suites/demo_methods.yaml")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}

    walls = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pytest", "--qrel-suite", args.suite, "-q", "-p", "no:cacheprovider",
                   "--qrel-report", str(Path(tmp) / "methods.html")]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - t)
            if proc.returncode != 0:
                sys.exit(f"audit failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}")
            summary = next((line for line in proc.stdout.splitlines()[::-1] if " in " in line), "")

    proc = subprocess.run([sys.executable, "-c", PER_QUANTIZER, args.suite, str(ROOT / "baselines")], cwd=ROOT,
                          env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"per-quantizer run failed:\n{proc.stderr[-3000:]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])

    print(f"cold audit of {args.suite} ({os.cpu_count()} cores, torch {data['threads']} threads): "
          f"wall {statistics.median(walls):.1f} s, median of {args.repeat} ({', '.join(f'{w:.1f}' for w in walls)}); "
          f"pytest: {summary.strip('= ')}")
    print()
    header = f"{'quantizer':18s} {'method':12s} {'bits':5s} {'calib':>5s} {'quantize s':>10s} {'QAT steps':>9s} " \
             f"{'ms/step':>7s} {'forward s':>9s}"
    print(header)
    print("-" * len(header))
    for row in data["quantizers"]:
        steps = row["qat_steps"]
        per_step = f"{1000 * row['quantize_s'] / steps:.0f}" if steps else "-"
        steps_text = f"{steps}x{row['batch']}" if steps else "-"
        print(f"{row['quantizer']:18s} {row['method']:12s} {row['bits']:5s} {row['samples']:5d} "
              f"{row['quantize_s']:10.2f} {steps_text:>9s} {per_step:>7s} {row['forward_s']:9.2f}")
    quantize = sum(r["quantize_s"] for r in data["quantizers"])
    forward = sum(r["forward_s"] for r in data["quantizers"])
    steps = sum(r["qat_steps"] or 0 for r in data["quantizers"])
    print("-" * len(header))
    print(f"{'sum':42s} {quantize:10.2f} {steps:>9d} {'':7s} {forward:9.2f}")
    print()
    print("library run, one fresh process:")
    for key in ("load model + datasets", "checks (post-hoc fits, FP32 forward on held-out, metrics)", "total"):
        print(f"  {key:58s} {data[key]:.2f} s")
    print(f"  outcomes: {data['outcomes']}")


if __name__ == "__main__":
    main()
