"""Quantization methods: a registry keyed by the ``method:`` of a quantizer in the suite.

``quantize(model, spec, calibration)`` returns a quantized deep copy of ``model``; each method is one
entry in :data:`QUANTIZERS` built from the reusable parts of :mod:`.fakequant`, and
:func:`verify_simulation` checks that a simulated model really computes on its integer grids.
"""

# Importing a method module registers its entries (one module per method family).
from . import minmax as _minmax  # noqa: F401
from . import observers as _observers  # noqa: F401
from . import qat as _qat  # noqa: F401
from . import raana as _raana  # noqa: F401
from . import repq_vit as _repq_vit  # noqa: F401
from . import smoothquant as _smoothquant  # noqa: F401
from .base import QUANTIZERS, Option, parse_options, quantize, validate_bits
from .fakequant import (
    ActQuantizer,
    FakeQuantLinear,
    QuantModule,
    asymmetric_qparams,
    calibrate,
    fake_quantize_reference,
    freeze,
    observe,
    quantize_weight_per_channel_symmetric,
    replace_linears,
    signed_range,
    symmetric_qparams,
    unsigned_range,
)
from .verify import SimulationReport, TensorCheck, assert_simulation_ok, verify_simulation

__all__ = [
    "QUANTIZERS",
    "ActQuantizer",
    "FakeQuantLinear",
    "Option",
    "QuantModule",
    "SimulationReport",
    "TensorCheck",
    "assert_simulation_ok",
    "asymmetric_qparams",
    "calibrate",
    "fake_quantize_reference",
    "freeze",
    "observe",
    "parse_options",
    "quantize",
    "quantize_weight_per_channel_symmetric",
    "replace_linears",
    "signed_range",
    "symmetric_qparams",
    "unsigned_range",
    "validate_bits",
    "verify_simulation",
]
