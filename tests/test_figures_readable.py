"""The report's figures read at a glance: no label of the accuracy-vs-ECE scatter overlaps
another, and every text of the margin heatmap is at least 9 pt at the size the page shows it.

Overlaps are measured the way matplotlib lays text out: the renderer's extents of each label
(``Text.get_window_extent``), not an estimate."""

from __future__ import annotations

import itertools
from typing import Any

import matplotlib
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Text

import reportdata as rd
from pytest_qrel.report import build_page
from pytest_qrel.report.figures import DRAWERS, HEAT_PT, RC

# The page shows an SVG at its natural size (1 in = 96 CSS px) unless it is wider than its column:
# a figure up to this wide is shown unscaled in a 1280-px window (the page's padding included).
UNSCALED_PX = 1100


def _figure(kind: str, data: dict[str, Any]) -> Figure:
    with matplotlib.rc_context(RC):
        fig = Figure(figsize=DRAWERS.meta(kind)["size"](data), layout=DRAWERS.meta(kind).get("layout", "constrained"))
        FigureCanvasAgg(fig)
        DRAWERS.get(kind)(fig, data)
        fig.canvas.draw()
    return fig


def _specs(kind: str) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, res in (("demo", rd.demo_results(diagnostics=False)), ("demo_methods", rd.methods_results())):
        page = build_page(res)
        out += [(name, f.data) for m in page.suites[0].models for f in m.figures if f.kind == kind]
    return out


def _overlapping(texts: list[Text], fig: Figure) -> list[tuple[str, str]]:
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), Text.get_window_extent(t, renderer)) for t in texts if t.get_visible() and t.get_text().strip()]
    return [(a, b) for (a, ba), (b, bb) in itertools.combinations(boxes, 2) if ba.overlaps(bb)]


def _crowded_points() -> dict[str, Any]:
    # The pile-up (W6A6, W4A8, W8A8 printed as "W6A6W4A8W8A8"), plus a cluster of long names.
    pts = [{"label": q, "dx": 0.02 * k, "dy": -0.01 * k, "posthoc": False} for k, q in enumerate(("W6A6", "W4A8", "W8A8"))]
    pts += [{"label": f"W4A4-qat-distill-{k}+temperature", "dx": -0.8 + 0.01 * k, "dy": -0.8 - 0.01 * k, "posthoc": k % 2 == 1}
            for k in range(8)]
    return {"points": pts, "ref": "FP32"}


@pytest.mark.parametrize("case", ["demo", "demo_methods", "crowded"])
def test_scatter_labels_do_not_overlap(case: str) -> None:
    data = _crowded_points() if case == "crowded" else dict(_specs("acc-ece"))[case]
    fig = _figure("acc-ece", data)
    (ax,) = fig.axes
    labels = [t for t in ax.texts]
    assert sorted(t.get_text() for t in labels) == sorted([p["label"] for p in data["points"]] + [data["ref"]])
    assert _overlapping(labels, fig) == []
    # every label inside the axes (the pile-up: inside the figure at least, nothing cut off)
    frame = fig.bbox if case == "crowded" else ax.get_window_extent(fig.canvas.get_renderer())
    for t in labels:
        box = Text.get_window_extent(t, fig.canvas.get_renderer())
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, t.get_text()


def test_heatmap_text_is_readable_at_the_rendered_size() -> None:
    specs = _specs("margin-heatmap")
    assert len(specs) == 2
    for _, data in specs:
        fig = _figure("margin-heatmap", data)
        width_px = fig.get_size_inches()[0] * 96
        assert width_px <= UNSCALED_PX  # shown at its natural size: points are points
        texts = [t for t in fig.findobj(Text) if t.get_visible() and t.get_text().strip()]
        assert len(texts) > 20 and min(t.get_fontsize() for t in texts) >= HEAT_PT >= 9
        heat = fig.axes[0]
        cell_and_tick_texts = heat.texts + heat.get_xticklabels() + heat.get_yticklabels()
        assert _overlapping(list(cell_and_tick_texts), fig) == []
        renderer = fig.canvas.get_renderer()
        whole = fig.bbox
        for t in texts:  # nothing cut off at the figure's edges
            box = Text.get_window_extent(t, renderer)
            assert whole.x0 - 1 <= box.x0 and box.x1 <= whole.x1 + 1 and whole.y0 - 1 <= box.y0 and box.y1 <= whole.y1 + 1, t.get_text()
