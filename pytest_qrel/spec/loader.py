"""Load a suite YAML file into a validated :class:`~pytest_qrel.spec.schema.Suite`.

Validation happens here, once, so that every later stage can trust the suite: each error names
the file, the line, the field and the fix. Loading imports neither torch nor scikit-learn, so
pytest collection stays fast.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import SpecError, UnknownNameError
from ..options import Option, anything, boolean, integer, mapping, parse_options, reject_unknown, value_problem
from .checks import parse_check, parse_confidence
from .schema import (
    FP32,
    HELDOUT,
    INCONCLUSIVE_POLICIES,
    MEAN_OOD,
    SCHEMA_VERSION,
    BootstrapSpec,
    CalibrationSpec,
    CheckSpec,
    DatasetSpec,
    Location,
    ModelSpec,
    QuantizerSpec,
    Suite,
    mean_members,
)
from .yamlsrc import LineDict, LineList, kind_of, load_yaml

TOP_LEVEL_KEYS = (
    "version", "name", "description", "models", "datasets", "quantizers", "scores", "checks", "conventions", "batch_size",
    "diagnostics", "confidence", "inconclusive", "bootstrap", "scenarios", "report", "references",
)
# Names appear in pytest ids "model[quantizer-dataset]::check"; the scheduler splits on the last
# "-", so dataset names may not contain one.
# Matched with ``fullmatch``: ``re.match`` with ``$`` also accepts a trailing newline ("vit\n"),
# which would reach file names (baselines/<suite>/<model>.json).
_NAME = re.compile(r"[A-Za-z0-9_.-]+")  # '+' is reserved for post-hoc steps (W8A8+temperature)
_DATASET_NAME = re.compile(r"[A-Za-z0-9_.]+")
_BITS_IN_NAME = re.compile(r"^W(\d+)A(\d+|16|32)?")
MAX_NAME_LENGTH = 100
"""Names become file names (``baselines/<suite>/<model>.json``, ``<model>.<digest>.npz`` and their
temp files, which add up to about 75 characters) and a file name may have 255 bytes."""


class _Ctx:
    def __init__(self, path: Path) -> None:
        self.path = path

    def err(self, problem: str, *, node: Any = None, key: Any = None, line: int | None = None, field: str | None = None, fix: str | None = None) -> SpecError:
        if line is None and node is not None:
            if key is not None and isinstance(node, LineDict):
                line = node.line_of(key)
            elif isinstance(key, int) and isinstance(node, LineList):
                line = node.line_of(key)
            else:
                line = getattr(node, "line", None)
        return SpecError(problem, file=self.path, line=line, field=field, fix=fix)

    def loc(self, node: Any, key: Any = None) -> Location:
        line = None
        if isinstance(node, LineDict):
            line = node.line_of(key) if key is not None else node.line
        elif isinstance(node, LineList):
            line = node.line_of(key) if key is not None else node.line
        return Location(str(self.path), line)

    def section(self, node: LineDict, table: dict[str, Option], field: str) -> dict[str, Any]:
        """``node``'s keys checked against ``table`` (:func:`pytest_qrel.options.parse_options`),
        every error located at the key's line."""
        return parse_options(node, table, kind="key", fail=lambda key, problem, fix: self.err(
            problem, node=node, key=key, field=f"{field}.{key}" if field else str(key), fix=fix))

    def mapping(self, node: Any, field: str, fix: str) -> LineDict:
        if not isinstance(node, dict):
            raise self.err(f"expected a mapping, got {_typename(node)}", node=node, field=field, fix=fix)
        return node  # type: ignore[return-value]

    def unknown_keys(self, node: LineDict, allowed: tuple[str, ...] | set[str], field: str) -> None:
        """A key of ``node`` not in ``allowed``: the one unknown-name message, at the key's line."""
        reject_unknown(node, allowed, kind="key", fail=lambda key, problem, fix: self.err(
            problem, node=node, key=key, field=f"{field}.{key}" if field else str(key), fix=fix))


def _typename(x: Any) -> str:
    return kind_of(x)


def _check_name(ctx: _Ctx, name: Any, node: Any, key: Any, field: str, pattern: re.Pattern[str] = _NAME) -> str:
    if isinstance(name, str) and len(name) > MAX_NAME_LENGTH:
        short = f"{name[:20]}...{name[-8:]}"
        raise ctx.err(
            f"name '{short}' has {len(name)} characters, more than {MAX_NAME_LENGTH}", node=node, key=key, field=field.replace(name, short),
            fix=f"shorten it to at most {MAX_NAME_LENGTH} characters: names become file names under baselines/",
        )
    if not isinstance(name, str) or not pattern.fullmatch(name):
        allowed = "letters, digits, _ and ." if pattern is _DATASET_NAME else "letters, digits, _ . and -"
        raise ctx.err(f"invalid name {name!r}", node=node, key=key, field=field, fix=f"use only {allowed}")
    if name.startswith("."):  # names become file names (baselines/<suite>/<model>.json): no '..', no hidden files
        raise ctx.err(f"invalid name {name!r}", node=node, key=key, field=field, fix="start it with a letter, a digit or _")
    return name


def _source(ctx: _Ctx, raw: Any, node: Any, key: Any, field: str) -> str:
    if not isinstance(raw, str) or ":" not in raw or raw.startswith(":") or raw.endswith(":"):
        raise ctx.err(f"source must be '<scheme>:<arg>', got {raw!r}", node=node, key=key, field=field, fix="write e.g. 'embedded:digits' or 'timm:deit_small_patch16_224'")
    return raw


def _known_source(ctx: _Ctx, validate: Any, spec: LineDict, field: str, options: dict[str, Any]) -> None:
    """Scheme, name and options of ``spec['source']``, checked now (a collection error at file:line)
    rather than once per item at run time; ``validate`` is ``validate_model_source`` or
    ``validate_dataset_source`` (no torch: names come from the registries' metadata)."""
    from ..errors import QrelError

    for part, opts in (("source", None), ("options", options)):
        try:
            validate(spec["source"], opts)
        except QrelError as exc:
            where = part if part in spec else "source"
            raise ctx.err(str(exc), node=spec, key=where, field=f"{field}.{part}") from None


def _int(ctx: _Ctx, raw: Any, node: Any, key: Any, field: str, lo: int, hi: int | None = None) -> int:
    """``raw`` if it is an integer in ``[lo, hi]`` (never a bool); else the one bad-value message of
    :mod:`pytest_qrel.options`, naming the last part of ``field``."""
    option = integer(None, lo=lo, hi=hi)
    if not option.valid(raw):
        name = field.rpartition(".")[2]
        raise ctx.err(value_problem(name, raw, option.expect, "key"), node=node, key=key, field=field, fix=f"use {option.expect}")
    return int(raw)


def _models(ctx: _Ctx, raw: Any) -> dict[str, ModelSpec]:
    node = ctx.mapping(raw, "models", "write e.g. 'models: {vit_digits: {source: embedded:digits_vit}}'")
    if not node:
        raise ctx.err("no models given", node=node, field="models", fix="name at least one model")
    out = {}
    for name, spec in node.items():
        _check_name(ctx, name, node, name, f"models.{name}")
        if isinstance(spec, str):
            spec = LineDict(source=spec)
            spec.line = node.line_of(name)
        spec = ctx.mapping(spec, f"models.{name}", "write '{source: <scheme>:<arg>}'")
        ctx.unknown_keys(spec, ("source", "options"), f"models.{name}")
        if "source" not in spec:
            raise ctx.err("missing 'source'", node=spec, field=f"models.{name}.source", fix="add e.g. 'source: embedded:digits_vit'")
        options = spec.get("options") or {}
        if not isinstance(options, dict):
            raise ctx.err("'options' must be a mapping", node=spec, key="options", field=f"models.{name}.options")
        source = _source(ctx, spec["source"], spec, "source", f"models.{name}.source")
        from ..models.base import validate_model_source

        _known_source(ctx, validate_model_source, spec, f"models.{name}", dict(options))
        out[name] = ModelSpec(name, source, dict(options), ctx.loc(node, name))
    return out


def _dataset(ctx: _Ctx, raw: Any, parent: Any, key: Any, field: str, name: str | None = None) -> DatasetSpec:
    if isinstance(raw, str) and name is not None:
        raw_map = LineDict(source=raw)
        raw_map.line = parent.line_of(key) if hasattr(parent, "line_of") else None
        raw = raw_map
    spec = ctx.mapping(raw, field, "write '{name: <name>, source: <scheme>:<arg>}'")
    ctx.unknown_keys(spec, ("name", "source", "options"), field)
    name = spec.get("name", name)
    if name is None:
        raise ctx.err("missing 'name'", node=spec, field=f"{field}.name", fix="add e.g. 'name: textures'")
    _check_name(ctx, name, spec, "name", f"{field}.name", _DATASET_NAME)
    if "source" not in spec:
        raise ctx.err("missing 'source'", node=spec, field=f"{field}.source", fix="add e.g. 'source: embedded:textures'")
    options = spec.get("options") or {}
    if not isinstance(options, dict):
        raise ctx.err("'options' must be a mapping", node=spec, key="options", field=f"{field}.options")
    source = _source(ctx, spec["source"], spec, "source", f"{field}.source")
    from ..data.base import validate_dataset_source

    _known_source(ctx, validate_dataset_source, spec, field, dict(options))
    return DatasetSpec(name, source, dict(options), ctx.loc(spec))


def _dataset_list(ctx: _Ctx, node: LineDict, key: str, taken: set[str]) -> dict[str, DatasetSpec]:
    raw = node.get(key) or []
    if isinstance(raw, dict):
        entries = [(_dataset(ctx, v, raw, k, f"datasets.{key}.{k}", name=str(k)), k) for k, v in raw.items()]
    elif isinstance(raw, list):
        entries = [(_dataset(ctx, v, raw, i, f"datasets.{key}[{i}]"), i) for i, v in enumerate(raw)]
    else:
        raise ctx.err(f"'{key}' must be a list or a mapping, got {_typename(raw)}", node=node, key=key, field=f"datasets.{key}")
    out: dict[str, DatasetSpec] = {}
    for ds, k in entries:
        if ds.name in out or ds.name in taken or ds.name in ("ood", "id", "mean", "shifted", HELDOUT):
            raise ctx.err(f"dataset name '{ds.name}' is used twice or reserved", node=raw, key=k, field=f"datasets.{key}", fix="give each dataset a unique name")
        out[ds.name] = ds
    return out


def _pairs(ctx: _Ctx, node: LineDict, labelled: list[str]) -> dict[str, tuple[str, str]]:
    raw = node.get("pairs") or {}
    raw = ctx.mapping(raw, "datasets.pairs", "write 'pairs: {<name>: {common: <set>, counter: <set>}}'")
    out = {}
    for name, pair in raw.items():
        field = f"datasets.pairs.{name}"
        _check_name(ctx, name, raw, name, field, _DATASET_NAME)
        pair = ctx.mapping(pair, field, "write '{common: <set>, counter: <set>}'")
        ctx.unknown_keys(pair, ("common", "counter"), field)
        members = []
        for role in ("common", "counter"):
            member = pair.get(role)
            if member not in labelled:
                raise ctx.err(
                    f"'{role}' must name the ID set or a shifted set, got {member!r}", node=pair, key=role if role in pair else None,
                    field=f"{field}.{role}", fix=f"use one of {', '.join(labelled)}",
                )
            members.append(member)
        out[name] = (members[0], members[1])
    return out


def _datasets(ctx: _Ctx, raw: Any) -> tuple[DatasetSpec, dict[str, DatasetSpec], dict[str, DatasetSpec], dict[str, tuple[str, str]]]:
    node = ctx.mapping(raw, "datasets", "write 'datasets: {id: {...}, ood: [...]}'")
    ctx.unknown_keys(node, ("id", "ood", "shifted", "pairs"), "datasets")
    if "id" not in node:
        raise ctx.err("missing the in-distribution set 'id'", node=node, field="datasets.id", fix="add 'id: {name: ..., source: ...}'")
    id_ds = _dataset(ctx, node["id"], node, "id", "datasets.id")
    ood = _dataset_list(ctx, node, "ood", {id_ds.name})
    shifted = _dataset_list(ctx, node, "shifted", {id_ds.name, *ood})
    pairs = _pairs(ctx, node, [id_ds.name, *shifted])
    return id_ds, ood, shifted, pairs


QUANTIZER_KEYS: dict[str, Option] = {
    "method": anything(),  # checked by the method registry (_validated_method)
    "weight_bits": anything(),  # default from the name (W4A4): _bits
    "act_bits": anything(),
    "calibration": mapping("a mapping like {samples: 256, seed: 0}"),
    "options": mapping("a mapping of the method's options"),
    "verify": boolean(False),
    "allow_float_paths": boolean(False),
}
"""The keys of one ``quantizers:`` entry."""

CALIBRATION_KEYS: dict[str, Option] = {
    "samples": integer(256, lo=1),
    "seed": integer(0, lo=0),
    "seeds": anything(),  # a list of distinct integers >= 0, each located: _seeds
    "draw": anything(),  # a registered draw: checked against CALIBRATION_DRAWS
    "data": anything(),  # a dataset source (imagetext:...): _calibration_data
}
"""The keys of ``quantizers.<name>.calibration``."""


def _quantizers(ctx: _Ctx, raw: Any) -> dict[str, QuantizerSpec]:
    if raw is None:
        return {}
    node = ctx.mapping(raw, "quantizers", "write e.g. 'quantizers: {W4A4: {method: minmax, weight_bits: 4, act_bits: 4}}'")
    out = {}
    for name, spec in node.items():
        field = f"quantizers.{name}"
        _check_name(ctx, name, node, name, field)
        if name == FP32:
            raise ctx.err("'FP32' is reserved for the unquantized reference", node=node, key=name, field=field, fix="remove it: FP32 is always part of a suite")
        if isinstance(spec, str):
            spec = LineDict(method=spec)
            spec.line = node.line_of(name)
        out[name] = _quantizer(ctx, node, name, ctx.mapping(spec, field, "write '{method: minmax, weight_bits: 4, act_bits: 4}'"))
    return out


def _quantizer(ctx: _Ctx, node: LineDict, name: str, spec: LineDict) -> QuantizerSpec:
    field = f"quantizers.{name}"
    values = ctx.section(spec, QUANTIZER_KEYS, field)
    if not isinstance(spec.get("method"), str):
        raise ctx.err("missing 'method'", node=spec, field=f"{field}.method", fix="add e.g. 'method: minmax'")
    wb, ab = _bits(ctx, name, spec)
    cal_node = spec.get("calibration") or LineDict()
    cal = _calibration(ctx, cal_node, f"{field}.calibration")
    options = spec.get("options") or {}
    _validated_method(ctx, node, name, spec, wb, ab, cal, cal_node)
    return QuantizerSpec(name, spec["method"], wb, ab, cal, dict(options), ctx.loc(node, name), values["verify"], values["allow_float_paths"])


def _bits(ctx: _Ctx, name: str, spec: LineDict) -> tuple[int, int | None]:
    """``(weight_bits, act_bits)``: given, or read from a name like ``W4A4`` / ``W8A16`` (16 and 32
    activation bits mean floating point: None)."""
    field = f"quantizers.{name}"
    m = _BITS_IN_NAME.match(name)
    from_name = (int(m[1]), int(m[2]) if m[2] else None) if m else (None, None)
    wb = spec.get("weight_bits", from_name[0])
    if wb is None:
        raise ctx.err("missing 'weight_bits'", node=spec, field=f"{field}.weight_bits", fix="add e.g. 'weight_bits: 4' (or name the quantizer like W4A4)")
    wb = _int(ctx, wb, spec, "weight_bits", f"{field}.weight_bits", 2, 8)
    ab = spec.get("act_bits", from_name[1])
    if ab in (16, 32) and not isinstance(ab, bool):
        return wb, None  # floating-point activations
    return wb, (None if ab is None else _int(ctx, ab, spec, "act_bits", f"{field}.act_bits", 2, 8))


def _calibration(ctx: _Ctx, node: LineDict, field: str) -> CalibrationSpec:
    from ..calibration_draw import CALIBRATION_DRAWS, DEFAULT_DRAW

    values = ctx.section(node, CALIBRATION_KEYS, field)
    if "seed" in node and "seeds" in node:
        raise ctx.err("give either 'seed' or 'seeds'", node=node, key="seeds", field=field, fix="e.g. 'seeds: [0, 13, 37]'")
    seeds = _seeds(ctx, node, field) if "seeds" in node else ()
    draw = node.get("draw", DEFAULT_DRAW)
    if not isinstance(draw, str) or draw not in CALIBRATION_DRAWS:
        raise ctx.err(str(UnknownNameError("calibration draw", str(draw), CALIBRATION_DRAWS.names())), node=node,
                      key="draw", field=f"{field}.draw", fix=f"use one of: {', '.join(CALIBRATION_DRAWS.names())}")
    return CalibrationSpec(samples=values["samples"], seed=seeds[0] if seeds else values["seed"], seeds=seeds if len(seeds) > 1 else (), draw=draw,
                           data=_calibration_data(ctx, node, field))


def _calibration_data(ctx: _Ctx, node: LineDict, field: str) -> str | None:
    """``calibration.data``: a dataset source string, checked like a dataset's (no torch)."""
    if "data" not in node:
        return None
    source = _source(ctx, node["data"], node, "data", f"{field}.data")
    from ..data.base import validate_dataset_source
    from ..errors import QrelError

    try:
        validate_dataset_source(source, None)
    except QrelError as exc:
        raise ctx.err(str(exc), node=node, key="data", field=f"{field}.data") from None
    return source


def _seeds(ctx: _Ctx, node: LineDict, field: str) -> tuple[int, ...]:
    raw = node["seeds"]
    if not isinstance(raw, list) or not raw:
        raise ctx.err("'seeds' must be a non-empty list of integers", node=node, key="seeds", field=f"{field}.seeds", fix="e.g. 'seeds: [0, 13, 37]'")
    seeds = tuple(_int(ctx, x, raw, i, f"{field}.seeds[{i}]", 0) for i, x in enumerate(raw))
    if len(set(seeds)) != len(seeds):
        raise ctx.err("'seeds' repeats a seed", node=node, key="seeds", field=f"{field}.seeds", fix="list each seed once")
    return seeds


def _validated_method(
    ctx: _Ctx, node: LineDict, name: str, spec: LineDict, wb: int, ab: int | None, cal: CalibrationSpec, cal_node: LineDict,
) -> None:
    """The method, its options and the bits, checked by the method's own typed options (no torch);
    its error is located at the line of the key it names."""
    from ..errors import QuantOptionError
    from ..quantize import validate_quantizer
    from .quantizers import SETTINGS, located_error

    options = spec.get("options") or {}
    try:
        validate_quantizer(spec["method"], wb, ab, options, seed=cal.seed)
    except UnknownNameError as exc:
        raise ctx.err(str(exc), node=spec, key="method", field=f"quantizers.{name}.method", fix="use one of the known methods") from None
    except QuantOptionError as exc:
        if exc.option in SETTINGS:
            line = spec.line_of(exc.option) if exc.option in spec else ctx.loc(node, name).line
        elif exc.option == "calibration":
            line = cal_node.line_of("samples") if isinstance(cal_node, LineDict) and cal_node else spec.line_of("calibration")
        else:
            line = options.line_of(exc.option) if isinstance(options, LineDict) else spec.line_of("options")
        raise located_error(exc, name, file=ctx.path, line=line) from None


def _scores(ctx: _Ctx, raw: Any, node: LineDict) -> tuple[str, ...]:
    from ..scores import SCORES

    if raw is None:
        return ("msp",)
    if isinstance(raw, str):
        raw = [raw]
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ctx.err("'scores' must be a list of score names", node=node, key="scores", field="scores", fix="write e.g. 'scores: [msp, energy]'")
    for i, s in enumerate(raw):
        if s not in SCORES:
            raise ctx.err(str(UnknownNameError("score", s, SCORES.names())), node=raw, key=i, field=f"scores[{i}]", fix="use one of the known scores")
    return tuple(dict.fromkeys(raw))


def _reject_clip_scores_on_classifiers(ctx: _Ctx, suite: Suite, doc: LineDict) -> None:
    """A CLIP score (``needs: clip``: image features and text embeddings) on a model whose source only
    ever gives logits (its registry entry says ``classifier=True``: timm, the shipped ViTs) fails every
    unit of that model at run time; it is refused here, at the ``scores`` line. A ``python:`` model
    may be a CLIP: it is checked when it loads."""
    from ..models.base import model_source_meta
    from ..scores import SCORES

    clip = [s for s in suite.scores if SCORES.meta(s).get("needs") == "clip"]
    plain = [name for name, m in suite.models.items() if model_source_meta(m.source).get("classifier")]
    if clip and plain:
        model = suite.models[plain[0]]
        raise ctx.err(f"score '{clip[0]}' needs a CLIP model (image features and text embeddings); model '{plain[0]}' "
                      f"({model.source}) is a classifier", node=doc, key="scores", field="scores",
                      fix="list only msp, energy or maxlogit here, or give the CLIP models a suite of their own")


def _diagnostics(ctx: _Ctx, raw: Any, node: LineDict) -> tuple[str, ...]:
    """``diagnostics: [attention_rollout]``: a list of registered diagnostic names (each once)."""
    from ..diagnostics import DIAGNOSTICS

    if raw is None:
        return ()
    if isinstance(raw, str):
        raw = [raw]
    fix = f"write e.g. 'diagnostics: [{(DIAGNOSTICS.names() or ['attention_rollout'])[0]}]'"
    if not isinstance(raw, list) or not all(isinstance(d, str) for d in raw):
        raise ctx.err("'diagnostics' must be a list of diagnostic names", node=node, key="diagnostics", field="diagnostics", fix=fix)
    for i, d in enumerate(raw):
        if d not in DIAGNOSTICS:
            where = {"node": raw, "key": i} if isinstance(raw, LineList) else {"node": node, "key": "diagnostics"}
            raise ctx.err(str(UnknownNameError("diagnostic", d, DIAGNOSTICS.names())), **where, field=f"diagnostics[{i}]", fix=f"use one of {', '.join(DIAGNOSTICS.names())}")
    return tuple(dict.fromkeys(raw))


# ------------------------------------------------------------------------------------------- checks
# A check is validated in steps (each raises the located SpecError of the first rule it breaks):
# names first (metric, quantizers), then the bound against the metric (_BOUND_RULES, a table of
# condition -> problem, fix), then what the metric's kind asks of the datasets and the score
# (_BY_KIND). Only OOD checks without a score expand: one check per suite score.


@dataclass(frozen=True)
class _CheckSite:
    """One check under validation, with what every step reads."""

    ctx: _Ctx
    check: CheckSpec
    suite: Suite
    field: str
    meta: dict[str, Any]

    def fail(self, problem: str, fix: str | None = None, sub: str = "") -> SpecError:
        line = self.check.where.line if self.check.where else None
        return SpecError(problem, file=self.ctx.path, line=line, field=self.field + sub, fix=fix)

    @property
    def known_quantizers(self) -> list[str]:
        return [FP32, *self.suite.quantizers]


def _validate_check(ctx: _Ctx, check: CheckSpec, suite: Suite, field: str) -> list[CheckSpec]:
    """Check names against the suite; expand an OOD check without a score into one per suite score."""
    from ..metrics import METRICS

    if check.metric not in METRICS:
        line = check.where.line if check.where else None
        raise SpecError(str(UnknownNameError("metric", check.metric, METRICS.names())), file=ctx.path, line=line, field=field,
                        fix="use one of the known metrics")
    site = _CheckSite(ctx, check, suite, field, METRICS.meta(check.metric))
    _check_quantizer_names(site)
    _check_bound(site)
    return _BY_KIND.get(site.meta["kind"], _labelled_check)(site)


def _check_quantizer_names(site: _CheckSite) -> None:
    from ..posthoc import POSTHOC
    from .quantizer_ref import QuantizerRef

    check = site.check
    for q in check.quantizers:
        if q == "all":
            continue
        ref = QuantizerRef.parse(q)  # a check covers every seed of a quantizer: a seeded name is unknown here
        if ref.seed is not None or ref.base not in site.known_quantizers:
            raise site.fail(str(UnknownNameError("quantizer", ref.head, site.known_quantizers)), fix="define it under 'quantizers:' or use 'all'")
        for step in ref.steps:
            if step not in POSTHOC:
                raise site.fail(str(UnknownNameError("post-hoc step", step, POSTHOC.names())), fix=f"write e.g. '{ref.base}+temperature'")
    if "all" in check.quantizers and len(check.quantizers) > 1:
        raise site.fail("'all' cannot be combined with other quantizer names", fix="write either 'all' or a list of names")
    if check.bound.ref is not None:
        ref = QuantizerRef.parse(check.bound.ref)
        if ref.seed is not None or ref.base not in site.known_quantizers or any(step not in POSTHOC for step in ref.steps):
            raise site.fail(str(UnknownNameError("quantizer", check.bound.ref, site.known_quantizers)),
                            fix="compare with a quantizer defined under 'quantizers:'")


def _is_delta(site: _CheckSite) -> bool:
    return site.check.bound.kind == "delta"


def _is_value(site: _CheckSite) -> bool:
    return site.check.bound.kind == "value"


_BoundRule = tuple[Callable[[_CheckSite], bool], Callable[[_CheckSite], tuple[str, str]]]
_BOUND_RULES: tuple[_BoundRule, ...] = (
    (lambda s: _is_delta(s) and not s.meta.get("delta_bounds", True),
     lambda s: (f"{s.check.metric} already measures the distance from FP32 (0 for FP32 itself), so it takes a value bound, not a delta bound",
                f"write e.g. '{','.join(s.check.quantizers)} {s.check.metric} <= 0.25'")),
    (lambda s: _is_delta(s) and FP32 in s.check.quantizers,
     lambda s: ("a delta check on FP32 compares FP32 with itself", "use a value bound for FP32, or name a quantizer")),
    (lambda s: s.check.bound.ref is not None and s.check.bound.ref in s.check.quantizers,
     lambda s: (f"the check compares {s.check.bound.ref} with itself", "name a different quantizer inside delta(...)")),
    # Keeps "an improvement always passes a delta bound" true: deltas are capped, never floored.
    (lambda s: s.check.bound.ref is None and _is_delta(s) and (s.check.bound.op not in ("<=", "<") or s.check.bound.amount < 0),
     lambda s: ("a delta bound must be '<=' or '<' a non-negative amount", "write e.g. 'delta <= 5%' ('delta <= 0' means: must not worsen)")),
    (lambda s: s.check.bound.unit == "pp" and not s.meta["fraction"],
     lambda s: (f"'pp' (percentage points) needs a metric in [0, 1]; {s.check.metric} is not one", "use % (relative) or an absolute number")),
    (lambda s: _is_value(s) and s.check.bound.unit == "pp",
     lambda s: ("'pp' applies to deltas; a value bound takes a plain number or %", "write e.g. 'value >= 90%'")),
    (lambda s: _is_value(s) and s.check.bound.unit == "%" and not s.meta["fraction"],
     lambda s: (f"'%' on a value bound means percent of a fraction metric; {s.check.metric} is not one", "write an absolute number")),
)
"""``(broken(site), (problem, fix))``: what a bound may not be, checked in order."""


def _check_bound(site: _CheckSite) -> None:
    for broken, message in _BOUND_RULES:
        if broken(site):
            problem, fix = message(site)
            raise site.fail(problem, fix=fix)


def _runtime_check(site: _CheckSite) -> list[CheckSpec]:
    """Parity / int8 share / latency of runtime units (:mod:`pytest_qrel.runtimes.checks`)."""
    from ..runtimes.checks import validate_runtime_check

    return validate_runtime_check(site.check, site.suite, site.fail)


def _ood_check(site: _CheckSite) -> list[CheckSpec]:
    check, suite = site.check, site.suite
    if check.score is not None and check.score not in suite.scores:
        raise site.fail(str(UnknownNameError("score", check.score, list(suite.scores))), fix="add it to 'scores:' or pick a listed one")
    if not suite.ood_datasets:
        raise site.fail(f"{check.metric} is an OOD metric but the suite has no OOD sets", fix="add sets under 'datasets: ood:'")
    for d in check.datasets or ():
        members = mean_members(d, list(suite.ood_datasets))
        for name in members if members is not None else [d]:
            if name not in suite.ood_datasets:
                raise site.fail(str(UnknownNameError("OOD dataset", name, [*suite.ood_datasets, MEAN_OOD])),
                                fix="name a set listed under 'datasets: ood:'")
        if members is not None and not members:
            raise site.fail(f"'{d}' averages over no dataset", fix="write mean(ood) or mean(<set>,<set>)")
    scores = (check.score,) if check.score else suite.scores
    return [replace(check, score=s) for s in scores]


def _no_score(site: _CheckSite) -> None:
    if site.check.score is not None:
        raise site.fail(f"{site.check.metric} is not an OOD metric and takes no score",
                        fix=f"write '{site.check.metric}' without '({site.check.score})'")


def _spectral_check(site: _CheckSite) -> list[CheckSpec]:
    """Feature spectra are recorded on the ID test split only."""
    _no_score(site)
    id_name = site.suite.id_dataset.name
    for d in site.check.datasets or ():
        if d != id_name:
            raise site.fail(f"{site.check.metric} is measured on the ID test split ('{id_name}'), not '{d}'", fix="drop 'on ...'")
    return [site.check]


def _pair_check(site: _CheckSite) -> list[CheckSpec]:
    _no_score(site)
    if not site.suite.pairs:
        raise site.fail(f"{site.check.metric} compares a pair of sets but the suite has no 'datasets: pairs:'",
                        fix="add e.g. 'pairs: {bg: {common: <set>, counter: <set>}}'")
    for d in site.check.datasets or ():
        if d not in site.suite.pairs:
            raise site.fail(str(UnknownNameError("pair", d, list(site.suite.pairs))), fix="name a pair listed under 'datasets: pairs:'")
    return [site.check]


def _labelled_check(site: _CheckSite) -> list[CheckSpec]:
    """ID metrics (accuracy, calibration): the ID set, a shifted set or all of them (``on shifted``)."""
    _no_score(site)
    suite = site.suite
    for d in site.check.datasets or ():
        if d != "shifted" and d not in suite.labelled_datasets:
            raise site.fail(
                f"{site.check.metric} is measured on labelled sets ({', '.join(suite.labelled_datasets)}), not '{d}'",
                fix="name the ID set or a set under 'datasets: shifted:', or drop 'on ...'",
            )
        if d == "shifted" and not suite.shifted_datasets:
            raise site.fail("'on shifted' but the suite has no 'datasets: shifted:'", fix="add labelled shifted sets or drop 'on shifted'")
    return [site.check]


_BY_KIND: dict[str, Callable[[_CheckSite], list[CheckSpec]]] = {
    "runtime": _runtime_check, "ood": _ood_check, "spectral": _spectral_check, "pair": _pair_check,
}
"""A metric's ``kind`` -> what its checks ask of datasets and scores (anything else: labelled sets)."""


BOOTSTRAP_KEYS: dict[str, Option] = {"resamples": integer(1000, lo=10, hi=1_000_000), "seed": integer(0, lo=0)}
"""The keys of the top-level ``bootstrap:`` section (:class:`~pytest_qrel.spec.schema.BootstrapSpec`)."""


def _evidence(ctx: _Ctx, doc: LineDict) -> tuple[float | None, Literal["fail", "warn", "pass"], BootstrapSpec]:
    """Top-level ``confidence`` (default for every check), ``inconclusive`` and ``bootstrap``."""
    confidence = parse_confidence(doc.get("confidence"), ctx.loc(doc, "confidence"), "confidence") if "confidence" in doc else None
    policy = doc.get("inconclusive", "fail")
    if policy not in INCONCLUSIVE_POLICIES:
        raise ctx.err(
            f"'inconclusive' must be one of {', '.join(INCONCLUSIVE_POLICIES)}, got {policy!r}", node=doc, key="inconclusive",
            field="inconclusive", fix="write 'inconclusive: fail' (default), 'warn' or 'pass'",
        )
    raw = doc.get("bootstrap") or LineDict()
    node = ctx.mapping(raw, "bootstrap", "write e.g. 'bootstrap: {resamples: 1000, seed: 0}'")
    return confidence, policy, BootstrapSpec(**ctx.section(node, BOOTSTRAP_KEYS, "bootstrap"))


def load_suite(path: str | Path) -> Suite:
    """Read, validate and return the suite at ``path``. Raises :class:`SpecError` on any problem."""
    path = Path(path)
    ctx = _Ctx(path)
    doc = load_yaml(path)
    if doc is None:
        raise ctx.err("the suite file is empty", fix="see the README for a complete example")
    doc = ctx.mapping(doc, "", "a suite is a mapping with models, datasets, quantizers, scores and checks")
    ctx.unknown_keys(doc, TOP_LEVEL_KEYS, "")
    if "scenarios" in doc:  # one suite per scenario, each validated below (spec/scenarios.py)
        from .scenarios import load_scenarios

        return load_scenarios(ctx, doc, suite_from_doc)
    return suite_from_doc(ctx, doc)


def suite_from_doc(ctx: _Ctx, doc: LineDict) -> Suite:
    """The validated suite of one suite document (without ``scenarios``)."""
    path = ctx.path
    version = doc.get("version", SCHEMA_VERSION)
    if isinstance(version, bool):  # True == 1 in Python: a boolean is never a number here
        raise ctx.err(f"'version' must be a number, got {version!r}", node=doc, key="version", field="version", fix=f"write 'version: {SCHEMA_VERSION}'")
    if version != SCHEMA_VERSION:
        raise ctx.err(f"unsupported schema version {version!r}", node=doc, key="version", field="version", fix=f"this pytest-qrel reads version {SCHEMA_VERSION}")
    name = doc.get("name", path.stem)
    _check_name(ctx, name, doc, "name", "name")
    from ..conventions import CONVENTIONS

    conventions = doc.get("conventions", "hendrycks")
    if not isinstance(conventions, str) or conventions not in CONVENTIONS:
        raise ctx.err(str(UnknownNameError("metric convention", str(conventions), CONVENTIONS.names())), node=doc, key="conventions", field="conventions", fix=f"use one of {', '.join(CONVENTIONS.names())}")
    for required in ("models", "datasets"):
        if required not in doc:
            raise ctx.err(f"missing '{required}'", node=doc, field=required, fix="see the README for a complete example")
    batch_size = _int(ctx, doc.get("batch_size", 128), doc, "batch_size", "batch_size", 1)
    confidence, inconclusive, boot = _evidence(ctx, doc)
    id_ds, ood, shifted, pairs = _datasets(ctx, doc["datasets"])
    suite = Suite(
        name=name,
        path=path,
        models=_models(ctx, doc["models"]),
        id_dataset=id_ds,
        ood_datasets=ood,
        shifted_datasets=shifted,
        pairs=pairs,
        quantizers=_quantizers(ctx, doc.get("quantizers")),
        scores=_scores(ctx, doc.get("scores"), doc),
        checks=(),
        conventions=conventions,
        batch_size=batch_size,
        diagnostics=_diagnostics(ctx, doc.get("diagnostics"), doc),
        confidence=confidence,
        inconclusive=inconclusive,
        bootstrap=boot,
    )
    _reject_clip_scores_on_classifiers(ctx, suite, doc)
    checks_raw = _checks_list(ctx, doc)
    checks: list[CheckSpec] = []
    fields: list[str] = []
    item_fields = getattr(checks_raw, "item_fields", None)  # a scenario's merged list (spec/scenarios.py)
    for i, raw in enumerate(checks_raw):
        field = item_fields[i] if item_fields else f"checks[{i}]"
        check = parse_check(raw, ctx.loc(checks_raw, i), field, default_confidence=confidence)
        expanded = _validate_check(ctx, check, suite, field)
        checks.extend(expanded)
        fields.extend([field] * len(expanded))
    _reject_repeated_checks(ctx, suite, checks, fields)
    from .report_keys import parse_references, parse_report

    report = parse_report(ctx, doc, list(suite.quantizers), list(suite.ood_datasets))
    return replace(suite, checks=tuple(checks), report=report, references=parse_references(ctx, doc))


def _checks_list(ctx: _Ctx, doc: LineDict) -> LineList:
    """``checks:`` as a non-empty list: a suite without checks verifies nothing, so it is an error
    (not a green run of zero tests)."""
    fix = "add at least one check, e.g. '- \"W8A8 top1 delta <= 1pp\"'"
    if "checks" not in doc or doc["checks"] is None:
        raise ctx.err("the suite has no checks", node=doc, key="checks" if "checks" in doc else None, field="checks", fix=fix)
    raw = doc["checks"]
    if not isinstance(raw, list):
        raise ctx.err(f"'checks' must be a list, got {_typename(raw)}", node=doc, key="checks", field="checks", fix="start each check with '- '")
    if not raw:
        raise ctx.err("'checks' is empty: the suite would verify nothing", node=doc, key="checks", field="checks", fix=fix)
    return raw  # type: ignore[return-value]


def _reject_repeated_checks(ctx: _Ctx, suite: Suite, checks: list[CheckSpec], fields: list[str]) -> None:
    """Two checks that give the same item (same metric, bound, score, quantizer and dataset; e.g. a
    line written twice, or ``all ece <= 0.05`` next to ``FP32 ece <= 0.05``) are an error naming both."""
    from ..metrics import METRICS
    from .plan import expand_datasets, expand_quantizers

    seen: dict[tuple[str, str, str | None, str], tuple[str, int | None]] = {}
    for check, field in zip(checks, fields):
        kind = METRICS.meta(check.metric)["kind"]
        line = check.where.line if check.where else None
        for q in expand_quantizers(check, suite):
            for d in expand_datasets(check, suite, kind):
                key = (q, d, check.score, check.label)
                if key not in seen:
                    seen[key] = (field, line)
                    continue
                first_field, first_line = seen[key]
                if first_field == field:
                    raise SpecError(f"gives {q} {check.label} on {d} twice", file=ctx.path, line=line, field=field, fix="name each quantizer and dataset once")
                at = f" (line {first_line})" if first_line else ""
                raise SpecError(
                    f"repeats {first_field}{at}: both check {q} {check.label} on {d}",
                    file=ctx.path, line=line, field=field,
                    fix="remove one of them, or narrow 'all' / 'on' so that they do not overlap",
                )
