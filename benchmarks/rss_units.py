"""Peak RSS of an audit as the number of quantizers grows (1 -> 16) and as the ID set grows
(5k -> 50k images). A measurement, not a test: each configuration runs in a fresh process, the
ratios are between runs of one invocation.

    python benchmarks/rss_units.py [--quantizers 1,2,4,8,16] [--samples 5000] \
        [--sizes 5000,10000,20000,50000] [--size-quantizers 2]

The data is synthetic (the issue allows it): a dataset source ``bench_synthetic:<N>`` registered in
the child process makes image ``i`` on the fly from a generator seeded by ``i`` (3 x 16 x 16 floats
in [0, 1], label ``i mod 1000``), so the set itself holds no memory and only the engine's own
holdings grow with N. The OOD set is ``N / 5`` more such images (label -1). The model is DeiT-tiny's
architecture at 16 x 16 input (``timm:deit_tiny_patch16_224``, ``pretrained: false``, ``img_size:
16``): 5.7 M parameters, 1000 classes, so one leaked model copy per unit (23 MB) or one unit's full
logits (N x 1000 x 4 bytes: 200 MB at 50k) would show. Quantizers are minmax at the paper's five bit
configurations in turn, each with its own calibration seed. Every check of the suite is announced
(the plugin does the same), so the engine releases each unit after its last check; they run in the plugin's order
(``in_scope_order``: a unit's checks together).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BITS = [(8, 8), (6, 6), (4, 8), (8, 4), (4, 4)]

SUITE = """\
version: 1
name: rss
batch_size: 250
models:
  deit_tiny16:
    source: "timm:deit_tiny_patch16_224"
    options: {{pretrained: false, model_kwargs: {{img_size: 16}}}}
datasets:
  id: {{name: synthetic, source: "bench_synthetic:{n}"}}
  ood:
    - {{name: synthetic_ood, source: "bench_synthetic:{n_ood}", options: {{ood: true}}}}
quantizers:
{quantizers}
scores: [msp, energy]
checks:
  - "all top1 delta <= 100pp"
  - "all nll delta <= 1000%"
  - "all ece <= 1"
  - "all aupr_out(msp) on synthetic_ood delta <= 1000%"
  - "all auroc(energy) on synthetic_ood delta <= 1"
"""


def register_source() -> None:
    """``bench_synthetic:<N>``: N images generated on access (see the module docstring)."""
    import hashlib

    import numpy as np

    from pytest_qrel.data.base import DATASET_SOURCES

    class Synthetic:
        def __init__(self, n: int, split: str, ood: bool) -> None:
            offset = {"test": 0, "train": 10**7, "val": 2 * 10**7}[split] + (5 * 10**7 if ood else 0)
            self.n, self.offset, self.name = n, offset, f"synthetic{'_ood' if ood else ''}:{split}"
            labels = np.full(n, -1, dtype=np.int64) if ood else (np.arange(n, dtype=np.int64) % 1000)
            labels.setflags(write=False)
            self.labels = labels
            self.class_names = None
            self.fingerprint = hashlib.sha256(f"bench_synthetic|{n}|{offset}".encode()).hexdigest()

        def __len__(self) -> int:
            return self.n

        def __getitem__(self, i: int):
            import torch

            g = torch.Generator().manual_seed(self.offset + int(i))
            return torch.rand(3, 16, 16, generator=g), int(self.labels[i])

    @DATASET_SOURCES.register("bench_synthetic")
    def bench_synthetic(arg: str, *, split: str, options=None, base_dir=None):
        return Synthetic(int(arg), split, bool((options or {}).get("ood", False)))


CHILD = r'''
import json, resource, sys, time
sys.path.insert(0, sys.argv[4])
from rss_units import register_source
register_source()
from pytest_qrel import Engine, load_suite, plan
from pytest_qrel.spec.plan import in_scope_order
suite = load_suite(sys.argv[1])
engine = Engine(baseline_dir=sys.argv[2], cache_dir=None, update_baselines=True, workers=0)
planned = in_scope_order(plan(suite))  # the order the plugin runs them in
engine.expect(planned)
def rss_mb():
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
t = time.perf_counter()
samples, live_units, live_modules = [], 0, 0
engine.baseline(suite, next(iter(suite.models)))
after_baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
outcomes = {}
for p in planned:
    v = engine.evaluate(p)
    outcomes[v.outcome] = outcomes.get(v.outcome, 0) + 1
    samples.append(rss_mb())
    live_units = max(live_units, engine.live_units())
print(json.dumps({
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "peak_after_baseline_mb": after_baseline,
    "rss_after_checks_mb": [min(samples), max(samples), samples[-1]],
    "max_live_units": live_units, "end_live_units": engine.live_units(), "end_live_modules": engine.live_modules(),
    "passes": sum(engine.forward_passes.values()), "seconds": time.perf_counter() - t, "outcomes": outcomes,
}))
'''


def run_one(q: int, n: int, work: Path) -> dict:
    quantizers = "\n".join(
        f"  q{k}_W{BITS[k % 5][0]}A{BITS[k % 5][1]}: {{method: minmax, weight_bits: {BITS[k % 5][0]}, act_bits: {BITS[k % 5][1]}, "
        f"calibration: {{samples: 32, seed: {k}}}}}"
        for k in range(q)
    )
    d = work / f"q{q}-n{n}"
    d.mkdir(parents=True, exist_ok=True)
    suite = d / "rss.yaml"
    suite.write_text(SUITE.format(n=n, n_ood=max(10, n // 5), quantizers=quantizers))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", CHILD, str(suite), str(d / "baselines"), "", str(Path(__file__).parent)],
                          env=env, capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"q={q} n={n} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ints = lambda s: [int(x) for x in s.split(",") if x]  # noqa: E731
    parser.add_argument("--quantizers", type=ints, default=[1, 2, 4, 8, 16])
    parser.add_argument("--samples", type=int, default=5000, help="ID images of the quantizer sweep")
    parser.add_argument("--sizes", type=ints, default=[5000, 10000, 20000, 50000])
    parser.add_argument("--size-quantizers", type=int, default=2, help="quantizers of the size sweep")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="qrel-rss-"))
    rows = []
    print(f"peak RSS, DeiT-tiny architecture at 16x16, 1000 classes, minmax quantizers ({os.cpu_count()} cores)")
    print(f"  {'quantizers':>10s} {'ID images':>10s} {'passes':>7s} {'peak RSS MB':>12s} {'after FP32 MB':>14s} "
          f"{'RSS after checks min/max/end MB':>32s} {'live units max/end':>19s} {'s':>6s}")
    configs = [(q, args.samples) for q in args.quantizers] + [(args.size_quantizers, n) for n in args.sizes if n != args.samples or args.size_quantizers not in args.quantizers]
    for q, n in configs:
        r = run_one(q, n, work)
        rows.append((q, n, r))
        lo, hi, end = r["rss_after_checks_mb"]
        print(f"  {q:10d} {n:10d} {r['passes']:7d} {r['peak_rss_mb']:12.0f} {r['peak_after_baseline_mb']:14.0f} "
              f"{lo:10.0f} /{hi:6.0f} /{end:6.0f}      {r['max_live_units']:>5d} / {r['end_live_units']} {r['seconds']:6.0f}", flush=True)
    by_q = [r["peak_rss_mb"] for q, n, r in rows if n == args.samples and q in args.quantizers]
    if len(by_q) > 1:
        print(f"\n  peak RSS, {max(args.quantizers)} quantizers / 1 quantizer at {args.samples} images: {by_q[-1] / by_q[0]:.3f} (target: within 10 %)")
    by_n = {n: r["peak_rss_mb"] for q, n, r in rows if q == args.size_quantizers}
    if len(by_n) > 1:
        lo_n, hi_n = min(by_n), max(by_n)
        print(f"  peak RSS at {hi_n} / at {lo_n} images ({args.size_quantizers} quantizers): {by_n[hi_n] / by_n[lo_n]:.3f}; "
              f"at {hi_n}: {by_n[hi_n]:.0f} MB (target < 2048)")


if __name__ == "__main__":
    main()
