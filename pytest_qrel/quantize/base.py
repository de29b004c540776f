"""The registry of quantization methods, the public :func:`quantize` and spec validation.

A method is one function filed under its YAML name in :data:`QUANTIZERS`::

    @QUANTIZERS.register("minmax", options=("batch_size",), summary="...")
    def minmax(model: nn.Module, spec: QuantizerSpec, calibration: torch.Tensor, *, labels=None) -> nn.Module: ...

Contract of every method:

- ``calibration`` is a float tensor (N, C, H, W) of already-preprocessed in-distribution *training*
  images (the engine draws ``spec.calibration.samples`` of them with ``spec.calibration.seed``);
  ``labels`` (keyword, int64 (N,) or None) are their class indices, for methods that train (QAT).
  Methods must never see test or OOD data.
- It returns a NEW module (a deep copy; the input model is never modified), in eval mode, whose
  forward maps images to logits exactly like the original's.
- It validates its own ``spec.options`` with :func:`parse_options` (unknown keys are a
  :class:`~pytest_qrel.errors.SpecError` naming ``quantizers.<name>.<key>``).
- ``spec.weight_bits`` / ``spec.act_bits`` are already validated by :func:`quantize`
  (integers in [2, 8]; ``act_bits`` may be ``None``: activations stay in floating point).

This module does not import torch, so the registry can be inspected cheaply.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import SpecError
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from ..spec.schema import QuantizerSpec

QuantizeFn = Callable[..., "nn.Module"]

QUANTIZERS: Registry[QuantizeFn] = Registry("quantization method")
"""YAML method name -> ``fn(model, spec, calibration, *, labels=None) -> quantized copy``."""

MIN_BITS = 2
MAX_BITS = 8


def quantize(
    model: nn.Module, spec: QuantizerSpec, calibration: torch.Tensor, *, labels: torch.Tensor | None = None
) -> nn.Module:
    """Quantize a copy of ``model`` as ``spec`` says, calibrating on ``calibration`` (N, C, H, W)
    with class indices ``labels`` (N,) when known (training-based methods need them).

    Looks ``spec.method`` up in :data:`QUANTIZERS` and calls it after validating the bit widths.

    Raises:
        UnknownNameError: ``spec.method`` is not a registered method (lists the known ones).
        SpecError: a bit width is not an integer in [2, 8], or an option is unknown or invalid.
    """
    fn = QUANTIZERS.get(spec.method)
    validate_bits(spec)
    return fn(model, spec, calibration, labels=labels)


def validate_bits(spec: QuantizerSpec) -> None:
    """``weight_bits`` must be an int in [2, 8]; ``act_bits`` too, or ``None``. ``bool`` is not an int here."""
    _check_bits(spec, "weight_bits", spec.weight_bits, allow_none=False)
    _check_bits(spec, "act_bits", spec.act_bits, allow_none=True)


def _check_bits(spec: QuantizerSpec, key: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, int) and not isinstance(value, bool) and MIN_BITS <= value <= MAX_BITS:
        return
    fix = f"use an integer from {MIN_BITS} to {MAX_BITS}"
    if allow_none:
        fix += " (or null to keep activations in floating point)"
    raise spec_error(spec, key, f"{key} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value!r}", fix)


def spec_error(spec: QuantizerSpec, key: str, problem: str, fix: str) -> SpecError:
    """A :class:`SpecError` about field ``quantizers.<spec.name>.<key>``, located where the spec was written."""
    where = spec.where
    return SpecError(
        problem,
        file=where.file if where else None,
        line=where.line if where else None,
        field=f"quantizers.{spec.name}.{key}",
        fix=fix,
    )


@dataclass(frozen=True)
class Option:
    """One method-specific option: its default, a validity test and what a valid value looks like."""

    default: Any
    valid: Callable[[Any], bool]
    expect: str  # e.g. "a positive integer"; used in the error message and the fix


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def parse_options(spec: QuantizerSpec, accepted: Mapping[str, Option]) -> dict[str, Any]:
    """Validate ``spec.options`` against ``accepted`` and return them with defaults filled in.

    Raises:
        SpecError: an unknown key (field ``quantizers.<name>.<key>``, listing the accepted keys with a
            "did you mean"), or a value that ``Option.valid`` rejects.
    """
    known = sorted(accepted)
    for key in spec.options:
        if key not in accepted:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            listing = f"method '{spec.method}' accepts: {', '.join(known)}" if known else (
                f"method '{spec.method}' accepts no options"
            )
            raise spec_error(
                spec, str(key), f"unknown option '{key}' for quantization method '{spec.method}'",
                f"{hint}remove it; {listing}",
            )
    out: dict[str, Any] = {}
    for key, opt in accepted.items():
        if key in spec.options:
            value = spec.options[key]
            if not opt.valid(value):
                raise spec_error(spec, key, f"{key} must be {opt.expect}, got {value!r}", f"use {opt.expect}")
            out[key] = value
        else:
            out[key] = opt.default
    return out
