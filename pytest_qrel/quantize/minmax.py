"""``minmax``: the baseline post-training quantization of the project.

What is quantized (simulated, "fake" quantization in floating point):

- every ``nn.Linear`` of the model: for a timm ViT ``qkv``, ``proj``, ``fc1``, ``fc2`` of every
  block **and the classification head**;
- its **weight**: symmetric, per output channel, restricted signed range
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (zero_point 0), ``scale = absmax_row / (2^(b-1) - 1)`` (a tiny
  epsilon for all-zero rows), fake-quantized ONCE at freeze time with
  ``torch.fake_quantize_per_channel_affine``;
- its **input activation**: asymmetric, per tensor, static. The range is the min and max over all
  calibration images, observed on the FP32 model (min clamped to <= 0, max to >= 0 so zero is
  exact); unsigned range ``[0, 2^b - 1]``; ``zero_point = clamp(round(-min / scale))``; applied with
  ``torch.fake_quantize_per_tensor_affine`` in every forward.

Left in FP32 by ``minmax``: the patch-embedding ``Conv2d``, the attention matmuls (``q @ k^T``,
``attn @ v``) and softmax, LayerNorm, GELU, residual additions, position embeddings and the class
token. Later methods (RepQ-ViT, ...) quantize more.

``weight_bits`` and ``act_bits`` are independent (2..8); ``act_bits: null`` gives weight-only
quantization (no calibration forward is then needed).

Options:
    ``batch_size`` (positive int, default 64): images per calibration forward pass. It only trades
    memory for speed; min/max does not depend on batching.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from ..spec.schema import QuantizerSpec
from .base import QUANTIZERS, Option, parse_options, positive_int, spec_error
from .fakequant import CALIBRATION_BATCH_SIZE, FakeQuantLinear, calibrate, replace_linears

MINMAX_OPTIONS = {
    "batch_size": Option(CALIBRATION_BATCH_SIZE, positive_int, "a positive integer"),
}


@QUANTIZERS.register(
    "minmax",
    options=tuple(MINMAX_OPTIONS),
    summary="static min/max PTQ of every nn.Linear: weights symmetric per channel, inputs asymmetric per tensor",
)
def minmax(model: nn.Module, spec: QuantizerSpec, calibration: Tensor, *, labels: Tensor | None = None) -> nn.Module:
    """Return a quantized deep copy of ``model`` (eval mode); ``model`` itself is not modified."""
    opts = parse_options(spec, MINMAX_OPTIONS)
    if spec.act_bits is not None and calibration.shape[0] == 0:
        raise spec_error(spec, "calibration.samples", "no calibration images to observe activations on",
                         "use calibration.samples >= 1")
    qmodel = copy.deepcopy(model).eval()
    replaced = replace_linears(
        qmodel,
        lambda name, linear: FakeQuantLinear(linear, weight_bits=spec.weight_bits, act_bits=spec.act_bits),
    )
    if not replaced:
        raise spec_error(spec, "method", "the model has no nn.Linear layer for 'minmax' to quantize",
                         "use a method that supports this architecture")
    calibrate(qmodel, calibration, batch_size=opts["batch_size"])
    return qmodel
