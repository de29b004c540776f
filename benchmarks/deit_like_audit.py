"""The deit.yaml-shaped audit on a synthetic ImageNet folder: cold wall against the bare forward
passes it needs, warm re-run against cold, later passes against the first (decode share), and the
bytes the caches hold. A measurement, not a test: every ratio is measured within one run.

    python benchmarks/make_imagenet_folder.py /tmp/qrel-in200 --val 200 --train 64 --ood 25
    python benchmarks/deit_like_audit.py --data /tmp/qrel-in200 [--suite benchmarks/deit_like.yaml]

Steps, each in a fresh process run from a user-like project directory (:mod:`_bench`):

1. the FP32 baselines, written by the library (``Engine.write_baseline``; not part of the ratios:
   baselines are made once and committed; its wall is printed);
2. **cold**: the audit with a fresh cache directory B (no outputs, no decoded images), traced
   (``PYTEST_QREL_TRACE``) to list every forward pass it made;
3. **warm**: the same command again with B;
4. **bare**: a plain script that builds the same quantized modules (untimed) and times only
   ``module(x)`` over the same batches (the model inputs, read from B's decoded-image store, in
   the suite's batch size), with the same torch threads;
5. **passes**: in-library, the FP32 baseline passes twice over every set, first decoding (store
   empty), then from the store (outputs cache removed), timed per image through the engine's
   progress hook; and one quantized pass from the store, for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench import ROOT, env, load_average, measure, pytest_cmd, summary_line, tree_bytes, user_project  # noqa: E402

BARE = r'''
import json, sys, time
from collections import defaultdict
from pathlib import Path
import numpy as np, torch
from pytest_qrel import load_suite
from pytest_qrel.engine import Engine
from pytest_qrel.engine.imagestore import ImageStore, store_key
from pytest_qrel.engine.trace import read_trace
from pytest_qrel.models.base import preprocess_stages
suite_path, baselines, images, trace = sys.argv[1:5]
suite = load_suite(suite_path)
engine = Engine(baseline_dir=baselines)
passes = defaultdict(list)  # seed name -> datasets, in trace order
for pid, event, *rest in read_trace(trace):
    if event == "forward":
        _, model, q, d = rest
        passes[(model, q)].append(d)
store = ImageStore(Path(images))
out = {"threads": torch.get_num_threads(), "forward_s": 0.0, "quantize_s": 0.0, "passes": 0, "images": 0, "per_pass": []}
for (model, q), datasets in passes.items():
    loaded = engine.model(suite, model)
    _, normalize = preprocess_stages(loaded.preprocess)
    t = time.perf_counter()
    module = engine.quantized_module(suite, model, q) if q != "FP32" else loaded.module
    module.eval()
    out["quantize_s"] += time.perf_counter() - t
    for d in datasets:
        ds = engine.dataset(suite, d)
        stored = store.open(store_key(str(ds.fingerprint), loaded.preprocessing, None))
        assert stored is not None and len(stored) == len(ds), (d, "no decoded-image store entry")
        spent = 0.0
        with torch.inference_mode():
            for start in range(0, len(ds), suite.batch_size):
                units = torch.from_numpy(stored.batch(start, min(len(ds), start + suite.batch_size)))
                x = torch.stack([normalize(u) for u in units])
                t = time.perf_counter()
                module(x)
                spent += time.perf_counter() - t
        out["forward_s"] += spent
        out["passes"] += 1
        out["images"] += len(ds)
        out["per_pass"].append([q, d, len(ds), spent])
    del module
print(json.dumps(out))
'''

BASELINES = r'''
import sys
from pytest_qrel import load_suite
from pytest_qrel.engine import Engine
suite = load_suite(sys.argv[1])
engine = Engine(baseline_dir=sys.argv[2], update_baselines=True)
for model in suite.models:
    engine.write_baseline(suite, model)
'''

PASSES = r'''
import json, shutil, sys, time
from pathlib import Path
from pytest_qrel import load_suite
from pytest_qrel.engine import Engine
suite_path, baselines, cache = sys.argv[1:4]
suite = load_suite(suite_path)
class Recorder:
    def __init__(self): self.start, self.spans = {}, []
    def update(self, what, done, total, unit="images"):
        if unit != "images": return  # calibration / QAT steps: not a pass over a dataset
        now = time.perf_counter()
        if done == 0: self.start[what] = now
        if done >= total: self.spans.append([what, total, now - self.start.pop(what)])
    def unit(self, *a): pass
out = {}
model = next(iter(suite.models))
for label in ("decoding", "from store"):
    rec = Recorder()
    engine = Engine(baseline_dir=baselines, cache_dir=cache, update_baselines=True, progress=rec, workers=int(sys.argv[4]))
    engine.write_baseline(suite, model)
    out[label] = {"spans": rec.spans, "decodes": engine.runner.decoded}
    shutil.rmtree(Path(cache) / "outputs", ignore_errors=True)
rec = Recorder()
engine = Engine(baseline_dir=baselines, cache_dir=cache, progress=rec, workers=int(sys.argv[4]))
q = [q for q in suite.quantizers if "minmax" in q and "8" in q][0]
engine.metrics(suite, model, q)
out[f"{q} from store"] = {"spans": rec.spans, "decodes": engine.runner.decoded}
print(json.dumps(out))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="a folder made by make_imagenet_folder.py")
    parser.add_argument("--suite", type=Path, default=ROOT / "benchmarks" / "deit_like.yaml")
    parser.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temp dir)")
    parser.add_argument("--skip-passes", action="store_true", help="skip step 5")
    parser.add_argument("--workers", default="auto", help="--qrel-workers of the audit runs")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="qrel-audit-"))
    project = user_project(work / "project")
    suite = args.suite.resolve()
    baselines, cache_b, trace = work / "baselines", work / "cache-b", work / "trace.tsv"
    for p in (baselines, cache_b, trace):
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    e = env(QREL_BENCH_IMAGENET=str(args.data.resolve()))
    extra = ("--qrel-workers", args.workers)
    print(f"deit_like audit on {args.data} ({os.cpu_count()} cores, load {load_average()})", flush=True)

    base = measure([sys.executable, "-c", BASELINES, str(suite), str(baselines)], cwd=project, env=e)
    if base.returncode:
        sys.exit(base.output[-3000:])
    print(f"  FP32 baselines (Engine.write_baseline, no cache): {base.wall_s:.1f} s", flush=True)
    cold = measure(pytest_cmd(suite, cache_dir=cache_b, baseline_dir=baselines, extra=extra), cwd=project, env={**e, "PYTEST_QREL_TRACE": str(trace)})
    print(f"  cold audit: {cold.wall_s:.1f} s wall, {cold.cpu_s:.1f} s CPU, peak RSS {cold.max_rss_mb:.0f} MB  [{summary_line(cold.output)}]", flush=True)
    warm = measure(pytest_cmd(suite, cache_dir=cache_b, baseline_dir=baselines, extra=extra), cwd=project, env=e)
    print(f"  warm re-run: {warm.wall_s:.1f} s wall  [{summary_line(warm.output)}]", flush=True)

    import subprocess

    bare = json.loads(subprocess.run(
        [sys.executable, "-c", BARE, str(suite), str(baselines), str(cache_b / "d" / "qrel" / "images"), str(trace)],
        cwd=project, env=e, capture_output=True, text=True, check=True,
    ).stdout)
    print(f"  bare forward passes: {bare['forward_s']:.1f} s ({bare['passes']} passes, {bare['images']} images, "
          f"{bare['threads']} threads; building the modules took {bare['quantize_s']:.1f} s more)")

    outputs_bytes, entries = tree_bytes(cache_b / "d" / "qrel" / "outputs", "*.npz")
    images_bytes, stores = tree_bytes(cache_b / "d" / "qrel" / "images", "*.u8")
    seeds = {(q) for q, d, n, s in bare["per_pass"]}
    samples = sum(n for q, d, n, s in bare["per_pass"]) / max(1, len(seeds))
    decoded = sum(n for q, d, n, s in bare["per_pass"] if q == bare["per_pass"][0][0])

    print("\nresults")
    print(f"  cold audit wall / bare forward passes      {cold.wall_s / bare['forward_s']:.3f}   (target <= 1.15)")
    print(f"  cold audit wall - bare forward passes      {cold.wall_s - bare['forward_s']:.1f} s "
          f"(of which building {len(seeds)} quantized modules: {bare['quantize_s']:.1f} s)")
    print(f"  warm re-run / cold                          {warm.wall_s / cold.wall_s:.3f}   (target <= 0.05)")
    print(f"  outputs cache                               {outputs_bytes} bytes in {entries} entries = "
          f"{outputs_bytes / (len(seeds) * samples):.1f} bytes per sample per unit ({len(seeds)} seed units x {samples:.0f} samples)")
    payload = 0
    import numpy as np

    for f in (cache_b / "d" / "qrel" / "outputs").rglob("*.npz"):
        with np.load(f) as z:
            payload += sum(z[k].nbytes for k in z.files if not k.startswith("__"))
    print(f"    of which array payload                    {payload / (len(seeds) * samples):.1f} bytes per sample per unit; "
          f"the rest is {(outputs_bytes - payload) / max(1, entries):.0f} bytes of zip + digest per entry (fixed, whatever N)")
    print(f"  decoded-image store                         {images_bytes / 1e6:.1f} MB in {stores} files = "
          f"{images_bytes / max(1, decoded):.0f} bytes per image (uint8 3x224x224 = {3 * 224 * 224})")

    if args.skip_passes:
        return
    cache_c = work / "cache-c"
    shutil.rmtree(cache_c, ignore_errors=True)
    workers = "1" if args.workers == "auto" else args.workers
    passes = json.loads(subprocess.run(
        [sys.executable, "-c", PASSES, str(suite), str(work / "baselines-passes"), str(cache_c), workers],
        cwd=project, env=e, capture_output=True, text=True, check=True,
    ).stdout)
    first = {what.rsplit(" on ", 1)[1]: s / n for what, n, s in passes["decoding"]["spans"]}
    second = {what.rsplit(" on ", 1)[1]: s / n for what, n, s in passes["from store"]["spans"]}
    qname = [k for k in passes if k.endswith("from store") and k != "from store"][0]
    third = {what.rsplit(" on ", 1)[1]: s / n for what, n, s in passes[qname]["spans"]}
    print(f"\nper-image time of a pass, FP32 module (in-library, --qrel-workers {workers}; decodes: "
          f"{passes['decoding']['decodes']} then {passes['from store']['decodes']})")
    print(f"  {'dataset':12s} {'1st pass ms':>12s} {'2nd pass ms':>12s} {'2nd / 1st':>10s} {qname + ' ms':>18s}")
    for d in first:
        print(f"  {d:12s} {1e3 * first[d]:12.1f} {1e3 * second[d]:12.1f} {second[d] / first[d]:10.3f} {1e3 * third.get(d, float('nan')):18.1f}")
    n1 = sum(n for _, n, _ in passes["decoding"]["spans"])
    t1 = sum(s for _, _, s in passes["decoding"]["spans"])
    t2 = sum(s for _, _, s in passes["from store"]["spans"])
    print(f"  {'all':12s} {1e3 * t1 / n1:12.1f} {1e3 * t2 / n1:12.1f} {t2 / t1:10.3f}")
    print(f"\nwork dir: {work}")


if __name__ == "__main__":
    main()
