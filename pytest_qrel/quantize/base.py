"""The registry of quantization methods, their plain input, option validation and :func:`quantize`.

A method takes plain data and knows nothing of suites or YAML::

    config = validate_quantizer("minmax", 4, 4, {"head": "fp32"}, seed=0)   # QuantConfig
    qmodel = quantize(model, config, calibration, labels=labels)

- :func:`validate_quantizer` looks the method up (an unknown name is an
  :class:`~pytest_qrel.errors.UnknownNameError` with a "did you mean"), checks the bit widths and
  turns the raw ``options`` mapping into the method's *typed* options (a frozen dataclass such as
  :class:`~pytest_qrel.quantize.options.LinearQuantOptions`); anything wrong is a
  :class:`~pytest_qrel.errors.QuantOptionError` naming the option, the problem and the fix. It
  imports no torch, so the suite loader calls it at collection time.
- :func:`quantize` runs the method on a :class:`QuantConfig`. Problems only the model or the data
  can reveal (no patch embedding to quantize, no labels to train on, a diverging loss) are
  :class:`~pytest_qrel.errors.QuantOptionError` too; callers that read the quantizer from a suite
  turn them into a located :class:`~pytest_qrel.errors.SpecError`
  (:func:`pytest_qrel.spec.quantizers.located_error`).

A method is one entry of :data:`QUANTIZERS`: a function
``fn(model, config, calibration, *, labels=None) -> nn.Module`` with metadata ``options`` (the
accepted keys), ``parse`` (``parse(raw mapping, method=name) -> typed options``) and ``summary``; a
typed options object may have ``check_bits(weight_bits, act_bits)``, which raises for bit widths
the method cannot use.
Built-in methods are registered in :mod:`.methods` with lazy implementations (the torch code is
imported on first use). A user method may register a plain function with ``options=`` a mapping of
:class:`Option` (its typed options are then a read-only dict)::

    @QUANTIZERS.register("mine", options={"alpha": Option(0.5, is_number, "a number")}, summary="...")
    def mine(model, config, calibration, *, labels=None): ...

Contract of every method:

- ``calibration`` is a float tensor (N, C, H, W) of already-preprocessed in-distribution *training*
  images; ``labels`` (int64 (N,) or None) their class indices, for methods that train. Methods
  never see test or OOD data.
- It returns a NEW module (a deep copy; the input model is never modified), in eval mode, whose
  forward maps images to logits exactly like the original's.
- ``config.weight_bits`` / ``config.act_bits`` are integers in [2, 8] (``act_bits`` may be ``None``:
  activations stay in floating point); ``config.seed`` is the seed of this run (the calibration
  seed of the suite), the default of every seeded choice a method makes.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from ..errors import QuantOptionError
from ..options import Option, anything, boolean, choice, is_number, nonneg_int, positive_int  # noqa: F401  (re-exported)
from ..options import parse_options as _parse_options
from ..registry import Registry

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

QuantizeFn = Callable[..., "nn.Module"]

QUANTIZERS: Registry[QuantizeFn] = Registry("quantization method")
"""YAML method name -> ``fn(model, config, calibration, *, labels=None) -> quantized copy``."""

MIN_BITS = 2
MAX_BITS = 8


@dataclass(frozen=True)
class QuantConfig:
    """The plain input of a quantization method (what :func:`validate_quantizer` returns).

    ``options`` is the method's typed options object (e.g.
    :class:`~pytest_qrel.quantize.options.LinearQuantOptions`), every key validated and every
    default filled in. ``seed`` seeds whatever the method draws at random (QAT batches, RaanA's
    rotations) unless an option overrides it.
    """

    method: str
    weight_bits: int
    act_bits: int | None
    options: Any
    seed: int = 0


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


# The one option facility is pytest_qrel.options (every source, method, runtime and suite section);
# these names are re-exported for methods registered with ``options=`` a mapping of Option.


def one_of(*choices: str) -> Option:
    """An :class:`Option` whose value must be one of ``choices`` (the first is the default)."""
    return choice(*choices)


def parse_options(method: str, raw: Mapping[str, Any] | None, accepted: Mapping[str, Option]) -> dict[str, Any]:
    """Validate ``raw`` against ``accepted`` (:func:`pytest_qrel.options.parse_options`) and return
    every accepted key, defaults filled in and valid values passed through ``Option.convert``.

    Raises:
        QuantOptionError: an unknown key (the problem is :class:`~pytest_qrel.errors.UnknownNameError`'s
            message, ``unknown <method> option 'x'; did you mean ...``), or a value ``Option.valid``
            rejects (``<method> option 'x' must be ..., got ...``).
    """
    return _parse_options(raw, accepted, fail=QuantOptionError, kind=f"{method} option")


# --------------------------------------------------------------------------------------------------
# Validation and the public entry point
# --------------------------------------------------------------------------------------------------


def validate_bits(weight_bits: Any, act_bits: Any) -> None:
    """``weight_bits`` must be an int in [2, 8]; ``act_bits`` too, or ``None``. ``bool`` is not an int here.

    Raises:
        QuantOptionError: naming ``weight_bits`` or ``act_bits``.
    """
    _check_bits("weight_bits", weight_bits, allow_none=False)
    _check_bits("act_bits", act_bits, allow_none=True)


def _check_bits(key: str, value: Any, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, int) and not isinstance(value, bool) and MIN_BITS <= value <= MAX_BITS:
        return
    fix = f"use an integer from {MIN_BITS} to {MAX_BITS}"
    if allow_none:
        fix += " (or null to keep activations in floating point)"
    raise QuantOptionError(key, f"{key} must be an integer from {MIN_BITS} to {MAX_BITS}, got {value!r}", fix)


def _default_parse(accepted: Any) -> Callable[..., Any]:
    """The ``parse`` of an entry registered with only ``options=``: a read-only dict of the values.

    ``accepted`` is a mapping of :class:`Option` (validated, defaults filled in) or a sequence of
    key names (unknown keys rejected, values passed through as given)."""
    if isinstance(accepted, Mapping):
        table = dict(accepted)
    else:
        table = {k: anything() for k in accepted or ()}
    keys_only = not isinstance(accepted, Mapping)

    def parse(raw: Mapping[str, Any], *, method: str) -> Any:
        values = parse_options(method, raw, table)
        if keys_only:
            values = {k: v for k, v in values.items() if k in raw}
        return MappingProxyType(values)

    return parse


def validate_quantizer(
    method: str, weight_bits: Any, act_bits: Any, options: Mapping[str, Any] | None = None, *, seed: int = 0
) -> QuantConfig:
    """Check a quantizer and return its plain :class:`QuantConfig` (with the method's typed options).

    Imports no torch. Bit widths as :func:`validate_bits`; options through the entry's ``parse``,
    then the typed options' ``check_bits`` when they have one (bit widths that do not suit the
    method, e.g. RaanA with ``act_bits``).

    Raises:
        UnknownNameError: ``method`` is not registered (lists the known ones, "did you mean").
        QuantOptionError: a bit width, an option key or an option value is wrong.
    """
    QUANTIZERS.get(method)  # UnknownNameError for an unknown method
    validate_bits(weight_bits, act_bits)
    meta = QUANTIZERS.meta(method)
    parse = meta.get("parse") or _default_parse(meta.get("options"))
    typed = parse(dict(options or {}), method=method)
    check = getattr(typed, "check_bits", None)
    if callable(check):
        check(weight_bits, act_bits)
    return QuantConfig(method, weight_bits, act_bits, typed, int(seed))


def quantize(
    model: nn.Module, config: QuantConfig, calibration: torch.Tensor, *, labels: torch.Tensor | None = None,
    targets: Any = None,
) -> nn.Module:
    """Quantize a copy of ``model`` as ``config`` says (see :func:`validate_quantizer`), calibrating on
    ``calibration`` (N, C, H, W) with class indices ``labels`` (N,) when known (training-based
    methods need them). ``targets``: other per-image training targets, for the methods registered
    with ``accepts_targets`` (the QAT family: :class:`~pytest_qrel.quantize.qat.TextTargets`, caption
    embeddings of image-text calibration data).

    Raises:
        UnknownNameError: ``config.method`` is not a registered method.
        QuantOptionError: what only the model or the data can reveal (e.g. ``patch_embed: quantized``
            on a model without a patch embedding, no labels for a method that trains on them,
            ``targets`` for a method that does not train on them).
    """
    if not isinstance(config, QuantConfig):
        raise TypeError(
            f"quantize() takes a QuantConfig (from validate_quantizer), got {type(config).__name__}"
        )
    fn = QUANTIZERS.get(config.method)
    if targets is None:
        return fn(model, config, calibration, labels=labels)
    if not QUANTIZERS.meta(config.method).get("accepts_targets"):
        raise QuantOptionError("method", f"'{config.method}' does not train, so it has no use for image-text targets",
                               "use a QAT method (qat, qat_lsq, qat_lsq_per_channel, qat_distill, qat_lora)")
    return fn(model, config, calibration, labels=labels, targets=targets)


def lazy_method(target: str) -> QuantizeFn:
    """A registry entry whose implementation ``"package.module:function"`` is imported on first call."""
    module_name, _, attr = target.partition(":")

    def run(model: nn.Module, config: QuantConfig, calibration: torch.Tensor, *,
            labels: torch.Tensor | None = None, **kwargs: Any) -> nn.Module:
        return getattr(importlib.import_module(module_name), attr)(model, config, calibration, labels=labels, **kwargs)

    run.__name__ = run.__qualname__ = attr
    run.__doc__ = f"Lazy entry: calls {target}."
    run.target = target  # type: ignore[attr-defined]
    return run


def calibration_error(method: str, what: str = "observe activations on") -> QuantOptionError:
    """The error of a method that was given no calibration images but needs some."""
    return QuantOptionError("calibration", f"'{method}' got no calibration images to {what}",
                            "give at least one calibration image")


def no_linear_error(method: str) -> QuantOptionError:
    return QuantOptionError("method", f"the model has no nn.Linear layer for '{method}' to quantize",
                            "use a method that supports this architecture")
