"""A Markdown summary of a run for CI (``$GITHUB_STEP_SUMMARY``, a pull-request comment).

Layout: a title with the verdict and the suite names; the banner's sentence and what was not
verified; the counts; the failing checks **grouped by check** (one row per check as written in the
suite: the line of the suite to change, how many of the units it applies to fail it, the worst
margin and where, a link to that row of the HTML report; errors add their message), then the
command that re-runs each group's worst unit, shell-quoted, in a code block; what was not verified
and the expected failures (one row per check); on every run the key numbers per model (top-1, NLL,
ECE and the mean OOD metrics of the suite's first score, with the change against FP32); when the run
has deployed-runtime units, one row per runtime unit (its int8 census, parity to the simulation in
noise floors, top-1 agreement, and its latency / memory / size as ratios to FP32 measured in the same
process: the numbers of the HTML report's "Deployed runtimes" block, read from the same records);
and ``Full report: <path>``.

Links into the report point at the row ids of its failing / not-verified / expected tables
(:func:`.view.verdict_anchor`), relative to ``report_url`` (default: the report's file name, which
works where the ``.md`` sits beside the ``.html``; a CI job that publishes the report passes the
published address).

The text is always shorter than :data:`MAX_CHARS` (65,000, under GitHub's 65,536-character limit
for comments and job summaries): long tables are cut with a line that says how many rows were left
out, and the failing checks come before everything optional. User text is escaped so it can neither
break a table nor inject HTML.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import PurePath
from typing import Any

from .. import display
from ..policy import is_unverified, sort_failing
from ..results import RunResults, Verdict
from ..spec.schema import MEAN_OOD
from ..summary import ID, ModelSummary, summarize
from .format import MISSING, fmt_delta, fmt_value
from .runtime_view import _kernels  # the HTML block's list of kernels, so both read alike
from .view import _Builder, verdict_anchor

__all__ = ["MAX_CHARS", "md_escape", "summary_markdown"]

MAX_CHARS = 65_000
_SPECIAL = re.compile(r"([\\`*\[\]|])")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
ICONS = {"FAIL": "\u274c", "PASS": "\u2705", "INCOMPLETE": "\u26a0\ufe0f", "NOT VERIFIED": "\u274c", "NO CHECKS": "\u26a0\ufe0f"}


def md_escape(text: Any) -> str:
    """One table cell: ``& < >`` as HTML entities (no HTML gets through), the Markdown specials
    ``\\ ` * [ ] |`` backslash-escaped (no emphasis, link or broken cell), newlines folded to
    spaces. Underscores stay: GitHub does not read them as emphasis inside words."""
    if text is None or text == "":
        return MISSING
    flat = " ".join(str(text).split())
    flat = re.sub(r"[&<>]", lambda m: _ENTITIES[m.group(0)], flat)
    return _SPECIAL.sub(r"\\\1", flat)


def _code(text: str) -> str:
    """Inline code that survives backticks and pipes inside ``text``."""
    flat = " ".join(str(text).split()).replace("|", "\\|")
    fence = "``" if "`" in flat else "`"
    return f"{fence} {flat} {fence}" if fence == "``" else f"`{flat}`"


WHY_CHARS = 200


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _link(report_url: str | None, v: Verdict, text: str) -> str:
    return f"[{text}]({report_url}#{verdict_anchor(v)})" if report_url else MISSING


def _verdict_lines(b: _Builder, verdicts: Sequence[Verdict], limit: int, *, reason: bool = False, report_url: str | None = None) -> list[str]:
    """One row per verdict (not-verified checks, expected failures): few, each with its own reason."""
    head = "| Outcome | Check | Where | Bounded | Bound | Line | Why | Report |"
    if reason:
        head = "| Check | Where | Bounded | Interval | Bound | Line | Reason |"
    n_cols = head.count("|") - 1
    lines = [head, "|" + "|".join("---" for _ in range(n_cols)) + "|"]
    for v in verdicts[:limit]:
        row = b.verdict_row(v)
        line = _code(v.source) if v.source else MISSING
        if reason:
            cells = [md_escape(row.check), md_escape(row.where), md_escape(row.shown), md_escape(row.ci), md_escape(row.bound), line,
                     md_escape(row.reason or row.message)]
        else:
            cells = [row.outcome, md_escape(row.check), md_escape(row.where), md_escape(row.shown), md_escape(row.bound), line,
                     md_escape(_clip(row.message, WHY_CHARS)), _link(report_url, v, "row")]
        lines.append("| " + " | ".join(cells) + " |")
    if len(verdicts) > limit:
        lines += ["", f"\u2026 and {len(verdicts) - limit} more (see the full report)."]
    return lines


def _group_key(v: Verdict) -> tuple[str, str, str]:
    return (v.suite, v.source, v.check)


def _worst(group: Sequence[Verdict]) -> Verdict:
    """The verdict furthest beyond its bound (smallest margin); an error (no margin) counts last."""
    with_margin = [v for v in group if v.margin is not None]
    return min(with_margin, key=lambda v: v.margin) if with_margin else group[0]  # type: ignore[arg-type, return-value]


def _grouped_failing_lines(b: _Builder, failing: Sequence[Verdict], limit: int, report_url: str | None) -> list[str]:
    """One row per failing check as written in the suite, then the commands that re-run the worst
    unit of each (see the module docstring)."""
    applies: dict[tuple[str, str, str], int] = {}
    for v in b.verdicts:
        applies[_group_key(v)] = applies.get(_group_key(v), 0) + 1
    groups: dict[tuple[str, str, str], list[Verdict]] = {}
    for v in failing:
        groups.setdefault(_group_key(v), []).append(v)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), _worst(g).margin if _worst(g).margin is not None else 0.0))
    why = any(v.outcome not in ("failed", "xpassed") for v in failing)
    head = "| Check | Line to change | Failing | Worst margin | Worst at | Report |" + (" Why |" if why else "")
    lines = [head, "|" + "|".join("---" for _ in range(head.count("|") - 1)) + "|"]
    reruns = []
    for group in ordered[:limit]:
        worst = _worst(group)
        row = b.verdict_row(worst)
        outcomes = sorted({v.outcome for v in group})
        count = f"{len(group)} of {applies.get(_group_key(worst), len(group))}"
        if outcomes != ["failed"]:
            count += f" ({', '.join(outcomes)})"
        at = md_escape(row.where) + ("" if row.shown == MISSING else f": {md_escape(row.shown)}") + ("" if row.ci == MISSING else f" {md_escape(row.ci)}")
        cells = [_code(worst.check), _code(worst.source) if worst.source else MISSING, count,
                 md_escape(worst.margin_display or MISSING), at, _link(report_url, worst, "worst row")]
        if why:
            cells.append(MISSING if worst.outcome in ("failed", "xpassed") else md_escape(_clip(worst.message, WHY_CHARS)))
        lines.append("| " + " | ".join(cells) + " |")
        if row.rerun:
            reruns.append(row.rerun)
    if len(ordered) > limit:
        lines += ["", f"\u2026 and {len(ordered) - limit} more (see the full report)."]
    if reruns:
        lines += ["", "Re-run the worst unit of each (node ids shell-quoted):", "", "```sh", *reruns, "```"]
    return lines


def _key_numbers(b: _Builder, limit: int) -> list[str]:
    out: list[str] = []
    for ms in b.summary.models:
        if not ms.units:
            continue
        out += _model_key_numbers(b, ms, limit)
    return out


def _model_key_numbers(b: _Builder, ms: ModelSummary, limit: int) -> list[str]:
    """One model's table: top-1, NLL, ECE and the mean OOD metrics of its first score, each with
    its change against FP32."""
    units, ref = ms.units, ms.reference
    score = ms.scores[0] if ms.scores else None
    id_metrics = [m for m in ("top1", "nll", "ece") if any(m in u.id for u in units)]
    ood_metrics = [m for m in ("auroc", "aupr_out", "fpr_at_95_tpr") if score and any(m in u.mean_ood(score) for u in units)]
    if not id_metrics and not ood_metrics:
        return []
    heads = [b.header(m) for m in id_metrics] + [f"{b.info(m).label} mean ({display.score_label(score)}, %)" for m in ood_metrics]
    against = md_escape(ref.quantizer) if ref else "FP32 (none in this run)"
    out = ["", f"**{md_escape(ms.suite)} / {md_escape(ms.model)}** (in parentheses: change against {against}, + is worse)", "",
           "| Quantizer | " + " | ".join(heads) + " |", "|---|" + "---:|" * len(heads)]
    for u in units[:limit]:
        cells = [_with_delta(b, ms, u.quantizer, "id", m) for m in id_metrics]
        cells += [_with_delta(b, ms, u.quantizer, "ood", m, score, MEAN_OOD) for m in ood_metrics]
        out.append(f"| {md_escape(u.quantizer)} | " + " | ".join(cells) + " |")
    if len(units) > limit:
        out.append(f"\n\u2026 and {len(units) - limit} more quantizers in the full report.")
    return out


def _with_delta(b: _Builder, ms: ModelSummary, quantizer: str, kind: str, metric: str, score: str | None = None, dataset: str = ID) -> str:
    info = b.info(metric)
    n = ms.number(quantizer, kind, metric, score, dataset)
    text = fmt_value(info, n.value)
    return text if n.delta is None else f"{text} ({fmt_delta(info, n.delta)})"


def _ratio(value: Any, spec: str = ".2f", suffix: str = "") -> str:
    """A recorded number in the HTML block's format (``spec``), or the missing mark."""
    return MISSING if value is None else f"{float(value):{spec}}{suffix}"


def _runtime_lines(b: _Builder, limit: int) -> list[str]:
    """One row per deployed-runtime unit (none: no lines), from the records the HTML report's
    "Deployed runtimes" block reads (:attr:`UnitMetrics.runtime`, the census shares of
    :attr:`ModelSummary.census_percent`): nothing is recomputed here."""
    units = [(ms, u) for ms in b.summary.models for u in ms.units if u.runtime and u.runtime.get("census")]
    if not units:
        return []
    head = ("| Model | Runtime unit | Runtime | Int8 MACs | Int8 kernels | Parity (noise floors) | Top-1 agreement "
            "| Latency \u00d7 FP32 (suite's batch / batch 1) | Memory \u00d7 FP32 | Size \u00d7 FP32 |")
    lines = ["", "### Deployed runtimes", "",
             "Parity: mean absolute logit difference to the simulation of the same recipe on the same ID test images, in that "
             "simulation's noise floors. Ratios are to FP32 measured in the same process (below 1: faster / smaller; "
             "wall times are noisy on a shared machine).", "",
             head, "|---|---|---|---:|---|---:|---:|---:|---:|---:|"]
    for ms, u in units[:limit]:
        rt = u.runtime
        census, share = rt["census"], ms.census_percent.get(u.quantizer, {})
        int8 = _ratio(share.get("int8"), ".1f", "%")
        if share.get("weight_only"):
            int8 += f" (weight-only {_ratio(share['weight_only'], '.1f', '%')})"
        parity = rt.get("parity") or {}
        latency = (rt.get("latency") or {}).get("ratio") or {}
        cells = [
            md_escape(f"{ms.suite} / {ms.model}"), md_escape(u.quantizer), md_escape(census["runtime"]), int8,
            md_escape(_kernels(census["ops"].get("integer", {}))),
            "; ".join(f"{_ratio(p['parity'], '.3g')} vs {md_escape(ref)}" for ref, p in parity.items()) or MISSING,
            "; ".join(f"{_ratio(100 * p['agreement'], '.1f', '%')} vs {md_escape(ref)}" for ref, p in parity.items()) or MISSING,
            MISSING if not latency else f"{_ratio(latency.get('latency'))} / {_ratio(latency.get('latency_b1'))}",
            _ratio(latency.get("memory")), _ratio((rt.get("size") or {}).get("ratio")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if len(units) > limit:
        lines += ["", f"\u2026 and {len(units) - limit} more runtime units in the full report."]
    return lines


def summary_markdown(results: RunResults, *, report_path: str | None = None, title: str = "pytest-qrel",
                     max_rows: int = 50, max_chars: int = MAX_CHARS, report_url: str | None = None) -> str:
    """The Markdown summary of ``results`` (see the module docstring); always ``< max_chars``.
    ``report_url``: where links into the HTML report point (default: ``report_path``'s file name)."""
    if report_url is None and report_path:
        report_url = PurePath(report_path).name
    rows = max_rows
    while True:
        text = _render(results, report_path=report_path, title=title, max_rows=rows, report_url=report_url)
        if len(text) < max_chars or rows == 0:
            break
        rows //= 2
    if len(text) >= max_chars:  # pathological (e.g. thousands of suites): keep the head and say so
        tail = f"\n\n\u2026 summary cut at {max_chars} characters." + (f"\n\nFull report: {_code(report_path)}\n" if report_path else "\n")
        text = text[: max_chars - len(tail) - 1] + tail
    return text


def _render(results: RunResults, *, report_path: str | None, title: str, max_rows: int, report_url: str | None) -> str:
    b = _Builder(summarize(results))
    vs, verdict = b.verdicts, b.summary.verdict
    suites = list(dict.fromkeys([*(u.suite for u in results.units), *(v.suite for v in vs)]))
    lines = [f"## {ICONS[verdict.status]} {md_escape(title)}: {verdict.status} \u2014 {', '.join(md_escape(s) for s in suites) or 'no suites'}", ""]
    lines.append(f"**{md_escape(verdict.headline)}**")
    if verdict.unverified_line:
        lines += ["", f"\u26a0\ufe0f {md_escape(verdict.unverified_line)}"]
    lines += ["", f"{md_escape(verdict.tally)} \u2014 {len(results.units)} unit{'s' if len(results.units) != 1 else ''}"]
    failing = sort_failing(vs)
    if failing:
        n_checks = len({_group_key(v) for v in failing})
        lines += ["", f"### Failing checks ({n_checks} check{'s' if n_checks != 1 else ''} of the suite, {len(failing)} item{'s' if len(failing) != 1 else ''})", ""]
        lines += _grouped_failing_lines(b, failing, max_rows, report_url)
    sections = (("### Not verified", [v for v in vs if is_unverified(v)], False),
                ("### Expected failures (known regressions)", [v for v in vs if v.outcome == "xfailed"], True))
    for heading, shown, reason in sections:
        if shown:
            lines += ["", heading, ""] + _verdict_lines(b, shown, max_rows, reason=reason, report_url=report_url)
    for suite in suites:  # published values beside the measured ones (suite 'references:')
        from .paper_view import reference_markdown

        lines += reference_markdown(b, suite, [ms for ms in b.summary.models if ms.suite == suite], results.run, md_escape)
    numbers = _key_numbers(b, max(1, max_rows))
    if numbers:
        lines += ["", "### Key numbers"] + numbers
    lines += _runtime_lines(b, max(1, max_rows))
    if report_path:
        lines += ["", f"Full report: {_code(report_path)}"]
    return "\n".join(lines) + "\n"
