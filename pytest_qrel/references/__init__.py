"""Published numbers to show beside measured ones: typed reference values keyed by (model,
quantizer, metric, dataset).

A reference set is a small YAML or CSV file (format: ``docs/references.md``). Two ship with
pytest-qrel, transcribed from the papers whose protocols the example suites reproduce:

=========================  ===================================================================
name                       what it holds
=========================  ===================================================================
``kuang_wong_2025``        Kuang & Wong (ViT quantization and OOD detection): Table 1 (top-1 and
                           NLL on ImageNet-1k, 4 models x FP32 and 5 RepQ-ViT bit configs, mean
                           of 3 seeds) and the abstract's AUPR-out deltas FP32 -> W4A4
``kuang_wong_2025_table1`` the same file, Table 1 only
``bouguerra_2025``         Bouguerra et al. (CLIP quantization): the appendix table of light QAT
                           on ViT-B/32 (OpenAI and LAION-400M; accuracy, ECE, NLL on six sets)
=========================  ===================================================================

Entry points: :func:`load_references` (a shipped name, a path, or a list of them) ->
:class:`References`; :func:`lookup` ``(refs, model, quantizer, metric, dataset) ->
ReferenceValue | None``. Model, quantizer and dataset names match the reference's own names or
any of their aliases (timm / OpenCLIP tags, ``ImageNet-1k`` for ``imagenet1k``), case-insensitive,
with a ``timm:`` / ``open_clip:`` scheme ignored. Values are in the library's units: fractions in
[0, 1] for accuracy, ECE, AUROC, AUPR and FPR@95 (a published ``82.700`` % is ``0.827``), nats
for NLL; :attr:`ReferenceValue.published` keeps the number as printed.

:func:`suite_references` matches a set to a suite's own names for the report (the only place
where matching rules live). A published quantizer whose bit width the source does not state
(``bouguerra_2025``'s light-QAT rows) lists the library's method among its aliases (``Basic
QAT: [qat]``) and matches every quantizer of that method without method options, at any bit
width, marked :data:`BITS_NOT_STATED` ("bit width not stated by the paper") in the report.

Errors in a user's file are one :class:`~pytest_qrel.errors.SpecError` naming the file, the line
(CSV) or entry (YAML), the field and the fix; an unknown shipped name is an
:class:`~pytest_qrel.errors.UnknownNameError` with a "did you mean".
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import SpecError, UnknownNameError
from ..options import is_int, is_number, reject_unknown
from ..registry import Registry

FORMAT = "pytest-qrel-references"
FORMAT_VERSION = 1
KEYS = ("model", "quantizer", "metric", "dataset")
UNITS = {"percent": 0.01, "fraction": 1.0, "nats": 1.0}
"""Published unit -> factor to the library's unit."""
KINDS = ("value", "delta")

_HERE = Path(__file__).parent
REFERENCE_SETS: Registry[tuple[Path, str | None]] = Registry("reference set")
"""Shipped reference sets: name -> (file, only the values whose ``source`` is this, or None)."""
REFERENCE_SETS.add("kuang_wong_2025", (_HERE / "kuang_wong_2025.yaml", None), description="Kuang & Wong: Table 1 and abstract")
REFERENCE_SETS.add("kuang_wong_2025_table1", (_HERE / "kuang_wong_2025.yaml", "Kuang & Wong, Table 1"), description="Kuang & Wong: Table 1")
REFERENCE_SETS.add("bouguerra_2025", (_HERE / "bouguerra_2025.yaml", None), description="Bouguerra et al.: light QAT ViT-B/32 table")


@dataclass(frozen=True)
class ReferenceValue:
    """One published number.

    ``value`` is in the library's unit (fraction / nats, see :data:`UNITS`); ``published`` the
    number as the source prints it, in ``unit``. ``kind`` is ``value`` (the metric itself) or
    ``delta`` (the change from FP32 to ``quantizer``, signed so that positive is worse, as the
    project's deltas; ``relative`` True for % of FP32, False for absolute, None where the source
    does not say). ``statistic`` says what the number aggregates (``mean``, ``single``...) over
    ``seeds``; ``std`` its spread when published. ``score`` is the OOD score of an OOD metric.
    """

    model: str
    quantizer: str
    metric: str
    dataset: str
    value: float
    published: str
    unit: str
    source: str
    kind: str = "value"
    relative: bool | None = None
    score: str | None = None
    statistic: str | None = None
    seeds: tuple[int, ...] | None = None
    std: float | None = None
    note: str | None = None

    @property
    def key(self) -> tuple[str, str, str, str]:
        return (self.model, self.quantizer, self.metric, self.dataset)


@dataclass
class References:
    """A loaded reference set: its values and the aliases of its names."""

    name: str
    values: list[ReferenceValue]
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)  # key ("model"...) -> {alias folded: name}
    files: list[Path] = field(default_factory=list)
    papers: list[str] = field(default_factory=list)  # the ``paper:`` citation of each file that gives one

    def canonical(self, key: str, name: str) -> str:
        """The reference's own spelling of ``name`` (an alias or the name itself), else ``name``."""
        folded = _fold(name)
        return self.aliases.get(key, {}).get(folded, name)

    def __len__(self) -> int:
        return len(self.values)


def _fold(name: str) -> str:
    name = str(name).strip()
    for scheme in ("timm:", "open_clip:", "hf-hub:"):
        if name.lower().startswith(scheme):
            name = name[len(scheme):]
    return name.casefold()


def lookup(refs: References, model: str, quantizer: str, metric: str, dataset: str, *, score: str | None = None,
           kind: str = "value") -> ReferenceValue | None:
    """The reference value for (model, quantizer, metric, dataset), or None.

    Names match the reference's names or aliases (case-insensitive, ``timm:`` / ``open_clip:``
    ignored). ``score`` narrows OOD metrics to one score (``msp``); ``kind="delta"`` asks for a
    published FP32 -> quantizer change instead of the value.
    """
    want = (_fold(refs.canonical("model", model)), _fold(refs.canonical("quantizer", quantizer)), metric,
            _fold(refs.canonical("dataset", dataset)))
    for v in refs.values:
        same = v.kind == kind and (_fold(v.model), _fold(v.quantizer), v.metric, _fold(v.dataset)) == want
        if same and (score is None or v.score is None or v.score == score):
            return v
    return None


# ---------------------------------------------------------------------------------------- loading


def load_references(spec: str | Path | Sequence[str | Path], *, base_dir: Path | None = None) -> References:
    """Load a shipped set (by name), a user's YAML / CSV file (a path, relative to ``base_dir``), or
    a list of them merged (a key defined twice is an error).

    Raises:
        UnknownNameError: a bare word that is not a shipped set.
        SpecError: a missing or invalid file (file, line or entry, field, fix).
    """
    if isinstance(spec, (list, tuple)):
        if not spec:
            raise SpecError("'references' is an empty list", fix="name a shipped set or a file")
        parts = [load_references(s, base_dir=base_dir) for s in spec]
        merged = References(name="+".join(p.name for p in parts), values=[], files=[])
        for p in parts:
            _merge(merged, p)
        return merged
    text = str(spec)
    if isinstance(spec, str) and not any(c in text for c in "/\\.$~"):
        path, only = REFERENCE_SETS.get(text)
        refs = _load_file(path)
        refs.name = text
        if only is not None:
            refs.values = [v for v in refs.values if v.source == only]
        return refs
    from ..data.paths import resolve_path
    from ..errors import DataError

    try:  # a missing file (DataError) or an unset ${VAR} (DataMissingError): the suite's field is wrong
        path = resolve_path(text, base_dir=base_dir, what="references file")
    except DataError as exc:
        raise SpecError(str(exc), field="references", fix="give the path of a YAML or CSV reference file") from None
    return _load_file(path)


def _merge(into: References, part: References) -> None:
    seen = {_identity(v) for v in into.values}
    for v in part.values:
        if _identity(v) in seen:
            raise SpecError(f"reference {v.key} ({v.kind}) is defined in two of the merged reference sets", field="references",
                            fix="keep one of them")
        into.values.append(v)
    for key, table in part.aliases.items():
        into.aliases.setdefault(key, {}).update(table)
    into.files.extend(part.files)
    into.papers.extend(p for p in part.papers if p not in into.papers)


def _identity(v: ReferenceValue) -> tuple[Any, ...]:
    return (*(_fold(x) for x in (v.model, v.quantizer, v.dataset)), v.metric, v.kind, v.score)


def _load_file(path: Path) -> References:
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _from_yaml(path)
    if suffix == ".csv":
        return _from_csv(path)
    raise SpecError("a references file must end in .yaml, .yml or .csv", file=path, field="references",
                    fix="save the reference values as YAML or CSV (docs/references.md)")


class _Entry:
    """Builds :class:`ReferenceValue` objects from raw fields, raising located SpecErrors."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.values: list[ReferenceValue] = []
        self.seen: dict[tuple[Any, ...], str] = {}

    def error(self, where: str, fld: str | None, problem: str, fix: str | None = None, line: int | None = None) -> SpecError:
        return SpecError(f"{where}: {problem}" if where else problem, file=self.path, line=line, field=fld, fix=fix)

    def _value(self, raw: Mapping[str, Any], where: str, line: int | None, *, metric: str, unit: str, kind: str,
               fraction: bool) -> tuple[float, str]:
        """``(value in the library's units, the number as published)``."""
        number = raw.get("value")
        published = str(raw.get("published", number)).strip()
        if isinstance(number, str):
            try:
                number = float(number)
            except ValueError:
                raise self.error(where, "value", f"'{number}' is not a number", None, line) from None
        if not is_number(number):
            raise self.error(where, "value", f"value must be a finite number, got {number!r}", None, line)
        value = float(number) * UNITS[unit]
        if kind == "value" and fraction and not 0.0 <= value <= 1.0:
            raise self.error(where, "value", f"{metric} {published} {unit} is outside [0, 1] as a fraction",
                             "check the number and its unit (percent or fraction)", line)
        if kind == "value" and metric == "nll" and value < 0:
            raise self.error(where, "value", f"an NLL cannot be negative, got {published}", None, line)
        return value, published

    def _details(self, raw: Mapping[str, Any], where: str, line: int | None, unit: str) -> tuple[float | None, bool | None, tuple[int, ...] | None]:
        """``(std in the library's units, relative, seeds)``, each None when absent."""
        std = raw.get("std")
        if std is not None:
            if not is_number(std) or std < 0:
                raise self.error(where, "std", f"std must be a number >= 0, got {std!r}", None, line)
            std = float(std) * UNITS[unit]
        relative = raw.get("relative")
        if relative is not None and not isinstance(relative, bool):
            raise self.error(where, "relative", f"relative must be true, false or absent, got {relative!r}", None, line)
        seeds = raw.get("seeds")
        if seeds is not None:
            if not isinstance(seeds, (list, tuple)) or not all(is_int(s) for s in seeds):
                raise self.error(where, "seeds", f"seeds must be a list of integers, got {seeds!r}", None, line)
            seeds = tuple(seeds)
        return std, relative, seeds

    def add(self, raw: Mapping[str, Any], where: str, line: int | None = None) -> None:
        from ..metrics import METRICS

        def optional(name: str) -> str | None:
            value = raw.get(name)
            if value is None or (isinstance(value, str) and not value.strip()):
                return None
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise self.error(where, name, f"'{name}' must be a name, got {value!r}", None, line)
            return str(value).strip()

        def text(name: str) -> str:
            value = optional(name)
            if value is None:
                raise self.error(where, name, f"'{name}' is missing", f"give the {name} of every value", line)
            return value

        model, quantizer, dataset = (text(k) for k in ("model", "quantizer", "dataset"))
        metric = text("metric")
        if metric not in METRICS:
            raise self.error(where, "metric", str(UnknownNameError("metric", metric, METRICS.names())), "use one of the known metrics", line)
        meta = METRICS.meta(metric)
        unit = text("unit")
        if unit not in UNITS:
            raise self.error(where, "unit", str(UnknownNameError("unit", unit, list(UNITS))), None, line)
        if meta.get("unit") == "nats" and unit != "nats":
            raise self.error(where, "unit", f"{metric} is published in nats, not '{unit}'", "write unit: nats", line)
        if meta.get("fraction") and unit == "nats":
            raise self.error(where, "unit", f"{metric} is a fraction, not nats", "write unit: percent or fraction", line)
        kind = optional("kind") or "value"
        if kind not in KINDS:
            raise self.error(where, "kind", str(UnknownNameError("kind", kind, list(KINDS))), None, line)
        value, published = self._value(raw, where, line, metric=metric, unit=unit, kind=kind, fraction=bool(meta.get("fraction")))
        std, relative, seeds = self._details(raw, where, line, unit)
        source = text("source")
        entry = ReferenceValue(
            model=model, quantizer=quantizer, metric=metric, dataset=dataset, value=value, published=published, unit=unit,
            source=source, kind=kind, relative=relative, score=optional("score"),
            statistic=optional("statistic"), seeds=seeds, std=std, note=optional("note"),
        )
        ident = _identity(entry)
        if ident in self.seen:
            raise self.error(where, None, f"{entry.key} ({kind}) is given twice (also {self.seen[ident]})", "keep one", line)
        self.seen[ident] = where or f"line {line}"
        self.values.append(entry)


def _from_csv(path: Path) -> References:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the references file ({exc})", file=path, fix="save it as UTF-8 CSV") from None
    rows = list(csv.reader(line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")))
    if not rows:
        raise SpecError("the references file is empty", file=path, fix="write a header line: model,quantizer,metric,dataset,value,unit,source")
    lines = [i + 1 for i, line in enumerate(text.splitlines()) if line.strip() and not line.lstrip().startswith("#")]
    header = [h.strip() for h in rows[0]]
    missing = [k for k in (*KEYS, "value", "unit", "source") if k not in header]
    if missing:
        raise SpecError(f"the header lacks column(s) {', '.join(missing)}", file=path, line=lines[0],
                        fix="the header needs model,quantizer,metric,dataset,value,unit,source")
    known = {*KEYS, "value", "unit", "source", "kind", "relative", "score", "statistic", "std", "note", "published"}
    reject_unknown(header, known, kind="column", fail=lambda key, problem, fix: SpecError(problem, file=path, line=lines[0], fix=fix))
    entries = _Entry(path)
    for lineno, row in zip(lines[1:], rows[1:]):
        if len(row) != len(header):
            raise SpecError(f"{len(row)} fields where the header has {len(header)}", file=path, line=lineno, fix="one field per column")
        raw: dict[str, Any] = {h: (c.strip() or None) for h, c in zip(header, row)}
        if raw.get("relative") is not None:
            raw["relative"] = {"true": True, "false": False}.get(raw["relative"].lower(), raw["relative"])
        if raw.get("std") is not None:
            try:
                raw["std"] = float(raw["std"])
            except ValueError:
                pass
        entries.add(raw, "", line=lineno)
    return References(name=str(path), values=entries.values, files=[path])


def _from_yaml(path: Path) -> References:
    import yaml  # type: ignore[import-untyped]

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"cannot read the references file ({exc})", file=path, fix="save it as UTF-8 YAML") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise SpecError(f"invalid YAML: {getattr(exc, 'problem', exc)}", file=path, line=mark.line + 1 if mark else None,
                        fix="fix the YAML syntax") from None
    if not isinstance(doc, Mapping):
        raise SpecError("a references file is a mapping with 'tables' and / or 'values'", file=path, fix="see docs/references.md")
    if doc.get("format", FORMAT) != FORMAT or doc.get("version", FORMAT_VERSION) != FORMAT_VERSION:
        raise SpecError(f"format '{doc.get('format')}' version {doc.get('version')!r} is not {FORMAT} version {FORMAT_VERSION}",
                        file=path, field="format", fix=f"write format: {FORMAT} and version: {FORMAT_VERSION}")
    reject_unknown(doc, ("format", "version", "name", "paper", "source", "names", "tables", "values"), kind="top-level field",
                   fail=lambda key, problem, fix: SpecError(problem, file=path, field=key, fix=fix))
    entries = _Entry(path)
    default_source = doc.get("source")
    for t, table in enumerate(doc.get("tables") or []):
        _table(entries, table, f"tables[{t}]", default_source)
    for i, raw in enumerate(doc.get("values") or []):
        if not isinstance(raw, Mapping):
            raise entries.error(f"values[{i}]", None, "each value is a mapping (model, quantizer, metric, dataset, value, unit, source)")
        entries.add({"source": default_source, **raw}, f"values[{i}]")
    if not entries.values:
        raise SpecError("the references file holds no values", file=path, fix="add 'tables' or 'values' (docs/references.md)")
    paper = doc.get("paper")
    return References(name=str(doc.get("name") or path), values=entries.values, aliases=_aliases(entries, doc.get("names")), files=[path],
                      papers=[str(paper)] if paper else [])


_TABLE_FIELDS = {"source", "unit", "kind", "relative", "score", "statistic", "seeds", "note", "decimals", "rows", "columns", "values",
                 *KEYS}


def _table(entries: _Entry, table: Any, where: str, default_source: Any) -> None:
    """Expand one table: fixed keys, a row key, one column key with its names, and a row of numbers per row label."""
    if not isinstance(table, Mapping):
        raise entries.error(where, None, "a table is a mapping (rows, columns, values and the fixed keys)")
    reject_unknown(table, _TABLE_FIELDS, kind="table field", fail=lambda key, problem, fix: entries.error(where, key, problem, fix))
    row_key, columns = table.get("rows"), table.get("columns")
    if row_key not in KEYS:
        raise entries.error(where, "rows", f"'rows' must name what the row labels are, one of {', '.join(KEYS)}; got {row_key!r}")
    if not (isinstance(columns, Mapping) and len(columns) == 1 and next(iter(columns)) in KEYS and next(iter(columns)) != row_key):
        raise entries.error(where, "columns", f"'columns' must be {{<key>: [names]}} with a key other than '{row_key}' from {', '.join(KEYS)}")
    col_key, col_names = next(iter(columns.items()))
    fixed = [k for k in KEYS if k not in (row_key, col_key)]
    for k in fixed:
        if table.get(k) is None:
            raise entries.error(where, k, f"the table fixes '{k}' (neither rows nor columns), so give it", f"add {k}: <name>")
    rows = table.get("values")
    if not isinstance(rows, Mapping) or not rows:
        raise entries.error(where, "values", "'values' maps each row label to its numbers, one per column")
    decimals = table.get("decimals")
    for label, numbers in rows.items():
        if not isinstance(numbers, (list, tuple)) or len(numbers) != len(col_names):
            raise entries.error(where, f"values.{label}", f"{len(numbers) if isinstance(numbers, (list, tuple)) else 'not a list of'} numbers "
                                f"for {len(col_names)} columns ({', '.join(map(str, col_names))})")
        for col, number in zip(col_names, numbers):
            if number is None:  # not reported
                continue
            raw = {k: table.get(k) for k in ("unit", "kind", "relative", "score", "statistic", "seeds", "note")}
            raw.update({k: table[k] for k in fixed})
            raw.update({row_key: label, col_key: col, "value": number, "source": table.get("source", default_source)})
            if isinstance(decimals, int) and isinstance(number, (int, float)) and not isinstance(number, bool):
                raw["published"] = f"{number:.{decimals}f}"
            entries.add(raw, f"{where}.values.{label}[{col}]")


def _aliases(entries: _Entry, names: Any) -> dict[str, dict[str, str]]:
    """``names: {model: {<name>: [aliases]}, ...}`` -> folded alias -> name, per key."""
    out: dict[str, dict[str, str]] = {}
    if names is None:
        return out
    if not isinstance(names, Mapping) or not set(names) <= {"model", "quantizer", "dataset"}:
        raise entries.error("names", "names", "'names' maps model / quantizer / dataset to {name: [aliases]}")
    for key, table in names.items():
        if not isinstance(table, Mapping):
            raise entries.error("names", f"names.{key}", "give {name: [aliases]}")
        for name, aliases in table.items():
            if not isinstance(aliases, (list, tuple)) or not all(isinstance(a, str) for a in aliases):
                raise entries.error("names", f"names.{key}.{name}", "aliases are a list of strings")
            for alias in (name, *aliases):
                out.setdefault(key, {})[_fold(alias)] = str(name)
    return out


def names_in(refs: References, key: str) -> list[str]:
    """The distinct names of ``key`` (``model``, ``quantizer``, ``metric``, ``dataset``) in ``refs``, in file order."""
    return list(dict.fromkeys(getattr(v, key) for v in refs.values))


def shipped() -> Iterable[str]:
    """The names of the shipped reference sets."""
    return REFERENCE_SETS.names()


# ------------------------------------------------------------------------------ a suite's references


def _model_names(spec: Any) -> list[str]:
    """What a suite model may be called in a reference set: its name, its source (``timm:<tag>``)
    and the file name of its ``checkpoint`` (the paper's ``.npz`` files are aliases)."""
    names = [spec.name, spec.source]
    checkpoint = (spec.options or {}).get("checkpoint")
    if isinstance(checkpoint, str) and checkpoint:
        names.append(Path(checkpoint.replace("\\", "/")).name)
    return names


BITS_NOT_STATED = "bit width not stated by the paper"
"""What the report says beside a published value matched by method (:func:`suite_references`)."""


def _quantizer_matches(refs: References, quantizers: Mapping[str, Any]) -> dict[str, list[tuple[str, bool]]]:
    """Folded reference quantizer -> ``[(suite quantizer, matched by name)]`` (FP32 by name).

    A suite quantizer matches by its name (or an alias of a reference quantizer); failing that,
    by its ``method`` where the method's name is an alias of a reference quantizer and the
    quantizer sets no method ``options`` (a step count or a distillation loss is another recipe
    than the published one). The second kind matches at every bit width."""
    from ..spec.schema import FP32

    out: dict[str, list[tuple[str, bool]]] = {_fold(FP32): [(FP32, True)]}
    known = {_fold(v.quantizer) for v in refs.values}
    for name, spec in quantizers.items():
        by_name = _fold(refs.canonical("quantizer", name))
        if by_name in known:
            out.setdefault(by_name, []).append((name, True))
            continue
        method = getattr(spec, "method", None)
        if not method or getattr(spec, "options", None):
            continue
        canon = refs.canonical("quantizer", method)
        if _fold(canon) in known and _fold(canon) != _fold(method):  # an alias, not a reference name spelled like the method
            out.setdefault(_fold(canon), []).append((name, False))
    return out


def suite_references(suite: Any) -> dict[str, Any]:
    """The values of ``suite.references`` that belong to the suite, as plain data for the report:
    ``{"sets": [names], "papers": [citations], "sources": [tables cited], "values": [...]}``,
    each value a dict of :class:`ReferenceValue`'s fields with ``model``, ``quantizer`` and
    ``dataset`` in the suite's names (``reference_model`` and ``reference_quantizer`` keep the
    reference's), ``id_dataset`` the ID set of the value's model (its scenario's), ``dataset``
    the ID set's name for the reference's ID dataset and ``mean(ood)`` for its ``ood_mean``, and
    ``bits_stated`` / ``bits_note`` (below). One published value may appear under several suite
    models and quantizers.

    The matching rules (all of them live here; the report only renders the result):

    - **Model**: a suite model matches a reference model by its name, its source or its
      checkpoint's file name (or an alias of the reference's). In a suite with ``scenarios:``
      each scenario's model (``vit_b32_openai@cifar10``) matches on its own.
    - **Dataset**: a value of an OOD metric (AUROC, AUPR, FPR@95) matches an OOD set of the
      scenario (by name or alias), or ``ood_mean`` its mean over the OOD sets; a value of any
      other metric (top-1, ECE, NLL...) matches the scenario whose ID set is its dataset. So a CIFAR-10 top-1 goes to the
      ``cifar10`` scenario, never to the ``cifar100`` scenario where CIFAR-10 is an OOD set.
    - **Quantizer**: by name (``FP32`` included) or alias, at the bit width the name says.
      **A published quantizer whose bit width the source does not state** (Bouguerra et al.'s
      light-QAT table) lists the library's method name among its aliases (``Basic QAT: [qat]``):
      it then matches every suite quantizer of that method that sets no method ``options``,
      at **any** bit width (``W8A8-qat``, ``W6A6-qat``, ``W4A8-qat``, ``W4A6-qat``), and the value
      carries ``bits_stated: False`` and ``bits_note`` (:data:`BITS_NOT_STATED`), which the
      report prints beside the published number. Matched by name, ``bits_stated`` is True and
      ``bits_note`` None. Declare a method alias only for such a quantizer: one whose bit width
      is published is named by its configuration (``W8A8``) instead."""
    from ..metrics import METRICS
    from ..spec.schema import MEAN_OOD

    refs = load_references(list(suite.references), base_dir=Path(suite.path).parent)
    ref_models = {_fold(v.model) for v in refs.values}
    quantizers = _quantizer_matches(refs, suite.quantizers)
    id_dataset = suite.id_dataset.name
    values = []
    for sub in (list(suite.scenarios.values()) or [suite]):
        model_of: dict[str, str] = {}
        for spec in sub.models.values():
            for name in _model_names(spec):
                canon = _fold(refs.canonical("model", name))
                if canon in ref_models:
                    model_of.setdefault(canon, spec.name)
                    break
        id_sets = {_fold(refs.canonical("dataset", sub.id_dataset.name)): sub.id_dataset.name}
        ood_sets = {_fold(refs.canonical("dataset", d)): d for d in sub.ood_datasets}
        if sub.ood_datasets:
            ood_sets["ood_mean"] = MEAN_OOD
        for v in refs.values:
            model = model_of.get(_fold(v.model))
            dataset = (ood_sets if METRICS.meta(v.metric).get("kind") == "ood" else id_sets).get(_fold(v.dataset))
            if model is None or dataset is None:
                continue
            for quantizer, by_name in quantizers.get(_fold(refs.canonical("quantizer", v.quantizer)), []):
                row = {k: getattr(v, k) for k in ReferenceValue.__dataclass_fields__}
                row.update(model=model, quantizer=quantizer, dataset=dataset, reference_model=v.model, reference_quantizer=v.quantizer,
                           id_dataset=sub.id_dataset.name, bits_stated=by_name, bits_note=None if by_name else BITS_NOT_STATED,
                           seeds=list(v.seeds) if v.seeds is not None else None)
                values.append(row)
    return {"sets": list(suite.references), "id_dataset": id_dataset, "papers": list(refs.papers),
            "sources": list(dict.fromkeys(v["source"] for v in values)), "values": values}
