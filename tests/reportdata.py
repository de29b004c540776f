"""Realistic :class:`RunResults` for report tests and benchmarks, from synthetic per-sample arrays.

Nothing here runs a model: each unit gets seeded synthetic logits for the ID test set and every
OOD set (more noise = a harsher bit configuration), its metrics come from the library's own
metric and score functions and its curves from :mod:`pytest_qrel.curves`, exactly as the engine
will produce them. Verdicts are decided by a small re-implementation of the check rule
(:func:`decide`) and written with :mod:`pytest_qrel.display`. Four shapes, like the demo suites:

- :func:`demo_results`: ``demo`` (FP32, W8A8, W6A6, W4A8, W8A4, W4A4; 4 OOD sets; msp + energy;
  a strict expected failure; attention-rollout diagnostics);
- :func:`methods_results`: ``demo_methods`` (minmax, repq_vit, smoothquant, qat_lsq, qat_distill
  at W8A8 and W4A4; ``+temperature`` variants, FP32+temperature; multi-seed minmax);
- :func:`clip_results`: ``demo_clip`` (five scores, four shifted sets);
- :func:`spectral_results`: ``demo_spectral`` (spectral metrics and 4x4 RSE maps).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

import copy
import functools

from pytest_qrel import curves, display
from pytest_qrel.metrics import compute_id_metrics, softmax
from pytest_qrel.results import RunResults, UnitMetrics, Verdict
from pytest_qrel.scores import compute_scores
from pytest_qrel.spec.schema import MEAN_OOD, Bound

N_CLASSES = 8
OOD_SETS = ("digits89", "textures", "photos", "noise")
SEVERITY = {"FP32": 0.0, "W8A8": 0.01, "W6A6": 0.04, "W4A8": 0.1, "W8A4": 0.13, "W4A4": 0.3}
BITS = {"W8A8": (8, 8), "W6A6": (6, 6), "W4A8": (4, 8), "W8A4": (8, 4), "W4A4": (4, 4)}
CLIP_SCORES = ("msp", "energy", "mcm", "neglabel", "genneg")


# ------------------------------------------------------------------------------ per-sample data


def _step_ap(scores: np.ndarray, positive: np.ndarray) -> float:
    """Average precision (step-wise, one point per distinct score), as sklearn computes it."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positive[order].astype(float)
    last = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # last index of each distinct score
    tps, fps = np.cumsum(y)[last], np.cumsum(1 - y)[last]
    precision, recall = tps / (tps + fps), tps / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray) -> dict[str, float]:
    """AUROC, AUPR-in/out and FPR@95 in plain numpy (scikit-learn's parameter checks make the
    library's functions ~100x slower on these small sets; the definitions are the same)."""
    from scipy.stats import rankdata

    s = np.r_[id_scores, ood_scores].astype(float)
    is_id = np.r_[np.ones(id_scores.size), np.zeros(ood_scores.size)]
    n_id, n_ood = id_scores.size, ood_scores.size
    ranks = rankdata(s)
    auroc = (ranks[:n_id].sum() - n_id * (n_id + 1) / 2) / (n_id * n_ood)
    order = np.argsort(-s, kind="mergesort")
    ss, y = s[order], is_id[order]
    last = np.r_[np.flatnonzero(np.diff(ss)), ss.size - 1]
    tpr, fpr = np.cumsum(y)[last] / n_id, np.cumsum(1 - y)[last] / n_ood
    return {"auroc": float(auroc), "aupr_in": _step_ap(s, is_id), "aupr_out": _step_ap(-s, 1 - is_id),
            "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")])}



def _logits(rng: np.random.Generator, n: int, severity: float, *, ood: bool, shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    labels = rng.integers(0, N_CLASSES, n)
    z = rng.normal(0.0, 1.0 + 0.25 * severity, (n, N_CLASSES))
    if ood:
        z[np.arange(n), rng.integers(0, N_CLASSES, n)] += 1.2 + 1.0 * shift + 0.6 * severity
    else:
        hit = rng.random(n) < 0.979 - 0.03 * severity - 0.25 * shift
        target = np.where(hit, labels, (labels + 1) % N_CLASSES)
        z[np.arange(n), target] += 4.2 - 0.4 * severity - 2.0 * shift
    return z * (1.75 + 0.2 * severity), labels


def _scores(logits: np.ndarray, names: tuple[str, ...], rng: np.random.Generator) -> dict[str, np.ndarray]:
    base = [s for s in names if s in ("msp", "energy", "maxlogit")]
    out = {k: v for k, v in compute_scores(logits, base).items()}
    p = softmax(logits / 2.0)
    for s in names:  # stand-ins for the CLIP scores (they need text features)
        if s == "mcm":
            out[s] = p.max(axis=1)
        elif s == "neglabel":
            out[s] = p.max(axis=1) + 0.02 * rng.normal(size=logits.shape[0])
        elif s == "genneg":
            out[s] = np.log(p.max(axis=1)) + 0.05 * rng.normal(size=logits.shape[0])
    return out


def unit_arrays(seed: int, severity: float, scores: tuple[str, ...], ood_sets: tuple[str, ...] = OOD_SETS,
                temperature: float = 1.0, n_id: int = 385, n_ood: int = 300) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """SampleArrays ``{dataset: {field: array}}`` of one unit, and its metrics."""
    rng = np.random.default_rng(seed)
    z, y = _logits(rng, n_id, severity, ood=False)
    z = z / temperature
    probs = softmax(z)
    arrays = {"digits": {"correct": probs.argmax(1) == y, "confidence": probs.max(1).astype(np.float32),
                         "label": y, "pred": probs.argmax(1)}}
    id_scores = _scores(z, scores, rng)
    for s, v in id_scores.items():
        arrays["digits"][f"score.{s}"] = v
    metrics: dict[str, Any] = {"id": compute_id_metrics(z, y), "ood": {}}
    for k, d in enumerate(ood_sets):
        zo, _ = _logits(np.random.default_rng(seed * 100 + k + 1), n_ood, severity, ood=True, shift=0.3 * k)
        zo = zo / temperature
        arrays[d] = {f"score.{s}": v for s, v in _scores(zo, scores, rng).items()}
        for s in scores:
            metrics["ood"].setdefault(s, {})[d] = ood_metrics(id_scores[s], arrays[d][f"score.{s}"])
    return arrays, metrics


def make_unit(suite: str, model: str, quantizer: str, *, seed: int, severity: float, scores: tuple[str, ...],
              method: str = "", bits: str = "", posthoc: tuple[str, ...] = (), temperature: float = 1.0,
              seeds: tuple[int, ...] = (0,), shifted: tuple[str, ...] = (), ood_sets: tuple[str, ...] = OOD_SETS) -> UnitMetrics:
    arrays, m = unit_arrays(seed, severity, scores, ood_sets, temperature)
    wb, ab = BITS.get(bits, (None, None))
    u = UnitMetrics(suite=suite, model=model, quantizer=quantizer, id=m["id"], ood=m["ood"], method=method,
                    base=quantizer.partition("+")[0], posthoc=list(posthoc), weight_bits=wb, act_bits=ab, bits_label=bits,
                    seeds=list(seeds) if method else [], calibration_samples=256 if method else None,
                    curves=curves.unit_curves(arrays, "digits", ood_sets, scores))
    if posthoc:
        u.info = {"temperature": round(temperature, 4)}
    if len(seeds) > 1:
        u.per_seed = {k: [v + 0.002 * (i - 1) for i in range(len(seeds))] for k, v in m["id"].items()}
    for j, d in enumerate(shifted):
        zs, ys = _logits(np.random.default_rng(seed * 7 + j), 385, severity, ood=False, shift=0.25 + 0.1 * j)
        u.shifted[d] = compute_id_metrics(zs / temperature, ys)
    return u


# ------------------------------------------------------------------------------ checks


@dataclass
class Check:
    quantizer: str
    metric: str
    bound: Bound
    score: str | None = None
    dataset: str = "digits"
    expect_fail: bool = False
    reason: str = ""
    text: str = field(default="")
    source: str = ""  # where the check is written in its suite ("suites/demo.yaml:23")


def _value(u: UnitMetrics, c: Check) -> float:
    if c.score is None:
        if c.dataset in u.shifted:
            return u.shifted[c.dataset][c.metric]
        return (u.spectral if c.metric.startswith("spectral") else u.id)[c.metric]
    if c.dataset == MEAN_OOD:
        return u.mean_ood(c.score)[c.metric]
    return u.ood[c.score][c.dataset][c.metric]


def decide(c: Check, units: dict[str, UnitMetrics], metrics: dict[str, Any], suite: str, model: str) -> Verdict:
    """The verdict of ``c``, re-deciding the check rule of ``pytest_qrel.evaluate`` from the records."""
    info = metrics[c.metric]
    u, ref = units[c.quantizer], next(x for x in units.values() if x.is_reference)
    value = _value(u, c)
    fp32 = _value(ref, c) if not c.metric.startswith("spectral") else 0.0
    hib = info.higher_is_better
    delta = (fp32 - value) if hib else (value - fp32)
    b = c.bound
    if b.ref is not None:
        r = _value(units[b.ref], c)
        ref_delta = (fp32 - r) if hib else (r - fp32)
        compared, limit = (delta, ref_delta) if b.kind == "delta" else (value, r)
    elif b.kind == "delta":
        compared = 100 * delta / abs(fp32) if b.unit == "%" else (100 * delta if b.unit == "pp" else delta)
        limit = b.amount
    else:
        compared = 100 * value if b.unit == "%" else value
        limit = b.amount
    margin = (limit - compared) if b.op in ("<=", "<") else (compared - limit)
    passed = margin >= 0 if b.op in ("<=", ">=") else margin > 0
    outcome = ("xpassed" if passed else "xfailed") if c.expect_fail else ("passed" if passed else "failed")
    metric = f"{c.metric}({c.score})" if c.score else c.metric
    text = c.text or f"{c.quantizer} {metric}{'' if c.dataset == 'digits' else ' on ' + c.dataset} {b.kind} {b.op} {b.amount:g}{b.unit if b.unit != 'abs' else ''}"
    delta_display = ""
    if b.kind == "delta" or b.ref:
        delta_display = display.format_compared(info, b, compared)
    value_display = display.format_value(info, value)
    ci = []
    ci_display = ""
    if b.kind == "delta" and b.ref is None:
        half = 0.25 * abs(delta) + 0.002
        ci = [delta - half, delta + half]
        lo = display.format_delta(info, ci[0], unit=b.unit if b.unit != "abs" else None, fp32=fp32)
        hi = display.format_delta(info, ci[1], unit=b.unit if b.unit != "abs" else None, fp32=fp32)
        ci_display = f"[95% CI {lo}, {hi}]"
    on_ref = u.is_reference
    numbers = f"{c.quantizer} {value_display}" if on_ref else f"FP32 {display.format_value(info, fp32)}, {c.quantizer} {value_display}"
    if delta_display:
        numbers += f", delta {delta_display}"
    message = f"{model} {c.quantizer} {metric} on {c.dataset}: {numbers} {'within' if passed else 'violates'} {display.format_bound(info, b)}"
    return Verdict(
        suite=suite, model=model, quantizer=c.quantizer, dataset=c.dataset, metric=c.metric, score=c.score, check=text, bound=str(b),
        fp32=None if on_ref else fp32, value=value, delta=None if on_ref else delta, delta_display=delta_display, passed=passed,
        expect_fail=c.expect_fail, outcome=outcome, message=message,
        nodeid=f"suites/{suite}.yaml::{model}[{c.quantizer}-{c.dataset}]::{metric} {b}",
        delta_ci=ci or None, ci_level=0.95 if ci else None, ci_resamples=1000 if ci else None, ci_seed=0 if ci else None,
        ci_display=ci_display, compared=compared, margin=margin, value_display=value_display,
        fp32_display="" if on_ref else display.format_value(info, fp32), bound_display=display.format_bound(info, b),
        reason=c.reason, bound_amount=None if b.ref else b.amount, source=c.source,
        margin_display=display.format_margin(info, b, margin),
    )


def _results(suite: str, model: str, units: list[UnitMetrics], checks: list[Check], scores: tuple[str, ...]) -> RunResults:
    metrics = display.metric_infos()
    by_q = {u.quantizer: u for u in units}
    verdicts = [decide(c, by_q, metrics, suite, model) for c in checks]
    run = {
        "timestamp": "2025-01-31T12:00:00+00:00", "duration_s": 14.2, "host": "ci-runner", "device": "cpu",
        "versions": {"torch": "2.14.1", "timm": "1.0.31", "open_clip_torch": "3.3.0", "pytest-qrel": "0.1.0"},
        "suites": [{"name": suite, "path": f"suites/{suite}.yaml", "sha256": "ab" * 32}],
        "conventions": {suite: "hendrycks"},
        "baselines": {f"{suite}/{model}": {"model": {"weights_sha256": "cd" * 32, "source": "embedded:digits_vit"},
                                           "datasets": {d: {"fingerprint": "ef" * 32, "samples": 300} for d in ("digits", *OOD_SETS)}}},
        "quantizers": {suite: {u.quantizer: {"method": u.method, "weight_bits": u.weight_bits, "act_bits": u.act_bits,
                                             "granularity": "method default", "calibration_samples": u.calibration_samples,
                                             "seeds": u.seeds} for u in units if u.method}},
    }
    return RunResults(verdicts=verdicts, units=units, metrics=metrics, scores={suite: list(scores)}, run=run,
                      planned={suite: len(verdicts)})


# ------------------------------------------------------------------------------ the four shapes


def _rollout(quantizer: str, severity: float) -> dict[str, Any]:
    rng = np.random.default_rng(int(severity * 1000) + 5)
    maps, thumbs = [], []
    for k in range(3):
        yy, xx = np.mgrid[0:4, 0:4]
        m = np.exp(-((yy - 1.5 - 0.5 * k) ** 2 + (xx - 1.5) ** 2) / 2.0) + severity * rng.random((4, 4))
        maps.append(np.round(m / m.max(), 4).tolist())
        t = np.clip(np.exp(-((np.mgrid[0:16, 0:16][0] - 8) ** 2) / (8 + k)) + 0.1 * rng.random((16, 16)), 0, 1)
        thumbs.append(np.round(t, 3).tolist())
    return {"grid": [4, 4], "maps": maps, "thumbnails": thumbs, "pred": [3, 1, 5], "confidence": [0.97, 0.88, 0.41],
            "discard_ratio": 0.9, "head_fusion": "max",
            "images": [{"dataset": "digits", "index": 0, "kind": "id"}, {"dataset": "digits", "index": 1, "kind": "id"},
                       {"dataset": "textures", "index": 0, "kind": "ood"}]}


@functools.lru_cache(maxsize=None)
def _demo_results(diagnostics: bool = True) -> RunResults:
    suite, model, scores = "demo", "vit_digits", ("msp", "energy")
    units = []
    for i, (q, sev) in enumerate(SEVERITY.items()):
        u = make_unit(suite, model, q, seed=11, severity=sev, scores=scores, method="" if q == "FP32" else "minmax", bits="" if q == "FP32" else q)
        if diagnostics:
            u.diagnostics["attention_rollout"] = _rollout(q, sev)
        units.append(u)
    pct, pp = (lambda a: Bound("delta", "<=", a, "%")), (lambda a: Bound("delta", "<=", a, "pp"))
    checks = [Check("W8A8", "top1", pp(1)), Check("W6A6", "top1", pp(2)), Check("W4A8", "top1", pp(2)), Check("W8A4", "top1", pp(2)),
              Check("W4A4", "top1", pp(5)), Check("W8A8", "nll", pct(10)), Check("W6A6", "nll", pct(40)), Check("W4A8", "nll", pct(60))]
    checks += [Check(q, "ece", Bound("value", "<=", 0.05)) for q in SEVERITY]
    for q in ("W8A8", "W6A6"):
        checks += [Check(q, "aupr_out", pct(2), score=s, dataset=MEAN_OOD) for s in scores]
    checks += [Check("W4A4", "aupr_out", pct(12), score="energy", dataset=d) for d in OOD_SETS]
    checks += [Check(q, "auroc", Bound("value", ">=", 0.85), score=s, dataset=d) for q in ("W8A8", "W4A4") for s in scores for d in OOD_SETS]
    checks += [Check("W8A8", "fpr_at_95_tpr", pp(3), score="msp", dataset=MEAN_OOD),
               Check("W4A4", "fpr_at_95_tpr", pp(1), score="energy", dataset=MEAN_OOD, expect_fail=True,
                     reason="W4A4 minmax keeps top-1 but lets more OOD images through at 95% TPR")]
    return _results(suite, model, units, checks, scores)


@functools.lru_cache(maxsize=None)
def _methods_results() -> RunResults:
    suite, model, scores = "demo_methods", "vit_digits", ("msp", "energy")
    units = [make_unit(suite, model, "FP32", seed=11, severity=0.0, scores=scores),
             make_unit(suite, model, "FP32+temperature", seed=11, severity=0.0, scores=scores, posthoc=("temperature",), temperature=0.88)]
    methods = {"": "minmax", "-repq": "repq_vit", "-sq": "smoothquant", "-qat-lsq": "qat_lsq", "-qat-distill": "qat_distill"}
    gain = {"minmax": 1.0, "repq_vit": 0.6, "smoothquant": 0.8, "qat_lsq": 0.4, "qat_distill": 0.35}
    k = 0
    for bits in ("W8A8", "W4A4"):
        for suffix, method in methods.items():
            k += 1
            q = bits + suffix
            sev = SEVERITY[bits] * gain[method]
            seeds = (0, 13, 37) if method == "minmax" else (0,)
            units.append(make_unit(suite, model, q, seed=11, severity=sev, scores=scores, method=method, bits=bits, seeds=seeds))
            if method.startswith("qat"):
                units.append(make_unit(suite, model, q + "+temperature", seed=11, severity=sev, scores=scores, method=method, bits=bits,
                                       posthoc=("temperature",), temperature=0.9 - 0.1 * sev))
    quantized = [u.quantizer for u in units if u.method and not u.posthoc]
    checks = [Check(q, "top1", Bound("delta", "<=", 3 if "W4" in q else 1, "pp")) for q in quantized]
    checks += [Check(q, "ece", Bound("value", "<=", 0.05)) for q in [u.quantizer for u in units]]
    checks += [Check(q, "auroc", Bound("delta", "<=", 3, "pp"), score=s, dataset=MEAN_OOD) for q in quantized for s in scores]
    checks += [Check("W4A4-repq", "fpr_at_95_tpr", Bound("delta", "<=", 0.0, ref="W4A4"), score="energy", dataset=MEAN_OOD),
               Check("W4A4-sq", "top1", Bound("delta", "<=", 0.0, ref="W4A4-qat-lsq"), expect_fail=True,
                     reason="SmoothQuant PTQ loses more top-1 than light QAT at W4A4")]
    return _results(suite, model, units, checks, scores)


@functools.lru_cache(maxsize=None)
def _clip_results() -> RunResults:
    suite, model, scores = "demo_clip", "clip_digits", CLIP_SCORES
    shifted = ("noise3", "blur3", "contrast3", "jpeg3")
    units = []
    for i, q in enumerate(("FP32", "W8A8", "W4A8", "W4A4")):
        units.append(make_unit(suite, model, q, seed=50, severity=SEVERITY[q], scores=scores, method="" if q == "FP32" else "minmax",
                               bits="" if q == "FP32" else q, shifted=shifted))
    units.append(make_unit(suite, model, "W4A4+temperature", seed=50, severity=SEVERITY["W4A4"], scores=scores, method="minmax", bits="W4A4",
                           posthoc=("temperature",), temperature=0.85, shifted=shifted))
    checks = [Check("W8A8", "top1", Bound("delta", "<=", 1, "pp")), Check("W4A4", "top1", Bound("delta", "<=", 5, "pp"))]
    checks += [Check(q, "auroc", Bound("delta", "<=", 5, "pp"), score="mcm", dataset=MEAN_OOD) for q in ("W8A8", "W4A8", "W4A4")]
    checks += [Check(q, "top1", Bound("delta", "<=", 5, "pp"), dataset=d) for q in ("W8A8", "W4A4") for d in shifted]
    checks += [Check("W4A4+temperature", "ece", Bound("value", "<=", 0.05))]
    return _results(suite, model, units, checks, scores)


@functools.lru_cache(maxsize=None)
def _spectral_results() -> RunResults:
    suite, model = "demo_spectral", "vit_digits"
    units = []
    for i, q in enumerate(("FP32", "W8A8", "W6A6", "W4A4")):
        u = make_unit(suite, model, q, seed=70, severity=SEVERITY[q], scores=(), ood_sets=(), method="" if q == "FP32" else "minmax",
                      bits="" if q == "FP32" else q)
        err = {"FP32": 0.0, "W8A8": 0.0004, "W6A6": 0.0016, "W4A4": 0.015}[q]
        u.spectral = {"spectral_error": err, "spectral_error_high": err * 1.1}
        if q != "FP32":
            yy, xx = np.mgrid[0:4, 0:4]
            u.spectral_map = (err * (1 + np.hypot(yy - 2, xx - 2))).round(6).tolist()
        units.append(u)
    checks = [Check("W8A8", "spectral_error", Bound("value", "<=", 0.002)), Check("W6A6", "spectral_error", Bound("value", "<=", 0.008)),
              Check("W4A4", "spectral_error", Bound("value", "<=", 0.01))]
    return _results(suite, model, units, checks, ())


def demo_results(diagnostics: bool = True) -> RunResults:
    """A fresh copy (tests may change it) of the cached ``demo`` run."""
    return copy.deepcopy(_demo_results(diagnostics))


def methods_results() -> RunResults:
    return copy.deepcopy(_methods_results())


def clip_results() -> RunResults:
    return copy.deepcopy(_clip_results())


def spectral_results() -> RunResults:
    return copy.deepcopy(_spectral_results())


def merged(*runs: RunResults) -> RunResults:
    """Several runs as one (a multi-suite invocation)."""
    out = RunResults(metrics=dict(runs[0].metrics))
    for r in runs:
        out.verdicts += r.verdicts
        out.units += r.units
        out.scores.update(r.scores)
        out.planned.update(r.planned)
    out.run = dict(runs[0].run)
    out.run["suites"] = [s for r in runs for s in r.run.get("suites", [])]
    return out


def all_demos() -> dict[str, RunResults]:
    return {"demo": demo_results(), "demo_methods": methods_results(), "demo_clip": clip_results(), "demo_spectral": spectral_results()}

