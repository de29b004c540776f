"""Where a report may be written: an ``.html`` file, with its Markdown summary (``.md``) beside it,
neither of which may overwrite a file that pytest-qrel did not write."""

from __future__ import annotations

from pathlib import Path

__all__ = ["REPORT_MARKER", "SUMMARY_MARKER", "read_head", "report_path_problem", "report_url_problem", "summary_path"]

#: What marks a file as a pytest-qrel HTML report (the template's ``<meta name="generator">``).
REPORT_MARKER = '<meta name="generator" content="pytest-qrel">'
#: What the first lines of a pytest-qrel Markdown summary hold (its title).
SUMMARY_MARKER = "pytest-qrel"


def read_head(path: Path, n: int = 8192) -> str:
    """The first ``n`` bytes of ``path`` as text (``""`` when it cannot be read)."""
    try:
        with open(path, "rb") as fh:
            return fh.read(n).decode("utf-8", errors="replace")
    except OSError:
        return ""


def summary_path(report: Path) -> Path:
    """The Markdown summary written beside the HTML report ``report``."""
    return Path(report).with_suffix(".md")


def report_path_problem(path: Path) -> str | None:
    """Why the HTML report cannot be written to ``path`` (``None``: it can).

    The report must be an ``.html`` file; neither it nor the Markdown summary beside it
    (``.md``) may be a folder or an existing file that pytest-qrel did not write (a report is
    recognised by :data:`REPORT_MARKER`, a summary by :data:`SUMMARY_MARKER`), so a typo such
    as ``--qrel-report suites/case.yaml`` can never overwrite a suite."""
    path = Path(path)
    if path.suffix.lower() != ".html":
        return (f"the report must be an .html file (its Markdown summary is written beside it, as .md); "
                f"give e.g. {path.with_suffix('.html')}")
    for target, marker, what in ((path, REPORT_MARKER, "report"), (summary_path(path), SUMMARY_MARKER, "summary")):
        if target.is_dir():
            return f"{target} is a folder; give the path of an .html file"
        if target.exists() and marker not in read_head(target):
            kind = "the report" if target == path else "its Markdown summary"
            return (f"{kind} would overwrite {target}, an existing file that is not a pytest-qrel {what}; "
                    "give another path, or move that file away")
    return None


def report_url_problem(url: str, *, report_given: bool, report_flag: str) -> str | None:
    """Why ``url`` cannot be where the Markdown summary's links point (``None``: it can).

    The address CI publishes the HTML report at (``https://ci.example/run/42/demo.html``), or a
    path relative to where the summary is read: the links append ``#<row anchor>`` to it, so it
    carries no fragment and no whitespace. ``report_given``: whether the report is written at all
    (by ``report_flag``, ``--qrel-report`` or ``qrel merge --report``): without it no summary has links."""
    if not report_given:
        return f"the links it sets are in the report's Markdown summary: add {report_flag} PATH"
    if not url or any(c.isspace() for c in url):
        return "the address must be one word (e.g. https://ci.example/run/42/demo.html)"
    if "#" in url:
        return f"the links add '#<row anchor>' to the address: give it without its fragment ({url.split('#', 1)[0]})"
    return None

