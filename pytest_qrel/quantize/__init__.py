"""Quantization methods: a registry keyed by the ``method:`` of a quantizer in the suite.

Plain data in, module out::

    config = validate_quantizer(method, weight_bits, act_bits, options, seed=seed)   # no torch
    qmodel = quantize(model, config, calibration, labels=labels)

:func:`validate_quantizer` returns a :class:`QuantConfig` holding the method's typed options (or
raises :class:`~pytest_qrel.errors.UnknownNameError` / :class:`~pytest_qrel.errors.QuantOptionError`);
:func:`quantize` returns a quantized deep copy of ``model``; each method is one entry in
:data:`QUANTIZERS` built from the reusable parts of :mod:`.fakequant`, and :func:`verify_simulation`
checks that a simulated model really computes on its integer grids and lists what computes in float.

Importing this package imports no torch (the suite loader validates quantizers at collection time);
the torch-based names below are loaded on first access.
"""

from __future__ import annotations

import importlib
from typing import Any

from ..errors import QuantOptionError
from . import methods as _methods  # noqa: F401  (registers the built-in methods)
from .base import QUANTIZERS, Option, QuantConfig, parse_options, quantize, validate_bits, validate_quantizer

_LAZY = {
    "ActQuantizer": "fakequant",
    "DynamicActQuantizer": "fakequant",
    "FakeQuantLinear": "fakequant",
    "FakeQuantConv2d": "fakequant",
    "QuantModule": "fakequant",
    "asymmetric_qparams": "fakequant",
    "calibrate": "fakequant",
    "fake_quantize_per_tensor": "fakequant",
    "fake_quantize_reference": "fakequant",
    "freeze": "fakequant",
    "observe": "fakequant",
    "quantize_weight_per_channel_symmetric": "fakequant",
    "replace_linears": "fakequant",
    "signed_range": "fakequant",
    "symmetric_qparams": "fakequant",
    "unsigned_range": "fakequant",
    "FloatPath": "verify",
    "SimulationReport": "verify",
    "TensorCheck": "verify",
    "assert_simulation_ok": "verify",
    "verify_simulation": "verify",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [  # noqa: PLE0604  (*_LAZY below adds the dict's keys: strings)
    "QUANTIZERS",
    "Option",
    "QuantConfig",
    "QuantOptionError",
    "parse_options",
    "quantize",
    "validate_bits",
    "validate_quantizer",
    *_LAZY,  # the lazily imported names: strings, the keys of _LAZY
]
