"""Where a quantizer error belongs in a suite: :class:`~pytest_qrel.errors.QuantOptionError` (raised by
:mod:`pytest_qrel.quantize`, which knows no YAML) -> a located :class:`~pytest_qrel.errors.SpecError`.

The error's ``option`` maps onto the field of the quantizer that holds it::

    method / weight_bits / act_bits   ->  quantizers.<name>.<option>
    calibration                       ->  quantizers.<name>.calibration.samples
    any other key                     ->  quantizers.<name>.options.<key>
"""

from __future__ import annotations

from typing import Any

from ..errors import QuantOptionError, SpecError

SETTINGS = ("method", "weight_bits", "act_bits")


def quantizer_field(name: str, option: str) -> str:
    """The suite field of ``option`` of quantizer ``name`` (table in the module docstring)."""
    if option in SETTINGS:
        return f"quantizers.{name}.{option}"
    if option == "calibration":
        return f"quantizers.{name}.calibration.samples"
    return f"quantizers.{name}.options.{option}"


def located_error(err: QuantOptionError, name: str, *, file: Any = None, line: int | None = None) -> SpecError:
    """``err`` as a :class:`SpecError` of quantizer ``name`` at ``file:line`` (the caller knows where
    the quantizer, or the offending key, was written)."""
    return SpecError(err.problem, file=file, line=line, field=quantizer_field(name, err.option), fix=err.fix)


def spec_error_for(err: QuantOptionError, spec: Any) -> SpecError:
    """``err`` located at the quantizer ``spec`` (a :class:`~pytest_qrel.spec.schema.QuantizerSpec`) was written."""
    where = getattr(spec, "where", None)
    return located_error(err, spec.name, file=where.file if where else None, line=where.line if where else None)
