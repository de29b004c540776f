"""Which figures a model or suite gets, and their plain data (drawn by :mod:`.figures`).

Per model: reliability diagrams (``curves.reliability`` of every unit), ROC and precision-recall
curves per score (``curves.roc`` / ``curves.pr``; units without post-hoc steps, which leave the
ranking of a score nearly unchanged and would double the lines), accuracy change against ECE
change (one point per quantizer, the CLIP paper's Fig. 1), top-1 against bit configuration per
method (the CLIP paper's Fig. 3; only with more than one method), a heatmap of the checks'
margins to their bounds, and the spectral error maps on one colour scale. Per suite: mean
AUPR-out and AUROC over the OOD sets against the bit configuration, one line per model (the ViT
paper's Fig. 1). Diagnostics: attention rollout maps (the ViT paper's Fig. 2).

The numbers come computed (:class:`pytest_qrel.summary.ModelSummary`: deltas, margin shares,
the spectral colour scale); values in [0, 1] are drawn in percent.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .. import display
from ..results import UnitMetrics, Verdict
from ..spec.schema import MEAN_OOD
from ..summary import ModelSummary, union
from . import clip_figspecs  # noqa: F401  (registers the CLIP paper's figure sets)
from .figure_sets import figures_of
from .format import missing
from .objects import FigureSpec, TableBuilder

__all__ = ["model_figures", "rollout_figures", "suite_figures"]


def _spec(b: TableBuilder, kind: str, title: str, caption: str, data: dict[str, Any]) -> FigureSpec:
    return FigureSpec(kind=kind, id=b.new_id("f"), title=title, caption=caption, data=data)


def _pct(x: Any) -> float | None:
    """A fraction in percent (``None``: missing)."""
    return None if missing(x) else 100.0 * float(x)


def _reliability(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    ece = b.info("ece")
    panels = []
    for u in ms.units:
        rel = u.curves.get("reliability")
        if not rel:
            continue
        panels.append({
            "label": u.quantizer, "ref": u is ms.reference,
            "ece": display.format_value(ece, u.id.get("ece")) if "ece" in u.id else "",
            "edges": rel["edges"], "accuracy": rel["accuracy"], "confidence": rel["confidence"], "count": rel["count"],
        })
    if not panels:
        return None
    dataset = next((u.curves["reliability"].get("dataset") for u in ms.units if u.curves.get("reliability")), "") or "ID test split"
    return _spec(b, "reliability", "Reliability diagrams",
                 f"Accuracy per confidence bin (15 equal-width bins, as ECE) on {dataset}; the dashed diagonal is perfect "
                 "calibration, red the gap to it. Title: each unit's ECE.", {"panels": panels})


def _roc_pr(b: TableBuilder, ms: ModelSummary, score: str) -> FigureSpec | None:
    lines = []
    sets: list[str] = []
    for u in (u for u in ms.units if not u.posthoc):
        roc = u.curves.get("roc", {}).get(score, {})
        pr = u.curves.get("pr", {}).get(score, {})
        if not roc and not pr:
            continue
        sets += [d for d in dict.fromkeys([*roc, *pr]) if d not in sets]
        lines.append({"label": u.quantizer, "ref": u is ms.reference, "roc": roc, "pr": pr})
    if not lines:
        return None
    label = display.score_label(score)
    return _spec(b, "roc-pr", f"ROC and precision-recall curves, {label} score",
                 "Top: ROC with ID as the positive class (share of ID images accepted against share of OOD images accepted). "
                 "Bottom: precision-recall with OOD as the positive class (AUPR-out). One panel per OOD set; black: FP32.",
                 {"score": label, "sets": sets, "lines": lines})


def _acc_ece(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    ref = ms.reference
    if ref is None or "top1" not in ref.id or "ece" not in ref.id:
        return None
    points = []
    for u in ms.units:
        ece, top1 = ms.number(u.quantizer, "id", "ece").delta, ms.number(u.quantizer, "id", "top1").delta
        if u is ref or ece is None or top1 is None:
            continue
        # In percentage points; x: the ECE delta (+ = worse), y: the top-1 change (+ = better: the delta's
        # opposite, written 0 - delta so that no change is +0, not -0).
        points.append({"label": u.quantizer, "dx": 100.0 * ece, "dy": 100.0 * (0.0 - top1), "posthoc": bool(u.posthoc)})
    if not points:
        return None
    return _spec(b, "acc-ece", "Accuracy change against ECE change",
                 f"One point per quantizer against {ref.quantizer}, in percentage points: right = ECE rises (worse), "
                 "up = top-1 rises (better); the green quadrant is better on both. Hollow: with post-hoc steps.",
                 {"points": points, "ref": ref.quantizer})


def _bits_top1(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    quantized = [u for u in ms.units if u.method and u.bits_label and not u.posthoc]
    methods = list(dict.fromkeys(u.method for u in quantized))
    if len(methods) < 2 or not any("top1" in u.id for u in quantized):
        return None
    bits = list(dict.fromkeys(u.bits_label for u in quantized))
    lines = []
    for m in methods:
        by_bits = {u.bits_label: u for u in quantized if u.method == m}
        lines.append({"label": m, "y": [_pct(by_bits[x].id.get("top1")) if x in by_bits else None for x in bits]})
    ref = ms.reference
    return _spec(b, "bits-top1", "Top-1 against bit configuration per method", "One line per quantization method; dashed: FP32.",
                 {"bits": bits, "lines": lines, "ref": _pct(ref.id.get("top1")) if ref else None, "ref_label": ref.quantizer if ref else ""})


def _heat_axes(b: TableBuilder, ms: ModelSummary, checked: list[tuple[Verdict, float]]) -> tuple[list[str], list[tuple[str, str | None, str]], list[str]]:
    """Rows (quantizers, in the model's unit order), columns ((metric, score, dataset) of the
    checks) and column labels of the margin heatmap."""
    quantizers = list(dict.fromkeys(v.quantizer for v, _ in checked))
    rows = [u.quantizer for u in ms.units if u.quantizer in quantizers]
    rows += [q for q in quantizers if q not in rows]
    cols: list[tuple[str, str | None, str]] = list(dict.fromkeys((v.metric, v.score or None, v.dataset) for v, _ in checked))
    labels = [f"{b.info(metric).label}{f'({display.score_label(score)})' if score else ''} \u00b7 {dataset}" for metric, score, dataset in cols]
    return rows, cols, labels


def _margin_heatmap(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    checked = [(v, share) for v, share in zip(ms.verdicts, ms.margin_shares) if share is not None]
    if not checked:
        return None
    rows, cols, labels = _heat_axes(b, ms, checked)
    values: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    text: list[list[str]] = [[""] * len(cols) for _ in rows]
    xfail: list[list[bool]] = [[False] * len(cols) for _ in rows]
    for v, share in checked:
        i, j = rows.index(v.quantizer), cols.index((v.metric, v.score or None, v.dataset))
        current = values[i][j]
        if current is None or share < current:  # several checks on one cell: the tightest
            values[i][j], text[i][j], xfail[i][j] = share, v.delta_display or v.value_display or "", v.expect_fail
    return _spec(b, "margin-heatmap", "Checks: deltas coloured by margin to the bound",
                 "Rows: quantizers; columns: metric (score) and dataset of each check. Text: the quantity the check bounded "
                 "(in the bound's unit); colour: margin to the bound as a share of the bound (red: violated, blue: room left; "
                 "checks against another quantizer or a zero bound are scaled by the largest margin of their column). "
                 "x: expected failure.", {"rows": rows, "cols": labels, "values": values, "text": text, "xfail": xfail})


def _spectral_maps(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    maps = [{"label": u.quantizer, "map": u.spectral_map} for u in ms.units if u.spectral_map and u.spectral_map[0]]
    if not maps:
        return None
    return _spec(b, "spectral", "Relative spectral error maps",
                 "|S_q \u2212 S_FP32| / |S_FP32| per frequency of the last block's feature map; zero frequency at the centre. "
                 "One colour scale for all quantizers of this model.", {"maps": maps, "vmax": ms.spectral_vmax})


def model_figures(b: TableBuilder, ms: ModelSummary) -> list[FigureSpec]:
    """The figures of one model's section, in the order of the module docstring."""
    figs = [_reliability(b, ms), *(_roc_pr(b, ms, score) for score in ms.scores), _acc_ece(b, ms), _bits_top1(b, ms),
            _margin_heatmap(b, ms), _spectral_maps(b, ms)]
    return [f for f in figs if f is not None] + figures_of("model", b, ms)


def rollout_figures(b: TableBuilder, ms: ModelSummary) -> list[FigureSpec]:
    withmaps = [u for u in ms.units if (u.diagnostics.get("attention_rollout") or {}).get("maps") and not u.posthoc]
    if not withmaps:
        return []
    first = withmaps[0].diagnostics["attention_rollout"]
    thumbs = first.get("thumbnails") or []
    images = []
    for k, info in enumerate(first.get("images") or [{} for _ in first["maps"]]):
        kind = info.get("kind", "")
        parts = (str(info.get("dataset", "")), f"#{info['index']}" if "index" in info else "", f"({kind.upper()})" if kind else "")
        images.append({"label": " ".join(p for p in parts if p) or f"image {k}", "thumbnail": thumbs[k] if k < len(thumbs) else None})
    columns = []
    for u in withmaps:
        d = u.diagnostics["attention_rollout"]
        names = d.get("pred_names") or [f"class {p}" for p in d.get("pred", [])]
        caps = [f"{name} \u00b7 {100 * c:.0f}%" for name, c in zip(names, d.get("confidence", []))]
        columns.append({"label": u.quantizer, "maps": d["maps"], "captions": caps})
    ratio = first.get("discard_ratio", 0.9)
    fusion = first.get("head_fusion", "max")
    return [_spec(b, "rollout", "Attention rollout",
                  f"Attention rollout per precision (lowest {100 * float(ratio):.0f}% of the attention discarded, heads fused by {fusion}); "
                  "first column: the input. Each map is scaled to its own maximum; the caption gives the predicted class and its probability.",
                  {"images": images, "columns": columns})]


def _suite_lines(b: TableBuilder, models: Sequence[ModelSummary]) -> tuple[list[dict[str, Any]], list[str]]:
    """The lines of the suite figure (model, method, score and units by bit configuration) and the
    bit configurations in the order the units come."""
    lines: list[dict[str, Any]] = []
    xs: list[str] = []
    for ms in models:
        quantized = [u for u in ms.units if u.method and u.bits_label and not u.posthoc]
        if not quantized:
            continue
        methods = list(dict.fromkeys(u.method for u in quantized))
        use_scores = ms.scores if len(methods) == 1 else ms.scores[:1]
        xs += [bl for bl in dict.fromkeys(u.bits_label for u in quantized) if bl not in xs]
        for method in methods:
            for score in use_scores:
                label = ms.model + (f" \u00b7 {method}" if len(methods) > 1 else "")
                if len(use_scores) > 1 or len(models) == 1:
                    label += f" \u00b7 {display.score_label(score)}"
                lines.append({"label": label, "ms": ms, "ref": ms.reference,
                              "by_bits": {u.bits_label: u for u in quantized if u.method == method}, "score": score})
    return lines, xs


def _line_values(line: dict[str, Any], metric: str, xs: list[str], dataset: str = MEAN_OOD) -> list[float | None]:
    """The line's ``metric`` on ``dataset`` (default: the mean over the suite's mean sets) in
    percent: FP32, then each bit configuration."""
    ms: ModelSummary = line["ms"]
    units: list[UnitMetrics | None] = [line["ref"], *(line["by_bits"].get(bx) for bx in xs)]
    return [None if u is None else _pct(ms.number(u.quantizer, "ood", metric, line["score"], dataset).value) for u in units]


def suite_figures(b: TableBuilder, suite: str, models: Sequence[ModelSummary], *, mean_sets: Sequence[str] | None = None) -> list[FigureSpec]:
    """The ViT paper's Fig. 1: (a) mean AUPR-out (and AUROC) over the suite's mean sets
    (``report: {ood_mean: ...}``; every unit's mean is over exactly those sets, or missing) against
    the bit configuration (FP32 first, then the bit configurations in the order the units come);
    (b) one more such figure per OOD set left out of the mean (ImageNet-O in the paper).

    One line per model and score when each model uses one method; per model and method (first
    score only) when a model uses several, so the lines stay few enough to read."""
    lines, xs = _suite_lines(b, models)
    metrics = [m for m in ("aupr_out", "auroc") if any(m in ln["by_bits"][x].mean_ood(ln["score"]) for ln in lines for x in ln["by_bits"])]
    if not lines or not metrics:
        return figures_of("suite", b, suite, models)
    ref_label = next((ln["ref"].quantizer for ln in lines if ln["ref"] is not None), "FP32")
    out_lines = [{"label": ln["label"], "values": {m: _line_values(ln, m, xs) for m in metrics}} for ln in lines]
    over = f"the {len(mean_sets)} OOD sets {', '.join(mean_sets)}" if mean_sets else "the OOD sets"
    figs = [_spec(b, "bits-ood", "OOD detection against bit configuration" + (f" (mean of {len(mean_sets)} sets)" if mean_sets else ""),
                  f"Mean over {over} of AUPR-out (OOD positive) and AUROC, in %, at each bit configuration (every point averages "
                  "exactly these sets); one line per model (and method or score).",
                  {"x": [ref_label, *xs], "metrics": [[m, f"{b.info(m).label} (%)"] for m in metrics], "lines": out_lines,
                   "sets": list(mean_sets or [])})]
    if mean_sets:
        apart = union([[d for ms in models for u in ms.units for d in u.ood.get(ms.scores[0] if ms.scores else "", {}) if d not in mean_sets]])
        for d in apart:
            per = [{"label": ln["label"], "values": {m: _line_values(ln, m, xs, d) for m in metrics}} for ln in lines]
            figs.append(_spec(b, "bits-ood", f"OOD detection against bit configuration: {d}",
                              f"AUPR-out (OOD positive) and AUROC on {d} alone (not part of the mean), in %, at each bit configuration; "
                              "one line per model (and method or score).",
                              {"x": [ref_label, *xs], "metrics": [[m, f"{b.info(m).label} (%)"] for m in metrics], "lines": per, "sets": [d]}))
    return [*figs, *figures_of("suite", b, suite, models)]
