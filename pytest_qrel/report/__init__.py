"""Reports of a pytest-qrel run: one self-contained HTML file and a Markdown summary.

``render_report(verdicts, units, path)`` writes the HTML report (inline CSS, no scripts, works
offline) atomically; ``render_markdown(verdicts, units)`` returns a short summary for CI job
summaries (e.g. ``$GITHUB_STEP_SUMMARY``).
"""

from __future__ import annotations

from .html import build_context, overall_status, render_html, render_report
from .markdown import render_markdown

__all__ = ["build_context", "overall_status", "render_html", "render_markdown", "render_report"]
