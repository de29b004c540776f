"""Coverage study: one-sided false passes of a ``confidence: 0.95`` check whose bound is the true delta.

For each setting: a population of 400,000 paired samples (FP32 and a quantized model), the true
delta computed on the whole population, ``--sets`` data sets of ``n`` samples drawn from it, and for
each the library's interval (:func:`pytest_qrel.stats.paired_intervals`) and the plain percentile
interval of the same resamples (what every interval was before ECE's bounds and AUPR's
studentization). Reports the share of checks ``delta <= true`` that pass (upper end <= true; nominal
2.5%) and of checks ``delta >= true`` that fail (lower end > true), with the binomial standard error,
and the mean width. The suite's tests (tests/test_stats_coverage.py) run small versions of this;
the separation of a 3.5% rate from 2.5% needs the thousands of data sets this script runs.

    python benchmarks/stats_coverage.py [--sets 2500] [--resamples 1000] [--only ece|aupr]

Settings: ``ece-*``: FP32 calibrated (correct with probability = confidence, Beta(3, 1) confidences
on [0.1, 1]), the quantized model's confidence FP32's plus N(0, noise) and its accuracy ``shift``
below its confidence; ``aupr-*``: scores N(1.5, 1) (ID) and N(0, 1) (OOD), the quantized model's
plus N(0, 0.5), with the ties named (``floor``: scores below a level tied at it, FP32 at -0.5 and
the quantized model at 0, so that the most OOD-like block is tied; ``none``: no ties).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from pytest_qrel import metrics  # noqa: E402
from pytest_qrel.stats import IntervalRequest, paired_intervals  # noqa: E402

POPULATION = 400_000


def ece_setting(rng: np.random.Generator, shift: float, noise: float):
    conf = 0.1 + 0.9 * rng.beta(3, 1, POPULATION)
    u = rng.random(POPULATION)
    q_conf = np.clip(conf + rng.normal(0, noise, POPULATION), 0.1, 1.0)
    fp32 = {"id": {"correct": u < conf, "confidence": conf}}
    quant = {"id": {"correct": u < q_conf - shift, "confidence": q_conf}}
    true = metrics.ece_from_confidence(q_conf, quant["id"]["correct"]) - metrics.ece_from_confidence(conf, fp32["id"]["correct"])
    return fp32, quant, true


def aupr_setting(rng: np.random.Generator, ties: str):
    s_id, s_ood = rng.normal(1.5, 1, POPULATION), rng.normal(0, 1, POPULATION)
    q_id, q_ood = s_id + rng.normal(0, 0.5, POPULATION), s_ood + rng.normal(0, 0.5, POPULATION)
    if ties == "floor":
        s_id, s_ood, q_id, q_ood = np.maximum(s_id, -0.5), np.maximum(s_ood, -0.5), np.maximum(q_id, 0.0), np.maximum(q_ood, 0.0)
    fp32 = {"id": {"score.s": s_id}, "ood": {"score.s": s_ood}}
    quant = {"id": {"score.s": q_id}, "ood": {"score.s": q_ood}}
    true = metrics.aupr_out(s_id, s_ood) - metrics.aupr_out(q_id, q_ood)
    return fp32, quant, true


def run(name: str, fp32: dict, quant: dict, true: float, n: int, sets: int, resamples: int, rng: np.random.Generator, **request) -> None:
    t0 = time.time()
    rows = []
    for i in range(sets):
        idx = {d: rng.integers(0, POPULATION, n) for d in fp32}
        f = {d: {k: v[idx[d]] for k, v in fields.items()} for d, fields in fp32.items()}
        q = {d: {k: v[idx[d]] for k, v in fields.items()} for d, fields in quant.items()}
        r = paired_intervals([IntervalRequest(quantized=(q,), fp32=f, **request)], resamples=resamples, seed=i)[0]
        plain = np.quantile(r.delta_draws, [0.025, 0.975])
        rows.append((*r.delta_ci, *plain))
    lo, hi, plo, phi = np.array(rows).T
    se = math.sqrt(0.025 * 0.975 / sets)
    print(f"{name:22s} n={n:5d} true {true:+.4f} | library ({r.method}): passes {np.mean(hi <= true):.2%} fails {np.mean(lo > true):.2%} "
          f"width {np.mean(hi - lo):.4f} | percentile: passes {np.mean(phi <= true):.2%} fails {np.mean(plo > true):.2%} "
          f"width {np.mean(phi - plo):.4f} | se {se:.2%} | {time.time() - t0:.0f}s", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", type=int, default=2500)
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--only", choices=["ece", "aupr"])
    args = ap.parse_args()
    if args.only != "aupr":
        for shift, noise, n in ((0.04, 0.03, 300), (0.04, 0.03, 2000), (0.02, 0.01, 2000), (0.0, 0.01, 2000)):
            rng = np.random.default_rng(0)
            f, q, true = ece_setting(rng, shift, noise)
            run(f"ece-shift{shift}-noise{noise}", f, q, true, n, args.sets, args.resamples, rng, metric="ece", datasets=("id",))
    if args.only != "ece":
        for ties, n in (("floor", 100), ("floor", 300), ("none", 300)):
            rng = np.random.default_rng(2)
            f, q, true = aupr_setting(rng, ties)
            run(f"aupr_out-{ties}", f, q, true, n, args.sets, args.resamples, rng, metric="aupr_out", datasets=("ood",),
                score="s", id_dataset="id")


if __name__ == "__main__":
    main()
