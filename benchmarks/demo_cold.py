"""Cold demo audit: wall time of the README command in a fresh process with no cache, and where
the time goes. A measurement, not a test (machines are noisy): report the numbers of one run.

    python benchmarks/demo_cold.py [--repeat 3] [--suite suites/demo.yaml] [--before /path/to/other/checkout]
                                   [--python /path/to/venv/bin/python]

For each checkout (this one, and ``--before`` when given: e.g. ``git worktree add /tmp/before main``)
it runs, ``--repeat`` times and alternating between the checkouts so that both see the same load,
``python -m pytest --qrel-suite SUITE -q -p no:cacheprovider --qrel-report R.html`` from that
checkout's root with ``PYTHONPATH`` set to it (no outputs cache: ``-p no:cacheprovider``), and
prints the median wall and CPU seconds and the after/before ratios. Then, once per checkout, a
fresh process times the run's phases as library calls (imports, model, data, calibration, forward
passes, metrics and checks, report) and lists which optional heavy packages a run *without* a
report imported (matplotlib, jinja2, scikit-learn's datasets, the project's test helpers, ...).
On a loaded machine read the ratios, not the seconds.

``--python``: the interpreter to run (default: this one). A user's first audit runs in a fresh
environment holding pytest-qrel and its dependencies only; a development environment also
autoloads every installed pytest plugin (hypothesis, anyio, pytest-benchmark: about a second of
imports and assertion rewriting), which is not the project's cost. Make one with::

    python -m venv /tmp/qrel-user && /tmp/qrel-user/bin/pip install torch torchvision && /tmp/qrel-user/bin/pip install .

Each checkout is run once unmeasured first: ``pip install`` byte-compiles the package, so a user's
first run finds compiled modules (and pytest's rewritten ones are cached the same way); "cold"
here means a fresh process and no outputs cache, not a missing ``__pycache__``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import measure  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

# Heavy packages the demo without a report should not need (the probe lists those it imported).
PROBED = ("matplotlib", "jinja2", "sklearn", "sklearn.datasets", "scipy.stats", "skimage", "tests", "pandas", "open_clip")

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
out["metrics + checks (intervals, records)"] = round(total - sum(spent.values()), 3)
probed = json.loads(sys.argv[3])
imported_without_report = [m for m in probed if m in sys.modules]
t0 = time.perf_counter()
from pytest_qrel.report import render_report
from pytest_qrel.shards import run_results
import tempfile, os
results = run_results(verdicts, engine.report_units(), suites=[suite], planned={suite.name: len(items)}, started=time.time())
render_report(results, os.path.join(tempfile.mkdtemp(), "r.html")); mark("render report (matplotlib, jinja2; no figure worker)")
out["forward_passes"] = sum(engine.forward_passes.values()); out["checks"] = len(items)
out["imported by a run without a report"] = imported_without_report
print(json.dumps(out))
'''


def _env(checkout: Path) -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE (set on some CI images) would make every run recompile and re-rewrite
    # the checkout's modules, which no pip-installed package does.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    return {**env, "PYTHONPATH": str(checkout)}


def _wall(python: str, checkout: Path, suite: str) -> tuple[float, float]:
    env = _env(checkout)
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [python, "-m", "pytest", "--qrel-suite", suite, "-q", "-p", "no:cacheprovider",
               "--qrel-report", str(Path(tmp) / "demo.html")]
        m = measure(cmd, cwd=checkout, env=env)
    if m.returncode != 0:
        sys.exit(f"demo audit in {checkout} failed (exit {m.returncode}):\n{m.output[-2000:]}")
    return m.wall_s, m.cpu_s


def _phases(python: str, checkout: Path, suite: str) -> dict[str, object]:
    env = _env(checkout)
    proc = subprocess.run([python, "-c", PHASES, suite, str(checkout / "baselines"), json.dumps(PROBED)],
                          cwd=checkout, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"phase breakdown in {checkout} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--suite", default="suites/demo.yaml")
    parser.add_argument("--before", type=Path, help="another checkout (the baseline of a before/after comparison)")
    parser.add_argument("--python", default=sys.executable, help="the interpreter of a fresh user environment (see above)")
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "after": ROOT} if args.before else {"this": ROOT}
    walls: dict[str, list[float]] = {k: [] for k in checkouts}
    cpus: dict[str, list[float]] = {k: [] for k in checkouts}
    for checkout in checkouts.values():
        _wall(args.python, checkout, args.suite)  # unmeasured: compiles the modules, as pip install does
    for _ in range(args.repeat):
        for name, checkout in checkouts.items():
            wall, cpu = _wall(args.python, checkout, args.suite)
            walls[name].append(wall)
            cpus[name].append(cpu)
    load = os.getloadavg()[0]
    print(f"cold demo audit ({args.suite}, {os.cpu_count()} cores, load {load:.1f} at the end, {args.python}), median of {args.repeat}:")
    for name, checkout in checkouts.items():
        print(f"  {name:6s} {checkout}: wall {statistics.median(walls[name]):.2f} s ({', '.join(f'{w:.2f}' for w in walls[name])}),"
              f" CPU {statistics.median(cpus[name]):.2f} s")
    if args.before:
        for label, series in (("wall", walls), ("CPU", cpus)):
            print(f"  after/before {label}: {statistics.median(series['after']) / statistics.median(series['before']):.2f}")
    for name, checkout in checkouts.items():
        print(f"where the time goes ({name}; one fresh process, library calls, seconds):")
        for phase, value in _phases(args.python, checkout, args.suite).items():
            print(f"  {phase:40s} {value}")


if __name__ == "__main__":
    main()
