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

Options (the common ones of :mod:`.options`; defaults first):
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
    ``weight_granularity`` says, input per tensor, at ``weight_bits`` / ``act_bits``); a SpecError if
    the model has none.
    ``batch_size`` (positive int, default 64): images per calibration forward pass. It only trades
    memory for speed; min/max does not depend on batching.
"""

from __future__ import annotations

import copy

from torch import Tensor, nn

from ..spec.schema import QuantizerSpec
from .base import QUANTIZERS, spec_error
from .fakequant import FakeQuantConv2d, FakeQuantLinear, calibrate, replace_linears
from .options import LinearQuantOptions, ModuleSelection, select_modules

MINMAX_OPTIONS = LinearQuantOptions.accepted()
"""The options ``minmax`` accepts (the common ones), with their defaults."""


@QUANTIZERS.register(
    "minmax",
    options=tuple(MINMAX_OPTIONS),
    summary="static min/max PTQ of every nn.Linear: weights symmetric per channel, inputs asymmetric per tensor",
)
def minmax(model: nn.Module, spec: QuantizerSpec, calibration: Tensor, *, labels: Tensor | None = None) -> nn.Module:
    """Return a quantized deep copy of ``model`` (eval mode); ``model`` itself is not modified."""
    opts = LinearQuantOptions.from_spec(spec)
    check_calibration(spec, calibration)
    qmodel = copy.deepcopy(model).eval()
    apply_minmax(qmodel, spec, calibration, opts)
    return qmodel


def check_calibration(spec: QuantizerSpec, calibration: Tensor) -> None:
    """A SpecError when activations are to be observed but there are no calibration images."""
    if spec.act_bits is not None and calibration.shape[0] == 0:
        raise spec_error(spec, "calibration.samples", "no calibration images to observe activations on",
                         "use calibration.samples >= 1")


def apply_minmax(
    qmodel: nn.Module, spec: QuantizerSpec, calibration: Tensor, opts: LinearQuantOptions, *, method: str = "minmax"
) -> ModuleSelection:
    """Quantize ``qmodel`` IN PLACE the minmax way (the machinery other methods reuse after their own
    preprocessing, e.g. SmoothQuant's smoothing): replace the selected Linears (and the patch
    embedding when asked) by fake-quant modules at ``spec``'s bits, observe ``calibration`` and freeze.

    ``qmodel`` must already be a copy in eval mode. Returns what was selected.

    Raises:
        SpecError: nothing to quantize, or ``patch_embed: quantized`` on a model without one.
    """
    selection = select_modules(qmodel, opts)
    if opts.patch_embed == "quantized" and selection.patch_embed is None:
        raise spec_error(spec, "patch_embed", "patch_embed: quantized, but the model has no patch-embedding Conv2d "
                         "(looked for 'patch_embed.proj', open_clip's 'conv1', or a single Conv2d)",
                         "remove the option or set it to fp32")
    wq = opts.weight_quantizer()

    def factory(name: str, linear: nn.Linear) -> nn.Module | None:
        if selection.keeps(name):
            return None
        return FakeQuantLinear(linear, weight_bits=spec.weight_bits, act_bits=spec.act_bits, weight_quantizer=wq,
                               act_symmetric=opts.act_symmetric)

    replaced = replace_linears(qmodel, factory)
    if selection.quantize_patch_embed:
        assert selection.patch_embed is not None
        parent_name, _, leaf = selection.patch_embed.rpartition(".")
        parent = qmodel.get_submodule(parent_name) if parent_name else qmodel
        conv = getattr(parent, leaf)
        setattr(parent, leaf, FakeQuantConv2d(conv, weight_bits=spec.weight_bits, act_bits=spec.act_bits,
                                              weight_quantizer=wq, act_symmetric=opts.act_symmetric))
    elif not replaced:
        raise spec_error(spec, "method", f"the model has no nn.Linear layer for '{method}' to quantize",
                         "use a method that supports this architecture")
    calibrate(qmodel, calibration, batch_size=opts.batch_size)
    return selection
