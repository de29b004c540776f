"""The one option facility (pytest_qrel.options) and the one "did you mean" (pytest_qrel.errors).

Unit tests of the tables, then two properties over every table the package declares (a number
option never takes a boolean, a boolean option never takes a number) and one over every place a
user can misspell a name (one message shape, with the right suggestion).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from pytest_qrel.errors import DataError, ModelError, QrelError, QuantOptionError, SpecError, UnknownNameError, did_you_mean
from pytest_qrel.options import (
    Option,
    OptionSet,
    anything,
    boolean,
    choice,
    integer,
    mapping,
    parse_options,
    prefixed,
    reject_unknown,
    rule,
)


class Bad(Exception):
    def __init__(self, key: str, problem: str, fix: str) -> None:
        super().__init__(problem)
        self.key, self.problem, self.fix = key, problem, fix


TABLE = {
    "limit": integer(None, lo=1, allow_none=True),
    "seed": integer(0, lo=0),
    "exact": boolean(False),
    "mode": choice("fast", "slow"),
    "kwargs": mapping(),
    "path": anything(),
}


def parse(raw: dict[str, Any], table: dict[str, Option] = TABLE, **kw: Any) -> dict[str, Any]:
    return parse_options(raw, table, fail=Bad, **kw)


def test_defaults_fill_every_key_in_table_order() -> None:
    values = parse({"seed": 3})
    assert list(values) == list(TABLE)
    assert values["limit"] is None and values["seed"] == 3 and values["exact"] is False and values["mode"] == "fast"
    assert dict(values["kwargs"]) == {} and values["path"] is None
    with pytest.raises(TypeError):  # the default mapping is read-only: no call can change the next one's
        values["kwargs"]["x"] = 1  # type: ignore[index]


def test_unknown_key_is_the_unknown_name_message() -> None:
    with pytest.raises(Bad) as info:
        parse({"limt": 3})
    assert info.value.key == "limt"
    assert info.value.problem == str(UnknownNameError("option", "limt", sorted(TABLE)))
    assert info.value.problem == "unknown option 'limt'; did you mean 'limit'? (known: exact, kwargs, limit, mode, path, seed)"
    assert info.value.fix == "remove it or use a known option"
    with pytest.raises(Bad) as info:
        parse({"x": 1}, {})
    assert info.value.problem == "unknown option 'x' (known: none)" and info.value.fix == "remove it"
    with pytest.raises(Bad, match="unknown widget key 'limt'"):
        parse({"limt": 3}, kind="widget key")


@pytest.mark.parametrize(("key", "value", "expect"), [
    ("limit", 0, "an integer >= 1"),
    ("limit", True, "an integer >= 1"),  # True == 1 in Python, never here
    ("limit", 2.0, "an integer >= 1"),
    ("seed", None, "an integer >= 0"),  # allow_none is off
    ("seed", -1, "an integer >= 0"),
    ("exact", 1, "true or false"),
    ("exact", "yes", "true or false"),
    ("mode", "FAST", "'fast' or 'slow'"),
    ("kwargs", [1], "a mapping"),
])
def test_bad_value_is_one_message(key: str, value: Any, expect: str) -> None:
    with pytest.raises(Bad) as info:
        parse({key: value})
    assert info.value.problem == f"option '{key}' must be {expect}, got {value!r}"
    assert info.value.fix == f"use {expect}" and info.value.key == key


def test_conversions() -> None:
    double = Option(1, lambda v: isinstance(v, int), "an int", lambda v: v * 2)
    assert parse({"n": 3}, {"n": double})["n"] == 6
    assert parse({}, {"n": double})["n"] == 1  # defaults are not converted
    assert parse({"n": None}, {"n": Option(None, lambda v: True, "x", lambda v: "conv")})["n"] is None
    assert parse({"n": None}, {"n": Option(None, lambda v: True, "x", lambda v: "conv", convert_none=True)})["n"] == "conv"
    assert parse({"kwargs": None})["kwargs"] == {} and parse({"kwargs": {"a": 1}})["kwargs"] == {"a": 1}
    assert choice("a", "b", "c").expect == "one of 'a', 'b', 'c'" and choice("a", "b", default="b").default == "b"
    assert integer(5, lo=2, hi=8).expect == "an integer from 2 to 8" and integer(5).expect == "an integer"


def test_prefixed_names_the_source() -> None:
    with pytest.raises(DataError) as info:
        parse_options({"limit": 0}, TABLE, fail=prefixed(DataError, "dataset 'x:y'"))
    assert str(info.value) == "dataset 'x:y': option 'limit' must be an integer >= 1, got 0"


@dataclass(frozen=True)
class Window(OptionSet):
    lo: int = 0
    hi: int = 10
    RULES: ClassVar[dict[str, Option]] = {"lo": rule(lambda v: integer(None).valid(v), "an integer"),
                                          "hi": rule(lambda v: integer(None).valid(v), "an integer")}

    def check(self, fail: Any) -> None:
        if self.lo >= self.hi:
            raise fail("lo", f"lo ({self.lo}) must be below hi ({self.hi})", "lower lo")


@dataclass(frozen=True)
class Upper(Window):
    top: bool = False
    KEYS: ClassVar[tuple[str, ...] | None] = ("hi", "top")
    RULES: ClassVar[dict[str, Option]] = {"top": boolean(None)}


def test_option_set_merges_rules_and_checks_between_options() -> None:
    assert Window.from_raw({"hi": 4}, fail=Bad) == Window(0, 4)
    with pytest.raises(Bad, match=r"lo \(5\) must be below hi \(4\)"):
        Window.from_raw({"lo": 5, "hi": 4}, fail=Bad)
    assert list(Upper.accepted()) == ["hi", "top"] and Upper.accepted()["hi"].default == 10
    with pytest.raises(Bad, match="unknown option 'lo'"):  # a field the subclass does not accept
        Upper.from_raw({"lo": 1}, fail=Bad)


def test_did_you_mean() -> None:
    assert did_you_mean("limt", ["limit", "seed"]) == "; did you mean 'limit'?"
    assert did_you_mean("zzz", ["limit", "seed"]) == ""
    err = UnknownNameError("timm model", "vit_tny", ["vit_tiny", "deit"], listing="list them with: timm.list_models()")
    assert str(err) == "unknown timm model 'vit_tny'; did you mean 'vit_tiny'? (list them with: timm.list_models())"
    reject_unknown(["a"], ["a", "b"], fail=Bad)  # nothing unknown: no error


# ------------------------------------------------------------------ properties over every table


def _tables() -> dict[str, dict[str, Option]]:
    from pytest_qrel.data import folders, shifts, torchvision_source
    from pytest_qrel.models import open_clip_source, timm_source
    from pytest_qrel.quantize import QUANTIZERS
    from pytest_qrel.spec import loader

    tables = {
        "imagefolder": folders.IMAGEFOLDER_OPTIONS, "filelist": folders.FILELIST_OPTIONS, "shift": shifts.SHIFT_OPTIONS,
        "torchvision": torchvision_source.OPTIONS, "timm": timm_source.OPTIONS, "timm data_config": timm_source.DATA_CONFIG,
        "open_clip": open_clip_source.OPTIONS, "quantizers.<name>": loader.QUANTIZER_KEYS,
        "calibration": loader.CALIBRATION_KEYS, "bootstrap": loader.BOOTSTRAP_KEYS,
    }
    for method in QUANTIZERS.names():
        options_type = QUANTIZERS.meta(method).get("options_type")
        if options_type is not None:
            tables[f"method {method}"] = options_type.accepted()
    return tables


TABLES = _tables()


@pytest.mark.parametrize("name", sorted(TABLES))
def test_a_boolean_is_never_a_number_and_a_number_never_a_boolean(name: str) -> None:
    for key, option in TABLES[name].items():
        if option.valid("not a number"):
            continue  # a name, a path, a list: read by the source, not a number or a flag
        if any(option.valid(n) for n in (0, 1, 2, 8, 17, 0.5, 99.9, [2, 3], [0.5, 0.5, 0.5])):
            assert not option.valid(True) and not option.valid(False), f"{name}: option {key!r} takes a boolean as a number"
        if option.valid(True) or option.valid(False):
            assert not any(option.valid(n) for n in (0, 1, 0.0, 1.0)), f"{name}: option {key!r} takes a number as a boolean"


def test_the_property_sees_numbers_and_flags() -> None:
    """The property above is not vacuous: the tables hold many number and boolean options."""
    options = [o for table in TABLES.values() for o in table.values() if not o.valid("not a number")]
    assert sum(o.valid(1) or o.valid(0.5) or o.valid([2, 3]) for o in options) >= 30
    assert sum(o.valid(True) for o in options) >= 20


def test_the_tables_cover_every_method() -> None:
    from pytest_qrel.quantize import QUANTIZERS

    assert {f"method {m}" for m in QUANTIZERS.names()} <= set(TABLES)


# ------------------------------------------------------------ one shape for every unknown name

SHAPE = re.compile(r"unknown ([\w ]+) '([^']+)'; did you mean '([^']+)'\? \((known: [^)]*|list them [^)]*|see [^)]*)\)")


def _suite(tmp_path: Path, old: str, new: str) -> Path:
    import test_bad_input

    path = tmp_path / "suite.yaml"
    assert old in test_bad_input.BASE
    path.write_text(test_bad_input.BASE.replace(old, new, 1), encoding="utf-8")
    return path


WHERE = [
    "a registry", "a method option", "a runtime option", "a timm option", "a timm data_config key", "an open_clip option",
    "a python factory", "an imagefolder option", "a torchvision option", "a shift option", "a logit mask", "a suite key",
    "a quantizer key", "a check key", "a references column",
]


def _misspelled(tmp_path: Path) -> dict[str, tuple[Any, type[QrelError], str, str]]:
    """where -> (call, error type, the misspelled name, the name it should suggest)."""
    from pytest_qrel.data.base import validate_dataset_source
    from pytest_qrel.models.base import load_model, validate_model_source
    from pytest_qrel.quantize import QUANTIZERS, validate_quantizer
    from pytest_qrel.references import load_references
    from pytest_qrel.spec import load_suite

    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "build.py").write_text("def build():\n    return None\n")
    (tmp_path / "refs.csv").write_text("model,quantizer,metric,dataset,value,unit,source,nots\nvit,W8A8,top1,imagenet,81.2,percent,x,y\n")
    return {
        "a registry": (lambda: QUANTIZERS.get("minmx"), UnknownNameError, "minmx", "minmax"),
        "a method option": (lambda: validate_quantizer("minmax", 8, 8, {"heads": "fp32"}), QuantOptionError, "heads", "head"),
        "a runtime option": (lambda: validate_quantizer("torchao", 8, 8, {"compil": True}), QuantOptionError, "compil", "compile"),
        "a timm option": (lambda: validate_model_source("timm:deit_tiny_patch16_224", {"pretrainde": False}), ModelError, "pretrainde", "pretrained"),
        "a timm data_config key": (lambda: validate_model_source("timm:deit_tiny_patch16_224", {"data_config": {"crop": 1}}), ModelError,
                                   "crop", "crop_pct"),
        "an open_clip option": (lambda: validate_model_source("open_clip:digits_clip", {"templtes": ["a {}"]}), ModelError, "templtes", "templates"),
        "a python factory": (lambda: load_model("python:models/build.py:biuld", base_dir=tmp_path), ModelError, "biuld", "build"),
        "an imagefolder option": (lambda: validate_dataset_source("imagefolder:data", {"limt": 1}), DataError, "limt", "limit"),
        "a torchvision option": (lambda: validate_dataset_source("torchvision:CIFAR10", {"roots": "x"}), DataError, "roots", "root"),
        "a shift option": (lambda: validate_dataset_source("shift:fog/1", {"of": "embedded:digits", "sed": 1}), DataError, "sed", "seed"),
        "a logit mask": (lambda: validate_dataset_source("imagefolder:data", {"logit_mask": "imagenet_rr"}), UnknownNameError,
                         "imagenet_rr", "imagenet_r"),
        "a suite key": (lambda: load_suite(_suite(tmp_path, "name: mini", "nmae: mini")), SpecError, "nmae", "name"),
        "a quantizer key": (lambda: load_suite(_suite(tmp_path, "  W4A4: {method: minmax}", "  W4A4: {methd: minmax}")), SpecError,
                            "methd", "method"),
        "a check key": (lambda: load_suite(_suite(tmp_path, "checks:\n", "checks:\n  - {metric: nll, delta: {max: 3}, reasn: x}\n")),
                        SpecError, "reasn", "reason"),
        "a references column": (lambda: load_references(tmp_path / "refs.csv"), SpecError, "nots", "note"),
    }


@pytest.mark.parametrize("where", WHERE)
def test_every_unknown_name_has_the_one_shape(tmp_path: Path, where: str) -> None:
    cases = _misspelled(tmp_path)
    assert sorted(cases) == sorted(WHERE)
    call, error, name, suggestion = cases[where]
    with pytest.raises(error) as info:
        call()
    match = SHAPE.search(str(info.value))
    assert match, str(info.value)
    assert (match.group(2), match.group(3)) == (name, suggestion)
    assert "\n" not in str(info.value)
