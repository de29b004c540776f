"""``method: openvino`` and OpenVINO IR artifacts: NNCF post-training quantization, compiled by OpenVINO.

Building (:func:`openvino_method`): :func:`openvino.convert_model` converts the FP32 module,
:func:`nncf.quantize` quantizes it on the suite's calibration images (``model_type: transformer``
keeps LayerNorm, GELU and the residual adds in float and quantizes the first attention matmul;
``preset``; ``fast_bias_correction``; the images are fed in batches of ``calibration_batch``),
and the IR is saved (``.xml`` + ``.bin``: hashed and sized) and compiled for the CPU with the
unit's ``INFERENCE_PRECISION_HINT`` and ``INFERENCE_NUM_THREADS``. The precision is a required
option: on a CPU with AMX the CPU plugin's default is bf16, so an "FP32" model would silently run
in bf16 (0.0074 mean |logit| from FP32 on the digits ViT). NNCF's own torch fake-quant model and
the OpenVINO int8 model built from it differ by 0.013 (12 % of the quantization error): the gate
audits the compiled model.

Census (:func:`runtime_census`): the layers of the compiled *runtime* model of a batch-1 copy,
with the precision each runs in (``runtimePrecision``: ``i8`` / ``u8`` for integer kernels).
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QuantOptionError
from .census import Kernel, census_of, matmul_macs
from .identity import file_sha256, resolved_threads, versions
from .module import RuntimeModule
from .signature import DeclaredInput, check_inputs, fixed_batch_note, fixed_batch_run, probe, reason

MATRIX_LAYERS = frozenset({"FullyConnected", "MatMul", "Convolution", "GroupConvolution", "Deconvolution", "ScaledDotProductAttention"})
NOT_KERNELS = frozenset({"Const", "Input", "Output", "Parameter", "Result"})
INTEGER_PRECISIONS = ("i8", "u8", "i4", "u4")
PRECISIONS = {"f32": "f32", "bf16": "bf16", "f16": "f16"}


def compile_options(options: Any) -> dict[str, Any]:
    return {"INFERENCE_PRECISION_HINT": PRECISIONS[options.inference_precision], "INFERENCE_NUM_THREADS": resolved_threads(options.threads)}


def _info(op: Any, key: str) -> str:
    info = op.get_rt_info()
    return info[key].astype(str) if key in info else ""


def _precision(compiled: Any) -> str:
    """The compiled model's inference precision as OpenVINO names it (``f32``, ``bf16``)."""
    value = compiled.get_property("INFERENCE_PRECISION_HINT")
    return str(value.get_type_name()) if hasattr(value, "get_type_name") else str(value)


def _static(shape: Any) -> list[int] | None:
    return [d.get_length() for d in shape] if shape.is_static else None


def matrix_macs(model: Any) -> list[tuple[str, str, float, float]]:
    """``(friendly name, type, MACs at the layer's precision, MACs in float)`` of every matrix op of
    a static-shape OpenVINO model. A ``ScaledDotProductAttention`` op counts q k^T at its layer's
    precision and softmax(.) v in float: NNCF quantizes only the first attention matmul."""
    out = []
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        shapes = [_static(op.input(i).get_partial_shape()) for i in range(op.get_input_size())]
        result = _static(op.get_output_partial_shape(0)) if op.get_output_size() else None
        if kind not in MATRIX_LAYERS or not result or not shapes[0]:
            continue
        if kind == "ScaledDotProductAttention" and len(shapes) >= 3 and shapes[1] and shapes[2]:
            q, k, v = shapes[0], shapes[1], shapes[2]
            rows = float(np.prod(q[:-1]))
            out.append((op.get_friendly_name(), kind, rows * k[-2] * q[-1], rows * k[-2] * v[-1]))
            continue
        if "Convolution" in kind and len(shapes) > 1 and shapes[1]:
            inner = int(np.prod(shapes[1][1:]))
        else:
            transposed = bool(op.get_attributes().get("transpose_a", False)) if kind == "MatMul" else False
            inner = shapes[0][-2] if transposed else shapes[0][-1]
        out.append((op.get_friendly_name(), kind, matmul_macs(result, inner), 0.0))
    return out


def runtime_census(model: Any, options: Any, example: np.ndarray, *, batch: int = 1, notes: str = "") -> dict[str, Any]:
    """The census of ``model`` compiled with the unit's settings at batch 1 (``batch`` for a
    fixed-batch model; module docstring): every layer of the runtime model, and the
    multiply-accumulates of the original model's matrix ops at the precision of the runtime layer
    each was fused into, per image."""
    import openvino as ov  # type: ignore[import-untyped]

    clone = model.clone()
    clone.reshape({clone.inputs[0]: [batch, *example.shape[1:]]})
    compiled = ov.Core().compile_model(clone, "CPU", compile_options(options))
    kernels = []
    precision_of: dict[str, tuple[str, str]] = {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        layer = _info(op, "layerType") or op.get_type_name()
        if layer in NOT_KERNELS:
            continue
        precision = _info(op, "runtimePrecision")
        for name in _info(op, "originalLayersNames").split(","):
            precision_of[name] = (layer, precision)
        integer = precision in INTEGER_PRECISIONS or layer == "FakeQuantize"
        kernels.append(Kernel(layer, "other", integer=integer))
    unmapped = 0
    for name, kind, macs, float_macs in matrix_macs(clone):
        found = precision_of.get(name) or next((v for k, v in precision_of.items() if k.startswith(name + "/")), None)
        unmapped += found is None  # the plugin renamed it: a fused dequantization keeps the name as a prefix
        layer, precision = found or (kind, "")
        integer = precision in INTEGER_PRECISIONS
        kernels.append(Kernel(layer, "int8" if integer else "float", macs, integer=integer, weight_bits=8 if integer else None, counted=False))
        if float_macs:
            kernels.append(Kernel(layer, "float", float_macs, counted=False))
    notes = "; ".join(n for n in (f"compiled for CPU, inference precision {_precision(compiled)}", notes) if n)
    if unmapped:
        notes += f"; {unmapped} matrix ops not found in the runtime model (counted as float)"
    return census_of("openvino", kernels, images=batch, notes=notes)


def ov_module(model: Any, options: Any, example: np.ndarray, identity: dict[str, Any], size: int, *,
              fixed_batch: int | None = None, compiled: Any = None) -> RuntimeModule:
    """The :class:`RuntimeModule` of an OpenVINO model compiled with the unit's settings
    (``compiled``: already); ``fixed_batch``: the model takes exactly that many images (:mod:`.signature`)."""
    import openvino as ov  # type: ignore[import-untyped]

    if compiled is None:
        compiled = ov.Core().compile_model(model, "CPU", compile_options(options))
    output = compiled.output(0)
    census = runtime_census(model, options, example, batch=fixed_batch or 1, notes=fixed_batch_note(fixed_batch))
    identity = {**identity, "provider": "CPU", "threads": resolved_threads(options.threads),
                "precision": _precision(compiled)}

    def run(batch: np.ndarray) -> np.ndarray:
        return np.array(compiled(batch)[output], copy=True)

    return RuntimeModule(run if not fixed_batch else fixed_batch_run(run, fixed_batch),
                         {"identity": identity, "census": census, "artifact_bytes": size}, keep=compiled)


def _save(model: Any, folder: Path) -> tuple[dict[str, str], int]:
    import openvino as ov  # type: ignore[import-untyped]

    xml = folder / "model.int8.xml"
    ov.save_model(model, str(xml), compress_to_fp16=False)
    files = [xml, xml.with_suffix(".bin")]
    return {f.name: file_sha256(f) for f in files}, sum(f.stat().st_size for f in files)


def openvino_method(model: Any, config: Any, calibration: Any, *, labels: Any = None) -> RuntimeModule:
    """``method: openvino`` (module docstring)."""
    import warnings

    import nncf  # type: ignore[import-untyped]
    import openvino as ov  # type: ignore[import-untyped]
    import torch

    options = config.options
    if len(calibration) == 0:
        raise QuantOptionError("calibration", "NNCF quantization got no calibration images", "give at least one calibration image")
    images = calibration.detach().cpu().float().numpy()
    nncf.set_log_level(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        fp32 = ov.convert_model(copy.deepcopy(model).eval().cpu(), example_input=calibration[:1].detach().cpu().float())
    step = options.calibration_batch
    batches = [images[i : i + step] for i in range(0, len(images), step)]
    kwargs: dict[str, Any] = {"subset_size": len(batches), "fast_bias_correction": options.fast_bias_correction}
    if options.model_type == "transformer":
        kwargs["model_type"] = nncf.ModelType.TRANSFORMER
    if options.preset is not None:
        kwargs["preset"] = getattr(nncf.QuantizationPreset, options.preset.upper())
    quantized = nncf.quantize(fp32, nncf.Dataset(batches), **kwargs)
    with tempfile.TemporaryDirectory(prefix="qrel-ov-") as tmp:
        files, size = _save(quantized, Path(tmp))
    identity = {"runtime": "openvino", "versions": versions("openvino"), "files": files, "model_type": options.model_type,
                "preset": options.preset}
    return ov_module(quantized, options, images[:1], identity, size)


EXPORT_HINT = "openvino.convert_model(model, example_input=images), then nncf.quantize and openvino.save_model"


def declared_inputs(model: Any) -> list[DeclaredInput]:
    """The inputs an OpenVINO model expects (:class:`~.signature.DeclaredInput`)."""
    out = []
    for port in model.inputs:
        partial = port.get_partial_shape()
        shape = None if partial.rank.is_dynamic else tuple(d.get_length() if d.is_static else None for d in partial)
        name = next(iter(port.get_names()), port.get_node().get_friendly_name())
        out.append(DeclaredInput(str(name), shape, np.dtype(port.get_element_type().to_dtype()).name))
    return out


def openvino_artifact(paths: list[Path], options: Any, example: np.ndarray, identity: dict[str, Any], classes: int) -> RuntimeModule:
    """A user's OpenVINO IR (``.xml`` + ``.bin``) as a runtime module: its declared input and its
    logits on one small batch are checked against the suite's images and the FP32 model's
    ``classes`` first (:mod:`.signature`).

    Raises:
        QuantOptionError: on ``path``: OpenVINO cannot read or compile the IR, or it does not map
        the suite's preprocessed images to its classes.
    """
    import openvino as ov  # type: ignore[import-untyped]

    xml = paths[0]
    fix = "give the .xml of an IR saved by openvino.save_model, with the .bin saved with it beside it (both as written)"
    try:
        model = ov.Core().read_model(str(xml))
    except Exception as exc:  # noqa: BLE001 - OpenVINO raises RuntimeError with a multi-line report
        raise QuantOptionError("path", f"OpenVINO cannot read {xml}: {reason(exc)}", fix) from None
    fixed = check_inputs(xml, declared_inputs(model), example.shape[1:], EXPORT_HINT)
    try:
        compiled = ov.Core().compile_model(model, "CPU", compile_options(options))
    except Exception as exc:  # noqa: BLE001 - as above
        raise QuantOptionError("path", f"OpenVINO cannot compile {xml} for its CPU plugin: {reason(exc)}", fix) from None
    output = compiled.output(0)
    fixed = probe(xml, lambda batch: compiled(batch)[output], example, fixed, classes, EXPORT_HINT)
    return ov_module(model, options, example, identity, sum(p.stat().st_size for p in paths), fixed_batch=fixed, compiled=compiled)
