"""Coverage study at the edges: small sets, metrics near their ceiling, a true delta of 0.

``benchmarks/stats_coverage.py`` studies ECE and AUPR-out at moderate sizes; this script asks the
same two questions where a percentile bootstrap is known to be weakest, for top-1 (absolute and
relative), AUROC and ECE deltas:

- two-sided coverage: the share of 95% intervals that contain the true delta (nominal 95%);
- false passes: the share of ``confidence: 0.95`` checks ``delta <= true delta`` that pass (the
  interval's upper end at or below the truth; nominal at most 2.5%). This is the rate at which the
  gate goes green on a model exactly as bad as the bound allows; above 2.5% it is too lenient.

Each setting is a population of 400,000 paired samples (FP32 and a quantized model); the true delta
is the metric's delta on the whole population; ``--sets`` data sets of the setting's size are drawn
from it (with replacement) and each gets the library's interval (:func:`pytest_qrel.stats.paired_intervals`,
``--resamples`` resamples). Standard errors are binomial over the sets.

    python benchmarks/coverage_edges.py [--sets 400] [--resamples 1000] [--only top1|auroc|ece]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import math  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402

from pytest_qrel.spec.schema import Bound  # noqa: E402
from pytest_qrel.stats import IntervalRequest, paired_intervals  # noqa: E402

POPULATION = 400_000
Setting = tuple[dict, dict]  # (fp32 arrays, quantized arrays) of the population, {dataset: {field: array}}


def top1_population(rng: np.random.Generator, fp32_acc: float, q_acc: float) -> Setting:
    """Paired correctness through one uniform per sample: the quantized model loses exactly the
    samples with ``q_acc <= u < fp32_acc`` (no sample is gained)."""
    u = rng.random(POPULATION)
    conf = np.full(POPULATION, 0.9)
    return ({"id": {"correct": u < fp32_acc, "confidence": conf}}, {"id": {"correct": u < q_acc, "confidence": conf}})


def auroc_population(rng: np.random.Generator, separation: float, noise: float) -> Setting:
    """Scores N(separation, 1) (ID) and N(0, 1) (OOD); the quantized model's add N(0, noise)."""
    s_id, s_ood = rng.normal(separation, 1, POPULATION), rng.normal(0, 1, POPULATION)
    q_id, q_ood = s_id + rng.normal(0, noise, POPULATION), s_ood + rng.normal(0, noise, POPULATION)
    return ({"id": {"score.s": s_id}, "ood": {"score.s": s_ood}}, {"id": {"score.s": q_id}, "ood": {"score.s": q_ood}})


def ece_population(rng: np.random.Generator, shift: float, noise: float) -> Setting:
    """FP32 calibrated (correct with probability = its confidence, Beta(3, 1) on [0.1, 1]); the
    quantized model's confidence FP32's plus N(0, noise), its accuracy ``shift`` below it."""
    conf = 0.1 + 0.9 * rng.beta(3, 1, POPULATION)
    u = rng.random(POPULATION)
    q_conf = np.clip(conf + rng.normal(0, noise, POPULATION), 0.1, 1.0)
    return ({"id": {"correct": u < conf, "confidence": conf}}, {"id": {"correct": u < q_conf - shift, "confidence": q_conf}})


def draw(setting: Setting, sizes: dict[str, int], rng: np.random.Generator) -> Setting:
    idx = {d: rng.integers(0, POPULATION, n) for d, n in sizes.items()}
    return tuple({d: {k: v[idx[d]] for k, v in side[d].items()} for d in idx} for side in setting)  # type: ignore[return-value]


def request(metric: str, fp32: dict, quant: dict, unit: str) -> IntervalRequest:
    if metric == "auroc":
        return IntervalRequest("auroc", ("ood",), (quant,), fp32, score="s", id_dataset="id")
    return IntervalRequest(metric, ("id",), (quant,), fp32, bound=Bound("delta", "<=", 1, unit))


SETTINGS: dict[str, tuple[str, str, Callable[[np.random.Generator], Setting], dict[str, int]]] = {
    # name: (metric, unit, population, sizes)
    "top1 90->86 n=400": ("top1", "pp", lambda r: top1_population(r, 0.90, 0.86), {"id": 400}),
    "top1 99->97 n=200": ("top1", "pp", lambda r: top1_population(r, 0.99, 0.97), {"id": 200}),
    "top1 99->98.5 n=100": ("top1", "pp", lambda r: top1_population(r, 0.99, 0.985), {"id": 100}),
    "top1% 99->97 n=200": ("top1", "%", lambda r: top1_population(r, 0.99, 0.97), {"id": 200}),
    "top1 80->70 n=10": ("top1", "pp", lambda r: top1_population(r, 0.80, 0.70), {"id": 10}),
    "auroc sep1.2 n=300+300": ("auroc", "abs", lambda r: auroc_population(r, 1.2, 0.5), {"id": 300, "ood": 300}),
    "auroc sep3 n=100+100": ("auroc", "abs", lambda r: auroc_population(r, 3.0, 0.5), {"id": 100, "ood": 100}),
    "auroc sep1.2 n=30+20": ("auroc", "abs", lambda r: auroc_population(r, 1.2, 0.5), {"id": 30, "ood": 20}),
    "auroc sep1.2 n=10+10": ("auroc", "abs", lambda r: auroc_population(r, 1.2, 0.5), {"id": 10, "ood": 10}),
    "ece shift.04 n=500": ("ece", "abs", lambda r: ece_population(r, 0.04, 0.03), {"id": 500}),
    "ece shift0 noise.01 n=2000": ("ece", "abs", lambda r: ece_population(r, 0.0, 0.01), {"id": 2000}),
    "ece shift.04 n=100": ("ece", "abs", lambda r: ece_population(r, 0.04, 0.03), {"id": 100}),
}


def study(name: str, sets: int, resamples: int, seed: int) -> dict[str, float]:
    metric, unit, population, sizes = SETTINGS[name]
    rng = np.random.default_rng(seed)
    setting = population(rng)
    true_r = paired_intervals([request(metric, setting[0], setting[1], unit)], resamples=10, seed=0)[0]
    true = float(true_r.compared if metric != "auroc" else true_r.delta)
    covered = passes = fails = undecided = 0
    widths = []
    for i in range(sets):
        fp32, quant = draw(setting, sizes, rng)
        r = paired_intervals([request(metric, fp32, quant, unit)], resamples=resamples, seed=i)[0]
        ci = r.compared_ci if metric != "auroc" else r.delta_ci
        if ci is None:
            undecided += 1
            continue
        lo, hi = ci
        covered += lo <= true <= hi
        passes += hi <= true
        fails += lo > true
        widths.append(hi - lo)
    return {"true": true, "coverage": covered / sets, "false_pass": passes / sets, "false_fail": fails / sets,
            "no_interval": undecided / sets, "width": float(np.mean(widths)) if widths else math.nan}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sets", type=int, default=400)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--only", default="")
    args = parser.parse_args()
    se = math.sqrt(0.05 * 0.95 / args.sets)
    print(f"{args.sets} data sets per setting, {args.resamples} resamples; binomial SE of a 95% coverage {se:.3f}, "
          f"of a 2.5% rate {math.sqrt(0.025 * 0.975 / args.sets):.3f}")
    print(f"{'setting':26} {'true delta':>11} {'coverage':>9} {'false pass':>11} {'false fail':>11} {'no CI':>6} {'width':>8}  seconds")
    for k, name in enumerate(SETTINGS):
        if args.only and not name.startswith(args.only):
            continue
        t0 = time.perf_counter()
        r = study(name, args.sets, args.resamples, seed=k)
        print(f"{name:26} {r['true']:>11.4f} {r['coverage']:>9.3f} {r['false_pass']:>11.3f} {r['false_fail']:>11.3f} "
              f"{r['no_interval']:>6.3f} {r['width']:>8.4f}  {time.perf_counter() - t0:.0f}", flush=True)


if __name__ == "__main__":
    main()
