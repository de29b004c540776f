"""``method: torchao``: torchao's ``quantize_`` on a copy of the FP32 module.

``config: int8_dynamic`` is ``Int8DynamicActivationInt8WeightConfig`` (weights int8 per output
channel, activations quantized per row when they arrive, products by ``torch._int_mm``);
``int8_weight_only`` is ``Int8WeightOnlyConfig`` (weights int8, dequantized and multiplied in
float on a CPU). Only ``nn.Linear`` layers are quantized: the patch embedding, LayerNorm, GELU and
the attention stay in float. torchao's grid is not the project's: scale = absmax / 127.5 and codes
in [-128, 127] (multiplied by 1 / scale), so its parity to the simulation is judged against the
simulation's noise floor, never bit for bit. ``compile: true`` runs the quantized module through
:func:`torch.compile` (eager int8 is 1.4-2.5x slower than FP32 on a CPU, compiled about 1.05x).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Iterator
from typing import Any

from ..quantize.runtime_options import TORCHAO_CONFIGS
from .identity import resolved_threads, versions
from .module import attach
from .torch_census import torch_census


@contextlib.contextmanager
def quiet_pytree() -> Iterator[None]:
    """Torch's pytree logger at ERROR: torchao 0.18 registers an Enum as a pytree constant, which
    torch 2.14 answers with a deprecation warning on stderr whenever torchao is imported (printed
    after the run's summary, or under a failing check's captured output)."""
    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def import_torchao() -> Any:
    """``torchao.quantization``, imported quietly (:func:`quiet_pytree`)."""
    with quiet_pytree():
        import torchao.quantization as tq  # type: ignore[import-untyped]
    return tq


def state_dict_bytes(module: Any) -> int:
    """Bytes of ``torch.save(module.state_dict())`` (what a torch deployment ships)."""
    import torch

    buffer = io.BytesIO()
    torch.save(module.state_dict(), buffer)
    return buffer.tell()


def torchao_method(model: Any, config: Any, calibration: Any, *, labels: Any = None) -> Any:
    """``method: torchao`` (module docstring); torchao needs no calibration images."""
    import torch

    tq = import_torchao()
    options = config.options
    quantized = copy.deepcopy(model).eval()
    cls_name, _ = TORCHAO_CONFIGS[options.config]
    tq.quantize_(quantized, getattr(tq, cls_name)())
    census = torch_census(quantized, calibration[:1], runtime="torchao")
    size = state_dict_bytes(quantized)
    runner: Any = quantized
    if options.compile:
        runner = torch.compile(quantized)
    identity = {"runtime": "torchao", "versions": versions("torchao"), "config": options.config, "compile": options.compile,
                "threads": resolved_threads(None), "device": str(calibration.device)}
    return attach(runner, {"identity": identity, "census": census, "artifact_bytes": size})
