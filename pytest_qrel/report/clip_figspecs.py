"""The CLIP paper's figures (Bouguerra et al.), as figure sets of :mod:`.figure_sets` plus their
matplotlib drawers. Every number comes computed (:mod:`pytest_qrel.summary`: deltas, relative
deltas, averages across scenarios; :attr:`pytest_qrel.results.UnitMetrics.curves`: the bin-wise
reliability shift); this module only picks and draws them.

Drawn for OpenCLIP models only (:func:`is_clip`). Per model:

- ``clip-qat-steps`` (Fig. 4): top-1 against the number of QAT steps, one line per (method, bit
  configuration); only when a method ran at two or more step counts (quantizers that differ only
  in ``steps``).
- ``clip-acc-nll`` (Fig. 18): top-1 change (pp, up is better) against the relative NLL change (%,
  right is worse), one point per quantizer; the green quadrant improves both.
- ``clip-reliability-shift`` (Fig. 6b / 7b): the same samples followed from FP32 to each quantized
  unit, binned once by FP32 confidence: an arrow per bin from (FP32 confidence, FP32 accuracy)
  to (quantized confidence, quantized accuracy).

Per suite:

- ``clip-acc-by-source`` (Fig. 2): top-1 change per quantizer (pp), one bar per model, coloured by
  pretraining source; averaged over scenarios when the suite has them.
- ``clip-ece-violins`` (Fig. 5): the distribution of the relative ECE change (%, + = worse) over
  every quantized unit (and scenario) of each pretraining source; crosses mark units whose top-1 did
  not drop.

The *pretraining source* of a model is read from its FP32 record's fingerprint (the OpenCLIP tag
of ``open_clip:<arch>/<tag>``: ``openai`` is WIT, ``laion*`` LAION), else the model's name.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..spec.scenarios import split_scenario
from ..summary import ID, ModelSummary, scenario_means
from .figure_sets import FIGURE_SETS
from .figures import DRAWERS, REF_COLOR, _colors, _single, _text_width
from .objects import FigureSpec, TableBuilder

__all__ = ["pretraining_source"]

SOURCE_LABELS: tuple[tuple[str, str], ...] = (("openai", "WIT (OpenAI)"), ("laion", "LAION"), ("datacomp", "DataComp"),
                                               ("commonpool", "CommonPool"), ("metaclip", "MetaCLIP"))
"""OpenCLIP pretrained-tag prefix -> the pretraining data it names."""
SOURCE_COLORS = {"WIT (OpenAI)": "#1f77b4", "LAION": "#ff7f0e"}
"""The paper's colours: WIT blue, LAION orange."""
MAX_SHIFT_PANELS = 8


def _spec(b: TableBuilder, kind: str, title: str, caption: str, data: dict[str, Any]) -> FigureSpec:
    return FigureSpec(kind=kind, id=b.new_id("f"), title=title, caption=caption, data=data)


def _model_source(ms: ModelSummary) -> str:
    ref = ms.reference
    fingerprint = (ref.baseline or {}).get("fingerprint") or {} if ref is not None else {}
    return str((fingerprint.get("model") or {}).get("source") or "")


def pretraining_source(ms: ModelSummary) -> str:
    """``"WIT (OpenAI)"``, ``"LAION"``, ... from the model's OpenCLIP tag, else the model's name
    (without its scenario)."""
    tag = _model_source(ms).rpartition("/")[2].lower()
    for prefix, label in SOURCE_LABELS:
        if tag.startswith(prefix):
            return label
    return split_scenario(ms.model)[0]


def _quantized(ms: ModelSummary) -> list[Any]:
    return [u for u in ms.units if u is not ms.reference and u.method and not u.posthoc]


# ------------------------------------------------------------------------------------ per model


def _qat_steps(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    lines: dict[str, dict[float, float]] = {}
    for u in _quantized(ms):
        steps = u.info.get("QAT steps")
        if isinstance(steps, (int, float)) and not isinstance(steps, bool) and "top1" in u.id:
            lines.setdefault(f"{u.method} {u.bits_label}", {})[float(steps)] = 100.0 * float(u.id["top1"])
    lines = {k: v for k, v in lines.items() if len(v) >= 2}
    if not lines:
        return None
    ref = ms.reference
    data = {"lines": [{"label": k, "x": sorted(v), "y": [v[x] for x in sorted(v)]} for k, v in lines.items()],
            "ref": 100.0 * float(ref.id["top1"]) if ref is not None and "top1" in ref.id else None}
    return _spec(b, "clip-qat-steps", "Top-1 against QAT steps",
                 "Top-1 (%) of each QAT method and bit configuration against the optimizer steps it trained (log scale); "
                 "dashed: FP32. Short schedules adapt to the grid, long ones re-learn (and may forget).", data)


def _acc_nll(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    points = []
    for u in ms.units:
        if u is ms.reference:
            continue
        nll, top1 = ms.number(u.quantizer, "id", "nll"), ms.number(u.quantizer, "id", "top1")
        if nll.delta_percent is None or top1.delta is None:
            continue
        points.append({"label": u.quantizer, "dx": nll.delta_percent, "dy": 100.0 * (0.0 - top1.delta), "posthoc": bool(u.posthoc)})
    if not points or ms.reference is None:
        return None
    return _spec(b, "clip-acc-nll", "Accuracy change against NLL change",
                 f"One point per quantizer against {ms.reference.quantizer}: right = NLL rises (worse, % of FP32), up = top-1 rises "
                 "(better, pp); the green quadrant is better on both. Hollow: with post-hoc steps.",
                 {"points": points, "ref": ms.reference.quantizer})


def _reliability_shift(b: TableBuilder, ms: ModelSummary) -> FigureSpec | None:
    panels = [{"label": u.quantizer, **u.curves["reliability_shift"]} for u in ms.units
              if u is not ms.reference and (u.curves or {}).get("reliability_shift")][:MAX_SHIFT_PANELS]
    if not panels:
        return None
    dataset = panels[0].get("dataset") or "the ID test split"
    return _spec(b, "clip-reliability-shift", "Bin-wise reliability shift",
                 f"The same samples of {dataset}, binned once by their FP32 confidence (15 bins): each arrow goes from the bin's FP32 "
                 "(confidence, accuracy) to the quantized model's on the same samples. Dashed: perfect calibration. Arrows toward the "
                 "middle: confidence squeezed.", {"panels": panels})


def is_clip(ms: ModelSummary) -> bool:
    """Whether the model is an OpenCLIP model (the figures of this module are drawn for those only,
    so that other suites' reports keep their size and rendering time)."""
    return _model_source(ms).startswith("open_clip:")


def clip_model_figures(b: TableBuilder, ms: ModelSummary) -> list[FigureSpec]:
    if not is_clip(ms):
        return []
    figs = [_qat_steps(b, ms), _acc_nll(b, ms), _reliability_shift(b, ms)]
    return [f for f in figs if f is not None]


# ------------------------------------------------------------------------------------ per suite


def _acc_by_source(b: TableBuilder, models: Sequence[ModelSummary]) -> FigureSpec | None:
    means = {sm.model: sm for sm in scenario_means(models)}
    bars: list[dict[str, Any]] = []
    seen: set[str] = set()
    for ms in models:
        base, scenario = split_scenario(ms.model)
        if base in seen:
            continue
        seen.add(base)
        quantized = [u.quantizer for u in _quantized(ms)]
        if scenario is not None and base in means:
            values = {q: means[base].number(q, "id", "top1").delta for q in quantized}
        else:
            values = {q: ms.number(q, "id", "top1").delta for q in quantized}
        values = {q: 100.0 * (0.0 - d) for q, d in values.items() if d is not None}
        if values:
            bars.append({"label": base, "source": pretraining_source(ms), "values": values})
    quantizers = list(dict.fromkeys(q for bar in bars for q in bar["values"]))
    if not bars or not quantizers:
        return None
    averaged = " (mean over the scenarios)" if means else ""
    return _spec(b, "clip-acc-by-source", "Top-1 change per method and pretraining source",
                 f"Top-1 change against FP32 in pp{averaged}, + = better; one bar per model, coloured by pretraining source.",
                 {"quantizers": quantizers, "bars": bars})


def _ece_violins(b: TableBuilder, models: Sequence[ModelSummary]) -> FigureSpec | None:
    groups: dict[str, dict[str, list[float]]] = {}
    for ms in models:
        group = groups.setdefault(pretraining_source(ms), {"values": [], "kept": []})
        for u in _quantized(ms):
            ece, top1 = ms.number(u.quantizer, "id", "ece", None, ID), ms.number(u.quantizer, "id", "top1", None, ID)
            if ece.delta_percent is None:
                continue
            group["values"].append(ece.delta_percent)
            if top1.delta is not None and top1.delta <= 0:
                group["kept"].append(ece.delta_percent)
    groups = {k: v for k, v in groups.items() if v["values"]}
    if not groups:
        return None
    return _spec(b, "clip-ece-violins", "Relative ECE change by pretraining source",
                 "Distribution of the relative ECE change (% of FP32; + = worse calibration) over every quantized unit of the models "
                 "of each pretraining source (every scenario counted); x: units whose top-1 did not drop.",
                 {"groups": [{"label": k, **v} for k, v in groups.items()]})


def clip_suite_figures(b: TableBuilder, suite: str, models: Sequence[ModelSummary]) -> list[FigureSpec]:
    models = [ms for ms in models if is_clip(ms)]
    figs = [_acc_by_source(b, models), _ece_violins(b, models)]
    return [f for f in figs if f is not None]


FIGURE_SETS.add("clip_model", clip_model_figures, scope="model")
FIGURE_SETS.add("clip_suite", clip_suite_figures, scope="suite")


# ------------------------------------------------------------------------------------ drawers


def _legend_width(labels: Sequence[str]) -> float:
    return _text_width(labels) + 0.45


@DRAWERS.register("clip-qat-steps", size=lambda d: (3.4 + _legend_width([ln["label"] for ln in d["lines"]]), 2.7), layout=None)
def qat_steps(fig: Any, data: dict[str, Any]) -> None:
    ax = _single(fig, right=_legend_width([ln["label"] for ln in data["lines"]]), bottom=0.45)
    colors = _colors([ln["label"] for ln in data["lines"]], [False] * len(data["lines"]))
    for line, c in zip(data["lines"], colors):
        ax.plot(line["x"], line["y"], marker="o", ms=3, color=c, label=line["label"])
    if data["ref"] is not None:
        ax.axhline(data["ref"], ls="--", lw=0.8, color=REF_COLOR, label="FP32")
    ax.set_xscale("log")
    ax.set_xlabel("QAT steps")
    ax.set_ylabel("top-1 (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


@DRAWERS.register("clip-acc-nll", size=lambda d: (4.6, 3.4), layout=None)
def acc_nll(fig: Any, data: dict[str, Any]) -> None:
    ax = _single(fig, left=0.6, bottom=0.45)
    pts = data["points"]
    span_x = max([abs(p["dx"]) for p in pts] + [0.05]) * 1.25
    span_y = max([abs(p["dy"]) for p in pts] + [0.05]) * 1.25
    ax.axvspan(-span_x, 0, ymin=0.5, ymax=1.0, color="#2ca02c", alpha=0.08, lw=0)
    ax.axhline(0, color="#555555", lw=0.7)
    ax.axvline(0, color="#555555", lw=0.7)
    colors = _colors([p["label"] for p in pts], [False] * len(pts))
    for p, c in zip(pts, colors):
        ax.scatter([p["dx"]], [p["dy"]], s=28, facecolors="none" if p["posthoc"] else c, edgecolors=c, linewidths=1.2, zorder=3)
        ax.annotate(p["label"], (p["dx"], p["dy"]), textcoords="offset points", xytext=(4, 3), fontsize=6.5, color="#333333")
    ax.scatter([0], [0], s=30, color=REF_COLOR, marker="s", zorder=4)
    ax.set_xlim(-span_x, span_x)
    ax.set_ylim(-span_y, span_y)
    ax.set_xlabel("NLL change (% of FP32; left is better)")
    ax.set_ylabel("top-1 change (pp; up is better)")


def _shift_size(d: dict[str, Any]) -> tuple[float, float]:
    n = len(d["panels"])
    cols = min(n, 4)
    return (max(3.2, 1.75 * cols), 1.95 * ((n + cols - 1) // cols) + 0.55)


@DRAWERS.register("clip-reliability-shift", size=_shift_size, layout=None)
def reliability_shift(fig: Any, data: dict[str, Any]) -> None:
    from .figures import _panels

    panels = data["panels"]
    cols = min(len(panels), 4)
    rows = (len(panels) + cols - 1) // cols
    axes = _panels(fig, rows, cols, top=0.42, hspace=0.6, wspace=0.15, sharex=True, sharey=True)
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        p = panels[k]
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#555555")
        for x0, y0, x1, y1, n in zip(p["ref_confidence"], p["ref_accuracy"], p["confidence"], p["accuracy"], p["count"]):
            if not n or None in (x0, y0, x1, y1):
                continue
            ax.annotate("", xy=(x1, y1), xytext=(x0, y0), arrowprops={"arrowstyle": "->", "color": "#d62728", "lw": 0.9})
            ax.scatter([x0], [y0], s=6, color=REF_COLOR, zorder=3)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(p["label"], fontsize=7.5)
        ax.set_aspect("equal")
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")


@DRAWERS.register("clip-acc-by-source", size=lambda d: (max(3.6, 0.35 * len(d["quantizers"]) * max(1, len(d["bars"])) + 1.6)
                                                        + _legend_width([f"{b['label']} ({b['source']})" for b in d["bars"]]), 3.0),
                  layout=None)
def acc_by_source(fig: Any, data: dict[str, Any]) -> None:
    labels = [f"{bar['label']} ({bar['source']})" for bar in data["bars"]]
    ax = _single(fig, right=_legend_width(labels), bottom=0.9)
    quantizers, bars = data["quantizers"], data["bars"]
    width = 0.8 / max(1, len(bars))
    fallback = _colors(labels, [False] * len(labels))
    hatches = ["", "//", "..", "xx", "\\\\", "oo"]
    arch: dict[str, int] = {}
    for k, (bar, label) in enumerate(zip(bars, labels)):
        color = SOURCE_COLORS.get(bar["source"], fallback[k])
        hatch = hatches[arch.setdefault(bar["label"].rsplit("_", 1)[0], len(arch)) % len(hatches)]
        xs = [i + (k - (len(bars) - 1) / 2) * width for i in range(len(quantizers))]
        ys = [bar["values"].get(q, 0.0) for q in quantizers]
        ax.bar(xs, ys, width=width, color=color, hatch=hatch, edgecolor="white", linewidth=0.3, label=label)
    ax.axhline(0, color="#555555", lw=0.7)
    ax.set_xticks(range(len(quantizers)))
    ax.set_xticklabels(quantizers, rotation=45, ha="right", fontsize=6.5)
    ax.set_ylabel("top-1 change (pp; up is better)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), frameon=False)


@DRAWERS.register("clip-ece-violins", size=lambda d: (max(3.0, 1.2 * len(d["groups"]) + 1.2), 3.0), layout=None)
def ece_violins(fig: Any, data: dict[str, Any]) -> None:
    ax = _single(fig, bottom=0.5)
    groups = data["groups"]
    fallback = _colors([g["label"] for g in groups], [False] * len(groups))
    for k, g in enumerate(groups):
        color = SOURCE_COLORS.get(g["label"], fallback[k])
        if len(g["values"]) >= 2:
            parts = ax.violinplot([g["values"]], positions=[k], widths=0.7, showmedians=True)
            for body in parts["bodies"]:
                body.set_facecolor(color)
                body.set_alpha(0.45)
        ax.scatter([k] * len(g["values"]), g["values"], s=8, color=color, zorder=3)
        if g["kept"]:
            ax.scatter([k] * len(g["kept"]), g["kept"], s=22, marker="x", color="black", zorder=4)
    ax.axhline(0, color="#555555", lw=0.7)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels([g["label"] for g in groups])
    ax.set_ylabel("relative ECE change (%; + = worse)")
