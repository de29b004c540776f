"""A short Markdown summary of a run, for CI job summaries (``$GITHUB_STEP_SUMMARY`` and the like).

The verdict line first, then the counts per outcome, then a table of the failing checks (failed,
error, xpassed) with their numbers. User-provided text is escaped so that it can neither break the
table nor inject HTML.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..results import UnitMetrics, Verdict
from .html import (
    FAILING_OUTCOMES,
    MISSING,
    _as_unit,
    _as_verdict,
    count_outcomes,
    fmt_metric,
    is_failing,
    overall_status,
    verdict_location,
)

__all__ = ["render_markdown"]

# Backslash-escape the ASCII punctuation that could start markup or break a table cell.
_SPECIAL = re.compile(r"([\\`*\[\]<>|&])")


def md_escape(text: Any) -> str:
    """One table cell: Markdown/HTML specials backslash-escaped, newlines folded to spaces."""
    if text is None or text == "":
        return MISSING
    flat = " ".join(str(text).split())
    return _SPECIAL.sub(r"\\\1", flat)


def render_markdown(
    verdicts: Sequence[Verdict | Mapping[str, Any]],
    units: Sequence[UnitMetrics | Mapping[str, Any]],
    *,
    title: str = "pytest-qrel",
    max_rows: int = 50,
    report_path: str | None = None,
) -> str:
    """A Markdown summary: verdict line, counts, failing checks (at most ``max_rows`` rows)."""
    vs = [_as_verdict(v) for v in verdicts]
    us = [_as_unit(u) for u in units]
    status = overall_status(vs)
    counts = count_outcomes(vs)
    failing = [v for v in vs if is_failing(v.outcome)]
    rank = {o: i for i, o in enumerate(FAILING_OUTCOMES)}
    failing.sort(key=lambda v: rank.get(v.outcome, len(rank)))

    icon = {"FAIL": "\u274c", "INCOMPLETE": "\u26a0\ufe0f"}.get(status, "\u2705")
    lines = [f"## {icon} {md_escape(title)}: {status}", ""]
    n = len(vs)
    if status == "FAIL":
        lines.append(f"**{len(failing)} of {n} check{'s' if n != 1 else ''} block the release.**")
    elif n == 0:
        lines.append("**No checks ran.**")
    elif status == "INCOMPLETE":
        skipped = counts.get("skipped", 0)
        lines.append(f"**Not verified: {skipped} of {n} checks were skipped (data missing); the rest passed.**")
    else:
        lines.append(f"**All {n} check{'s' if n != 1 else ''} passed, were expected to fail, "
                     "or were skipped.**")
    lines.append("")
    models = {(u.suite, u.model) for u in us}
    lines.append(
        " \u00b7 ".join(f"{c} {o}" for o, c in counts.items())
        + f" \u2014 {len(us)} unit{'s' if len(us) != 1 else ''}, "
        f"{len(models)} model{'s' if len(models) != 1 else ''}"
    )

    if failing:
        lines += [
            "",
            "### Failing checks",
            "",
            "| Outcome | Where | Check | FP32 | Quantized | \u0394 | Bound | Message |",
            "|---|---|---|---:|---:|---:|---|---|",
        ]
        for v in failing[:max_rows]:
            cells = [
                v.outcome,
                verdict_location(v),
                v.check,
                fmt_metric(v.fp32, v.metric),
                fmt_metric(v.value, v.metric),
                v.delta_display,
                v.bound,
                v.message,
            ]
            lines.append("| " + " | ".join(md_escape(c) for c in cells) + " |")
        if len(failing) > max_rows:
            lines += ["", f"\u2026 and {len(failing) - max_rows} more failing checks."]
    if report_path:
        lines += ["", f"Full report: {md_escape(report_path)}"]
    return "\n".join(lines) + "\n"
