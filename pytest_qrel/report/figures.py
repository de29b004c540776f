"""Matplotlib figures rendered to inline SVG: one drawer per figure kind, plain data in.

No pyplot and no global backend: every figure is a :class:`matplotlib.figure.Figure` on its own
Agg canvas, saved as SVG inside :func:`matplotlib.rc_context` (text kept as ``<text>``, not glyph
paths; a fixed hash salt so output is deterministic; no metadata). Each SVG's ids are prefixed
with the figure's id so several figures can live in one page. Lines are vectors (the curves are
already thinned to a few hundred points); pixel grids larger than :data:`VECTOR_CELLS` cells
(input thumbnails, large maps) are drawn as one small embedded PNG, smaller than thousands of
rectangles.

:data:`DRAWERS` maps a :class:`~pytest_qrel.report.view.FigureSpec` kind to its drawer; a new
figure kind is one decorated function.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

from markupsafe import Markup

from ..curves import simplify
from ..registry import Registry

__all__ = ["DRAWERS", "draw", "place_labels", "svg_of"]

DRAWERS: Registry[Callable[[Any, dict[str, Any]], None]] = Registry("figure kind")
"""``kind -> draw(fig, data)``; ``size`` metadata: a function ``data -> (width, height)`` in inches."""

VECTOR_CELLS = 400
DRAW_POINTS = 100  # points drawn per ROC / PR curve (the stored curves have at most curves.MAX_POINTS)
MAX_COLS = 6
REF_COLOR = "#111111"
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf", "#393b79", "#ad494a", "#637939", "#8c6d31", "#7b4173", "#3182bd")

RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "svg.hashsalt": "pytest-qrel",
    "font.size": 8.0,
    "font.family": "sans-serif",
    "font.sans-serif": ["DejaVu Sans", "Liberation Sans", "Arial", "Helvetica"],
    "axes.titlesize": 8.5,
    "axes.labelsize": 8.0,
    "xtick.labelsize": 7.0,
    "ytick.labelsize": 7.0,
    "legend.fontsize": 7.0,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.2,
    "path.simplify": True,
}


def _colors(labels: Sequence[str], ref: Sequence[bool]) -> list[str]:
    out, k = [], 0
    for is_ref in ref:
        if is_ref:
            out.append(REF_COLOR)
        else:
            out.append(PALETTE[k % len(PALETTE)])
            k += 1
    return out


def _grid(n: int, max_cols: int = MAX_COLS) -> tuple[int, int]:
    cols = min(n, max_cols)
    return int(math.ceil(n / cols)), cols


_ID = re.compile(r'\bid="([^"]+)"')
_PATH = re.compile(r'(\sd=")([^"]*)(")')
_LONG = re.compile(r"(-?\d+\.\d{2})\d+")
_REF = re.compile(r'(url\(#|href="#)([^")]+)')


def svg_of(fig: Any, prefix: str) -> Markup:
    """The figure as an inline ``<svg>`` element (no XML header, metadata or DOCTYPE), its ids
    prefixed with ``prefix``, scaling down to the width of its container."""
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None, "Format": None, "Type": None})
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    # path coordinates are in points: 1/100 pt is far below what a screen or printer resolves
    text = _PATH.sub(lambda m: m.group(1) + _LONG.sub(r"\1", m.group(2)) + m.group(3), text)
    text = _ID.sub(lambda m: f'id="{prefix}-{m.group(1)}"', text)
    text = _REF.sub(lambda m: f"{m.group(1)}{prefix}-{m.group(2)}", text)
    text = text.replace("<svg ", f'<svg class="mpl" role="img" aria-labelledby="{prefix}-title" ', 1)
    return Markup(text.strip())


def draw(kind: str, data: dict[str, Any], prefix: str, title: str = "") -> Markup:
    """Draw one figure of ``kind`` from ``data`` and return its inline SVG."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    drawer = DRAWERS.get(kind)
    meta = DRAWERS.meta(kind)
    size = meta["size"](data)
    with matplotlib.rc_context(RC):  # type: ignore[arg-type]  # matplotlib types its keys as a Literal of every rc name
        fig = Figure(figsize=size, layout=meta.get("layout", "constrained"))
        FigureCanvasAgg(fig)
        drawer(fig, data)
        svg = svg_of(fig, prefix)
    if title:  # an accessible name for the image
        svg = Markup(svg.replace(">", f'><title id="{prefix}-title">{Markup.escape(title)}</title>', 1))
    return svg


def _pixels(ax: Any, grid: Sequence[Sequence[Any]], *, cmap: str | None = None, vmin: float = 0.0, vmax: float = 1.0) -> Any:
    """A pixel grid (h x w values, or h x w x 3 RGB in [0, 1]), row 0 at the top."""
    import numpy as np

    arr = np.asarray(grid, dtype=float)
    h, w = arr.shape[:2]
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    if arr.ndim == 2 and h * w <= VECTOR_CELLS:
        mesh = ax.pcolormesh(np.arange(w + 1), np.arange(h + 1), arr, cmap=cmap, vmin=vmin, vmax=vmax, shading="flat",
                             edgecolors="face", linewidth=0.3)  # edges in the face colour: no seams between cells
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_aspect("equal")
        return mesh
    if arr.ndim == 2:
        return ax.imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    return ax.imshow(np.clip(arr, 0, 1), interpolation="nearest")


UNIT_TICKS = ([0.0, 0.5, 1.0], ["0", ".5", "1"])


def _panels(fig: Any, rows: int, cols: int, *, left: float = 0.5, right: float = 0.12, top: float = 0.3, bottom: float = 0.42,
            wspace: float = 0.12, hspace: float = 0.35, unit_ticks: bool = True, **kw: Any) -> Any:
    """A rows x cols grid of axes with fixed margins in inches (no layout engine: small multiples
    need none, and a layout engine costs more time than the drawing); ``unit_ticks``: axes on
    [0, 1] with ticks at 0, .5 and 1."""
    w, h = fig.get_size_inches()
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={
        "left": left / w, "right": 1 - right / w, "top": 1 - top / h, "bottom": bottom / h, "wspace": wspace, "hspace": hspace}, **kw)
    if unit_ticks:
        for ax in axes.flat:
            ax.set_xticks(*UNIT_TICKS)
            ax.set_yticks(*UNIT_TICKS)
    return axes


def _size_panels(n: int, w: float = 1.75, h: float = 1.75, extra_h: float = 0.35) -> tuple[float, float]:
    rows, cols = _grid(n)
    return (max(3.2, cols * w), rows * h + extra_h)


# ------------------------------------------------------------------------------------ drawers


@DRAWERS.register("reliability", size=lambda d: _size_panels(len(d["panels"]), 1.6, 1.95, 0.55), layout=None)
def reliability(fig: Any, data: dict[str, Any]) -> None:
    panels = data["panels"]
    rows, cols = _grid(len(panels))
    axes = _panels(fig, rows, cols, top=0.42, hspace=0.6, wspace=0.15, sharex=True, sharey=True)
    colors = _colors([p["label"] for p in panels], [p["ref"] for p in panels])
    for k, ax in enumerate(axes.flat):
        if k >= len(panels):
            ax.set_visible(False)
            continue
        p = panels[k]
        edges = p["edges"]
        acc = [a if a is not None else 0.0 for a in p["accuracy"]]
        conf = [c if c is not None else a for c, a in zip(p["confidence"], acc)]  # an empty bin has no gap
        ax.stairs(acc, edges, fill=True, color=colors[k], alpha=0.8, linewidth=0)
        ax.stairs(conf, edges, baseline=acc, fill=True, color="#d62728", alpha=0.3, linewidth=0)
        ax.plot([0, 1], [0, 1], ls="--", lw=0.8, color="#555555")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(f"{p['label']}" + (f"\nECE {p['ece']}" if p["ece"] else ""), fontsize=7.5, linespacing=1.1)
        ax.set_aspect("equal")
    for ax in axes[-1]:
        ax.set_xlabel("confidence")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy")


def _roc_width(d: dict[str, Any]) -> float:
    return max(4.0, 1.75 * min(len(d["sets"]), MAX_COLS) + 0.6)


def _legend_cols(d: dict[str, Any]) -> int:
    return max(1, min(len(d["lines"]), int(_roc_width(d) / 1.05)))


def _legend_rows(d: dict[str, Any]) -> int:
    return math.ceil(len(d["lines"]) / _legend_cols(d))


@DRAWERS.register("roc-pr", size=lambda d: (_roc_width(d), 2 * 1.85 * math.ceil(len(d["sets"]) / MAX_COLS) + 0.55 + 0.16 * _legend_rows(d)), layout=None)
def roc_pr(fig: Any, data: dict[str, Any]) -> None:
    sets, lines = data["sets"], data["lines"]
    blocks = math.ceil(len(sets) / MAX_COLS)
    cols = min(len(sets), MAX_COLS)
    axes = _panels(fig, 2 * blocks, cols, top=0.35 + 0.16 * _legend_rows(data), bottom=0.4, left=0.55, hspace=0.55, wspace=0.2,
                   sharex=True, sharey=True)
    from matplotlib.collections import LineCollection
    from matplotlib.lines import Line2D

    colors = _colors([ln["label"] for ln in lines], [ln["ref"] for ln in lines])
    widths = [1.6 if ln["ref"] else 1.0 for ln in lines]
    # reference last, so it is drawn on top; one collection per panel is much cheaper than a line per curve
    order = sorted(range(len(lines)), key=lambda k: lines[k]["ref"])
    for j in range(blocks * cols):
        ax_roc, ax_pr = axes[2 * (j // cols), j % cols], axes[2 * (j // cols) + 1, j % cols]
        if j >= len(sets):
            ax_roc.set_visible(False)
            ax_pr.set_visible(False)
            continue
        d = sets[j]
        for ax, key, xs, ys in ((ax_roc, "roc", "fpr", "tpr"), (ax_pr, "pr", "recall", "precision")):
            segs, cs, ws = [], [], []
            for k in order:
                curve = lines[k][key].get(d)
                if curve:
                    x, y = simplify(curve[xs], curve[ys], DRAW_POINTS)
                    segs.append(list(zip(x, y)))
                    cs.append(colors[k])
                    ws.append(widths[k])
            if key == "roc":
                segs.insert(0, [(0.0, 0.0), (1.0, 1.0)])  # chance
                cs.insert(0, "#bbbbbb")
                ws.insert(0, 0.6)
            ax.add_collection(LineCollection(segs, colors=cs, linewidths=ws))
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1.02)
        ax_roc.set_title(d)
        ax_roc.tick_params(labelbottom=True)  # shared x with the PR row below, but a different quantity
        ax_roc.set_xlabel("OOD accepted (FPR)", labelpad=1)
        ax_pr.set_xlabel("recall (OOD)", labelpad=1)
        if j % cols == 0:
            ax_roc.set_ylabel("ID accepted (TPR)")
            ax_pr.set_ylabel("precision (OOD)")
        else:
            ax_roc.tick_params(labelleft=False)
            ax_pr.tick_params(labelleft=False)
    handles = [Line2D([], [], color=c, lw=w, label=ln["label"]) for ln, c, w in zip(lines, colors, widths)]
    if handles:
        fig.legend(handles=handles, loc="upper center", ncol=_legend_cols(data), frameon=False, borderaxespad=0.2)


def _single(fig: Any, *, left: float = 0.6, right: float = 0.15, top: float = 0.15, bottom: float = 0.5) -> Any:
    """One axes with fixed margins in inches."""
    w, h = fig.get_size_inches()
    return fig.add_axes((left / w, bottom / h, 1 - (left + right) / w, 1 - (top + bottom) / h))


def _text_width(labels: Sequence[str], size: float = 7.0) -> float:
    """A generous estimate of the width in inches of the longest label at ``size`` points."""
    return max((len(str(t)) for t in labels), default=0) * size * 0.62 / 72.0


SCATTER_LABEL_PT = 8.0  # point labels of the accuracy-vs-ECE scatter
# Where a point's label may go, tried in this order (offsets in points): close to the point first,
# then further out on 16 directions with a leader line back to the point.
_LABEL_RADII = (0.0, 14.0, 24.0, 36.0, 50.0, 66.0, 84.0, 104.0)
_LABEL_ANGLES = tuple(math.radians(a) for a in (35, -35, 145, -145, 90, -90, 0, 180, 60, -60, 120, -120, 15, -15, 165, -165))


def _label_candidates() -> list[tuple[float, float, str, str]]:
    """(dx, dy, ha, va) offsets in points: the four corners beside the marker, then rings."""
    out = [(5.0, 4.0, "left", "bottom"), (5.0, -4.0, "left", "top"), (-5.0, 4.0, "right", "bottom"), (-5.0, -4.0, "right", "top")]
    for r in _LABEL_RADII[1:]:
        for a in _LABEL_ANGLES:
            dx, dy = r * math.cos(a), r * math.sin(a)
            out.append((dx, dy, "left" if dx > 1 else "right" if dx < -1 else "center", "bottom" if dy > 1 else "top" if dy < -1 else "center"))
    return out


def place_labels(ax: Any, points: Sequence[tuple[float, float, str]], *, fontsize: float = SCATTER_LABEL_PT, color: str = "#333333") -> list[Any]:
    """Label each ``(x, y, text)`` point of ``ax`` without overlaps (no adjustText dependency).

    Greedy: labels are placed one by one (the most crowded points first), each at the first
    candidate offset (:func:`_label_candidates`) whose text box, measured by the renderer,
    stays inside the axes and overlaps neither a placed label nor a marker; a label moved away
    from its point gets a thin leader line. A label with no free place (a pathological pile-up)
    goes to the nearest spot inside the figure that overlaps no label. Returns the annotations."""
    import numpy as np
    from matplotlib.transforms import Bbox

    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    pad = 1.5  # points of air around each label
    to_px = fig.dpi / 72.0
    xy_px = ax.transData.transform(np.array([(x, y) for x, y, _ in points], dtype=float).reshape(-1, 2))
    marker_r = 4.0 * to_px
    markers = [Bbox.from_extents(px - marker_r, py - marker_r, px + marker_r, py + marker_r) for px, py in xy_px]
    frame = ax.get_window_extent(renderer)
    crowd = [sum(1 for q in xy_px if np.hypot(*(q - p)) < 40 * to_px) for p in xy_px]
    placed: list[Any] = []
    boxes: list[Any] = []
    out: list[Any] = [None] * len(points)
    for i in sorted(range(len(points)), key=lambda k: (-crowd[k], k)):
        x, y, text = points[i]
        chosen = None
        for dx, dy, ha, va in _label_candidates():
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=fontsize, color=color,
                              annotation_clip=False)
            box = ann.get_window_extent(renderer)
            box = Bbox.from_extents(box.x0 - pad * to_px, box.y0 - pad * to_px, box.x1 + pad * to_px, box.y1 + pad * to_px)
            inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
            free = inside and not any(box.overlaps(b) for b in boxes) and not any(box.overlaps(m) for k, m in enumerate(markers) if k != i)
            if free:
                chosen = (ann, box, math.hypot(dx, dy))
                break
            ann.remove()
        # Nowhere free inside the axes: the nearest spot inside the figure that overlaps no label.
        for dx, dy, ha, va in [] if chosen is not None else _label_candidates():
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=fontsize, color=color,
                              annotation_clip=False)
            box = ann.get_window_extent(renderer)
            box = Bbox.from_extents(box.x0 - pad * to_px, box.y0 - pad * to_px, box.x1 + pad * to_px, box.y1 + pad * to_px)
            if fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and fig.bbox.y0 <= box.y0 and box.y1 <= fig.bbox.y1 \
                    and not any(box.overlaps(b) for b in boxes):
                chosen = (ann, box, math.hypot(dx, dy))
                break
            ann.remove()
        if chosen is None:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=fontsize, color=color)
            chosen = (ann, ann.get_window_extent(renderer), 5.0)
        ann, box, dist = chosen
        if dist > 8.0:
            ann.remove()
            ann = ax.annotate(ann.get_text(), (x, y), textcoords="offset points", xytext=ann.xyann, ha=ann.get_ha(), va=ann.get_va(),
                              fontsize=fontsize, color=color, annotation_clip=False,
                              arrowprops={"arrowstyle": "-", "color": "#999999", "lw": 0.5, "shrinkA": 1.0, "shrinkB": 3.0})
        placed.append(ann)
        boxes.append(box)
        out[i] = ann
    return out


@DRAWERS.register("acc-ece", size=lambda d: (5.2, 3.9), layout=None)
def acc_ece(fig: Any, data: dict[str, Any]) -> None:
    """Each quantizer's (ECE change, top-1 change) against the reference; labels placed without
    overlaps (:func:`place_labels`), moved labels joined to their point by a leader line."""
    ax = _single(fig, left=0.6, bottom=0.45)
    pts = data["points"]
    xs = [p["dx"] for p in pts] + [0.0]
    ys = [p["dy"] for p in pts] + [0.0]
    span_x = max(abs(min(xs)), abs(max(xs)), 0.05) * 1.35
    span_y = max(abs(min(ys)), abs(max(ys)), 0.05) * 1.35
    ax.axvspan(-span_x, 0, ymin=0.5, ymax=1.0, color="#2ca02c", alpha=0.08, lw=0)
    ax.axhline(0, color="#555555", lw=0.7)
    ax.axvline(0, color="#555555", lw=0.7)
    colors = _colors([p["label"] for p in pts], [False] * len(pts))
    for p, c in zip(pts, colors):
        face = "none" if p["posthoc"] else c
        ax.scatter([p["dx"]], [p["dy"]], s=28, facecolors=face, edgecolors=c, linewidths=1.2, zorder=3)
    ax.scatter([0], [0], s=30, color=REF_COLOR, marker="s", zorder=4)
    ax.set_xlim(-span_x, span_x)
    ax.set_ylim(-span_y, span_y)
    ax.set_xlabel("ECE change (pp; left is better)")
    ax.set_ylabel("top-1 change (pp; up is better)")
    place_labels(ax, [(p["dx"], p["dy"], p["label"]) for p in pts] + [(0.0, 0.0, data["ref"])])


def _legend_width(labels: Sequence[str]) -> float:
    return _text_width(labels) + 0.45


@DRAWERS.register("bits-top1", size=lambda d: (max(3.6, 0.8 * len(d["bits"]) + 1.4) + _legend_width([ln["label"] for ln in d["lines"]] + ["FP32"]), 2.7),
                  layout=None)
def bits_top1(fig: Any, data: dict[str, Any]) -> None:
    ax = _single(fig, right=_legend_width([ln["label"] for ln in data["lines"]] + [data.get("ref_label") or "FP32"]), bottom=0.45)
    x = list(range(len(data["bits"])))
    for k, line in enumerate(data["lines"]):
        pts = [(i, y) for i, y in zip(x, line["y"]) if y is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, color=PALETTE[k % len(PALETTE)], label=line["label"])
    if data.get("ref") is not None:
        ax.axhline(data["ref"], ls="--", lw=1.0, color=REF_COLOR, label=data.get("ref_label") or "FP32")
    ax.set_xticks(x, data["bits"])
    ax.set_xlim(-0.3, len(x) - 0.7)
    ax.set_xlabel("bit configuration")
    ax.set_ylabel("top-1 (%)")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, borderaxespad=0.0)


@DRAWERS.register("bits-ood", size=lambda d: (2.5 * len(d["metrics"]) + 0.3 + _legend_width([ln["label"] for ln in d["lines"]]), 2.7), layout=None)
def bits_ood(fig: Any, data: dict[str, Any]) -> None:
    right = _legend_width([ln["label"] for ln in data["lines"]])
    axes = _panels(fig, 1, len(data["metrics"]), left=0.55, right=right, top=0.12, bottom=0.45, wspace=0.4, unit_ticks=False)[0]
    x = list(range(len(data["x"])))
    handles = []
    for ax, (metric, label) in zip(axes, data["metrics"]):
        for k, line in enumerate(data["lines"]):
            ys = line["values"][metric]
            pts = [(i, y) for i, y in zip(x, ys) if y is not None]
            (h,) = ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3.5, color=PALETTE[k % len(PALETTE)], label=line["label"])
            if ax is axes[0]:
                handles.append(h)
        ax.set_xticks(x, data["x"])
        ax.set_xlim(-0.3, len(x) - 0.7)
        ax.set_ylabel(label)
        ax.set_xlabel("bit configuration")
    axes[-1].legend(handles=handles, loc="upper left", bbox_to_anchor=(1.03, 1.0), frameon=False, borderaxespad=0.0)


HEAT_PT = 9.0  # every text of the margin heatmap (cells, labels, colour bar), in points at the rendered size


def _heat_grid(d: dict[str, Any]) -> tuple[list[str], list[str], Any, Any, Any]:
    """The heatmap's (row labels, column labels, values, texts, xfail marks), oriented so the
    longer of quantizers and checks runs down (its labels horizontal) and the shorter across
    (labels upright on top): the figure stays narrow enough to show at its natural size."""
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in r] for r in d["values"]], dtype=float)
    text = [[t + (" x" if x else "") for t, x in zip(tr, xr)] for tr, xr in zip(d["text"], d["xfail"])]
    if len(d["cols"]) >= len(d["rows"]):  # more checks than quantizers: checks down
        return list(d["cols"]), list(d["rows"]), values.T, [list(r) for r in zip(*text)], None
    return list(d["rows"]), list(d["cols"]), values, text, None


def _heat_layout(d: dict[str, Any]) -> dict[str, float]:
    """Sizes in inches, every text at :data:`HEAT_PT` (see :func:`_heat_grid`)."""
    rows, cols, _, text, _ = _heat_grid(d)
    cell_w = max(_text_width([t for r in text for t in r if t], HEAT_PT) * 0.9 + 0.12, 0.55)
    cell_h = HEAT_PT / 72.0 * 2.0
    left = _text_width(rows, HEAT_PT) * 0.92 + 0.15
    col_w = _text_width(cols, HEAT_PT) * 0.92
    top = col_w + 0.2  # column labels upright above the grid (rotated text would need slanted boxes to not touch)
    grid_w = cell_w * len(cols)
    return {"cell_w": cell_w, "cell_h": cell_h, "left": left, "top": top, "bottom": 0.1,
            "width": left + grid_w + 1.35, "height": top + cell_h * len(rows) + 0.1}


def _heat_size(d: dict[str, Any]) -> tuple[float, float]:
    lay = _heat_layout(d)
    return (lay["width"], lay["height"])


@DRAWERS.register("margin-heatmap", size=_heat_size, layout=None)
def margin_heatmap(fig: Any, data: dict[str, Any]) -> None:
    """Checks and quantizers, coloured by margin share (:func:`_heat_grid` orients the grid);
    every text is :data:`HEAT_PT` points at the figure's natural size."""
    import numpy as np
    from matplotlib.colors import Normalize

    rows, cols, arr, text, _ = _heat_grid(data)
    lay = _heat_layout(data)
    w, h = lay["width"], lay["height"]
    grid_w, grid_h = lay["cell_w"] * len(cols), lay["cell_h"] * len(rows)
    ax = fig.add_axes((lay["left"] / w, lay["bottom"] / h, grid_w / w, grid_h / h))
    cax = fig.add_axes(((lay["left"] + grid_w + 0.2) / w, lay["bottom"] / h, 0.12 / w, grid_h / h))
    norm = Normalize(vmin=-1.0, vmax=1.0)
    mesh = ax.pcolormesh(np.arange(len(cols) + 1), np.arange(len(rows) + 1), np.ma.masked_invalid(arr), cmap="RdBu", norm=norm,
                         edgecolors="white", linewidth=0.5)
    ax.set_xlim(0, len(cols))
    ax.set_ylim(len(rows), 0)
    ax.grid(False)
    ax.xaxis.tick_top()
    ax.set_xticks([j + 0.5 for j in range(len(cols))], cols, rotation=90, ha="center", va="bottom", fontsize=HEAT_PT)
    ax.set_yticks([i + 0.5 for i in range(len(rows))], rows, fontsize=HEAT_PT)
    ax.tick_params(length=0)
    for side in ("left", "bottom", "top", "right"):
        ax.spines[side].set_visible(False)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if np.isnan(arr[i, j]):
                continue
            dark = abs(arr[i, j]) > 0.6
            ax.text(j + 0.5, i + 0.5, text[i][j], ha="center", va="center", fontsize=HEAT_PT, color="white" if dark else "#111111")
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_label("margin / |bound|", fontsize=HEAT_PT)
    bar.set_ticks([-1, -0.5, 0, 0.5, 1])
    bar.ax.tick_params(labelsize=HEAT_PT)


def _tile(maps: Sequence[Sequence[Any] | None], rows: int, cols: int, gap: int = 1) -> Any:
    """``rows * cols`` equally sized grids (row-major; ``None`` leaves a hole) in one array with
    ``gap`` NaN cells between them."""
    import numpy as np

    first = next(np.asarray(m, dtype=float) for m in maps if m is not None)
    h, w = first.shape[:2]
    out = np.full((rows * (h + gap) - gap, cols * (w + gap) - gap, *first.shape[2:]), np.nan)
    for k, m in enumerate(maps):
        if m is None:
            continue
        r, c = divmod(k, cols)
        out[r * (h + gap): r * (h + gap) + h, c * (w + gap): c * (w + gap) + w] = np.asarray(m, dtype=float)
    return out


def _tiles(ax: Any, arr: Any, *, cmap: str | None, vmin: float = 0.0, vmax: float = 1.0, vector: bool = True) -> Any:
    """A tiled array: vector cells when small, else one embedded image; NaN shows the background."""
    import numpy as np

    h, w = arr.shape[:2]
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if vector and arr.ndim == 2 and np.isfinite(arr).sum() <= VECTOR_CELLS:
        mesh = ax.pcolormesh(np.arange(w + 1), np.arange(h + 1), np.ma.masked_invalid(arr), cmap=cmap, vmin=vmin, vmax=vmax,
                             edgecolors="face", linewidth=0.3)
        ax.set_xlim(0, w)
        ax.set_ylim(h, 0)
        ax.set_aspect("equal")
        return mesh
    if arr.ndim == 2:
        return ax.imshow(np.ma.masked_invalid(arr), cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest", extent=(0, w, h, 0))
    rgb = np.nan_to_num(np.clip(arr, 0, 1), nan=1.0)
    return ax.imshow(rgb, interpolation="nearest", extent=(0, w, h, 0))


def _tiled_size(n_rows: int, n_cols: int, cell: float = 0.95, extra_w: float = 0.0, extra_h: float = 0.0) -> tuple[float, float]:
    return (n_cols * cell + 1.6 + extra_w, n_rows * (cell + 0.18) + 0.45 + extra_h)


@DRAWERS.register("spectral", size=lambda d: (len(d["maps"]) * 1.5 + 1.2, 2.05), layout=None)
def spectral(fig: Any, data: dict[str, Any]) -> None:
    maps = data["maps"]
    w, h = len(maps) * 1.5 + 1.2, 2.05
    ax = fig.add_axes((0.2 / w, 0.2 / h, len(maps) * 1.5 / w, 1.5 / h))
    cax = fig.add_axes(((0.35 + len(maps) * 1.5) / w, 0.2 / h, 0.12 / w, 1.5 / h))
    grid_h, grid_w = len(maps[0]["map"]), len(maps[0]["map"][0])
    gap = max(1, round(grid_w / 6))
    arr = _tile([m["map"] for m in maps], 1, len(maps), gap)
    mesh = _tiles(ax, arr, cmap="magma", vmin=0.0, vmax=float(data["vmax"]) or 1.0)
    for k, m in enumerate(maps):
        peak = max(float(v) for row in m["map"] for v in row)
        ax.text(k * (grid_w + gap) + grid_w / 2, -0.15 * grid_h, f"{m['label']} (max {peak:.3g})", ha="center", va="bottom", fontsize=7.5)
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_label("relative spectral error")


def _rollout_size(d: dict[str, Any]) -> tuple[float, float]:
    return _tiled_size(len(d["images"]), len(d["columns"]) + 1, extra_w=_text_width([i["label"] for i in d["images"]]) + 0.2)


@DRAWERS.register("rollout", size=_rollout_size, layout=None)
def rollout(fig: Any, data: dict[str, Any]) -> None:
    images, columns = data["images"], data["columns"]
    n, m = len(images), len(columns)
    w, h = _rollout_size(data)
    cell = 0.95
    left = _text_width([i["label"] for i in images]) + 0.25
    top = 0.3
    body_h = n * (cell + 0.18)
    thumb_ax = fig.add_axes((left / w, (h - top - body_h) / h, cell / w, body_h / h))
    maps_ax = fig.add_axes(((left + cell + 0.1) / w, (h - top - body_h) / h, m * cell / w, body_h / h))
    cax = fig.add_axes(((left + cell + 0.25 + m * cell) / w, (h - top - body_h) / h, 0.1 / w, body_h / h))
    thumbs = [i["thumbnail"] for i in images]
    if any(t is not None for t in thumbs):
        th = len(next(t for t in thumbs if t is not None))
        _tiles(thumb_ax, _tile(thumbs, n, 1, gap=max(1, round(th * 0.19))), cmap="gray", vector=False)  # photos: a small PNG
        th_gap = max(1, round(th * 0.19))
        for i, img in enumerate(images):
            thumb_ax.text(-0.08 * th, i * (th + th_gap) + th / 2, img["label"], ha="right", va="center", fontsize=6.5)
        thumb_ax.set_title("input", fontsize=7.5)
    else:
        thumb_ax.set_axis_off()
    gh = len(columns[0]["maps"][0])
    gw = len(columns[0]["maps"][0][0])
    gap = max(1, round(gh * 0.19))
    tiles = [columns[j]["maps"][i] if i < len(columns[j]["maps"]) else None for i in range(n) for j in range(m)]
    mesh = _tiles(maps_ax, _tile(tiles, n, m, gap), cmap="inferno", vmin=0.0, vmax=1.0)
    for j, col in enumerate(columns):
        maps_ax.text(j * (gw + gap) + gw / 2, -0.08 * gh, col["label"], ha="center", va="bottom", fontsize=7.5)
        for i, cap in enumerate(col["captions"][:n]):
            maps_ax.text(j * (gw + gap) + gw / 2, i * (gh + gap) + gh + 0.04 * gh, cap, ha="center", va="top", fontsize=5.5)
    bar = fig.colorbar(mesh, cax=cax)
    bar.set_label("share of the map's maximum", fontsize=6.5)
