"""What the report costs: rendering a demo-sized RunResults (HTML with every figure + Markdown)
against the wall time of the demo audit itself. A measurement, not a test (machines are noisy):
report the numbers of one run, medians of ``--repeat`` fresh processes.

    python benchmarks/report_render.py [--repeat 3] [--suite suites/demo.yaml] [--skip-audit]

The RunResults are the synthetic ones of ``tests/reportdata.py`` (shaped like the demo suites:
per-sample arrays through ``pytest_qrel.curves``), so the figures are all there; the render runs
in a fresh interpreter, so importing matplotlib and Jinja2 is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

RENDER = r'''
import json, os, sys, tempfile, time
sys.path.insert(0, sys.argv[1])
import reportdata as rd
data = {"demo": rd.demo_results(), "demo_methods": rd.methods_results(), "demo_clip": rd.clip_results(),
        "demo_spectral": rd.spectral_results()}
out = {}
tmp = tempfile.mkdtemp()
for i, name in enumerate([sys.argv[2]] + [n for n in data if n != sys.argv[2]]):
    w, c = time.perf_counter(), time.process_time()
    from pytest_qrel.report import render_markdown, render_report
    path = render_report(data[name], os.path.join(tmp, name + ".html"))
    md = render_markdown(data[name], report_path=str(path))
    out[name] = {"wall": time.perf_counter() - w, "cpu": time.process_time() - c, "kb": os.path.getsize(path) / 1024,
                 "md_chars": len(md), "first": i == 0}
    w = time.perf_counter()
    render_report(data[name], os.path.join(tmp, name + "-tables.html"), figures=False)
    out[name]["tables_wall"] = time.perf_counter() - w
print(json.dumps(out))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--suite", default="suites/demo.yaml")
    parser.add_argument("--skip-audit", action="store_true", help="only time the rendering")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONPATH": str(ROOT)}
    name = Path(args.suite).stem

    audits = []
    if not args.skip_audit:
        for _ in range(args.repeat):
            cmd = [sys.executable, "-m", "pytest", "--qrel-suite", args.suite, "-q", "-p", "no:cacheprovider"]
            t = time.perf_counter()
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
            audits.append(time.perf_counter() - t)
            if proc.returncode != 0:
                sys.exit(f"demo audit failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}")

    runs = []
    for _ in range(args.repeat):
        proc = subprocess.run([sys.executable, "-c", RENDER, str(ROOT / "tests"), name], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
        runs.append(json.loads(proc.stdout))

    def med(key: str, demo: str) -> float:
        return statistics.median(r[demo][key] for r in runs)

    print(f"report rendering ({os.cpu_count()} cores, medians of {args.repeat} fresh processes):")
    print(f"  {'RunResults':14s} {'HTML + MD wall':>15s} {'cpu':>7s} {'tables only':>12s} {'HTML size':>10s} {'MD chars':>9s}")
    for demo in runs[0]:
        first = " (incl. imports)" if runs[0][demo]["first"] else ""
        print(f"  {demo:14s} {med('wall', demo):13.2f} s {med('cpu', demo):5.2f} s {med('tables_wall', demo):10.2f} s "
              f"{med('kb', demo):7.0f} KB {med('md_chars', demo):9.0f}{first}")
    if audits:
        audit = statistics.median(audits)
        render = med("wall", name)
        print(f"demo audit ({args.suite}, no report): wall {audit:.2f} s median ({', '.join(f'{a:.2f}' for a in audits)})")
        print(f"rendering its report (demo-sized RunResults, imports included): {render:.2f} s = {100 * render / audit:.1f} % of the audit")


if __name__ == "__main__":
    main()
