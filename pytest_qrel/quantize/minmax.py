"""``minmax``: the baseline post-training quantization of the project.

What is quantized (simulated, "fake" quantization in floating point), with the default options:

- every ``nn.Linear`` of the model: for a timm ViT ``qkv``, ``proj``, ``fc1``, ``fc2`` of every
  block **and the classification head** (``head: fp32`` keeps the head in FP32);
- its **weight**: symmetric, per output channel, restricted signed range
  ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (zero_point 0), ``scale = absmax_row / (2^(b-1) - 1)`` (a tiny
  epsilon for all-zero rows), fake-quantized ONCE at freeze time with
  ``torch.fake_quantize_per_channel_affine``;
- its **input activation**: asymmetric, per tensor, static. The range is the min and max over all
  calibration images, observed on the FP32 model (min clamped to <= 0, max to >= 0 so zero is
  exact); unsigned range ``[0, 2^b - 1]``; ``zero_point = clamp(round(-min / scale))``; applied with
  ``torch.fake_quantize_per_tensor_affine`` in every forward.

Left in FP32 by ``minmax`` (by default): the patch-embedding ``Conv2d``, the attention matmuls
(``q @ k^T``, ``attn @ v``) and softmax, LayerNorm, GELU, residual additions, position embeddings and
the class token. Later methods (RepQ-ViT, ...) quantize more.

``weight_bits`` and ``act_bits`` are independent (2..8); ``act_bits: null`` gives weight-only
quantization (no calibration forward is then needed).

Options (:class:`~pytest_qrel.quantize.options.LinearQuantOptions`; defaults first):
    ``weight_granularity`` (``per_channel`` | ``per_tensor``): one weight scale per output channel, or
    one per layer.
    ``weight_symmetric`` (``true`` | ``false``): restricted signed range with zero_point 0, or the
    asymmetric unsigned range ``[0, 2^b - 1]`` from each channel's (tensor's) min and max.
    ``act_symmetric`` (``false`` | ``true``): activations asymmetric as above, or symmetric
    (``scale = max(|min|, |max|) / (2^(b-1) - 1)``, zero_point 0).
    ``head`` (``quantized`` | ``fp32``): the classifier head ``nn.Linear`` (timm's
    ``get_classifier()``, else ``model.head``) is quantized like every other Linear by default;
    ``fp32`` leaves it an ``nn.Linear`` with its original weights and input.
    ``patch_embed`` (``fp32`` | ``quantized``): ``quantized`` replaces the patch-embedding ``Conv2d``
    by a :class:`~.fakequant.FakeQuantConv2d` (weight per output channel or per tensor as
    ``weight_granularity`` says, input per tensor, at ``weight_bits`` / ``act_bits``); an error (option
    ``patch_embed``) if the model has none.
    ``batch_size`` (positive int, default 64): images per calibration forward pass. It only trades
    memory for speed; min/max does not depend on batching.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import Tensor, nn

from ..errors import QuantOptionError
from .base import QuantConfig, calibration_error, no_linear_error
from .fakequant import ActQuantizer, FakeQuantConv2d, FakeQuantLinear, calibrate, replace_linears, weight_quantizer_for
from .options import LinearQuantOptions
from .selection import ModuleSelection, select_modules

InputQuantizerFactory = Callable[[int], nn.Module]
"""``factory(act_bits) -> module``: the quantizer of one layer's input (a fresh one per layer)."""


def minmax(model: nn.Module, config: QuantConfig, calibration: Tensor, *, labels: Tensor | None = None) -> nn.Module:
    """Return a quantized deep copy of ``model`` (eval mode); ``model`` itself is not modified."""
    check_calibration(config, calibration)
    qmodel = copy.deepcopy(model).eval()
    apply_minmax(qmodel, config, calibration, config.options)
    return qmodel


def check_calibration(config: QuantConfig, calibration: Tensor) -> None:
    """A QuantOptionError when activations are to be observed but there are no calibration images."""
    if config.act_bits is not None and calibration.shape[0] == 0:
        raise calibration_error(config.method)


def apply_minmax(
    qmodel: nn.Module,
    config: QuantConfig,
    calibration: Tensor,
    opts: LinearQuantOptions,
    *,
    input_quantizer: InputQuantizerFactory | None = None,
    conv_input_quantizer: InputQuantizerFactory | None = None,
) -> ModuleSelection:
    """Quantize ``qmodel`` IN PLACE the minmax way (the machinery ``percentile``, ``mse`` and
    ``smoothquant`` reuse): replace the Linears (and the patch embedding) that
    :func:`~pytest_qrel.quantize.selection.select_modules` picks for ``opts`` by fake-quant modules at
    ``config``'s bits, observe ``calibration`` and freeze.

    ``input_quantizer(act_bits)`` builds each layer's input quantizer (default: the static min/max
    :class:`~pytest_qrel.quantize.fakequant.ActQuantizer`, symmetric when ``opts.act_symmetric``);
    ``conv_input_quantizer`` that of the patch embedding's input (default: ``input_quantizer``).
    ``qmodel`` must already be a copy in eval mode. Returns what was selected.

    Raises:
        QuantOptionError: nothing to quantize, or ``patch_embed: quantized`` on a model without one.
    """
    selection = select_modules(qmodel, opts)
    if opts.patch_embed == "quantized" and selection.patch_embed is None:
        raise QuantOptionError("patch_embed", "patch_embed: quantized, but the model has no patch-embedding Conv2d "
                               "(looked for 'patch_embed.proj', open_clip's 'conv1', or a single Conv2d)",
                               "remove the option or set it to fp32")
    wq = weight_quantizer_for(opts)
    wb, ab = config.weight_bits, config.act_bits

    def make_input_quantizer(factory: InputQuantizerFactory | None = input_quantizer) -> nn.Module | None:
        if ab is None:
            return None
        if factory is None:
            return ActQuantizer(ab, symmetric=opts.act_symmetric)
        return factory(ab)

    def factory(name: str, linear: nn.Linear) -> nn.Module | None:
        if selection.keeps(name):
            return None
        return FakeQuantLinear(linear, weight_bits=wb, act_bits=ab, weight_quantizer=wq,
                               input_quantizer=make_input_quantizer())

    replaced = replace_linears(qmodel, factory)
    if selection.quantize_patch_embed:
        assert selection.patch_embed is not None
        parent_name, _, leaf = selection.patch_embed.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        conv = getattr(parent, leaf)
        setattr(parent, leaf, FakeQuantConv2d(conv, weight_bits=wb, act_bits=ab, weight_quantizer=wq,
                                              input_quantizer=make_input_quantizer(conv_input_quantizer or input_quantizer)))
    elif not replaced:
        raise no_linear_error(config.method)
    to_model_device(qmodel)
    calibrate(qmodel, calibration, batch_size=opts.batch_size)
    return selection


def to_model_device(qmodel: nn.Module) -> None:
    """Move quantizers built on the CPU to the device of ``qmodel``'s first parameter (in place)."""
    ref = next(iter(qmodel.parameters()), None)
    if ref is not None:
        qmodel.to(ref.device)
