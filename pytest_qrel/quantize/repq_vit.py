"""``repq_vit``: RepQ-ViT post-training quantization (Li et al., ICCV 2023), as the ViT study used it.

Follows the authors' reference code (github.com/zkkli/RepQ-ViT, ``classification/``): the same
tensors, quantizers, calibration protocol and scale reparameterization; deviations are listed at the end.

**What is quantized** (simulated in floating point) in a timm ``VisionTransformer``:

- every ``nn.Linear`` (per block ``qkv``, ``proj``, ``fc1``, ``fc2``; the classification ``head``):
  weight at ``weight_bits``, input at ``act_bits``;
- both attention matmuls, through :class:`~pytest_qrel.quantize.attention.QuantAttention`:
  ``q`` and ``k`` of ``q @ k^T`` and ``v`` of ``attn @ v`` uniformly, the softmax output ``attn``
  with the log-sqrt(2) quantizer, all at ``act_bits``;
- the patch-embedding ``nn.Conv2d`` (every ``Conv2d`` of the model): its **input at 8 bits**
  whatever ``act_bits`` (the reference forces ``n_bits = 8`` for the conv input quantizer only),
  its **weight at ``weight_bits``** like every other weight (the reference builds the conv's weight
  quantizer from the same weight parameters as the linears).

Left in floating point: LayerNorm, softmax itself, GELU, residual additions, the class token and
position embeddings, the scaling by ``head_dim^-0.5`` (applied to ``q k^T`` after the matmul).

**Weights**: asymmetric, per output channel (row of the weight; per output filter for the conv),
range chosen per channel by RepQ-ViT's search (:func:`repq_weight_quantizer`): among
``[Q(1 - p), Q(p)]`` of the channel's weights, ``p`` in {0.999, 0.9999, 0.99999}, the range with the
smallest mean squared error; ``scale = (hi - lo) / (2^b - 1)``, ``zero_point = round(-lo / scale)``.

**Activations**: static, per tensor, asymmetric with the same percentile search on the calibration
activations (:class:`~pytest_qrel.quantize.observers.PercentileSearchObserver`; the range is not
forced to contain zero). Softmax outputs: log-sqrt(2) with the scale searched the same way
(:class:`~pytest_qrel.quantize.attention.LogSqrt2Quantizer`).

**Post-LayerNorm activations** (inputs of ``qkv`` and ``fc1``; the output of ``norm1`` / ``norm2`` of
every timm ``Block``) are first calibrated *per channel* (scale ``s_c``, integer zero point ``z_c``, by
the same search on each channel), then reparameterized to one per-tensor scale
(:func:`scale_reparameterize`)::

    min_c = -z_c s_c             s~ = mean_c s_c      z~ = mean_c z_c      min~ = -z~ s~
    r_c = s_c / s~               b_c = min_c / r_c - min~
    LayerNorm:   gamma'_c = gamma_c / r_c          beta'_c = beta_c / r_c - b_c
                 (so the LayerNorm output becomes x'_c = x_c / r_c - b_c)
    next Linear: W' = W diag(r)                     bias' = bias + W' b

so ``W' x' + bias' = W x + bias`` (the FP32 function is unchanged) and every channel's calibrated range
``[min_c, min_c + (2^b - 1) s_c]`` maps onto the common ``[min~, min~ + (2^b - 1) s~]``. The
reparameterized weight ``W'`` is then quantized per output channel (the weight quantizer is
re-initialised). The reference keeps ``z~`` fractional (option ``zero_point: mean``, the default):
the per-tensor codes ``round(x'/s~) + z~`` then lie on ``k + frac(z~)``, clamped to ``[0, 2^b - 1]``
(up to 2^b + 1 values), and differ from the per-channel quantization of ``x`` for a share of values
(about 18 % at 4 bits on a DeiT). With ``zero_point: rounded`` (``z~ = round(mean z)``) the per-tensor
quantizer ``(s~, z~)`` of ``x'`` computes exactly the per-channel quantization ``(s_c, z_c)`` of ``x``
(``round(x'_c / s~) + z~ = round(x_c / s_c) + z_c``).

**Calibration protocol** (the reference's ``test_quant.py``): weights are quantized first; then ONE
forward pass of all calibration images with every quantizer on, each activation quantizer fixing its
parameters on its first call from the whole batch (so later quantizers see the outputs of already
quantized layers); then the reparameterization; then the second pass of the reference, which
re-initialises only the weight quantizers of ``qkv`` / ``fc1`` (their activation parameters are set to
``(s~, z~)`` by the reparameterization, the other quantizers are kept), so it needs no data here.

The reference calibrates on the first batch of **32** in-distribution training images of a shuffled
``ImageFolder`` loader; for fidelity set ``calibration: {samples: 32, draw: repq_vit}`` in the suite
(:mod:`pytest_qrel.calibration_draw`: the same images for the same seed). Any N >= 1 is accepted;
all N images run as one batch (memory grows with N; percentiles are exact over every value of that batch).

``act_bits: null`` gives weight-only quantization (every Linear and Conv2d weight as above, no
activation or matmul quantization, no reparameterization, no calibration forward).

Options (:class:`~pytest_qrel.quantize.options.RepQOptions`; the defaults are the reference code's
behaviour, the alternatives stricter choices):
    ``reparameterize`` (bool, default true): false calibrates the qkv/fc1 inputs per tensor like
    every other activation (an ablation: the scale reparameterization is what copes with the
    inter-channel variation of post-LayerNorm activations).
    ``softmax_quantizer`` (``log_sqrt2`` (default) or ``uniform``): quantizer of the softmax output.
    ``log2_levels`` (``reference`` (default) or ``strict``): the log-sqrt(2) quantizer's codes
    ``0 .. 2^b - 1`` are all levels and underflow is zero (the reference: 2^b + 1 values, 17 at
    4 bits), or code ``2^b - 1`` means zero (a true b-bit code; changes about 2 % of a ViT's 4-bit
    softmax values; see :mod:`~pytest_qrel.quantize.attention`).
    ``zero_point`` (``mean`` (default) or ``rounded``): see above.
    ``arithmetic`` (``reference`` (default) or ``aten``): the reference's library calls
    (``torch.quantile``, ``np.percentile`` where the installed torch refuses a tensor, ``x / scale``)
    or exact float64-position quantiles and ATen's ``x * (1 / scale)`` (the integer runtimes'
    formula); see :data:`~pytest_qrel.quantize.observers.Arithmetic`.

``verify: true`` (at most 2^b values per tensor) fails on the reference defaults at every bit width
for the softmax output and, whenever a mean zero point is fractional, the qkv / fc1 inputs: that is
what the reference computes. ``options: {log2_levels: strict, zero_point: rounded}`` gives a model on
true b-bit grids (the project's behaviour before this release, with ``arithmetic: aten``).

Remaining deviations from the reference code, and why:

- Scales are clamped to at least float32 epsilon (the reference divides by zero on a constant tensor).
- A candidate's mean squared error is reduced in a different order than the reference's (one
  contiguous column per channel instead of a strided slice): the chosen candidate can differ only
  where two candidates' errors agree to the last float bits.
- Scope: modules of exactly timm's ``Attention`` class are replaced (a model without one is a
  :class:`~pytest_qrel.errors.QuantOptionError`; subclasses with their own forward are left alone, their matmuls unquantized); the
  ``norm1 -> attn.qkv`` and ``norm2 -> mlp.fc1`` pairs of timm ``Block`` s with a LayerNorm are
  reparameterized (the reference matches module names ``norm1`` / ``norm2``); a gated attention (whose
  ``norm1`` output also feeds ``gate``) or a non-``Mlp`` MLP keeps a per-tensor input there.

``tests/reference_repq.py`` restates the reference's quantizers independently; ``tests/test_repq_vit.py``
checks that the defaults equal it, tensor for tensor and logit for logit.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from ..errors import QuantOptionError
from .attention import LogSqrt2Quantizer, QuantAttention, replace_attention
from .base import QuantConfig, calibration_error, no_linear_error
from .fakequant import (
    FakeQuantConv2d,
    FakeQuantLinear,
    replace_linears,
    unsigned_range,
)
from .observers import (
    REPQ_PERCENTILES,
    Arithmetic,
    ObservedActQuantizer,
    PercentileSearchObserver,
    calibrate_one_shot,
    fake_quantizer_by,
    search_percentile_qparams,
    to_model_device,
)

PATCH_EMBED_ACT_BITS = 8
"""Bits of the patch-embedding (Conv2d) input in RepQ-ViT, whatever ``act_bits``."""

ZeroPointMode = Literal["mean", "rounded"]
ZERO_POINT_MODES: tuple[str, ...] = ("mean", "rounded")


# --------------------------------------------------------------------------------------------------
# Weights
# --------------------------------------------------------------------------------------------------


def repq_weight_quantizer(
    w: Tensor, bits: int, percentiles: Sequence[float] = REPQ_PERCENTILES, *, arithmetic: Arithmetic = "reference"
) -> Tensor:
    """RepQ-ViT's weight quantization: asymmetric per output channel (dim 0), percentile-searched range.

    Row ``c`` (dims 1.. flattened): ``[lo, hi] = [Q(1 - p), Q(p)]`` of the row for each ``p``,
    ``scale = max((hi - lo) / (2^b - 1), EPS)``, ``zero_point = round(-lo / scale)``, keeping the
    candidate with the smallest mean squared error; returns ``(clamp(round(w / scale) + zp, 0, 2^b - 1)
    - zp) * scale`` (a new tensor, ``w``'s shape and dtype, at most ``2^b`` values per row).
    ``arithmetic``: ``"reference"`` (default: the reference's ``torch.quantile`` and ``w / scale``) or
    ``"aten"`` (exact float64-position quantiles and ``w * (1 / scale)``).
    """
    qmin, qmax = unsigned_range(bits)
    rows = w.detach().to(torch.float32).reshape(w.shape[0], -1)
    scale, zp = search_percentile_qparams(rows.t(), bits, percentiles, arithmetic=arithmetic)
    out = fake_quantizer_by(arithmetic)(rows, scale, zp, qmin, qmax, axis=0)
    return out.reshape(w.shape).to(w.dtype)


def replace_convs(model: nn.Module, factory: Any) -> list[str]:
    """Replace, in place, every ``nn.Conv2d`` of ``model`` by ``factory(name, conv)`` (``None`` keeps it)."""
    targets = [
        (parent, child_name, f"{parent_name}.{child_name}" if parent_name else child_name, child)
        for parent_name, parent in model.named_modules()
        for child_name, child in parent._modules.items()
        if isinstance(child, nn.Conv2d)
    ]
    built: dict[int, Any] = {}
    replaced = []
    for parent, child_name, qualified, child in targets:
        if id(child) not in built:
            built[id(child)] = factory(qualified, child)
        if built[id(child)] is not None:
            setattr(parent, child_name, built[id(child)])
            replaced.append(qualified)
    return replaced


# --------------------------------------------------------------------------------------------------
# Scale reparameterization
# --------------------------------------------------------------------------------------------------


def scale_reparameterize(
    norm: nn.LayerNorm,
    consumers: nn.Module | Sequence[Any],  # Linear-like (nn.Linear or a fake-quantized one): weight / bias by name
    channel_scale: Tensor,
    channel_zero_point: Tensor,
    *,
    zero_point: ZeroPointMode = "mean",
) -> tuple[Tensor, Tensor]:
    """Fold per-channel activation scales of a LayerNorm output into the LayerNorm and its consumers.

    ``channel_scale`` ``s`` (C,) and ``channel_zero_point`` ``z`` (C,) quantize the output of ``norm``
    channel by channel; ``consumers`` are the Linear-like modules (``weight`` (out, C), ``bias``) that
    read that output. With ``min_c = -z_c s_c``, ``s~ = mean(s)``, ``z~ = mean(z)`` (``zero_point=
    "mean"``, the reference; ``"rounded"``: ``round(mean(z))``), ``min~ = -z~ s~``, ``r = s / s~``
    and ``b = min / r - min~``, modifies in place::

        norm.weight /= r;   norm.bias = norm.bias / r - b           (output x' = x / r - b)
        consumer.weight = W diag(r);   consumer.bias = bias + W diag(r) b   (created if absent)

    which leaves ``consumer(norm(x))`` unchanged in exact arithmetic (float32, in the reference's
    order of operations: ``W diag(r) b`` is a matrix product with ``b`` as a column). Consumer
    weights must be the floating-point ones (quantize them afterwards). A LayerNorm without affine
    parameters gets them. Returns the per-tensor ``(s~ float32, z~)`` of the new output: ``z~`` is
    float32 (possibly fractional) for ``"mean"``, int32 for ``"rounded"``.
    """
    if zero_point not in ZERO_POINT_MODES:
        raise ValueError(f"zero_point must be one of {ZERO_POINT_MODES}, got {zero_point!r}")
    if isinstance(consumers, nn.Module):
        consumers = [consumers]
    s = channel_scale.detach().to(torch.float32).reshape(-1)
    z = channel_zero_point.detach().to(torch.float32).reshape(-1)
    if s.shape != z.shape or s.numel() != norm.normalized_shape[-1] or len(norm.normalized_shape) != 1:
        raise ValueError(
            f"scale_reparameterize(): {s.numel()} channel scales for LayerNorm{tuple(norm.normalized_shape)}"
        )
    act_min = -z * s
    target_scale = s.mean()
    target_zero_point = z.mean() if zero_point == "mean" else torch.round(z.mean())
    target_min = -target_zero_point * target_scale
    r = s / target_scale
    b = act_min / r - target_min
    with torch.no_grad():
        dev, dt = (norm.weight.device, norm.weight.dtype) if norm.weight is not None else (s.device, torch.float32)
        gamma = norm.weight.detach().float() if norm.weight is not None else torch.ones_like(s)
        beta = norm.bias.detach().float() if norm.bias is not None else torch.zeros_like(s)
        norm.weight = nn.Parameter((gamma / r).to(device=dev, dtype=dt), requires_grad=False)
        norm.bias = nn.Parameter((beta / r - b).to(device=dev, dtype=dt), requires_grad=False)
        for lin in consumers:
            w = lin.weight.detach().float() * r.to(lin.weight.device)
            old_bias = lin.bias.detach().float() if lin.bias is not None else torch.zeros(w.shape[0], device=w.device)
            new_bias = old_bias + torch.mm(w, b.to(w.device).reshape(-1, 1)).reshape(-1)
            lin.weight = nn.Parameter(w.to(lin.weight.dtype), requires_grad=False)
            lin.bias = nn.Parameter(new_bias.to(lin.weight.dtype), requires_grad=False)
    if zero_point == "rounded":
        return target_scale, target_zero_point.to(torch.int32)
    return target_scale, target_zero_point


def reparameterizable_pairs(model: nn.Module) -> list[tuple[nn.LayerNorm, nn.Module]]:
    """``(norm1, attn.qkv)`` and ``(norm2, mlp.fc1)`` of every timm ``Block`` whose norm is a LayerNorm.

    ``norm1`` is paired only when the block's attention is timm's ``Attention`` (or a
    :class:`QuantAttention`) without a gate; ``norm2`` only when ``mlp`` is timm's ``Mlp`` (the norm
    output then feeds that one Linear and nothing else).
    """
    from timm.layers import Mlp
    from timm.models.vision_transformer import Attention, Block

    pairs: list[tuple[nn.LayerNorm, nn.Module]] = []
    for block in model.modules():
        if not isinstance(block, Block):
            continue
        attn, mlp = block.attn, block.mlp
        if (isinstance(block.norm1, nn.LayerNorm) and type(attn) in (Attention, QuantAttention)
                and getattr(attn, "gate", None) is None):
            assert isinstance(attn.qkv, nn.Module)  # a Linear in timm's Attention and in QuantAttention
            pairs.append((block.norm1, attn.qkv))
        if isinstance(block.norm2, nn.LayerNorm) and type(mlp) is Mlp:
            pairs.append((block.norm2, mlp.fc1))
    return pairs


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


def _search_quantizer(bits: int, *, per_channel: bool = False, arithmetic: Arithmetic = "reference") -> ObservedActQuantizer:
    return ObservedActQuantizer(bits, PercentileSearchObserver(per_channel=per_channel, arithmetic=arithmetic),
                                arithmetic=arithmetic)


def _log_sqrt2_factory(strict: bool, arithmetic: Arithmetic) -> Any:
    def log_sqrt2(bits: int) -> LogSqrt2Quantizer:
        return LogSqrt2Quantizer(bits, strict=strict, arithmetic=arithmetic)

    return log_sqrt2


def repq_vit(model: nn.Module, config: QuantConfig, calibration: Tensor, *, labels: Tensor | None = None) -> nn.Module:
    """Return a RepQ-ViT-quantized deep copy of ``model`` (eval mode); ``model`` itself is not modified.

    ``config.options`` is a :class:`~pytest_qrel.quantize.options.RepQOptions`."""
    opts = config.options
    wb, ab = config.weight_bits, config.act_bits
    arith: Arithmetic = opts.arithmetic
    if ab is not None and calibration.shape[0] == 0:
        raise calibration_error("repq_vit", "calibrate activations on (RepQ-ViT used 32)")
    qmodel = copy.deepcopy(model).eval()
    act_quantizer = partial(_search_quantizer, arithmetic=arith)
    weight_quantizer = partial(repq_weight_quantizer, arithmetic=arith)
    softmax = (_log_sqrt2_factory(opts.log2_levels == "strict", arith) if opts.softmax_quantizer == "log_sqrt2"
               else opts.softmax_quantizer)

    if ab is not None:
        attns = replace_attention(qmodel, lambda name, attn: QuantAttention(
            attn, act_bits=ab, act_quantizer=act_quantizer, softmax_quantizer=softmax))
        if not attns:
            raise QuantOptionError("method", "'repq_vit' found no timm Attention module to quantize",
                                   "use it on a timm VisionTransformer (or a method that supports this architecture)")

    pairs = reparameterizable_pairs(qmodel) if ab is not None and opts.reparameterize else []
    per_channel = {id(lin) for _, lin in pairs}
    built: dict[int, FakeQuantLinear] = {}

    def build_linear(name: str, linear: nn.Linear) -> nn.Module:
        fq = FakeQuantLinear(linear, weight_bits=wb, act_bits=ab, weight_quantizer=weight_quantizer)
        if ab is not None:
            fq.input_quantizer = act_quantizer(ab, per_channel=id(linear) in per_channel)
        built[id(linear)] = fq
        return fq

    if not replace_linears(qmodel, build_linear):
        raise no_linear_error("repq_vit")
    replace_convs(qmodel, lambda name, conv: FakeQuantConv2d(
        conv, weight_bits=wb, act_bits=None if ab is None else PATCH_EMBED_ACT_BITS,
        weight_quantizer=weight_quantizer,
        input_quantizer=None if ab is None else act_quantizer(PATCH_EMBED_ACT_BITS)))
    to_model_device(qmodel)
    pairs_q = [(norm, built[id(lin)]) for norm, lin in pairs]
    float_weights = {id(lin): (lin.weight.detach().clone(), None if lin.bias is None else lin.bias.detach().clone())
                     for _, lin in pairs_q}

    # 1. weights quantized once, then one pass in which every quantizer calibrates on its first call
    for m in qmodel.modules():
        if isinstance(m, (FakeQuantLinear, FakeQuantConv2d)):
            m.freeze()
    if ab is None:
        return qmodel
    calibrate_one_shot(qmodel, calibration)

    # 2. scale reparameterization of every post-LayerNorm activation, 3. re-quantize the changed weights
    with torch.no_grad():
        for norm, lin in pairs_q:
            quantizer = lin.input_quantizer
            assert isinstance(quantizer, ObservedActQuantizer) and quantizer.per_channel
            weight, bias = float_weights[id(lin)]
            lin.weight.copy_(weight)
            if bias is not None:
                assert lin.bias is not None
                lin.bias.copy_(bias)
            scale, zero_point = scale_reparameterize(norm, lin, quantizer.scale, quantizer.zero_point,
                                                     zero_point=opts.zero_point)
            quantizer.set_qparams(scale, zero_point, round_zero_point=opts.zero_point == "rounded")
            lin.weight_frozen = False
            lin.freeze()
    return qmodel
