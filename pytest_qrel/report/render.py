"""Render the view model to one self-contained HTML file (Jinja2, autoescaped, works offline).

:func:`render_html` builds the page (:func:`.view.build_page`), draws its figures
(:mod:`.figures`, inline SVG) and renders ``templates/report.html.j2``; :func:`write_html`
writes the result atomically (:func:`pytest_qrel.io.atomic_write_text`).

The page has no external assets: inline CSS, inline SVG, and one small inline script that makes
tables with class ``sortable`` sortable by clicking a header and opens every ``<details>`` before
printing; without JavaScript everything is still shown (sorting is the only thing lost).
Every string from a user (suite, model, quantizer, dataset names, check texts, messages, metadata)
is autoescaped; only the SVG produced by :mod:`.figures` is inserted as markup.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from ..results import RunResults
from .format import dash, fmt_duration, fmt_info
from .objects import FigureSpec, Page
from .view import build_page

__all__ = ["DEFAULT_TITLE", "draw_figures", "environment", "render_html", "write_html"]

TEMPLATES_DIR = Path(__file__).with_name("templates")
DEFAULT_TITLE = "pytest-qrel reliability audit"


@lru_cache(maxsize=None)
def environment(templates_dir: str | None = None) -> Environment:
    """The Jinja2 environment of the report (autoescaping everything, strict undefined)."""
    env = Environment(
        loader=FileSystemLoader(templates_dir or str(TEMPLATES_DIR)),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(fmt_info=fmt_info, dash=dash, fmt_duration=fmt_duration)
    return env


def _all_figures(page: Page) -> list[tuple[str, FigureSpec]]:
    out = []
    for suite in page.suites:
        out += [(suite.name, f) for f in suite.figures]
        for m in suite.models:
            out += [(f"{suite.name} / {m.model}", f) for f in (*m.figures, *m.diagnostics)]
    return out


def draw_figures(page: Page) -> None:
    """Draw every figure of ``page`` into ``spec.svg`` (beside a figure worker when the run started
    one: :mod:`pytest_qrel.figure_pool`). A figure that fails to draw becomes a visible note naming
    it and the error (the rest of the report is still written)."""
    from ..figure_pool import FigureError, FigureJob, draw_all

    figures = _all_figures(page)
    drawn = draw_all([FigureJob(spec.kind, spec.data, spec.id, spec.title) for _, spec in figures])
    for (where, spec), svg in zip(figures, drawn):
        if isinstance(svg, FigureError):
            msg = f"The figure '{spec.title}' of {where} could not be drawn: {svg}"
            spec.svg = Markup('<p class="figure-error">{}</p>').format(msg)
        else:
            spec.svg = svg


def render_html(results: RunResults, *, title: str = DEFAULT_TITLE, figures: bool = True, template: str = "report.html.j2") -> str:
    """The report of ``results`` as an HTML string (``figures=False``: tables only, faster)."""
    page = build_page(results, title=title)
    if figures:
        draw_figures(page)
    return environment().get_template(template).render(page=page, figures=figures)


def write_html(results: RunResults, path: str | os.PathLike[str], *, title: str = DEFAULT_TITLE, figures: bool = True) -> Path:
    """Write :func:`render_html` to ``path`` atomically (parent folders created); returns it."""
    from ..io import atomic_write_text

    return atomic_write_text(Path(path), render_html(results, title=title, figures=figures))

