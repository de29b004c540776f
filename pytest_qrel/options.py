"""One way to validate options: declarative tables of typed options (imports no torch, no numpy).

Every ``options:`` mapping a suite can give (a model or dataset source's, a quantization method's,
a runtime's) and every section of the suite file with fixed keys is checked here, against a table
``{key: Option}``. An :class:`Option` is the default, a validity test, the text that says what a
valid value looks like, and a conversion applied to valid values::

    TABLE = {
        "limit":        integer(None, lo=1, allow_none=True),
        "content_hash": boolean(False),
        "labels":       choice("auto", "folders", "none"),
    }
    values = parse_options(raw, TABLE, fail=...)   # every key of TABLE, defaults filled in

A typed form is :class:`OptionSet`: a frozen dataclass whose fields are the defaults, ``RULES``
the validity (merged along the class hierarchy) and :meth:`OptionSet.check` the rules between
options (two that contradict each other). :mod:`pytest_qrel.quantize.options` declares every
quantization method's options this way.

The error says one thing in one shape, whoever raises it:

- an unknown key: :class:`~pytest_qrel.errors.UnknownNameError`'s message, with its one "did you
  mean": ``unknown option 'limt'; did you mean 'limit'? (known: classes, limit, seed)``;
- a bad value: ``option 'limit' must be an integer >= 1, got 0``.

("option" is the table's ``kind``: ``"minmax option"``, ``"key"``, ...) The caller decides which
error type carries it: ``fail(key, problem, fix)`` builds it (a source wraps it in its
:class:`~pytest_qrel.errors.DataError` or :class:`~pytest_qrel.errors.ModelError` with the source's
name in front; a method raises :class:`~pytest_qrel.errors.QuantOptionError`; the suite loader a
located :class:`~pytest_qrel.errors.SpecError`).

A boolean is never a number here (``True == 1`` in Python; ``limit: true`` is an error, not 1),
and a number is never a boolean.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeGuard, TypeVar

from .errors import UnknownNameError

Fail = Callable[[str, str, str], Exception]
"""``fail(key, problem, fix) -> the error to raise``: how a caller reports a bad option."""

_S = TypeVar("_S", bound="OptionSet")


@dataclass(frozen=True)
class Option:
    """One option: its default, a validity test, what a valid value looks like (``expect``, e.g.
    ``"a positive integer"``: used in the message and the fix) and a conversion applied to valid
    values (e.g. ``float``, so that ``lr: 1`` becomes 1.0); to None only with ``convert_none``."""

    default: Any
    valid: Callable[[Any], bool]
    expect: str
    convert: Callable[[Any], Any] | None = None
    convert_none: bool = False
    """Whether ``convert`` also maps a valid None (``labels: null`` -> ``"none"``)."""


# ------------------------------------------------------------------------------------ validity tests


def is_bool(value: Any) -> TypeGuard[bool]:
    return isinstance(value, bool)


def is_int(value: Any) -> TypeGuard[int]:
    """An int that is not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def positive_int(value: Any) -> bool:
    return is_int(value) and value >= 1


def nonneg_int(value: Any) -> bool:
    return is_int(value) and value >= 0


def is_number(value: Any) -> TypeGuard[int | float]:
    """A finite int or float (not a bool, not a string: the suite loader reads ``1e-5`` as a float)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(float(value))


def is_text(value: Any) -> bool:
    """A non-blank string."""
    return isinstance(value, str) and bool(value.strip())


# ------------------------------------------------------------------------------------------ builders


def boolean(default: bool | None) -> Option:
    return Option(default, is_bool, "true or false")


def integer(default: int | None, *, lo: int | None = None, hi: int | None = None, allow_none: bool = False) -> Option:
    """An integer (never a bool) in ``[lo, hi]``; None too when ``allow_none``."""

    def valid(value: Any) -> bool:
        if value is None:
            return allow_none
        return is_int(value) and (lo is None or value >= lo) and (hi is None or value <= hi)

    if lo is not None and hi is not None:
        expect = f"an integer from {lo} to {hi}"
    elif lo is not None:
        expect = f"an integer >= {lo}"
    else:
        expect = "an integer"
    return Option(default, valid, expect)


def choices_text(choices: Iterable[str]) -> str:
    """``'a' or 'b'``; ``one of 'a', 'b', 'c'`` for more than two."""
    quoted = [f"'{c}'" for c in choices]
    return " or ".join(quoted) if len(quoted) <= 2 else f"one of {', '.join(quoted)}"


def choice(*choices: str, default: str | None = None) -> Option:
    """A string that must be one of ``choices``; the default is the first unless given."""
    return Option(choices[0] if default is None else default, lambda v: isinstance(v, str) and v in choices, choices_text(choices))


def mapping(expect: str = "a mapping") -> Option:
    """A mapping, converted to a plain dict; None (YAML ``key:`` with no value) and the default are
    an empty read-only mapping."""
    return Option(MappingProxyType({}), lambda v: v is None or isinstance(v, Mapping), expect,
                  lambda v: dict(v) if v is not None else MappingProxyType({}), convert_none=True)


def anything(default: Any = None, expect: str = "any value") -> Option:
    """Any value: the source that reads it checks it (a path, a class list, a factory argument)."""
    return Option(default, lambda v: True, expect)


def rule(valid: Callable[[Any], bool], expect: str, convert: Callable[[Any], Any] | None = None) -> Option:
    """A validity rule of an :class:`OptionSet`: its default comes from the dataclass field."""
    return Option(None, valid, expect, convert)


# ------------------------------------------------------------------------------------------- parsing


def prefixed(error: Callable[[str], Exception], where: str) -> Fail:
    """The ``fail`` of a model or dataset source: ``error(f"{where}: {problem}")``, e.g.
    ``DataError("dataset 'imagefolder:data': option 'limit' must be an integer >= 1, got 0")``
    (the problem says what a valid value is, so no separate fix)."""
    return lambda key, problem, fix: error(f"{where}: {problem}")


def reject_unknown(keys: Iterable[Any], known: Iterable[str], *, fail: Fail, kind: str = "option") -> None:
    """Raise ``fail(key, <UnknownNameError's message>, fix)`` for the first key not in ``known``."""
    known = sorted(known)
    for key in keys:
        if key not in known:
            problem = str(UnknownNameError(kind, str(key), known))
            raise fail(str(key), problem, f"remove it or use a known {kind}" if known else "remove it")


def value_problem(key: str, value: Any, expect: str, kind: str = "option") -> str:
    """The one message of a bad value: ``option 'limit' must be an integer >= 1, got 0``."""
    return f"{kind} '{key}' must be {expect}, got {value!r}"


def parse_options(
    raw: Mapping[str, Any] | None, accepted: Mapping[str, Option], *, fail: Fail, kind: str = "option",
) -> dict[str, Any]:
    """Validate ``raw`` against ``accepted``: every accepted key, in table order, with the default
    where ``raw`` has none and valid values passed through ``Option.convert``.

    Raises:
        whatever ``fail(key, problem, fix)`` returns: for an unknown key (the problem is
        :class:`~pytest_qrel.errors.UnknownNameError`'s message), or a value ``Option.valid`` rejects.
    """
    raw = dict(raw or {})
    reject_unknown(raw, accepted, fail=fail, kind=kind)
    out: dict[str, Any] = {}
    for key, opt in accepted.items():
        if key not in raw:
            out[key] = opt.default
            continue
        value = raw[key]
        if not opt.valid(value):
            raise fail(key, value_problem(key, value, opt.expect, kind), f"use {opt.expect}")
        out[key] = opt.convert(value) if opt.convert is not None and (value is not None or opt.convert_none) else value
    return out


@dataclass(frozen=True)
class OptionSet:
    """Base of typed options: the dataclass fields are the keys and their defaults, ``RULES``
    (merged along the class hierarchy) their validity, ``KEYS`` (None: every field) the keys
    accepted, in order, and :meth:`check` the rules between options."""

    RULES: ClassVar[Mapping[str, Option]] = {}
    KEYS: ClassVar[tuple[str, ...] | None] = None

    @classmethod
    def accepted(cls) -> dict[str, Option]:
        """``{key: Option}`` with the defaults of this class, in field order (or ``KEYS`` order)."""
        rules: dict[str, Option] = {}
        for klass in reversed(cls.__mro__):
            rules.update(vars(klass).get("RULES", {}))
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        keys = cls.KEYS if cls.KEYS is not None else tuple(defaults)
        return {k: dataclasses.replace(rules[k], default=defaults[k]) for k in keys}

    @classmethod
    def from_raw(cls: type[_S], raw: Mapping[str, Any] | None, *, fail: Fail, kind: str = "option") -> _S:
        """Validate ``raw`` (:func:`parse_options`) into an instance, then :meth:`check` it."""
        typed = cls(**parse_options(raw, cls.accepted(), fail=fail, kind=kind))
        typed.check(fail)
        return typed

    def check(self, fail: Fail) -> None:
        """Rules between options (raise ``fail(key, problem, fix)``); none by default."""
