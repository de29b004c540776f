"""The check language: a one-line shorthand and a structured mapping, both parsed into CheckSpec.

Shorthand grammar (whitespace-separated; ``[...]`` optional)::

    <quantizers> <metric>[(<score>)] [on <datasets>] [delta|value] <op> <number>[%|pp] [with <c>% confidence]
    <quantizers> <metric>[(<score>)] [on <datasets>] delta <op> delta(<quantizer>) [with <c>% confidence]
    <runtime> parity(<simulated quantizer>) <op> <number> [floor]      (runtime checks: pytest_qrel.runtimes.checks)

    quantizers  all | NAME[,NAME...]            e.g. W4A4   or   W6A6,W4A8
    datasets    mean(ood) | mean(NAME,NAME...) | ood | NAME[,NAME...]
    op          <= | < | >= | >
    unit        %  (delta: relative to FP32; value: percent of a fraction metric)
                pp (percentage points, fraction metrics only); none: the metric's own unit
                floor (parity only: the simulation's noise floor, the unit parity is measured in)

Without ``delta``/``value`` the bound is on the value itself (``all ece <= 0.05``).
``delta <= delta(W4A4)`` bounds by another quantizer's delta on the same metric, dataset and score
(``W4A4-repq top1 delta <= delta(W4A4)``: RepQ-ViT loses no more accuracy than minmax).

``with 95% confidence`` demands statistical evidence: the check then passes only when the whole
95% paired bootstrap interval of its quantity lies within the bound, fails when it lies wholly
beyond, and is *inconclusive* otherwise (see :mod:`pytest_qrel.stats`). Without it the point
estimate decides (the interval is still shown). A suite-level ``confidence:`` sets the default.

Examples::

    W8A8 top1 delta <= 1pp
    W4A4 aupr_out(msp) on mean(ood) delta <= 12%
    W4A4 aupr_out(msp) on mean(ood) delta <= 12% with 95% confidence
    all ece <= 0.05

Structured form::

    - metric: nll
      quantizers: [W6A6, W4A8]      # or "all" (default)
      score: msp                     # OOD metrics only
      on: mean(ood)                  # or a dataset name / list
      delta: {max: 10%}              # or value: {min: 0.9} / {max: 0.05}
      expect: fail                   # reported as a strict xfail
      reason: "4-bit is known to hurt OOD detection"
      confidence: 0.95               # or "95%"; null: the point estimate decides (overrides a suite default)
    - check: "W4A4 aupr_out(msp) on mean(ood) delta <= 5%"    # shorthand + extra fields
      expect: fail
"""

from __future__ import annotations

import re
from functools import partial
from typing import Any

from ..errors import SpecError
from ..options import reject_unknown
from .schema import MEAN_OOD, Bound, CheckSpec, Location
from .yamlsrc import kind_of

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_SHORTHAND = re.compile(
    r"^\s*(?P<quantizers>\S+)\s+"
    r"(?P<metric>[A-Za-z_][A-Za-z0-9_]*)(?:\((?P<score>[A-Za-z_][A-Za-z0-9_]*)\))?"
    r"(?:\s+on\s+(?P<on>\S+))?"
    r"\s+(?:(?P<kind>delta|value)\s*)?"
    rf"(?P<op><=|>=|<|>)\s*(?:(?P<amount>{_NUMBER})\s*(?P<unit>%|pp|floors?)?|(?P<refkind>delta|value)\((?P<ref>[^()\s]+)\))"
    rf"(?:\s+with\s+(?P<confidence>{_NUMBER})\s*%\s*confidence)?\s*$"
)
_AMOUNT = re.compile(rf"^\s*(?P<amount>{_NUMBER})\s*(?P<unit>%|pp|floors?)?\s*$")
FLOOR_METRICS = ("parity",)
"""Metrics measured in noise floors, which may spell their unit: ``parity(W8A8) <= 3 floor``."""


def _unit(unit: str | None, metric: str, text: str, where: Location | None, field: str) -> str:
    """The bound's unit; ``floor`` / ``floors`` is the unit ``parity`` is measured in (so: absolute)."""
    if unit in ("floor", "floors"):
        if metric not in FLOOR_METRICS:
            raise SpecError(f"'{text}': 'floor' is the unit of {', '.join(FLOOR_METRICS)} only", file=where.file if where else None,
                            line=where.line if where else None, field=field, fix="drop 'floor', or bound e.g. 'parity(W8A8) <= 3 floor'")
        return "abs"
    return unit or "abs"
_REF = re.compile(r"^\s*(?P<refkind>delta|value)\((?P<ref>[^()\s]+)\)\s*$")

SHORTHAND_HELP = "write '<quantizers> <metric>[(<score>)] [on <datasets>] [delta|value] <op> <number>[%|pp] [with <c>% confidence]', e.g. 'W4A4 aupr_out(msp) on mean(ood) delta <= 12%'"

_STRUCTURED_KEYS = {"check", "metric", "score", "quantizers", "on", "datasets", "delta", "value", "expect", "reason", "confidence"}
_PERCENT = re.compile(rf"^\s*(?P<amount>{_NUMBER})\s*%\s*$")
CONFIDENCE_HELP = "write a fraction such as 0.95 or a percentage such as '95%'"


def parse_confidence(raw: object, where: Location | None, field: str) -> float | None:
    """A demanded confidence: a fraction in (0, 1) (``0.95``), a percentage string (``"95%"``),
    or ``null`` / ``false`` / ``"none"`` / ``"off"`` for none. Raises :class:`SpecError` otherwise."""
    err = partial(SpecError, file=where.file if where else None, line=where.line if where else None, field=field)
    if raw is None or raw is False or (isinstance(raw, str) and raw.strip().lower() in ("none", "off")):
        return None
    if isinstance(raw, bool):
        raise err(f"confidence must be a level, got {raw!r}", fix=CONFIDENCE_HELP)
    value: float | None = None
    if isinstance(raw, (int, float)):
        if 50 <= raw < 100:  # a percentage written without %
            raise err(f"confidence {raw!r} is not a fraction", fix=f"write {raw / 100:g} or '{raw:g}%'")
        value = float(raw)
    elif isinstance(raw, str) and (m := _PERCENT.match(raw)):
        value = float(m["amount"]) / 100.0
    if value is None or not 0.0 < value < 1.0:
        raise err(f"confidence must be between 0 and 1 (exclusive), got {raw!r}", fix=CONFIDENCE_HELP)
    return value


def _split_names(text: str) -> tuple[str, ...]:
    """Split on commas outside parentheses: ``"a,mean(b,c)"`` -> ``("a", "mean(b,c)")``."""
    names, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            names.append(current)
            current = ""
        else:
            current += ch
    names.append(current)
    return tuple(n.strip() for n in names if n.strip())


def parse_shorthand(text: str, where: Location | None = None, field: str = "checks") -> CheckSpec:
    """Parse ``"W4A4 aupr_out(msp) on mean(ood) delta <= 12%"`` into a :class:`CheckSpec`.

    Only the syntax is checked here; names are validated against the suite by the loader.
    """
    m = _SHORTHAND.match(text)
    if not m:
        raise SpecError(
            f"cannot parse check '{text}'",
            file=where.file if where else None,
            line=where.line if where else None,
            field=field,
            fix=SHORTHAND_HELP,
        )
    if m["metric"] in ("delta", "value") and m["kind"] is None:
        raise SpecError(
            f"check '{text}' names no quantizer before the metric '{m['quantizers']}'",
            file=where.file if where else None, line=where.line if where else None, field=field,
            fix=f"write e.g. 'all {' '.join(text.split())}' or name quantizers such as 'W8A8'",
        )
    on = m["on"]
    datasets: tuple[str, ...] | None
    if on is None or on == "ood":
        datasets = None if on is None else ("ood",)
    else:
        datasets = _split_names(on)
    kind = m["kind"] or "value"
    if m["ref"] is not None and m["refkind"] != kind:
        raise SpecError(
            f"'{text}' compares {kind} with {m['refkind']}({m['ref']})",
            file=where.file if where else None, line=where.line if where else None, field=field,
            fix=f"write '{kind} {m['op']} {kind}({m['ref']})'",
        )
    bound = Bound(
        kind=kind,  # type: ignore[arg-type]
        op=m["op"],  # type: ignore[arg-type]
        amount=float(m["amount"]) if m["amount"] is not None else 0.0,
        unit=_unit(m["unit"], m["metric"], text, where, field),  # type: ignore[arg-type]
        ref=m["ref"],
    )
    confidence = None if m["confidence"] is None else parse_confidence(f"{m['confidence']}%", where, field)
    return CheckSpec(
        metric=m["metric"],
        score=m["score"],
        quantizers=_split_names(m["quantizers"]),
        datasets=datasets,
        bound=bound,
        text=" ".join(text.split()),
        where=where,
        confidence=confidence,
    )


def _bound_from_mapping(kind: str, raw: Any, where: Location, field: str, metric: str = "") -> Bound:
    err = partial(SpecError, file=where.file, line=where.line, field=field)
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("max", "min", "lt", "gt"):
        raise err(
            f"'{kind}' must be a mapping with exactly one of max/min/lt/gt, got {raw!r}",
            fix=f"write e.g. '{kind}: {{max: 10%}}'",
        )
    (key, amount_raw), = raw.items()
    op = {"max": "<=", "min": ">=", "lt": "<", "gt": ">"}[key]
    ref = _REF.match(str(amount_raw))
    if ref and ref["refkind"] == kind:
        return Bound(kind=kind, op=op, amount=0.0, unit="abs", ref=ref["ref"])  # type: ignore[arg-type]
    m = _AMOUNT.match(str(amount_raw))
    if not m or isinstance(amount_raw, bool):
        raise err(f"bound '{amount_raw}' is not a number with an optional % or pp", fix="write e.g. 10%, 1pp or 0.05")
    return Bound(kind=kind, op=op, amount=float(m["amount"]), unit=_unit(m["unit"], metric, str(amount_raw), where, field))  # type: ignore[arg-type]


def _names(raw: Any, where: Location, field: str) -> tuple[str, ...]:
    if isinstance(raw, str):
        return _split_names(raw)
    if isinstance(raw, list) and raw and all(isinstance(x, str) for x in raw):
        return tuple(raw)
    raise SpecError(f"expected a name or a list of names, got {raw!r}", file=where.file, line=where.line, field=field, fix="write e.g. [W6A6, W4A8]")


def parse_check(raw: Any, where: Location, field: str, default_confidence: float | None = None) -> CheckSpec:
    """Parse one entry of ``checks:`` (a shorthand string or a mapping).

    ``default_confidence``: the suite's ``confidence:``, applied when the check sets none
    (neither ``with <c>% confidence`` nor a ``confidence:`` key; ``confidence: null`` opts out).
    """
    from dataclasses import replace

    if isinstance(raw, str):
        check = parse_shorthand(raw, where, field)
        return check if check.confidence is not None else replace(check, confidence=default_confidence)
    if not isinstance(raw, dict):
        raise SpecError(f"a check must be a string or a mapping, got {kind_of(raw)}", file=where.file, line=where.line, field=field, fix=SHORTHAND_HELP)
    reject_unknown(raw, _STRUCTURED_KEYS, kind="key",
                   fail=lambda key, problem, fix: SpecError(problem, file=where.file, line=where.line, field=field, fix=fix))
    if "check" in raw:
        clash = sorted({"metric", "score", "quantizers", "on", "datasets", "delta", "value"} & set(raw))
        if clash:
            raise SpecError(f"'check' shorthand cannot be combined with {', '.join(clash)}", file=where.file, line=where.line, field=field, fix="put everything in the shorthand or use the structured keys only")
        if not isinstance(raw["check"], str):
            raise SpecError("'check' must be a string", file=where.file, line=where.line, field=f"{field}.check", fix=SHORTHAND_HELP)
        base = parse_shorthand(raw["check"], where, f"{field}.check")
    else:
        if "metric" not in raw or not isinstance(raw["metric"], str):
            raise SpecError("a structured check needs 'metric' (a metric name)", file=where.file, line=where.line, field=field, fix="add e.g. 'metric: nll'")
        kinds = [k for k in ("delta", "value") if k in raw]
        if len(kinds) != 1:
            raise SpecError("a structured check needs exactly one of 'delta' or 'value'", file=where.file, line=where.line, field=field, fix="add e.g. 'delta: {max: 10%}'")
        bound = _bound_from_mapping(kinds[0], raw[kinds[0]], where, f"{field}.{kinds[0]}", str(raw["metric"]))
        if "on" in raw and "datasets" in raw:
            raise SpecError("give either 'on' or 'datasets', not both", file=where.file, line=where.line, field=field)
        on = raw.get("on", raw.get("datasets"))
        datasets = None if on is None else _names(on, where, f"{field}.on")
        if datasets == ("ood",):
            datasets = None
        quantizers = _names(raw.get("quantizers", "all"), where, f"{field}.quantizers")
        score = raw.get("score")
        if score is not None and not isinstance(score, str):
            raise SpecError("'score' must be a score name", file=where.file, line=where.line, field=f"{field}.score", fix="write e.g. 'score: msp'")
        text = f"{','.join(quantizers)} {raw['metric']}" + (f"({score})" if score else "")
        if datasets:
            text += f" on {','.join(datasets)}"
        rhs = f"{bound.kind}({bound.ref})" if bound.ref else f"{bound.amount:g}{'' if bound.unit == 'abs' else bound.unit}"
        text += f" {bound.kind} {bound.op} {rhs}"
        base = CheckSpec(metric=raw["metric"], score=score, quantizers=quantizers, datasets=datasets, bound=bound, text=text, where=where)
    expect = raw.get("expect", "pass")
    if expect not in ("pass", "fail"):
        raise SpecError(f"'expect' must be 'pass' or 'fail', got {expect!r}", file=where.file, line=where.line, field=f"{field}.expect", fix="write 'expect: fail' for a check known to fail")
    reason = raw.get("reason")
    if reason is not None and not isinstance(reason, str):
        raise SpecError("'reason' must be a string", file=where.file, line=where.line, field=f"{field}.reason")
    confidence = base.confidence
    if "confidence" in raw:
        if base.confidence is not None:
            raise SpecError(
                "confidence is given twice (in the shorthand and as a key)", file=where.file, line=where.line,
                field=f"{field}.confidence", fix="keep one of them",
            )
        confidence = parse_confidence(raw["confidence"], where, f"{field}.confidence")
        if confidence is not None and "check" not in raw:
            base = replace(base, text=f"{base.text} with {100 * confidence:g}% confidence")
    elif confidence is None:
        confidence = default_confidence
    return replace(base, expect=expect, reason=reason, confidence=confidence)


__all__ = ["CONFIDENCE_HELP", "MEAN_OOD", "SHORTHAND_HELP", "parse_check", "parse_confidence", "parse_shorthand"]
