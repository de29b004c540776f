"""``method: onnxruntime`` and ``.onnx`` artifacts: ONNX Runtime's own quantization and session.

Building (:func:`onnxruntime_method`): the FP32 module is exported (``exporter: legacy``, the
TorchScript exporter at ``opset`` 17, takes 1-3 s on the digits ViT; ``dynamo``, torch.export at
opset 18 or more, 9-14 s) and quantized by ``onnxruntime.quantization``:

- ``mode: static`` -- :func:`onnxruntime.quantization.quantize_static` in the QDQ format, calibrated
  on the suite's calibration images with ORT's ``calibration_method`` (its MinMax calibrator is
  the project's ``minmax``: activations asymmetric per tensor; its Percentile calibrator is a
  histogram, slow and not the project's ``percentile``);
- ``mode: dynamic`` -- :func:`onnxruntime.quantization.quantize_dynamic`: weights int8, each
  activation quantized when it arrives;
- ``ops: linear`` -- the simulation's recipe: only MatMul / Gemm nodes with a weight initializer
  (the model's Linear layers) are quantized, their outputs are not re-quantized
  (``OpTypesToExcludeOutputQuantization``), and matrix products of two activations (the attention
  matmuls) are left in float by node name. On the digits ViT this is within 2e-5 to 2.3e-4 mean
  |logit| of the project's minmax W8A8 simulation. ``ops: all`` -- ORT's defaults (QLinearMatMul
  in attention, QLinearSoftmax, QLinearAdd, ...): a different recipe, 0.056 from the simulation.

Running: an :class:`onnxruntime.InferenceSession` on the CPU provider (the CUDA provider when the
suite runs on a GPU and onnxruntime-gpu is installed, or ``provider: cuda``) with the unit's
threads and graph-optimisation level. Census: one profiled batch-1 run of a second session with
the same settings; every executed node (after ORT's fusions) is a :class:`~.census.Kernel`.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import QuantOptionError
from .census import Kernel, census_of, matmul_macs
from .identity import file_sha256, resolved_threads, versions
from .module import RuntimeModule
from .signature import DeclaredInput, check_inputs, fixed_batch_note, fixed_batch_run, probe, reason

INT8_MATRIX = frozenset({
    "MatMulInteger", "MatMulIntegerToFloat", "QLinearMatMul", "QGemm", "QLinearConv", "ConvInteger",
    "DynamicQuantizeMatMul", "QAttention", "QOrderedMatMul", "QOrderedGemm",
})
"""ORT kernels that multiply integer activations by integer weights."""
WEIGHT_ONLY_MATRIX = {"MatMulNBits": 4, "MatMulBnb4": 4, "MatMulFpQ4": 4}
"""ORT kernels with integer (here: 4-bit) weights and float activations -> their weight bits."""
FLOAT_MATRIX = frozenset({
    "MatMul", "Gemm", "Conv", "FusedMatMul", "FusedGemm", "FusedConv", "NhwcFusedConv", "ConvTranspose",
    "TransposeMatMul", "FusedMatMulActivation", "Attention", "MultiHeadAttention",
})
INTEGER_OTHER = frozenset({"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"})
_INT_TYPES = ("int8", "uint8")
LEVELS = {"all": "ORT_ENABLE_ALL", "extended": "ORT_ENABLE_EXTENDED", "basic": "ORT_ENABLE_BASIC", "disabled": "ORT_DISABLE_ALL"}
CALIBRATORS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile", "distribution": "Distribution"}
INPUT_NAME = "images"
CALIBRATION_CHUNK = 64


def _quiet() -> None:
    """ORT's sessions warn on stderr about graphs they could optimise further: errors only."""
    import onnxruntime as ort  # type: ignore[import-untyped]

    ort.set_default_logger_severity(3)


# ------------------------------------------------------------------------------------------ export


def export_onnx(model: Any, example: Any, path: Path, *, exporter: str, opset: int) -> int:
    """Export ``model`` (images (N, C, H, W) -> logits) to ``path`` with a dynamic batch axis;
    returns the opset written."""
    import warnings

    import torch

    model = copy.deepcopy(model).eval().cpu()  # a copy: the suite's FP32 module stays where it is
    example = example[:1].detach().cpu().float()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            opset = max(opset, 18)
            batch = torch.export.Dim("batch", min=1)
            torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=opset, input_names=[INPUT_NAME], verbose=False,
                              output_names=["logits"], dynamic_shapes=({0: batch},), external_data=False)
        else:
            torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=["logits"], dynamic_axes={INPUT_NAME: {0: "batch"}, "logits": {0: "batch"}})
    return opset


def activation_matmuls(path: Path) -> list[str]:
    """Names of the MatMul / Gemm nodes whose operands are both activations (no initializer):
    the attention matmuls, which the simulation leaves in float."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and not any(i in constants for i in n.input)]


class _Reader:
    """ORT's CalibrationDataReader protocol over the calibration images, in chunks."""

    def __init__(self, images: np.ndarray, name: str) -> None:
        self.all = [{name: images[i : i + CALIBRATION_CHUNK]} for i in range(0, len(images), CALIBRATION_CHUNK)]
        self.batches = iter(self.all)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.batches, None)

    def rewind(self) -> None:
        self.batches = iter(self.all)


def quantize_onnx(fp32: Path, out: Path, options: Any, calibration: np.ndarray) -> None:
    """Quantize the exported ``fp32`` model into ``out`` with ONNX Runtime's own tool (module docstring)."""
    from onnxruntime.quantization import (  # type: ignore[import-untyped]
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    previous = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # the tool logs "consider pre-processing" on every call
    try:
        linear = options.ops == "linear"
        ops = ["MatMul", "Gemm"] if linear else None
        exclude = activation_matmuls(fp32) if linear else []
        if options.mode == "dynamic":
            quantize_dynamic(str(fp32), str(out), op_types_to_quantize=ops, nodes_to_exclude=exclude,
                             per_channel=options.per_channel, weight_type=QuantType.QInt8)
            return
        if len(calibration) == 0:
            raise QuantOptionError("calibration", "static ONNX Runtime quantization got no calibration images",
                                   "give at least one calibration image (calibration: {samples: 256})")
        extra = {"OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]} if linear else {}
        quantize_static(
            str(fp32), str(out), _Reader(calibration, _input_name(fp32)), quant_format=QuantFormat.QDQ,
            op_types_to_quantize=ops, nodes_to_exclude=exclude, per_channel=options.per_channel,
            activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
            calibrate_method=getattr(CalibrationMethod, CALIBRATORS[options.calibration_method]), extra_options=extra,
        )
    finally:
        logging.getLogger().setLevel(previous)


def _input_name(path: Path) -> str:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return next(i.name for i in graph.input if i.name not in inits)


# ------------------------------------------------------------------------------------------ session


def providers(choice: str, device: str) -> list[str]:
    """The execution providers for ``provider:`` (auto: CUDA when the suite runs on a GPU and
    onnxruntime-gpu offers it, else CPU).

    Raises:
        QuantOptionError: ``provider: cuda`` without the CUDA provider.
    """
    import onnxruntime as ort  # type: ignore[import-untyped]

    available = ort.get_available_providers()
    cuda = "CUDAExecutionProvider" in available
    if choice == "cuda" and not cuda:
        raise QuantOptionError("provider", f"ONNX Runtime has no CUDA provider here (available: {', '.join(available)})",
                               "install onnxruntime-gpu, or use provider: auto / cpu")
    if choice == "cuda" or (choice == "auto" and cuda and str(device).startswith("cuda")):
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def session_options(options: Any, *, profile_dir: str | None = None) -> Any:
    import onnxruntime as ort  # type: ignore[import-untyped]

    so = ort.SessionOptions()
    so.intra_op_num_threads = resolved_threads(options.threads)
    so.inter_op_num_threads = 1
    so.graph_optimization_level = getattr(ort.GraphOptimizationLevel, LEVELS[options.graph_optimization])
    so.log_severity_level = 3
    if profile_dir is not None:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "qrel_ort_profile")
    return so


def load_session(model: bytes | str, options: Any, device: str, *, profile_dir: str | None = None, source: str = "the model") -> Any:
    """An InferenceSession of ``model`` (bytes or a path) with the unit's settings; ``source``
    names it in an error (the artifact's path).

    Raises:
        QuantOptionError: on ``path``: ONNX Runtime cannot read the model.
    """
    import onnxruntime as ort  # type: ignore[import-untyped]

    _quiet()
    try:
        return ort.InferenceSession(model, session_options(options, profile_dir=profile_dir), providers=providers(options.provider, device))
    except QuantOptionError:
        raise
    except Exception as exc:  # noqa: BLE001 - ORT raises its own Fail / InvalidGraph / InvalidProtobuf types
        raise QuantOptionError("path", f"ONNX Runtime cannot load {source}: {reason(exc)}",
                               "give the ONNX file as saved (e.g. by torch.onnx.export, then onnxruntime.quantization); "
                               "a truncated or edited copy does not load") from None


def _shape(entry: Any) -> tuple[str, list[int]]:
    ((dtype, shape),) = dict(entry).items()
    return str(dtype), [int(d) for d in shape]


def kernel_of(op: str, inputs: list[tuple[str, list[int]]], outputs: list[tuple[str, list[int]]]) -> Kernel:
    """A profiled ORT node as a census row (how it computes, its multiply-accumulates)."""
    out = outputs[0][1] if outputs else []
    integer_in = any(t in _INT_TYPES for t, _ in inputs)
    if op in INT8_MATRIX or op in WEIGHT_ONLY_MATRIX or op in FLOAT_MATRIX:
        if "Conv" in op:
            weights = [s for _, s in inputs[1:] if len(s) == 4]
            k = int(np.prod(weights[0][1:])) if weights else (inputs[0][1][1] if inputs and len(inputs[0][1]) > 1 else 0)
        else:
            k = inputs[0][1][-1] if inputs and inputs[0][1] else 0
        macs = matmul_macs(out, k)
        if op in INT8_MATRIX:
            return Kernel(op, "int8", macs, integer=True, weight_bits=8)
        if op in WEIGHT_ONLY_MATRIX:
            return Kernel(op, "weight_only", macs, integer=True, weight_bits=WEIGHT_ONLY_MATRIX[op])
        return Kernel(op, "float", macs)
    integer = op.startswith("QLinear") or op in INTEGER_OTHER or integer_in
    return Kernel(op, "other", integer=integer)


def profile_census(model: bytes | str, options: Any, device: str, example: np.ndarray, *, notes: str = "", batch: int = 1) -> dict[str, Any]:
    """Run one image (``batch`` copies of it, for a fixed-batch model) through a profiled session
    and count what executed (:mod:`.census`), per image."""
    images = np.ascontiguousarray(np.repeat(example[:1], batch, axis=0))
    with tempfile.TemporaryDirectory(prefix="qrel-ort-") as tmp:
        sess = load_session(model, options, device, profile_dir=tmp)
        try:
            sess.run(None, {sess.get_inputs()[0].name: images})
        except Exception as exc:  # noqa: BLE001 - wrong input shape / dtype for the suite's images
            raise QuantOptionError("path", f"the ONNX model does not run on the suite's preprocessed images "
                                   f"{tuple(images.shape)}: {reason(exc)}",
                                   "export the model the suite names, with its input (N, C, H, W) in float32") from None
        trace = Path(sess.end_profiling())
        events = json.loads(trace.read_text())
    kernels = []
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        args = e.get("args", {})
        inputs = [_shape(x) for x in args.get("input_type_shape", [])]
        outputs = [_shape(x) for x in args.get("output_type_shape", [])]
        kernels.append(kernel_of(str(args.get("op_name", "?")), inputs, outputs))
    return census_of("onnxruntime", kernels, images=batch, notes=notes)


def ort_module(model: bytes | str, options: Any, device: str, example: np.ndarray, identity: dict[str, Any], *, notes: str = "",
               session: Any = None, fixed_batch: int | None = None, size: int | None = None) -> RuntimeModule:
    """The :class:`RuntimeModule` of an ONNX model, its bytes or its path (its session, census and
    identity); ``session``: one opened already; ``fixed_batch``: the model takes exactly that many
    images (:mod:`.signature`); ``size``: its bytes on disk (default: ``len(model)``)."""
    sess = session if session is not None else load_session(model, options, device)
    name = sess.get_inputs()[0].name
    notes = "; ".join(n for n in (notes, fixed_batch_note(fixed_batch)) if n)
    census = profile_census(model, options, device, example, notes=notes, batch=fixed_batch or 1)
    identity = {**identity, "provider": sess.get_providers()[0], "threads": resolved_threads(options.threads),
                "graph_optimization": options.graph_optimization}

    def run(batch: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: batch})[0]

    info = {"identity": identity, "census": census, "artifact_bytes": len(model) if size is None else size}
    return RuntimeModule(run if not fixed_batch else fixed_batch_run(run, fixed_batch), info, keep=sess)


# ------------------------------------------------------------------------------------------ methods


def onnxruntime_method(model: Any, config: Any, calibration: Any, *, labels: Any = None) -> RuntimeModule:
    """``method: onnxruntime`` (module docstring): export, quantize, open a session."""
    options = config.options
    images = calibration.detach().cpu().float().numpy()
    device = str(calibration.device)
    with tempfile.TemporaryDirectory(prefix="qrel-ort-") as tmp:
        fp32, int8 = Path(tmp) / "model.fp32.onnx", Path(tmp) / "model.int8.onnx"
        opset = export_onnx(model, calibration, fp32, exporter=options.exporter, opset=options.opset)
        quantize_onnx(fp32, int8, options, images)
        data = int8.read_bytes()
        sha = file_sha256(int8)
    identity = {"runtime": "onnxruntime", "versions": versions("onnxruntime"), "files": {"model.int8.onnx": sha},
                "exporter": options.exporter, "opset": opset, "mode": options.mode, "ops": options.ops,
                "calibration_method": options.calibration_method if options.mode == "static" else None}
    return ort_module(data, options, device, images[:1], identity)


ONNX_TYPES = {"float": "float32", "double": "float64"}
"""ONNX Runtime's element type names that are not NumPy's (``tensor(float)`` is float32)."""
EXPORT_HINT = "torch.onnx.export(model, (images,), path, input_names=['images'], dynamic_axes={'images': {0: 'batch'}})"


def declared_inputs(sess: Any) -> list[DeclaredInput]:
    """The inputs ``sess`` expects (:class:`~.signature.DeclaredInput`)."""
    out = []
    for i in sess.get_inputs():
        kind = str(i.type).removeprefix("tensor(").removesuffix(")")
        shape = None if i.shape is None else tuple(d if isinstance(d, int) else (str(d) if d else None) for d in i.shape)
        out.append(DeclaredInput(str(i.name), shape, ONNX_TYPES.get(kind, kind)))
    return out


def onnx_artifact(paths: list[Path], options: Any, device: str, example: np.ndarray, identity: dict[str, Any], classes: int) -> RuntimeModule:
    """A user's ``.onnx`` file (``paths[0]``; the rest: its external data files) as a runtime
    module: its declared input and its logits on one small batch are checked against the suite's
    images and the FP32 model's ``classes`` first (:mod:`.signature`).

    Raises:
        QuantOptionError: on ``path``: not an ONNX model ONNX Runtime can load, or not one that
        maps the suite's preprocessed images to its classes.
    """
    path = paths[0]
    model: bytes | str = path.read_bytes() if len(paths) == 1 else str(path)  # external data: ORT finds it beside the path
    sess = load_session(model, options, device, source=str(path))
    fixed = check_inputs(path, declared_inputs(sess), example.shape[1:], EXPORT_HINT)
    name = sess.get_inputs()[0].name
    fixed = probe(path, lambda batch: sess.run(None, {name: batch})[0], example, fixed, classes, EXPORT_HINT)
    return ort_module(model, options, device, example, identity, session=sess, fixed_batch=fixed,
                      size=sum(p.stat().st_size for p in paths))
