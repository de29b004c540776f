"""The report's spectral view: a spectral-metrics table per model and small RSE heatmaps.

Rows are the spectral metrics found in the units (``spectral_error``, ``spectral_error_high``),
columns the quantizers; FP32 is 0 by definition, so cells carry no delta. A quantizer whose unit
holds its RSE map (``UnitMetrics.spectral_map``) also gets an inline SVG heatmap (zero frequency at
the centre, darker = larger relative error, one scale per map). The SVG is built here from numbers
only and wrapped in ``Markup``; names shown around it stay autoescaped by the templates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from markupsafe import Markup

from ..results import UnitMetrics

#: Spectral metrics in display order; others of kind "spectral" follow.
SPECTRAL_METRICS: tuple[str, ...] = ("spectral_error", "spectral_error_high")
CELL_PX = 14


@dataclass
class SpectralMap:
    quantizer: str
    svg: Markup
    peak: float  # the largest RSE of the map (the darkest cell)


def spectral_rows(
    suite: str,
    model: str,
    by_q: Mapping[str, UnitMetrics],
    quantizers: Sequence[str],
    failing: Mapping[tuple, list[str]],
) -> list[tuple[str, list[tuple[float | None, list[str]]]]]:
    """``[(metric, [(value, failing checks) per quantizer])]``; empty when no unit has spectral metrics."""
    found = [m for u in by_q.values() for m in u.spectral]
    metrics = [m for m in SPECTRAL_METRICS if m in found] + [m for m in dict.fromkeys(found) if m not in SPECTRAL_METRICS]
    return [
        (metric, [(by_q[q].spectral.get(metric), failing.get((suite, model, q, metric, None, None), [])) for q in quantizers])
        for metric in metrics
    ]


def heatmap_svg(rse: Sequence[Sequence[float]]) -> Markup:
    """An (h, w) map as an inline SVG of grey cells, white = 0, black = the map's maximum."""
    h, w = len(rse), len(rse[0]) if rse else 0
    peak = max((float(v) for row in rse for v in row), default=0.0)
    cells = []
    for y, row in enumerate(rse):
        for x, v in enumerate(row):
            level = 255 - int(round(255 * float(v) / peak)) if peak > 0 else 255
            cells.append(
                f'<rect x="{x * CELL_PX}" y="{y * CELL_PX}" width="{CELL_PX}" height="{CELL_PX}" '
                f'fill="rgb({level},{level},{level})"><title>{float(v):.4g}</title></rect>'
            )
    return Markup(
        f'<svg xmlns="http://www.w3.org/2000/svg" class="rse-map" width="{w * CELL_PX}" height="{h * CELL_PX}" '
        f'viewBox="0 0 {w * CELL_PX} {h * CELL_PX}" role="img" aria-label="relative spectral error map">'
        + "".join(cells) + "</svg>"
    )


def spectral_maps(by_q: Mapping[str, UnitMetrics], quantizers: Sequence[str]) -> list[SpectralMap]:
    """A heatmap per quantizer whose unit carries a non-empty RSE map."""
    out = []
    for q in quantizers:
        rse = by_q[q].spectral_map
        if rse and rse[0]:
            out.append(SpectralMap(q, heatmap_svg(rse), max(float(v) for row in rse for v in row)))
    return out
