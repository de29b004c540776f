"""``smoothquant``: SmoothQuant (Xiao et al., ICML 2023) smoothing, then ``minmax`` quantization.

Activations of transformers have a few input channels with outliers much larger than the rest; a
per-tensor activation quantizer spends its range on them. SmoothQuant migrates that difficulty into
the weights with an exact rescaling of the FP32 model, then quantizes as usual.

**Smoothing.** For every LayerNorm whose output feeds ``nn.Linear`` layers directly (in a timm
``Block``: ``norm1 -> attn.qkv`` and ``norm2 -> mlp.fc1``), with ``X`` its output on the calibration
images and ``W^(k)`` the weights (out x in) of the Linears it feeds, per input channel ``j``::

    a_j = max over calibration tokens of |X_j|                     (per-channel absmax)
    w_j = max(max_k max_i |W^(k)_ij|, 1e-5)                        (over all Linears of the group)
    s_j = max(a_j^alpha / w_j^(1 - alpha), 1e-5)

    LayerNorm weight_j /= s_j,  LayerNorm bias_j /= s_j             (LN'(x) = LN(x) / s)
    W^(k)_ij *= s_j           for every Linear k of the group       (W' = W diag(s))

so that ``LN'(x) W'^T = (LN(x) / s)(W diag(s))^T = LN(x) W^T``: the FP32 model computes the same
function (up to float rounding) while the quantized activation ``LN'(x)`` has flatter channels.
``alpha`` (default 0.5) sets how much of the difficulty moves to the weights.

**Which LayerNorms.** Found by data flow, not by names: on one calibration batch, a LayerNorm (with
an affine weight) and the Linears that receive its output tensor itself form a group. The smoothed
model is then checked against the original on a few calibration images; should a group's output also
feed something else (so that smoothing it changes the function), that group is left unsmoothed and a
warning says so. A model with no LayerNorm -> Linear group is quantized unsmoothed (a warning says
the result is plain minmax).

**Quantization.** :func:`~.minmax.apply_minmax` on the smoothed copy, with the same options:
weights per channel (or per tensor) at ``weight_bits``, the head and the patch embedding as the
options say, and activations as ``act_quant`` says:

- ``static`` (default): minmax's static per-tensor activations at ``act_bits`` (asymmetric, or
  symmetric with ``act_symmetric``), observed on the smoothed model;
- ``per_token``: the reference code's dynamic symmetric quantization, one absmax scale per token
  recomputed at every forward (:class:`~.fakequant.DynamicActQuantizer`; a quantized patch
  embedding's input gets one scale per image);
- ``per_tensor``: the same with one scale per image.

``quantize_bmm_input: true`` also quantizes the inputs of the attention matmuls as the reference
does: it replaces timm's ``Attention`` by :class:`~.attention.QuantAttention` (OpenCLIP's visual
attention, as the ``open_clip`` model source builds it, by :class:`~.attention.QuantSelfAttention`)
and quantizes ``q``, ``k`` and ``v`` with the same ``act_quant`` (``per_token``: one scale per token
across all heads, like the reference's quantized ``q_proj`` / ``k_proj`` / ``v_proj`` outputs) while
the softmax output stays in floating point (the reference leaves it so). On CLIP the LayerNorm ->
Linear groups are OpenCLIP's ``ln_1 -> attn.qkv`` and ``ln_2 -> mlp.c_fc`` (found by data flow
like timm's); the head the ``head`` option names is the visual output projection ``proj``.

Options: the common ones of :class:`~pytest_qrel.quantize.options.LinearQuantOptions` (same defaults
as ``minmax``), ``alpha`` (a number from 0 to 1, default 0.5), ``act_quant`` (``static`` |
``per_token`` | ``per_tensor``, default ``static``) and ``quantize_bmm_input`` (default false). The
activation statistics use ``batch_size`` images per forward pass.

**The reference's variant.** mit-han-lab/smoothquant (``smoothquant/fake_quant.py``) quantizes
every Linear's input dynamically and symmetrically (``per_token``; its OPT recipe ``per_tensor``),
quantizes the attention matmul inputs (``quantize_bmm_input``) and leaves the language-model head in
floating point. The same here::

    options: {act_quant: per_token, quantize_bmm_input: true, head: fp32}

Why the default is static per-tensor: it is the setting whose scales are fixed before deployment
(SmoothQuant's most efficient level, O3, uses static per-tensor activations: no reduction at run
time), it is what ``minmax`` does, so ``smoothquant`` differs from ``minmax`` by the smoothing alone,
and suites written before these options keep their numbers. Choose the reference's variant to
compare with numbers produced by its code.

Other differences from the reference implementation, which targets LLMs: activation statistics come
from the calibration images, not from text; smoothing covers exactly the LayerNorm -> Linear groups
found by data flow; the reference's bit widths are fixed at 8, here they are ``weight_bits`` /
``act_bits``; its weight scale clamps the absmax at 1e-5 before dividing by ``2^(b-1) - 1`` where
this package clamps the scale at float32 epsilon (equal unless a weight row is ~0).
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import Tensor, nn

from ..errors import QuantOptionError
from .attention import quant_attention, replace_attention
from .base import QuantConfig, calibration_error
from .fakequant import CALIBRATION_BATCH_SIZE, ActQuantizer, DynamicActQuantizer
from .minmax import InputQuantizerFactory, apply_minmax
from .options import SmoothQuantOptions

BMM_ATTENTION_KINDS = ("timm", "open_clip")
"""Attention modules whose matmul inputs ``quantize_bmm_input`` quantizes (see
:data:`~pytest_qrel.quantize.attention.ATTENTION_KINDS`)."""

SCALE_MIN = 1e-5
"""Lower clamp of the weight maxima and of the smoothing factors (as in the reference code)."""

DEFAULT_ALPHA = 0.5
EQUIVALENCE_RTOL = 1e-4
"""Largest relative (Frobenius) change of the FP32 output (:func:`checked_output`) that smoothing may cause."""
CHECK_IMAGES = 8


SMOOTHQUANT_OPTIONS = SmoothQuantOptions.accepted()
"""The options ``smoothquant`` accepts (the common ones, ``alpha``, ``act_quant``,
``quantize_bmm_input``), with their defaults."""


@dataclass(frozen=True)
class SmoothGroup:
    """A LayerNorm (qualified name) and the Linears that take its output directly as their input."""

    norm: str
    linears: tuple[str, ...]


# --------------------------------------------------------------------------------------------------
# The smoothing arithmetic
# --------------------------------------------------------------------------------------------------


def smoothing_scales(act_absmax: Tensor, weights: Sequence[Tensor], alpha: float = DEFAULT_ALPHA) -> Tensor:
    """``s_j = max(a_j^alpha / max(w_j, 1e-5)^(1 - alpha), 1e-5)`` (float32, shape (in,)).

    ``act_absmax`` (in,): per-channel max of |X|; ``weights``: the (out_k, in) weights of every Linear
    fed by X, ``w_j`` the max of ``|W^(k)_ij|`` over all of them and all output rows ``i``.
    """
    if not weights:
        raise ValueError("smoothing_scales() needs at least one weight")
    a = act_absmax.detach().to(torch.float32)
    w = torch.stack([wk.detach().to(torch.float32).abs().amax(dim=0) for wk in weights]).amax(dim=0)
    w = w.to(a.device).clamp_min(SCALE_MIN)
    return (a.pow(alpha) / w.pow(1.0 - alpha)).clamp_min(SCALE_MIN)


@torch.no_grad()
def smooth_ln_linears(norm: nn.LayerNorm, linears: Sequence[nn.Linear], act_absmax: Tensor,
                      alpha: float = DEFAULT_ALPHA) -> Tensor:
    """Smooth one group IN PLACE: ``norm``'s weight and bias divided by ``s``, each Linear's input
    columns multiplied by ``s``; returns ``s`` (see :func:`smoothing_scales`).

    Raises:
        ValueError: ``norm`` has no affine weight, or a Linear's ``in_features`` is not the normalized size.
    """
    if norm.weight is None:
        raise ValueError("a LayerNorm without an affine weight cannot absorb the smoothing factors")
    dim = norm.weight.numel()
    for lin in linears:
        if lin.in_features != dim:
            raise ValueError(f"Linear in_features {lin.in_features} != LayerNorm size {dim}")
    s = smoothing_scales(act_absmax, [lin.weight for lin in linears], alpha)
    norm.weight.div_(s.to(norm.weight))
    if norm.bias is not None:
        norm.bias.div_(s.to(norm.bias))
    for lin in linears:
        lin.weight.mul_(s.to(lin.weight).view(1, -1))
    return s


# --------------------------------------------------------------------------------------------------
# Finding the groups and their activation statistics
# --------------------------------------------------------------------------------------------------


def _smoothable(m: nn.Module) -> bool:
    return isinstance(m, nn.LayerNorm) and m.weight is not None and len(m.normalized_shape) == 1


@torch.no_grad()
def layernorm_statistics(
    model: nn.Module, images: Tensor, *, batch_size: int = CALIBRATION_BATCH_SIZE
) -> tuple[list[SmoothGroup], dict[str, Tensor]]:
    """Run ``images`` through ``model`` (FP32, in batches) and return the LayerNorm -> Linear groups
    (found on the first batch: a Linear whose input IS a LayerNorm's output tensor) and, per grouped
    LayerNorm, the per-channel absmax of its output over all tokens of all images."""
    norms = {name: m for name, m in model.named_modules() if _smoothable(m)}
    linears = {name: m for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    outputs: dict[int, tuple[str, Tensor]] = {}  # id -> (norm name, tensor): the tensor is held so ids stay unique
    fed: dict[str, list[str]] = {}
    absmax: dict[str, Tensor] = {}
    first = [True]

    def norm_hook(name: str):
        def hook(module: nn.Module, args: Any, out: Tensor) -> None:
            amax = out.detach().abs().reshape(-1, out.shape[-1]).amax(dim=0).float()
            absmax[name] = amax if name not in absmax else torch.maximum(absmax[name], amax)
            if first[0]:
                outputs[id(out)] = (name, out)
        return hook

    def linear_hook(name: str):
        def hook(module: nn.Module, args: Any) -> None:
            if first[0] and args and id(args[0]) in outputs and outputs[id(args[0])][1] is args[0]:
                fed.setdefault(outputs[id(args[0])][0], [])
                if name not in fed[outputs[id(args[0])][0]]:
                    fed[outputs[id(args[0])][0]].append(name)
        return hook

    handles = [m.register_forward_hook(norm_hook(n)) for n, m in norms.items()]
    handles += [m.register_forward_pre_hook(linear_hook(n)) for n, m in linears.items()]
    try:
        ref = next(iter(model.parameters()), None)
        if ref is not None:
            images = images.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        for batch in images.split(batch_size):
            model(batch)
            first[0] = False
            outputs.clear()
    finally:
        for h in handles:
            h.remove()
    groups = [SmoothGroup(n, tuple(fed[n])) for n in norms if n in fed
              and all(linears[lin].in_features == norms[n].weight.numel() for lin in fed[n])]
    return groups, {g.norm: absmax[g.norm] for g in groups}


def _snapshot(model: nn.Module, group: SmoothGroup) -> list[tuple[Tensor, Tensor]]:
    mods = [model.get_submodule(group.norm), *(model.get_submodule(n) for n in group.linears)]
    return [(p, p.detach().clone()) for m in mods for p in (getattr(m, "weight", None), getattr(m, "bias", None))
            if p is not None]


@torch.no_grad()
def _restore(saved: list[tuple[Tensor, Tensor]]) -> None:
    for p, value in saved:
        p.copy_(value)


def checked_output(model: nn.Module, images: Tensor) -> Tensor:
    """What smoothing must leave unchanged: the model's output, or, for a model whose classifier is a
    fixed function of its image features (a zero-shot CLIP, with ``image_features``: its logits are
    ``logit_scale * features @ class_text_features.T``), those features. Checking the features keeps
    the result independent of the class names, so the scenarios of a CLIP suite, which differ only
    in their classes, share one smoothing (:mod:`pytest_qrel.engine.trainmemo`); the logits change
    no more than the features do."""
    features = getattr(model, "image_features", None)
    return features(images) if callable(features) else model(images)


def _close(out: Tensor, ref: Tensor) -> bool:
    return bool(torch.isfinite(out).all()) and float((out - ref).norm()) <= EQUIVALENCE_RTOL * max(float(ref.norm()), 1e-12)


@torch.no_grad()
def smooth_model(
    model: nn.Module,
    calibration: Tensor,
    *,
    alpha: float = DEFAULT_ALPHA,
    batch_size: int = CALIBRATION_BATCH_SIZE,
) -> dict[str, Tensor]:
    """Smooth ``model`` IN PLACE (give it a copy) and return ``{layernorm name: s}`` of the groups smoothed.

    Statistics come from ``calibration`` (N, C, H, W) through :func:`layernorm_statistics`; the FP32
    output (:func:`checked_output`) on the first few images is checked afterwards, and a group whose smoothing changes it is
    restored (with a warning). Warns when there is nothing to smooth.
    """
    was_training = model.training
    model.eval()
    try:
        groups, absmax = layernorm_statistics(model, calibration, batch_size=batch_size)
        if not groups:
            warnings.warn(
                f"smoothquant: {type(model).__name__} has no LayerNorm feeding an nn.Linear directly; "
                "nothing is smoothed, so the result is plain minmax", stacklevel=3,
            )
            return {}
        check = calibration[:CHECK_IMAGES]
        ref = next(iter(model.parameters()), None)
        if ref is not None:
            check = check.to(device=ref.device, dtype=ref.dtype)
        expected = checked_output(model, check)
        saved = {g.norm: _snapshot(model, g) for g in groups}

        def apply(group: SmoothGroup) -> Tensor:
            # the group's names were found as a LayerNorm and the Linears it feeds (smoothing_groups)
            return smooth_ln_linears(cast(nn.LayerNorm, model.get_submodule(group.norm)),
                                     [cast(nn.Linear, model.get_submodule(n)) for n in group.linears],
                                     absmax[group.norm], alpha)

        scales = {g.norm: apply(g) for g in groups}
        if _close(checked_output(model, check), expected):
            return scales
        # Some group's output also feeds something else: smooth group by group, keep what is exact.
        for g in groups:
            _restore(saved[g.norm])
        scales, skipped = {}, []
        for g in groups:
            s = apply(g)
            if _close(checked_output(model, check), expected):
                scales[g.norm] = s
            else:
                _restore(saved[g.norm])
                skipped.append(g.norm)
        warnings.warn(
            f"smoothquant: smoothing {', '.join(skipped)} would change the FP32 model's output (the "
            "LayerNorm output also feeds something other than its Linears); left unsmoothed", stacklevel=3,
        )
        return scales
    finally:
        model.train(was_training)


# --------------------------------------------------------------------------------------------------
# The method
# --------------------------------------------------------------------------------------------------


def activation_quantizers(opts: SmoothQuantOptions) -> tuple[InputQuantizerFactory | None, InputQuantizerFactory | None,
                                                               InputQuantizerFactory]:
    """``(linear inputs, patch-embedding input, attention operands q / k / v)`` quantizer factories
    for ``opts.act_quant`` (``None``: minmax's static per-tensor default)."""
    if opts.act_quant == "static":
        return None, None, lambda bits: ActQuantizer(bits, symmetric=opts.act_symmetric)
    if opts.act_quant == "per_token":
        return (lambda bits: DynamicActQuantizer(bits, "per_token"),
                lambda bits: DynamicActQuantizer(bits, "per_tensor"),  # a conv input has no tokens
                lambda bits: DynamicActQuantizer(bits, "per_token", feature_dims=(1, 3)))
    per_tensor = lambda bits: DynamicActQuantizer(bits, "per_tensor")  # noqa: E731
    return per_tensor, per_tensor, per_tensor


def smoothquant(model: nn.Module, config: QuantConfig, calibration: Tensor, *,
                labels: Tensor | None = None) -> nn.Module:
    """Return a smoothed, quantized deep copy of ``model`` (eval mode); ``model`` itself is not modified.

    ``config.options`` is a :class:`~pytest_qrel.quantize.options.SmoothQuantOptions`."""
    opts: SmoothQuantOptions = config.options
    if calibration.shape[0] == 0:
        raise calibration_error("smoothquant", "collect its activation statistics on")
    qmodel = copy.deepcopy(model).eval()
    smooth_model(qmodel, calibration, alpha=opts.alpha, batch_size=opts.batch_size)
    linear_in, conv_in, operands = activation_quantizers(opts)
    if opts.quantize_bmm_input and config.act_bits is not None:
        ab = config.act_bits
        if not replace_attention(qmodel, lambda name, attn: quant_attention(
                attn, act_bits=ab, act_quantizer=operands, softmax_quantizer="none"), kinds=BMM_ATTENTION_KINDS):
            raise QuantOptionError("quantize_bmm_input", "quantize_bmm_input: true, but the model has no attention "
                                   "module whose matmul inputs could be quantized (timm's Attention, or OpenCLIP's "
                                   "as the open_clip source builds it)",
                                   "remove quantize_bmm_input (or use a timm or OpenCLIP VisionTransformer)")
    apply_minmax(qmodel, config, calibration, opts, input_quantizer=linear_in, conv_input_quantizer=conv_in)
    return qmodel
