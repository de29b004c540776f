"""Quantized self-attention for timm and OpenCLIP Vision Transformers, and the log-sqrt(2) softmax quantizer.

timm's ``Attention`` computes ``softmax(q k^T * scale) v`` with ``F.scaled_dot_product_attention``
when it can, so its two matmuls are out of reach of module-level quantization. :class:`QuantAttention`
is a drop-in replacement (built from an existing ``Attention``, sharing its ``qkv``, ``q_norm``,
``k_norm``, ``attn_drop``, ``norm``, ``gate``, ``proj``, ``proj_drop``) that computes attention with
explicit matmuls, and passes the four matmul operands through quantizers. OpenCLIP's visual tower,
as the ``open_clip`` model source builds it, has :class:`~pytest_qrel.models.clip_zoo.LinearSelfAttention`
modules (its ``nn.MultiheadAttention`` turned into ``qkv`` / ``proj`` Linears, called with
``nn.MultiheadAttention``'s convention); :class:`QuantSelfAttention` is the same computation behind
that convention. :func:`quant_attention` builds the right one for a module, and
:func:`replace_attention` finds the attention modules of the kinds asked for (:data:`ATTENTION_KINDS`)::

    attn = (Q(q) @ Q(k)^T) * scale   (+ mask) -> softmax -> attn_drop
    out  = Q_softmax(attn) @ Q(v)

Each operand lives in a :class:`QuantOperand` child (``q_operand``, ``k_operand``, ``v_operand``,
``attn_operand``) that exposes the interface of :mod:`pytest_qrel.quantize.verify`
(``weight_bits = None``, ``act_bits``, ``input_quantizer``, ``dequantized_weight() -> None``), so
``verify_simulation`` finds and checks these tensors with no change. ``act_bits=None`` leaves them
in floating point: the module then reproduces timm's output to float rounding (``q`` is scaled after
the matmul, as in RepQ-ViT's reference code, instead of before it as timm's unfused path does).

The uniform quantizer of ``q``, ``k``, ``v`` is built by ``act_quantizer(bits)`` (default:
:class:`~pytest_qrel.quantize.fakequant.ActQuantizer`, min/max); the one of the softmax output by
``softmax_quantizer``: ``"uniform"`` (the same factory), ``"log_sqrt2"`` (:class:`LogSqrt2Quantizer`),
``"none"`` (left in floating point) or any factory. ``QuantAttention.softmax_kind`` says which.

**log-sqrt(2) quantizer** (RepQ-ViT, ``LogSqrt2Quantizer`` of the reference code), for ``x`` in [0, 1]
and a scale ``s`` (a clipping value, the largest representable output)::

    c = round(-2 * log2(x / s))                      (round half to even)
    x_hat = s * 2^(-ceil(c' / 2)) * (sqrt(2) if c' is odd else 1),   c' = clamp(c, 0, 2^b - 1)
          = s * 2^(-c' / 2)
    x_hat = 0 where c >= Z   (and where x <= 0)

``strict=False`` (the default) is the reference: ``Z = 2^b``, codes 0 .. 2^b - 1 are levels *and*
underflow gives 0, i.e. up to 2^b + 1 distinct outputs (17 at 4 bits), which no b-bit code can
hold (``verify: true`` reports it). ``strict=True`` uses ``Z = 2^b - 1``: the top code means zero,
leaving 2^b - 1 levels ``s * 2^(-c/2)`` plus zero = 2^b values; the only outputs that differ from
the reference are inputs whose code is exactly 2^b - 1 (``x ~ s * 2^(-(2^b - 1)/2)``, e.g.
``2^-7.5 s`` at 4 bits), which become 0 instead of that level (about 2 % of a ViT's softmax values
at 4 bits). The scale is calibrated as in the reference: among ``s = Q(p)`` for ``p`` in
{0.999, 0.9999, 0.99999} of the observed values, the one with the smallest mean squared error
(quantiles as the reference computes them by default, ``arithmetic="reference"``; see
:data:`~pytest_qrel.quantize.observers.Arithmetic`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .fakequant import ActQuantizer, QuantModule, replace_modules, unsigned_range
from .observers import REPQ_PERCENTILES, Arithmetic, ValueSample, quantiles_by

QuantizerFactory = Callable[[int], nn.Module]
SQRT2 = math.sqrt(2.0)


# --------------------------------------------------------------------------------------------------
# log-sqrt(2) quantization
# --------------------------------------------------------------------------------------------------


def log_sqrt2_quantize(x: Tensor, scale: Tensor | float, bits: int, *, strict: bool = False) -> Tensor:
    """Fake-quantize non-negative ``x`` on the log-sqrt(2) grid ``scale * 2^(-c/2)`` (see the module docstring).

    ``strict=False`` (default): RepQ-ViT's reference (codes ``0 .. 2^b - 1`` are levels, codes
    ``>= 2^b`` are zero: up to ``2^b + 1`` outputs); ``strict=True``: codes ``0 .. 2^b - 2`` are
    levels and code ``2^b - 1`` (and anything smaller) is zero, so at most ``2^b`` distinct outputs.
    Inputs ``<= 0`` give 0. The arithmetic (``x / scale``, ``log2``, a power of two times
    ``1 + odd (sqrt(2) - 1)`` times the scale) is the reference's, operation for operation.
    """
    _, qmax = unsigned_range(bits)
    scale_t = torch.as_tensor(scale, dtype=x.dtype, device=x.device)
    zero_from = qmax if strict else qmax + 1
    code = torch.round(-2.0 * torch.log2(x / scale_t))
    zero = (code >= zero_from) | ~(x > 0)
    code = torch.clamp(code, 0, qmax)
    odd = torch.remainder(code, 2)
    out = torch.exp2(-torch.ceil(code / 2)) * (odd * (SQRT2 - 1.0) + 1.0) * scale_t
    return torch.where(zero, torch.zeros_like(out), out)


class LogSqrt2Quantizer(QuantModule):
    """Static log-sqrt(2) quantizer of a softmax output, with RepQ-ViT's scale search.

    Modes as :class:`~pytest_qrel.quantize.observers.ObservedActQuantizer`: ``"observe"`` (collect
    values, pass through), ``"calibrate"`` (the next call collects, freezes and quantizes),
    ``"quantize"``, ``"off"``. At :meth:`freeze` the scale is the candidate ``Q(p)``, ``p`` in
    ``percentiles``, of the observed values with the smallest mean squared error of
    :func:`log_sqrt2_quantize` (first smallest wins). Values beyond ``max_values`` are subsampled
    (:class:`~pytest_qrel.quantize.observers.ValueSample`); ``None`` (default) keeps them all.
    ``strict``: see :func:`log_sqrt2_quantize` (default ``False``: the reference's 2^b levels plus
    zero); ``arithmetic``: how the quantiles are computed
    (:data:`~pytest_qrel.quantize.observers.Arithmetic`, default the reference's ``torch.quantile``).
    Buffer ``scale`` (float32, 0-dim).
    """

    scale: Tensor  # the buffer registered in __init__ (declared: nn.Module attributes type as `Tensor | Module`)

    def __init__(
        self,
        bits: int,
        *,
        strict: bool = False,
        percentiles: Sequence[float] = REPQ_PERCENTILES,
        max_values: int | None = None,
        arithmetic: Arithmetic = "reference",
    ) -> None:
        super().__init__()
        self.quant_min, self.quant_max = unsigned_range(bits)
        self.bits = bits
        self.strict = strict
        self.percentiles = tuple(float(p) for p in percentiles)
        self.quantiles = quantiles_by(arithmetic)
        self.arithmetic = arithmetic
        self.mode = "observe"
        self.sample = ValueSample(max_values)
        self.register_buffer("scale", torch.tensor(1.0))

    @property
    def levels(self) -> int:
        """Distinct output values it can produce: ``2^b`` strict, ``2^b + 1`` as the reference."""
        return 2**self.bits + (0 if self.strict else 1)

    def reset(self) -> None:
        self.sample.reset()

    def observe(self, reset: bool = True) -> None:
        if reset:
            self.reset()
        self.mode = "observe"

    def calibrate_once(self) -> None:
        self.reset()
        self.mode = "calibrate"

    def freeze(self) -> None:
        if self.mode == "quantize" and self.sample.empty:
            return
        if self.sample.empty:
            raise RuntimeError("LogSqrt2Quantizer.freeze(): no input was observed; run calibration batches first")
        self.scale.copy_(self.search_scale(self.sample.values().reshape(-1)))
        self.sample.reset()
        self.mode = "quantize"

    def search_scale(self, x: Tensor) -> Tensor:
        """The candidate scale ``Q(p)`` of ``x`` with the smallest mean squared quantization error."""
        best, best_err = x.max(), None
        for cand in self.quantiles(x, self.percentiles):
            err = (log_sqrt2_quantize(x, cand, self.bits, strict=self.strict) - x).square().mean()
            if best_err is None or err < best_err:
                best, best_err = cand, err
        return best.to(torch.float32)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "calibrate":
            self.sample.update(x)
            self.freeze()
        if self.mode == "quantize":
            return log_sqrt2_quantize(x, self.scale, self.bits, strict=self.strict)
        if self.mode == "observe":
            self.sample.update(x)
        return x

    def extra_repr(self) -> str:
        text = f"bits={self.bits}, mode={self.mode}, strict={self.strict}, arithmetic={self.arithmetic}"
        if self.mode == "quantize":
            text += f", scale={self.scale.item():.6g}"
        return text


# --------------------------------------------------------------------------------------------------
# Quantized attention
# --------------------------------------------------------------------------------------------------


class QuantOperand(nn.Module):
    """One quantized tensor that is not a layer's input (here: a matmul operand).

    Presents the interface :func:`~pytest_qrel.quantize.verify.verify_simulation` looks for:
    ``weight_bits = None`` (no weight), ``act_bits``, ``input_quantizer`` (whose output is exactly the
    operand the matmul consumes; ``None`` when ``act_bits`` is ``None``) and ``dequantized_weight()``
    returning ``None``.
    """

    def __init__(self, act_bits: int | None, quantizer: nn.Module | None) -> None:
        super().__init__()
        if (act_bits is None) != (quantizer is None):
            raise ValueError("QuantOperand: give both act_bits and a quantizer, or neither")
        self.weight_bits: int | None = None
        self.act_bits = act_bits
        self.input_quantizer = quantizer

    def dequantized_weight(self) -> Tensor | None:
        return None

    def forward(self, x: Tensor) -> Tensor:
        return x if self.input_quantizer is None else self.input_quantizer(x)

    def extra_repr(self) -> str:
        return f"act_bits={self.act_bits}"


def _softmax_factory(
    kind: str | QuantizerFactory | None, act_quantizer: QuantizerFactory
) -> tuple[str, QuantizerFactory | None]:
    if kind is None or kind == "uniform":
        return "uniform", act_quantizer
    if kind == "log_sqrt2":
        return "log_sqrt2", LogSqrt2Quantizer
    if kind == "none":
        return "none", None
    if callable(kind):
        return getattr(kind, "__name__", type(kind).__name__), kind
    raise ValueError(f"softmax_quantizer must be 'uniform', 'log_sqrt2', 'none' or a factory, got {kind!r}")


def _attn_bias(n: int, scores: Tensor, attn_mask: Tensor | None, is_causal: bool) -> Tensor | None:
    """The additive mask of ``F.scaled_dot_product_attention`` (as timm's ``resolve_self_attn_mask``)."""
    if is_causal:
        return scores.new_full((n, n), float("-inf")).triu_(1)
    if attn_mask is None:
        return None
    if attn_mask.dtype == torch.bool:
        return torch.zeros_like(attn_mask, dtype=scores.dtype).masked_fill_(~attn_mask, float("-inf"))
    return attn_mask


class QuantAttention(nn.Module):
    """timm's ``Attention`` with explicit matmuls whose four operands are quantized.

    Args:
        attn: the ``timm.models.vision_transformer.Attention`` to replace; its submodules are reused
            (not copied).
        act_bits: bits of the four operands, or ``None`` for none (floating point).
        act_quantizer: ``factory(bits) -> module`` for ``q``, ``k`` and ``v`` (uniform; default
            :class:`ActQuantizer`).
        softmax_quantizer: ``"uniform"`` (default: ``act_quantizer``), ``"log_sqrt2"``, ``"none"``
            (the softmax output stays in floating point, as in SmoothQuant's reference) or a
            factory, for the softmax output ``attn``.

    Attributes: ``q_operand``, ``k_operand``, ``v_operand``, ``attn_operand`` (:class:`QuantOperand`),
    ``softmax_kind``, and timm's ``num_heads``, ``head_dim``, ``attn_dim``, ``scale``.
    """

    def __init__(
        self,
        attn: Any,  # timm's Attention, or an object with its attributes (read by name)
        *,
        act_bits: int | None,
        act_quantizer: QuantizerFactory = ActQuantizer,
        softmax_quantizer: str | QuantizerFactory | None = None,
    ) -> None:
        super().__init__()
        self.num_heads: int = attn.num_heads
        self.head_dim: int = attn.head_dim
        self.attn_dim: int = getattr(attn, "attn_dim", self.num_heads * self.head_dim)
        self.scale: float = attn.scale
        self.qkv = attn.qkv
        self.q_norm = getattr(attn, "q_norm", nn.Identity())
        self.k_norm = getattr(attn, "k_norm", nn.Identity())
        self.attn_drop = attn.attn_drop
        self.norm = getattr(attn, "norm", nn.Identity())
        self.gate = getattr(attn, "gate", None)
        self.proj = attn.proj
        self.proj_drop = attn.proj_drop
        self.softmax_kind, softmax_factory = _softmax_factory(softmax_quantizer, act_quantizer)

        def operand(factory: QuantizerFactory | None) -> QuantOperand:
            if act_bits is None or factory is None:
                return QuantOperand(None, None)
            return QuantOperand(act_bits, factory(act_bits))

        self.q_operand = operand(act_quantizer)
        self.k_operand = operand(act_quantizer)
        self.v_operand = operand(act_quantizer)
        self.attn_operand = operand(softmax_factory)
        self.train(attn.training)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        b, n, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        scores = (self.q_operand(q) @ self.k_operand(k).transpose(-2, -1)) * self.scale
        bias = _attn_bias(n, scores, attn_mask, is_causal)
        if bias is not None:
            scores = scores + bias
        attn = self.attn_drop(scores.softmax(dim=-1))
        x = self.attn_operand(attn) @ self.v_operand(v)
        x = x.transpose(1, 2).reshape(b, n, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, head_dim={self.head_dim}, softmax={self.softmax_kind}"


class QuantSelfAttention(QuantAttention):
    """:class:`QuantAttention` for a :class:`~pytest_qrel.models.clip_zoo.LinearSelfAttention` (OpenCLIP's
    visual attention as the ``open_clip`` source builds it): the same quantized computation, called
    as ``nn.MultiheadAttention`` is (``attn(x, x, x, need_weights=False, attn_mask=mask)``, self-attention
    only, ``batch_first`` as the module had it) and returning ``(out, None)``. The scale is
    ``head_dim^-0.5`` (``F.scaled_dot_product_attention``'s, which the float module uses); there is no
    dropout, q/k norm or gate.
    """

    def __init__(self, attn: Any, **kwargs: Any) -> None:
        head_dim = int(attn.qkv.in_features) // int(attn.num_heads)
        adapter: Any = _AttentionParts(num_heads=int(attn.num_heads), head_dim=head_dim, scale=head_dim**-0.5,
                                       qkv=attn.qkv, proj=attn.proj, training=bool(attn.training))
        super().__init__(adapter, **kwargs)
        self.batch_first = bool(getattr(attn, "batch_first", True))

    def forward(  # type: ignore[override]
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        need_weights: bool = False,
        attn_mask: Tensor | None = None,
    ) -> tuple[Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("QuantSelfAttention supports self-attention only (key and value must be the query)")
        if need_weights:
            raise ValueError("QuantSelfAttention does not return attention weights")
        x = query if self.batch_first else query.transpose(0, 1)
        out = super().forward(x, attn_mask=attn_mask)
        return (out if self.batch_first else out.transpose(0, 1)), None


class _AttentionParts:
    """The attributes :class:`QuantAttention` reads from the module it replaces (for modules that are
    not timm's ``Attention``)."""

    def __init__(self, *, num_heads: int, head_dim: int, scale: float, qkv: nn.Module, proj: nn.Module,
                 training: bool) -> None:
        self.num_heads, self.head_dim, self.scale = num_heads, head_dim, scale
        self.qkv, self.proj, self.training = qkv, proj, training
        self.attn_drop, self.proj_drop = nn.Identity(), nn.Identity()


def timm_attention_class() -> type[nn.Module] | None:
    """timm's ``Attention`` class, or ``None`` when timm is not installed."""
    try:
        from timm.models.vision_transformer import Attention
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return Attention


def _linear_self_attention_class() -> type[nn.Module] | None:
    from ..models.clip_zoo import LinearSelfAttention

    return LinearSelfAttention


ATTENTION_KINDS: dict[str, tuple[Callable[[], type[nn.Module] | None], type[QuantAttention]]] = {
    "timm": (timm_attention_class, QuantAttention),
    "open_clip": (_linear_self_attention_class, QuantSelfAttention),
}
"""Attention modules that can be quantized: ``kind -> (the float class, exactly; its quantized replacement)``.
``timm``: timm's ``Attention``; ``open_clip``: OpenCLIP's attention as the ``open_clip`` source builds it."""


def quant_attention(attn: nn.Module, **kwargs: Any) -> QuantAttention:
    """The quantized replacement of ``attn`` (a module of one of :data:`ATTENTION_KINDS`), built with
    :class:`QuantAttention`'s keyword arguments."""
    for get_class, quant_class in ATTENTION_KINDS.values():
        if type(attn) is get_class():
            return quant_class(attn, **kwargs)
    raise TypeError(f"quant_attention(): {type(attn).__name__} is none of {sorted(ATTENTION_KINDS)}")


def replace_attention(
    model: nn.Module,
    factory: Callable[[str, nn.Module], nn.Module | None],
    *,
    kinds: Sequence[str] = ("timm",),
) -> list[str]:
    """Replace, in place, every module of exactly one of the classes of ``kinds`` (:data:`ATTENTION_KINDS`;
    default timm's ``Attention``) inside ``model``.

    ``factory(qualified_name, attention)`` returns the replacement (e.g. :func:`quant_attention`) or
    ``None`` to keep it. Subclasses are left alone (their forward may differ). Returns the qualified
    names replaced, in module order.
    """
    classes = tuple(c for c in (ATTENTION_KINDS[k][0]() for k in kinds) if c is not None)
    if not classes:
        return []
    return replace_modules(model, lambda m: type(m) in classes, factory)
