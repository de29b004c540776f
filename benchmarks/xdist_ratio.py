"""``pytest -n 2`` against a serial run of a 4-quantizer suite, cold (a fresh cache directory each
time), in pairs run back to back; wall and CPU seconds (of the whole process tree) of each. A
measurement, not a test: the ratio of each pair is measured within one pair, the median over pairs
is reported.

    python benchmarks/xdist_ratio.py [--pairs 3] [--folder /tmp/qrel-mini --folder-pairs 1]

Suites (written to a user-like project directory, see :mod:`_bench`):

- ``demo4``: ``suites/demo.yaml`` with 4 of its 5 quantizers (W6A6 dropped); it keeps the name
  ``demo``, so it reads the shipped baselines of ``baselines/``;
- ``folder4`` (with ``--folder``): ``benchmarks/deit_like.yaml`` on a folder made by
  ``make_imagenet_folder.py``, with 4 single-seed quantizers; its baselines are made first, untimed.

``--profile DIR`` records each run with ``py-spy record --subprocesses`` (raw collapsed stacks, one
file per run) to see where the CPU goes.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ROOT, env, load_average, measure, pytest_cmd, summary_line, user_project  # noqa: E402


def demo4(project: Path) -> Path:
    doc = yaml.safe_load((ROOT / "suites" / "demo.yaml").read_text())
    doc["quantizers"].pop("W6A6")
    checks = []
    for c in doc["checks"]:
        text = c if isinstance(c, str) else c.get("check", "")
        if isinstance(c, dict) and "quantizers" in c:
            c = {**c, "quantizers": [q for q in c["quantizers"] if q != "W6A6"]}
        elif "W6A6" in text:
            text = text.replace("W6A6,", "").replace(",W6A6", "")
            c = text if isinstance(c, str) else {**c, "check": text}
        checks.append(c)
    doc["checks"] = checks
    path = project / "demo4.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def folder4(project: Path) -> Path:
    doc = yaml.safe_load((ROOT / "benchmarks" / "deit_like.yaml").read_text())
    for q in doc["quantizers"].values():
        q["calibration"] = {"samples": 32, "seed": 0}
    path = project / "folder4.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def run(suite: Path, project: Path, baselines: Path, e: dict[str, str], n: int, profile: Path | None, tag: str):
    cache = Path(tempfile.mkdtemp(prefix="qrel-cache-", dir=project))
    extra = ("-n", str(n)) if n else ("-p", "no:xdist")
    cmd = pytest_cmd(suite, cache_dir=cache, baseline_dir=baselines, extra=extra)
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        cmd = ["py-spy", "record", "--subprocesses", "--format", "raw", "--rate", "50", "-o", str(profile / f"{tag}.txt"), "--", *cmd]
    m = measure(cmd, cwd=project, env=e)
    shutil.rmtree(cache, ignore_errors=True)
    if m.returncode not in (0, 1):
        sys.exit(f"{' '.join(cmd)} failed ({m.returncode}):\n{m.output[-3000:]}")
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=3, help="pairs (serial, -n 2) of the demo suite")
    parser.add_argument("--folder", type=Path, default=None, help="also the folder suite on this folder")
    parser.add_argument("--folder-pairs", type=int, default=1)
    parser.add_argument("--profile", type=Path, default=None)
    parser.add_argument("--skip-demo", action="store_true")
    args = parser.parse_args()
    project = user_project(Path(tempfile.mkdtemp(prefix="qrel-xdist-")))
    print(f"-n 2 / serial, cold, {os.cpu_count()} cores, load {load_average()}")
    jobs = []
    if not args.skip_demo:
        jobs.append(("demo4", demo4(project), ROOT / "baselines", env(), args.pairs))
    if args.folder is not None:
        e = env(QREL_BENCH_IMAGENET=str(args.folder.resolve()))
        suite, baselines = folder4(project), project / "baselines"
        made = measure(pytest_cmd(suite, cache_dir=project / "cache-base", baseline_dir=baselines, extra=("--qrel-update-baselines",)),
                       cwd=project, env=e)
        print(f"  folder4 baselines: {made.wall_s:.1f} s [{summary_line(made.output)}]")
        jobs.append(("folder4", suite, baselines, e, args.folder_pairs))
    for name, suite, baselines, e, pairs in jobs:
        ratios, cpu_ratios = [], []
        for k in range(pairs):
            serial = run(suite, project, baselines, e, 0, args.profile, f"{name}-serial-{k}")
            xdist = run(suite, project, baselines, e, 2, args.profile, f"{name}-n2-{k}")
            ratios.append(xdist.wall_s / serial.wall_s)
            cpu_ratios.append(xdist.cpu_s / serial.cpu_s)
            print(f"  {name} pair {k + 1}: serial {serial.wall_s:.1f} s wall / {serial.cpu_s:.1f} s CPU [{summary_line(serial.output)}]; "
                  f"-n 2 {xdist.wall_s:.1f} s wall / {xdist.cpu_s:.1f} s CPU [{summary_line(xdist.output)}]; "
                  f"ratio {ratios[-1]:.3f} (CPU {cpu_ratios[-1]:.3f}); load {load_average()}", flush=True)
        print(f"  {name}: -n 2 / serial wall, median of {pairs}: {statistics.median(ratios):.3f} (target <= 0.6); "
              f"CPU ratio {statistics.median(cpu_ratios):.3f}")
    if args.profile is not None:
        subprocess.run([sys.executable, str(Path(__file__).parent / "collapse_profile.py"), str(args.profile)], check=False)


if __name__ == "__main__":
    main()
