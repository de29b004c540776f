"""How many test samples a margin needs: paired bootstrap half-widths on the demo, scaled by 1/sqrt(N).

Data: the committed FP32 per-sample arrays of the demo baseline (``baselines/demo/vit_digits.<sha>.npz``:
the tiny timm ViT on digits 0-7, 385 ID test images; OOD sets digits89 354, textures 300, photos
300, noise 300) and the demo's quantized models run here on CPU (minmax PTQ, a few seconds).
For each quantity the script computes the paired 95% interval with :mod:`pytest_qrel.stats`
(1,000 resamples) and reports its half-width at the demo's size and the factor of samples that
brings the half-width down to a given *margin* (the distance between the delta and the bound),
``(half_width / margin) ** 2``: a check whose delta sits ``margin`` inside the bound is decided
with 95% confidence from about that many times the demo's samples.

    python benchmarks/samples_needed.py [--quantizer W4A4] [--markdown]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from pytest_qrel.engine import Engine
from pytest_qrel.spec import load_suite
from pytest_qrel.spec.schema import Bound
from pytest_qrel.stats import IntervalRequest, paired_intervals

ROOT = Path(__file__).resolve().parents[1]
MARGINS = (0.5, 1.0, 2.0, 5.0)


def unit_arrays(engine: Engine, suite, model: str, quantizer: str) -> dict:
    """Per-sample arrays of one unit on the ID set and every OOD set."""
    return {d: engine.samples(suite, model, quantizer, d) for d in [suite.id_dataset.name, *suite.ood_datasets]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quantizer", default="W4A4")
    ap.add_argument("--markdown", action="store_true", help="print the README table")
    args = ap.parse_args()

    suite = load_suite(ROOT / "suites" / "demo.yaml")
    model = next(iter(suite.models))
    engine = Engine(baseline_dir=ROOT / "baselines", cache_dir=None)
    fp32 = engine.baseline(suite, model).samples("FP32")
    q = unit_arrays(engine, suite, model, args.quantizer)
    ood = tuple(suite.ood_datasets)
    rows = [
        ("top1 delta", "pp", IntervalRequest("top1", (suite.id_dataset.name,), (q,), fp32, bound=Bound("delta", "<=", 1, "pp"))),
        ("ece delta", "pp", IntervalRequest("ece", (suite.id_dataset.name,), (q,), fp32, bound=Bound("delta", "<=", 1, "pp"))),
        ("nll delta", "%", IntervalRequest("nll", (suite.id_dataset.name,), (q,), fp32, bound=Bound("delta", "<=", 10, "%"))),
        ("auroc(msp) on mean(ood) delta", "pp", IntervalRequest("auroc", ood, (q,), fp32, score="msp", id_dataset=suite.id_dataset.name, bound=Bound("delta", "<=", 1, "pp"))),
        ("aupr_out(msp) on mean(ood) delta", "%", IntervalRequest("aupr_out", ood, (q,), fp32, score="msp", id_dataset=suite.id_dataset.name, bound=Bound("delta", "<=", 12, "%"))),
        ("fpr_at_95_tpr(energy) on mean(ood) delta", "pp", IntervalRequest("fpr_at_95_tpr", ood, (q,), fp32, score="energy", id_dataset=suite.id_dataset.name, bound=Bound("delta", "<=", 5, "pp"))),
        ("aupr_out(msp) on textures delta", "%", IntervalRequest("aupr_out", ("textures",), (q,), fp32, score="msp", id_dataset=suite.id_dataset.name, bound=Bound("delta", "<=", 12, "%"))),
    ]
    results = paired_intervals([r for _, _, r in rows])
    sizes = {suite.id_dataset.name: len(fp32[suite.id_dataset.name]["correct"]), **{d: len(fp32[d]["score.msp"]) for d in ood}}
    print(f"demo suite, {args.quantizer} vs FP32, paired 95% intervals from 1,000 resamples; sets: "
          + ", ".join(f"{d} {n}" for d, n in sizes.items()))
    n_id = sizes[suite.id_dataset.name]
    head = "| quantity (unit) | delta | 95% CI | half-width | " + " | ".join(f"margin {m:g}" for m in MARGINS) + " |"
    print(head)
    print("|" + "---|" * (4 + len(MARGINS)))
    for (label, unit, _), r in zip(rows, results):
        lo, hi = r.compared_ci
        half = (hi - lo) / 2
        cells = []
        for m in MARGINS:
            factor = (half / m) ** 2
            cells.append(f"{math.ceil(factor * n_id):,} ({factor:.2g}x)" if factor >= 1 else f"< {n_id} ({factor:.2g}x)")
        print(f"| {label} ({unit}) | {r.compared:+.2f} | [{lo:+.2f}, {hi:+.2f}] | {half:.2f} | " + " | ".join(cells) + " |")
    print(f"cells: ID images needed so that the 95% half-width is at most the margin, (half-width / margin)^2 x {n_id};"
          " every OOD set scales by the same factor. Margins in the quantity's unit (pp or %).")
    if not args.markdown:
        for (label, _, _), r in zip(rows, results):
            if r.note:
                print(f"  note on {label}: {r.note}")


if __name__ == "__main__":
    main()
