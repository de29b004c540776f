"""Cold demo audit: wall time of the README command in a fresh process with no cache, and where
the time goes. A measurement, not a test (machines are noisy): report the numbers of one run.

    python benchmarks/demo_cold.py [--repeat 3] [--suite suites/demo.yaml]
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

PHASES = r'''
import json, sys, time
t0 = time.perf_counter(); out = {}
def mark(name):
    global t0
    t = time.perf_counter(); out[name] = round(t - t0, 3); t0 = t
import pytest; mark("import pytest")
import pytest_qrel.plugin; mark("import pytest_qrel.plugin")
from pytest_qrel import load_suite, plan; suite = load_suite(sys.argv[1]); items = plan(suite); mark("load + plan suite (collection)")
import torch, timm; mark("import torch + timm")
import sklearn.metrics; mark("import scikit-learn")
from pytest_qrel.engine import Engine
engine = Engine(baseline_dir=sys.argv[2])
for m in suite.models: engine.model(suite, m)
mark("load model")
for d in suite.all_datasets: engine.dataset(suite, d)
engine.dataset(suite, suite.id_dataset.name, "train"); mark("build datasets")
# The engine quantizes and streams inside evaluate(): time its two collaborators there.
spent = {"calibrate quantizers": 0.0, "forward passes": 0.0}
def timed(fn, key):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            spent[key] += time.perf_counter() - t
    return wrapper
engine.units.build_module = timed(engine.units.build_module, "calibrate quantizers")
engine.runner.run = timed(engine.runner.run, "forward passes")
engine.expect(items)
t = time.perf_counter(); verdicts = [engine.evaluate(p) for p in items]; total = time.perf_counter() - t
out.update({k: round(v, 3) for k, v in spent.items()})
out["metrics + checks (intervals, records)"] = round(total - sum(spent.values()), 3); t0 = time.perf_counter()
from pytest_qrel.report import render_report
import tempfile, os
render_report(verdicts, engine.report_units(), os.path.join(tempfile.mkdtemp(), "r.html")); mark("render report")
out["forward_passes"] = sum(engine.forward_passes.values()); out["checks"] = len(items)
print(json.dumps(out))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--suite", default="suites/demo.yaml")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    walls = []
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pytest", "--qrel-suite", args.suite, "-q", "-p", "no:cacheprovider",
                   "--qrel-report", str(Path(tmp) / "demo.html")]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            walls.append(time.perf_counter() - t)
            if proc.returncode != 0:
                sys.exit(f"demo audit failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")
    phases = subprocess.run([sys.executable, "-c", PHASES, args.suite, str(ROOT / "baselines")], cwd=ROOT, env=env,
                            capture_output=True, text=True, check=True)
    print(f"cold demo audit ({args.suite}, {os.cpu_count()} cores): wall {statistics.median(walls):.2f} s median of "
          f"{args.repeat} ({', '.join(f'{w:.2f}' for w in walls)})")
    print("where the time goes (one fresh process, library calls):")
    for name, value in json.loads(phases.stdout).items():
        print(f"  {name:32s} {value}")


if __name__ == "__main__":
    main()
