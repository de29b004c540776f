"""Reports of a pytest-qrel run: one self-contained HTML file and a Markdown summary.

Both take plain data, a :class:`~pytest_qrel.results.RunResults`:

- ``render_report(results, path)`` writes the HTML report (tables, inline SVG figures, run
  metadata; works offline) and its Markdown summary beside it (``.md``), atomically, and returns
  the HTML file's path;
- ``render_markdown(results, report_path=...)`` returns the CI summary (under 65,000 characters).

Every number comes computed by :func:`pytest_qrel.summary.summarize` and the run's status from
:mod:`pytest_qrel.policy`; this package lays them out and formats them: :mod:`.objects` (the view
objects), :mod:`.view` / :mod:`.methods_view` / :mod:`.runtime_view` / :mod:`.figspecs` (what each
table and figure shows), :mod:`.format` (display strings) and :mod:`.render` / :mod:`.figures` /
:mod:`.markdown` (output). It reads no metric registry and parses no quantizer names.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import StorageError
from ..results import RunResults
from ..output_paths import report_path_problem, summary_path
from .render import DEFAULT_TITLE, render_html, write_html
from .view import build_page

__all__ = ["build_page", "render_html", "render_markdown", "render_report"]


def render_report(results: RunResults, path: str | os.PathLike[str], *, title: str = DEFAULT_TITLE, figures: bool = True,
                  report_url: str | None = None) -> Path:
    """Write the HTML report of ``results`` to ``path`` and its Markdown summary beside it
    (``path`` with ``.md``; parent folders created, both atomic) and return the HTML file's path.
    ``figures=False`` leaves the figures out (faster, smaller). ``report_url``: where CI publishes
    the HTML report, for the summary's links (default: the report's file name, beside the summary).

    :class:`~pytest_qrel.errors.StorageError` when ``path`` is not an ``.html`` file or either
    file would overwrite one that pytest-qrel did not write (:func:`pytest_qrel.output_paths.report_path_problem`)."""
    from ..io import atomic_write_text

    if not isinstance(results, RunResults):
        raise TypeError(f"render_report takes a RunResults (pytest_qrel.shards.run_results builds one), not {type(results).__name__}")
    problem = report_path_problem(Path(path))
    if problem:
        raise StorageError(f"{path}: {problem}", path=Path(path), reason=problem)
    html = write_html(results, path, title=title, figures=figures)
    atomic_write_text(summary_path(html), render_markdown(results, report_path=html, report_url=report_url))
    return html


def render_markdown(
    results: RunResults,
    *,
    report_path: str | os.PathLike[str] | None = None,
    title: str = "pytest-qrel",
    max_rows: int = 50,
    report_url: str | None = None,
) -> str:
    """The Markdown summary of ``results`` (see :mod:`.markdown`); ``report_path`` adds the
    ``Full report: <path>`` line; links into the report point at ``report_url`` (default: the
    report's file name, beside the summary)."""
    from .markdown import summary_markdown

    return summary_markdown(results, report_path=None if report_path is None else str(report_path), title=title, max_rows=max_rows,
                            report_url=report_url)
