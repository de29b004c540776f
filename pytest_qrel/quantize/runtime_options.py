"""The typed options of the runtime methods (:mod:`pytest_qrel.runtimes`; imports no runtime, no torch).

Every runtime method accepts the :class:`RuntimeOptions` keys::

    threads:        null        # intra-op threads of the runtime (null: torch's thread count in this process)
    simulation:     null        # the suite's simulated quantizer of the same recipe (parity diagnostic), e.g. W8A8
    parity_images:  64          # ID test images the parity to the simulation is measured on
    latency:        true        # measure latency / working memory / size against FP32 in the same process

Per method (see docs/runtimes.md):

- ``onnxruntime`` (:class:`OnnxRuntimeOptions`): ``mode`` (static | dynamic), ``ops`` (linear: the
  simulation's recipe, every Linear's MatMul / Gemm with weights, outputs not re-quantized, attention
  matmuls left in float; all: ONNX Runtime's defaults), ``exporter`` (legacy | dynamo), ``opset``,
  ``calibration_method`` (minmax | entropy | percentile | distribution: ORT's calibrators),
  ``per_channel`` (true), ``graph_optimization`` (all | extended | basic | disabled), ``provider``
  (auto | cpu | cuda).
- ``openvino`` (:class:`OpenVinoOptions`): ``inference_precision`` (f32 | bf16 | f16, *required*:
  a default OpenVINO CPU run silently computes in bf16 on CPUs with AMX), ``model_type``
  (transformer | none), ``preset`` (null: NNCF's default for the model type | performance | mixed),
  ``fast_bias_correction`` (true), ``calibration_batch`` (32).
- ``torchao`` (:class:`TorchAoOptions`): ``config`` (int8_dynamic | int8_weight_only), ``compile``
  (false).
- ``artifact`` (:class:`ArtifactOptions`): ``path`` (*required*, relative to the suite file),
  ``runtime`` (onnxruntime | openvino | torch; null: from the file's suffix), and the runtime knobs
  ``graph_optimization``, ``provider`` (onnxruntime), ``inference_precision`` (openvino, required there).

Whether the runtime's package is installed is checked here, at collection, without importing it
(:func:`require`): a missing one is one :class:`~pytest_qrel.errors.QuantOptionError` whose fix is
the ``pip install "pytest-qrel[<extra>]"`` line.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, ClassVar, Literal

from ..errors import QuantOptionError
from ..options import Fail, Option, is_bool, positive_int, rule
from .options import MethodOptions, _choice

EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "onnxruntime": ("onnx", ("onnxruntime", "onnx")),
    "openvino": ("openvino", ("openvino", "nncf")),
    "torchao": ("torchao", ("torchao",)),
    "torch": ("", ()),
}
"""runtime -> (the pytest-qrel extra that installs it, the importable modules it needs)."""

QUANTIZING_ONLY: frozenset[str] = frozenset({"nncf"})
"""Modules of :data:`EXTRAS` a runtime needs to quantize a model but not to run a quantized file the
user hands over (``method: artifact``: an OpenVINO IR is read and compiled by ``openvino`` alone)."""

SUFFIX_RUNTIME: dict[str, str] = {".onnx": "onnxruntime", ".xml": "openvino", ".pt2": "torch", ".pt": "torch", ".pth": "torch"}
"""An artifact file's suffix -> the runtime that reads it (when ``runtime:`` is not given)."""


def install_line(runtime: str) -> str:
    """``pip install "pytest-qrel[onnx]"`` for ``runtime``."""
    return f'pip install "pytest-qrel[{EXTRAS[runtime][0]}]"'


def missing_modules(runtime: str, *, reads_file: bool = False) -> list[str]:
    """The modules ``runtime`` needs that cannot be imported here (found without importing them);
    ``reads_file``: only to run a quantized file (:data:`QUANTIZING_ONLY` left out)."""
    return [m for m in EXTRAS[runtime][1] if not (reads_file and m in QUANTIZING_ONLY) and importlib.util.find_spec(m) is None]


def require(method: str, runtime: str, *, reads_file: bool = False) -> None:
    """Raise the one-line error of a runtime whose package is not installed.

    Raises:
        QuantOptionError: on ``method`` (the suite field ``quantizers.<name>.method``), whose fix is
            the install command of the runtime's extra.
    """
    missing = missing_modules(runtime, reads_file=reads_file)
    if missing:
        raise QuantOptionError(
            "method", f"method '{method}' runs {runtime}, but {', '.join(missing)} is not installed", install_line(runtime),
        )


def _threads(value: Any) -> bool:
    return value is None or positive_int(value)


def _bool() -> Option:
    return rule(is_bool, "true or false")


def _suite_name(value: Any) -> bool:
    return value is None or (isinstance(value, str) and bool(value.strip()))


@dataclass(frozen=True)
class RuntimeOptions(MethodOptions):
    """The keys every runtime method accepts (module docstring)."""

    RUNTIME: ClassVar[str] = ""
    READS_FILE: ClassVar[bool] = False  # runs a quantized file the user hands over (quantizes nothing)
    threads: int | None = None
    simulation: str | None = None
    parity_images: int = 64
    latency: bool = True

    RULES: ClassVar[Mapping[str, Option]] = {
        "threads": rule(_threads, "a positive integer (or null: torch's thread count)"),
        "simulation": rule(_suite_name, "the name of a simulated quantizer of the suite (e.g. W8A8), or null"),
        "parity_images": rule(positive_int, "a positive integer"),
        "latency": _bool(),
    }

    @property
    def backend(self) -> str:
        """The runtime this method runs (``onnxruntime``, ``openvino``, ``torchao``, ``torch``)."""
        return self.RUNTIME

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, *, method: str) -> Any:
        options = super().parse(raw, method=method)
        require(method, options.backend, reads_file=cls.READS_FILE)
        return options

    def _need_int8(self, weight_bits: int, act_bits: int | None, *, act: bool) -> None:
        if weight_bits != 8:
            raise QuantOptionError("weight_bits", f"{self.RUNTIME} quantizes weights to 8 bits, not {weight_bits}",
                                   "set weight_bits: 8 (e.g. name the quantizer W8A8)")
        if act and act_bits != 8:
            raise QuantOptionError("act_bits", f"this {self.RUNTIME} configuration quantizes activations to 8 bits, "
                                   f"but act_bits is {act_bits}", "set act_bits: 8")
        if not act and act_bits is not None:
            raise QuantOptionError("act_bits", f"this {self.RUNTIME} configuration keeps activations in floating point, "
                                   f"but act_bits is {act_bits}", "set act_bits: null (e.g. name the quantizer W8A16)")


GraphOptimization = Literal["all", "extended", "basic", "disabled"]
Provider = Literal["auto", "cpu", "cuda"]

_ORT_KNOBS: dict[str, Option] = {
    "graph_optimization": _choice("all", "extended", "basic", "disabled"),
    "provider": _choice("auto", "cpu", "cuda"),
}


@dataclass(frozen=True)
class OnnxRuntimeOptions(RuntimeOptions):
    """``onnxruntime``: export the FP32 module to ONNX, quantize it with ONNX Runtime's own tool."""

    RUNTIME: ClassVar[str] = "onnxruntime"
    mode: Literal["static", "dynamic"] = "static"
    ops: Literal["linear", "all"] = "linear"
    exporter: Literal["legacy", "dynamo"] = "legacy"
    opset: int = 17
    calibration_method: Literal["minmax", "entropy", "percentile", "distribution"] = "minmax"
    per_channel: bool = True
    graph_optimization: GraphOptimization = "all"
    provider: Provider = "auto"

    RULES: ClassVar[Mapping[str, Option]] = {
        "mode": _choice("static", "dynamic"),
        "ops": _choice("linear", "all"),
        "exporter": _choice("legacy", "dynamo"),
        "opset": rule(lambda v: positive_int(v) and 13 <= v <= 23, "an ONNX opset from 13 to 23"),
        "calibration_method": _choice("minmax", "entropy", "percentile", "distribution"),
        "per_channel": _bool(),
        **_ORT_KNOBS,
    }

    def check_bits(self, weight_bits: int, act_bits: int | None) -> None:
        # dynamic quantization computes in int8 too: each activation is quantized at run time
        self._need_int8(weight_bits, act_bits, act=True)


@dataclass(frozen=True)
class OpenVinoOptions(RuntimeOptions):
    """``openvino``: NNCF post-training quantization of the converted model, compiled by OpenVINO."""

    RUNTIME: ClassVar[str] = "openvino"
    inference_precision: Literal["f32", "bf16", "f16"] | None = None
    model_type: Literal["transformer", "none"] = "transformer"
    preset: Literal["performance", "mixed"] | None = None
    fast_bias_correction: bool = True
    calibration_batch: int = 32

    RULES: ClassVar[Mapping[str, Option]] = {
        "inference_precision": rule(lambda v: v in ("f32", "bf16", "f16"), "'f32', 'bf16' or 'f16'"),
        "model_type": _choice("transformer", "none"),
        "preset": rule(lambda v: v is None or v in ("performance", "mixed"), "'performance', 'mixed' or null (NNCF's default)"),
        "fast_bias_correction": _bool(),
        "calibration_batch": rule(positive_int, "a positive integer"),
    }

    def check(self, fail: Fail) -> None:
        if self.inference_precision is None:
            raise fail("inference_precision", "OpenVINO's inference precision must be stated: by default "
                                   "its CPU plugin computes in bf16 on CPUs with AMX, silently",
                                   "add 'inference_precision: f32' (or bf16 / f16) to the options")

    def check_bits(self, weight_bits: int, act_bits: int | None) -> None:
        self._need_int8(weight_bits, act_bits, act=True)


TORCHAO_CONFIGS: dict[str, tuple[str, bool]] = {
    "int8_dynamic": ("Int8DynamicActivationInt8WeightConfig", True),
    "int8_weight_only": ("Int8WeightOnlyConfig", False),
}
"""``config:`` -> (torchao config class, whether activations are quantized). Only these run on a
CPU here: int4 weight-only needs a package PyPI has only as a placeholder, float8 needs hardware."""


@dataclass(frozen=True)
class TorchAoOptions(RuntimeOptions):
    """``torchao``: ``quantize_`` the FP32 module's ``nn.Linear`` layers in place (a copy)."""

    RUNTIME: ClassVar[str] = "torchao"
    config: Literal["int8_dynamic", "int8_weight_only"] = "int8_dynamic"
    compile: bool = False

    # torch's own thread count applies (the plugin sets it per worker): no ``threads`` key
    KEYS: ClassVar[tuple[str, ...] | None] = ("config", "compile", "simulation", "parity_images", "latency")

    RULES: ClassVar[Mapping[str, Option]] = {
        "config": _choice(*TORCHAO_CONFIGS),
        "compile": _bool(),
    }

    def check_bits(self, weight_bits: int, act_bits: int | None) -> None:
        self._need_int8(weight_bits, act_bits, act=TORCHAO_CONFIGS[self.config][1])


@dataclass(frozen=True)
class ArtifactOptions(RuntimeOptions):
    """``artifact``: a file the user hands over (``.onnx``, OpenVINO ``.xml`` + ``.bin``,
    ``torch.export`` ``.pt2``, or a state dict ``.pt`` / ``.pth`` for the suite's model)."""

    READS_FILE: ClassVar[bool] = True
    path: str | None = None
    runtime: Literal["onnxruntime", "openvino", "torch"] | None = None
    graph_optimization: GraphOptimization = "all"
    provider: Provider = "auto"
    inference_precision: Literal["f32", "bf16", "f16"] | None = None

    KEYS: ClassVar[tuple[str, ...] | None] = (
        "path", "runtime", "threads", "simulation", "parity_images", "latency", "graph_optimization", "provider", "inference_precision",
    )
    RULES: ClassVar[Mapping[str, Option]] = {
        "path": rule(lambda v: isinstance(v, str) and bool(v.strip()), "a path to the artifact file, relative to the suite file"),
        "runtime": rule(lambda v: v is None or v in ("onnxruntime", "openvino", "torch"), "'onnxruntime', 'openvino' or 'torch'"),
        "inference_precision": rule(lambda v: v is None or v in ("f32", "bf16", "f16"), "'f32', 'bf16' or 'f16'"),
        **_ORT_KNOBS,
    }

    def check(self, fail: Fail) -> None:
        if self.path is None:
            raise fail("path", "method 'artifact' needs the file to audit", "add 'path: <file>' (relative to the suite file)")
        if self.runtime is None and PurePath(self.path).suffix.lower() not in SUFFIX_RUNTIME:
            raise fail("runtime", f"cannot tell which runtime reads '{self.path}' from its suffix",
                                   "add 'runtime: onnxruntime', 'openvino' or 'torch', or use a .onnx / .xml / .pt2 / .pt file")
        if self.backend == "openvino" and self.inference_precision is None:
            raise fail("inference_precision", "an OpenVINO artifact's inference precision must be stated: by "
                                   "default its CPU plugin computes in bf16 on CPUs with AMX, silently",
                                   "add 'inference_precision: f32' (or bf16 / f16) to the options")

    @property
    def backend(self) -> str:
        return self.runtime or SUFFIX_RUNTIME[PurePath(str(self.path)).suffix.lower()]

    def check_bits(self, weight_bits: int, act_bits: int | None) -> None:
        """Any bits: the census checks them against what the file really computes."""
