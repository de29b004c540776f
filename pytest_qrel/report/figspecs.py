"""Which figures a model or suite gets, and their plain data (drawn by :mod:`.figures`).

Per model: reliability diagrams (``curves.reliability`` of every unit), ROC and precision-recall
curves per score (``curves.roc`` / ``curves.pr``; units without post-hoc steps, which leave the
ranking of a score nearly unchanged and would double the lines), accuracy change against ECE
change (one point per quantizer, the CLIP paper's Fig. 1), top-1 against bit configuration per
method (the CLIP paper's Fig. 3; only with more than one method), a heatmap of the checks'
margins to their bounds, and the spectral error maps on one colour scale. Per suite: mean
AUPR-out and AUROC over the OOD sets against the bit configuration, one line per model (the ViT
paper's Fig. 1). Diagnostics: attention rollout maps (the ViT paper's Fig. 2).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .. import display
from ..results import UnitMetrics, Verdict
from .format import missing

if TYPE_CHECKING:
    from .view import FigureSpec, _Builder

__all__ = ["model_figures", "rollout_figures", "suite_figures"]


def _spec(b: "_Builder", kind: str, title: str, caption: str, data: dict[str, Any]) -> "FigureSpec":
    from .view import FigureSpec

    return FigureSpec(kind=kind, id=b.new_id("f"), title=title, caption=caption, data=data)


def _pct(x: Any) -> float | None:
    return None if missing(x) else 100.0 * float(x)


def model_figures(
    b: "_Builder", suite: str, model: str, units: list[UnitMetrics], ref: UnitMetrics | None, scores: list[str], verdicts: list[Verdict]
) -> list["FigureSpec"]:
    figs = []
    ece = b.info("ece")
    panels = []
    for u in units:
        rel = u.curves.get("reliability")
        if not rel:
            continue
        panels.append({
            "label": u.quantizer,
            "ref": u is ref,
            "ece": display.format_value(ece, u.id.get("ece")) if "ece" in u.id else "",
            "edges": rel["edges"],
            "accuracy": rel["accuracy"],
            "confidence": rel["confidence"],
            "count": rel["count"],
        })
    if panels:
        dataset = next((u.curves["reliability"].get("dataset") for u in units if u.curves.get("reliability")), "") or "ID test split"
        figs.append(_spec(b, "reliability", "Reliability diagrams",
                          f"Accuracy per confidence bin (15 equal-width bins, as ECE) on {dataset}; the dashed diagonal is perfect "
                          "calibration, red the gap to it. Title: each unit's ECE.", {"panels": panels}))

    plain = [u for u in units if not u.posthoc]
    for score in scores:
        lines = []
        sets: list[str] = []
        for u in plain:
            roc = u.curves.get("roc", {}).get(score, {})
            pr = u.curves.get("pr", {}).get(score, {})
            if not roc and not pr:
                continue
            for d in list(roc) + list(pr):
                if d not in sets:
                    sets.append(d)
            lines.append({"label": u.quantizer, "ref": u is ref, "roc": roc, "pr": pr})
        if lines:
            label = display.score_label(score)
            figs.append(_spec(b, "roc-pr", f"ROC and precision-recall curves, {label} score",
                              "Top: ROC with ID as the positive class (share of ID images accepted against share of OOD images accepted). "
                              "Bottom: precision-recall with OOD as the positive class (AUPR-out). One panel per OOD set; black: FP32.",
                              {"score": label, "sets": sets, "lines": lines}))

    if ref is not None and "top1" in ref.id and "ece" in ref.id:
        points = []
        for u in units:
            if u is ref or "top1" not in u.id or "ece" not in u.id:
                continue
            points.append({
                "label": u.quantizer,
                "dx": 100.0 * (float(u.id["ece"]) - float(ref.id["ece"])),
                "dy": 100.0 * (float(u.id["top1"]) - float(ref.id["top1"])),
                "posthoc": bool(u.posthoc),
            })
        if points:
            figs.append(_spec(b, "acc-ece", "Accuracy change against ECE change",
                              f"One point per quantizer against {ref.quantizer}, in percentage points: right = ECE rises (worse), "
                              "up = top-1 rises (better); the green quadrant is better on both. Hollow: with post-hoc steps.",
                              {"points": points, "ref": ref.quantizer}))

    quantized = [u for u in units if u.method and u.bits_label and not u.posthoc]
    methods = list(dict.fromkeys(u.method for u in quantized))
    if len(methods) >= 2 and any("top1" in u.id for u in quantized):
        bits = list(dict.fromkeys(u.bits_label for u in quantized))
        lines = []
        for m in methods:
            by_bits = {u.bits_label: u for u in quantized if u.method == m}
            lines.append({"label": m, "y": [_pct(by_bits[x].id.get("top1")) if x in by_bits else None for x in bits]})
        figs.append(_spec(b, "bits-top1", "Top-1 against bit configuration per method",
                          "One line per quantization method; dashed: FP32.",
                          {"bits": bits, "lines": lines, "ref": _pct(ref.id.get("top1")) if ref else None,
                           "ref_label": ref.quantizer if ref else ""}))

    heat = _margin_heatmap(b, units, verdicts)
    if heat:
        figs.append(_spec(b, "margin-heatmap", "Checks: deltas coloured by margin to the bound",
                          "Rows: quantizers; columns: metric (score) and dataset of each check. Text: the quantity the check bounded "
                          "(in the bound's unit); colour: margin to the bound as a share of the bound (red: violated, blue: room left; "
                          "checks against another quantizer or a zero bound are scaled by the largest margin of their column). "
                          "x: expected failure.", heat))

    maps = [{"label": u.quantizer, "map": u.spectral_map} for u in units if u.spectral_map and u.spectral_map[0]]
    if maps:
        vmax = max(float(v) for m in maps for row in m["map"] for v in row)
        figs.append(_spec(b, "spectral", "Relative spectral error maps",
                          "|S_q \u2212 S_FP32| / |S_FP32| per frequency of the last block's feature map; zero frequency at the centre. "
                          "One colour scale for all quantizers of this model.", {"maps": maps, "vmax": vmax}))
    return figs


def _margin_heatmap(b: "_Builder", units: list[UnitMetrics], verdicts: list[Verdict]) -> dict[str, Any] | None:
    order = [u.quantizer for u in units]
    checked = [v for v in verdicts if v.margin is not None and not missing(v.margin)]
    if not checked:
        return None
    rows = [q for q in order if any(v.quantizer == q for v in checked)]
    rows += [q for q in dict.fromkeys(v.quantizer for v in checked) if q not in rows]
    cols: list[tuple[str, str | None, str]] = list(dict.fromkeys((v.metric, v.score or None, v.dataset) for v in checked))
    labels = []
    for metric, score, dataset in cols:
        name = b.info(metric).label + (f"({display.score_label(score)})" if score else "")
        labels.append(f"{name} \u00b7 {dataset}")
    col_max: dict[int, float] = {}
    for v in checked:
        j = cols.index((v.metric, v.score or None, v.dataset))
        col_max[j] = max(col_max.get(j, 0.0), abs(float(v.margin)))
    values: list[list[float | None]] = [[None] * len(cols) for _ in rows]
    text: list[list[str]] = [[""] * len(cols) for _ in rows]
    xfail: list[list[bool]] = [[False] * len(cols) for _ in rows]
    for v in checked:
        i, j = rows.index(v.quantizer), cols.index((v.metric, v.score or None, v.dataset))
        amount = v.bound_amount
        scale = abs(float(amount)) if amount is not None and not missing(amount) and float(amount) != 0 else (col_max[j] or 1.0)
        scaled = max(-1.0, min(1.0, float(v.margin) / scale))
        if values[i][j] is None or scaled < values[i][j]:  # several checks on one cell: the tightest
            values[i][j] = scaled
            text[i][j] = v.delta_display or v.value_display or ""
            xfail[i][j] = v.expect_fail
    return {"rows": rows, "cols": labels, "values": values, "text": text, "xfail": xfail}


def rollout_figures(b: "_Builder", suite: str, model: str, units: list[UnitMetrics]) -> list["FigureSpec"]:
    withmaps = [u for u in units if (u.diagnostics.get("attention_rollout") or {}).get("maps") and not u.posthoc]
    if not withmaps:
        return []
    first = withmaps[0].diagnostics["attention_rollout"]
    images = []
    for k, info in enumerate(first.get("images") or [{} for _ in first["maps"]]):
        kind = info.get("kind", "")
        label = " ".join(p for p in (str(info.get("dataset", "")), f"#{info['index']}" if "index" in info else "", f"({kind.upper()})" if kind else "") if p)
        thumbs = first.get("thumbnails") or []
        images.append({"label": label or f"image {k}", "thumbnail": thumbs[k] if k < len(thumbs) else None})
    columns = []
    for u in withmaps:
        d = u.diagnostics["attention_rollout"]
        caps = [f"class {p} \u00b7 {100 * c:.0f}%" for p, c in zip(d.get("pred", []), d.get("confidence", []))]
        columns.append({"label": u.quantizer, "maps": d["maps"], "captions": caps})
    ratio = first.get("discard_ratio", 0.9)
    fusion = first.get("head_fusion", "max")
    return [_spec(b, "rollout", "Attention rollout",
                  f"Attention rollout per precision (lowest {100 * float(ratio):.0f}% of the attention discarded, heads fused by {fusion}); "
                  "first column: the input. Each map is scaled to its own maximum; the caption gives the predicted class and its probability.",
                  {"images": images, "columns": columns})]


def suite_figures(b: "_Builder", suite: str, models: Mapping[str, Sequence[UnitMetrics]]) -> list["FigureSpec"]:
    """The ViT paper's Fig. 1: mean AUPR-out (and AUROC) over the OOD sets against the bit
    configuration (FP32 first, then the bit configurations in the order the units come).

    One line per model and score when each model uses one method; per model and method (first
    score only) when a model uses several, so the lines stay few enough to read."""
    lines = []
    xs: list[str] = []
    for model, units in models.items():
        ref = next((u for u in units if u.is_reference), None)
        quantized = [u for u in units if u.method and u.bits_label and not u.posthoc]
        if not quantized:
            continue
        found = b.scores(suite, units)
        use_scores = found if len({u.method for u in quantized}) == 1 else found[:1]
        for u in quantized:
            if u.bits_label not in xs:
                xs.append(u.bits_label)
        for method in dict.fromkeys(u.method for u in quantized):
            for score in use_scores:
                label = model
                if len({u.method for u in quantized}) > 1:
                    label += f" \u00b7 {method}"
                if len(use_scores) > 1 or len(models) == 1:
                    label += f" \u00b7 {display.score_label(score)}"
                lines.append({"label": label, "ref": ref, "by_bits": {u.bits_label: u for u in quantized if u.method == method}, "score": score})
    metrics = [m for m in ("aupr_out", "auroc") if any(m in l["by_bits"][x].mean_ood(l["score"]) for l in lines for x in l["by_bits"])]
    if not lines or not metrics or len(xs) < 1:
        return []
    ref_label = next((l["ref"].quantizer for l in lines if l["ref"] is not None), "FP32")
    x = [ref_label, *xs]
    out_lines = []
    for l in lines:
        values = {}
        for m in metrics:
            ys = [_pct(l["ref"].mean_ood(l["score"]).get(m)) if l["ref"] is not None else None]
            ys += [_pct(l["by_bits"][bx].mean_ood(l["score"]).get(m)) if bx in l["by_bits"] else None for bx in xs]
            values[m] = ys
        out_lines.append({"label": l["label"], "values": values})
    return [_spec(b, "bits-ood", "OOD detection against bit configuration",
                  "Mean over the OOD sets of AUPR-out (OOD positive) and AUROC, in %, at each bit configuration; one line per model "
                  "(and method or score).",
                  {"x": x, "metrics": [[m, f"{b.info(m).label} (%)"] for m in metrics], "lines": out_lines})]
