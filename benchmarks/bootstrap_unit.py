"""Benchmark: every delta interval of one unit at 50,000 ID + 50,000 OOD samples, on one core.

The unit: a quantized model and its FP32 baseline (two sides, paired), six metrics (top1, nll,
ece on the ID set; auroc, aupr_out, fpr_at_95_tpr of one score on one OOD set), 1,000 paired
resamples, 95% percentile intervals, in one :func:`pytest_qrel.stats.paired_intervals` call.
Synthetic per-sample arrays in float32 (as the engine stores them); the quantized side is the
FP32 side plus noise, so the pairing matters.

Reports the CPU time of the call (best and median of ``--repeats`` runs: this machine is
shared, and the best run is the least disturbed), a breakdown of the best run by stage, and
the peak memory the call allocates (``tracemalloc``, in a separate run: tracing slows numpy).
Then, per metric convention (``--convention NAME``, default ``all`` registered ones), the CPU
time of the same unit's call under that convention and of each OOD metric's interval alone
(the convention changes FPR@95 and AUPR, the slow parts when a convention lacks a weighted form).
Threads are pinned to one (``OMP_NUM_THREADS=1`` and friends, set before numpy loads).

    python benchmarks/bootstrap_unit.py [--n 50000] [--resamples 1000] [--repeats 5] [--convention all]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
import tracemalloc  # noqa: E402

import numpy as np  # noqa: E402

from pytest_qrel.spec.schema import Bound  # noqa: E402
from pytest_qrel.stats import IntervalRequest, paired_intervals  # noqa: E402


def unit(n: int, seed: int = 0) -> tuple[dict, dict]:
    """(quantized, FP32) per-sample arrays of a 10-class model on an ID set and an OOD set."""
    rng = np.random.default_rng(seed)

    def side(conf: np.ndarray, correct: np.ndarray, s_id: np.ndarray, s_ood: np.ndarray) -> dict:
        conf = conf.astype(np.float32)
        p_true = np.where(correct, conf, (1.0 - conf) / 9.0)
        return {
            "id": {
                "correct": correct,
                "confidence": conf,
                "nll": (-np.log(np.maximum(p_true, 1e-7))).astype(np.float32),
                "score.msp": s_id.astype(np.float32),
            },
            "ood": {"score.msp": s_ood.astype(np.float32)},
        }

    conf = np.clip(rng.beta(8, 1, n), 0.1, 1.0)
    correct = rng.random(n) < conf
    s_id, s_ood = rng.normal(2.0, 1.0, n), rng.normal(0.0, 1.0, n)
    fp32 = side(conf, correct, s_id, s_ood)
    q_conf = np.clip(conf + rng.normal(0, 0.02, n), 0.1, 1.0)
    q_correct = np.where(rng.random(n) < 0.03, ~correct, correct)
    quantized = side(q_conf, q_correct, s_id + rng.normal(0, 0.3, n), s_ood + rng.normal(0, 0.3, n))
    return quantized, fp32


OOD_METRICS = ("auroc", "aupr_out", "fpr_at_95_tpr")


def requests(quantized: dict, fp32: dict, conventions: str = "hendrycks") -> list[IntervalRequest]:
    out = [IntervalRequest(m, ("id",), (quantized,), fp32, bound=Bound("delta", "<=", 1, "pp")) for m in ("top1", "nll", "ece")]
    out += [
        IntervalRequest(m, ("ood",), (quantized,), fp32, score="msp", id_dataset="id", conventions=conventions,
                        bound=Bound("delta", "<=", 12, "%"))
        for m in OOD_METRICS
    ]
    return out


def cpu_best(fn, repeats: int) -> tuple[float, float]:
    """(best, median) CPU seconds of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t = time.process_time()
        fn()
        times.append(time.process_time() - t)
    return min(times), statistics.median(times)


def per_convention(quantized: dict, fp32: dict, names: list[str], resamples: int, repeats: int) -> None:
    """CPU time of the unit's call and of each OOD metric's interval alone, per convention."""
    print(f"per convention (CPU s, best / median of {repeats}; 'unit' = all 6 metrics in one call):")
    print(f"  {'convention':12s} {'unit':>15s} " + " ".join(f"{m:>15s}" for m in OOD_METRICS))
    for name in names:
        reqs = requests(quantized, fp32, name)
        row = [cpu_best(lambda: paired_intervals(reqs, resamples=resamples), repeats)]  # noqa: B023  (called here, in this iteration)
        for r in reqs[3:]:
            row.append(cpu_best(lambda r=r: paired_intervals([r], resamples=resamples), repeats))
        print(f"  {name:12s} " + " ".join(f"{b:7.3f} / {m:5.3f}" for b, m in row)
              + f"   (FPR@95 by calling the plain function per resample: ~{fallback_seconds(quantized, fp32, name, resamples):.1f} s)",
              flush=True)


def fallback_seconds(quantized: dict, fp32: dict, name: str, resamples: int, calls: int = 6) -> float:
    """CPU seconds the FPR@95 interval would take without a weighted form: the convention's plain
    function on ``resamples`` resampled arrays of both sides, extrapolated from ``calls`` calls."""
    from pytest_qrel.conventions import CONVENTIONS
    from pytest_qrel.metrics import fpr_at_95_tpr

    plain = CONVENTIONS.get(name).get("fpr_at_95_tpr", fpr_at_95_tpr)
    rng = np.random.default_rng(0)
    plain(quantized["id"]["score.msp"], quantized["ood"]["score.msp"])  # imports, warm caches
    t = time.process_time()
    for _ in range(calls):
        i, j = rng.integers(0, len(fp32["id"]["score.msp"]), (2, len(fp32["id"]["score.msp"])))
        plain(quantized["id"]["score.msp"][i], quantized["ood"]["score.msp"][j])
    return (time.process_time() - t) / calls * 2 * resamples


def stages(reqs: list[IntervalRequest], resamples: int) -> dict[str, float]:
    """CPU seconds per stage of one run, by timing the same calls the library makes."""
    from pytest_qrel.stats import bootstrap, resample, weighted

    acc: dict[str, float] = {}
    originals = {
        (resample, "counts_chunk"): "resampling",
        (weighted.Blocked, "gather"): "gather to sorted order",
        (weighted.Blocked, "running_sums"): "running sums",
    }
    saved = {}
    for (owner, name), label in originals.items():
        fn = getattr(owner, name)
        saved[(owner, name)] = fn

        def timed(*a, _fn=fn, _label=label, **k):
            t = time.process_time()
            try:
                return _fn(*a, **k)
            finally:
                acc[_label] = acc.get(_label, 0.0) + time.process_time() - t

        setattr(owner, name, timed)
    bootstrap.counts_chunk = resample.counts_chunk
    try:
        t = time.process_time()
        paired_intervals(reqs, resamples=resamples)
        acc["total"] = time.process_time() - t
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)
        bootstrap.counts_chunk = resample.counts_chunk
    acc["metrics and the rest"] = acc["total"] - sum(v for k, v in acc.items() if k != "total")
    return acc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50_000, help="samples per set (ID and OOD)")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--convention", default="all", help="a registered metric convention, or 'all' (default)")
    args = ap.parse_args()
    from pytest_qrel.conventions import CONVENTIONS

    names = list(CONVENTIONS.names()) if args.convention == "all" else [args.convention]
    for name in names:
        CONVENTIONS.get(name)  # an unknown name fails here, with the registry's "did you mean"

    quantized, fp32 = unit(args.n)
    reqs = requests(quantized, fp32)
    paired_intervals(reqs[:1], resamples=10)  # warm up imports and caches

    cpu, wall = [], []
    for _ in range(args.repeats):
        t0, w0 = time.process_time(), time.perf_counter()
        results = paired_intervals(reqs, resamples=args.resamples)
        cpu.append(time.process_time() - t0)
        wall.append(time.perf_counter() - w0)

    tracemalloc.start()
    paired_intervals(reqs, resamples=args.resamples)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    print(f"one unit: {args.n:,} ID + {args.n:,} OOD samples, 2 sides, 6 metrics, {args.resamples} resamples, 1 thread")
    print(f"CPU time per call: best {min(cpu):.3f} s, median {statistics.median(cpu):.3f} s (wall best {min(wall):.3f} s) over {args.repeats} runs")
    print(f"peak memory allocated by the call (tracemalloc): {peak / 2**20:.1f} MiB "
          f"(one float32 resamples x N matrix would be {args.resamples * args.n * 4 / 2**20:.0f} MiB)")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("stages of one more run (CPU s):", {k: round(v, 3) for k, v in stages(reqs, args.resamples).items()})
    for r in results:
        print(f"  {r.metric:14s} delta {r.delta:+.5f}  95% CI [{r.delta_ci[0]:+.5f}, {r.delta_ci[1]:+.5f}]"
              + (f"  DeLong [{r.delong_ci[0]:+.5f}, {r.delong_ci[1]:+.5f}]" if r.delong_ci else ""))
    per_convention(quantized, fp32, names, args.resamples, max(1, min(args.repeats, 3)))


if __name__ == "__main__":
    main()
