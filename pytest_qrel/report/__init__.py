"""Reports of a pytest-qrel run: one self-contained HTML file and a Markdown summary.

Both take plain data, a :class:`~pytest_qrel.results.RunResults`:

- ``render_report(results, path)`` writes the HTML report (tables, inline SVG figures, run
  metadata; works offline) atomically and returns the path;
- ``render_markdown(results, report_path=...)`` returns the CI summary (under 65,000 characters).

The package is split in three: :mod:`.format` (display strings), :mod:`.view` (the view model:
what each table and figure shows, computed from the records only) and :mod:`.render` /
:mod:`.figures` / :mod:`.markdown` (output). It reads no metric registry and parses no quantizer
names. The old call ``render_report(verdicts, units, path, meta=...)`` still works (converted by
:func:`pytest_qrel.display.legacy_run_results`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..results import RunResults
from .render import DEFAULT_TITLE, render_html, write_html
from .view import build_page, overall_status

__all__ = ["build_page", "overall_status", "render_html", "render_markdown", "render_report"]


def _results(results: Any, units: Any = None, meta: Any = None) -> RunResults:
    if isinstance(results, RunResults):
        return results
    if isinstance(results, dict) and "verdicts" in results:
        return RunResults.from_dict(results)
    from ..display import legacy_run_results

    return legacy_run_results(results, units or [], meta=meta)


def render_report(
    results: RunResults | Sequence[Any],
    path: str | os.PathLike[str] | Sequence[Any],
    legacy_path: str | os.PathLike[str] | None = None,
    *,
    title: str = DEFAULT_TITLE,
    figures: bool = True,
    meta: dict[str, Any] | None = None,
    **_legacy: Any,
) -> Path:
    """Write the HTML report of ``results`` to ``path`` (parent folders created, atomic) and
    return the path. ``figures=False`` leaves the figures out (faster, smaller).

    Compatibility: ``render_report(verdicts, units, path, meta=..., methods=...)`` (the old
    signature; ``methods`` is ignored, the unit records carry their method).
    """
    if not isinstance(results, (RunResults, dict)):
        if legacy_path is None:
            raise TypeError("render_report(results: RunResults, path) or, old form, render_report(verdicts, units, path)")
        return write_html(_results(results, path, meta), legacy_path, title=title, figures=figures)
    return write_html(_results(results), path, title=title, figures=figures)  # type: ignore[arg-type]


def render_markdown(
    results: RunResults | Sequence[Any],
    units: Sequence[Any] | None = None,
    *,
    report_path: str | os.PathLike[str] | None = None,
    title: str = "pytest-qrel",
    max_rows: int = 50,
) -> str:
    """The Markdown summary of ``results`` (see :mod:`.markdown`); ``report_path`` adds the
    ``Full report: <path>`` line. Compatibility: ``render_markdown(verdicts, units)``."""
    from .markdown import summary_markdown

    return summary_markdown(_results(results, units), report_path=None if report_path is None else str(report_path),
                            title=title, max_rows=max_rows)
