"""Reusable building blocks of simulated ("fake") quantization.

Every method in :mod:`pytest_qrel.quantize` is assembled from these parts:

- quantization parameters: :func:`symmetric_qparams`, :func:`asymmetric_qparams` and the integer
  ranges :func:`signed_range` (restricted symmetric) and :func:`unsigned_range`;
- :func:`quantize_weight_per_channel_symmetric`: a weight tensor -> its fake-quantized copy, and
  :func:`quantize_weight` for the other granularities (per tensor) and asymmetric weights;
- :class:`ActQuantizer`: a per-tensor activation quantizer (asymmetric by default, or symmetric)
  with observer state;
- :class:`DynamicActQuantizer`: SmoothQuant's reference activation quantizer, symmetric absmax
  recomputed at every call, per token or per tensor (of one sample);
- :class:`FakeQuantLinear`: an ``nn.Linear`` with a fake-quantized weight and an input quantizer,
  and :class:`FakeQuantConv2d`, the same for an ``nn.Conv2d`` (e.g. a ViT's patch embedding);
- :func:`replace_linears`: swap every ``nn.Linear`` of a model for what a factory builds;
- the calibration protocol :func:`observe`, :func:`freeze`, :func:`calibrate`, which acts on every
  :class:`QuantModule` in a model.

Calibration protocol::

    replace_linears(qmodel, lambda name, lin: FakeQuantLinear(lin, weight_bits=4, act_bits=8))
    observe(qmodel)                # every ActQuantizer: reset its min/max, pass inputs through
    with torch.no_grad():
        for batch in batches:      # the model runs in FP32 (weights are not quantized yet)
            qmodel(batch)
    freeze(qmodel)                 # weights quantized once; activation scale/zero_point fixed
    # or in one call: calibrate(qmodel, images, batch_size=64)

Quantization formula (the one of ATen's CPU/CUDA kernels, which :func:`fake_quantize_reference`
repeats in plain torch ops)::

    q    = clamp(nearbyint(x * (1 / scale)) + zero_point, quant_min, quant_max)
    x_hat = (q - zero_point) * scale

``1 / scale`` is computed in float32 and *multiplied*, never divided by; ``nearbyint`` rounds half
to even. Integer kernels (``torch.quantize_per_tensor``) use the same formula, so a simulated model
and an integer one agree to float precision.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

EPS = torch.finfo(torch.float32).eps
"""Smallest scale: guards all-zero weight rows and constant activations (as PyTorch's observers do)."""

from .options import CALIBRATION_BATCH_SIZE, LinearQuantOptions  # noqa: E402  (CALIBRATION_BATCH_SIZE re-exported: images per calibration pass)


# --------------------------------------------------------------------------------------------------
# Integer ranges and quantization parameters
# --------------------------------------------------------------------------------------------------


def signed_range(bits: int) -> tuple[int, int]:
    """Restricted symmetric signed range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (e.g. [-127, 127], [-7, 7], [-1, 1]).

    The code ``-2^(b-1)`` is left out: with ``scale = absmax / qmax`` it could only ever be reached by
    values below ``-absmax``, which do not exist, so the grid is symmetric (negating a weight negates
    its code) and the level count is honest: ``2^b - 1``.
    """
    _check_bits(bits)
    qmax = 2 ** (bits - 1) - 1
    return -qmax, qmax


def unsigned_range(bits: int) -> tuple[int, int]:
    """Unsigned range ``[0, 2^b - 1]`` used by asymmetric activation quantization."""
    _check_bits(bits)
    return 0, 2**bits - 1


def _check_bits(bits: int) -> None:
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 16:
        raise ValueError(f"bits must be an integer from 2 to 16, got {bits!r}")


def symmetric_qparams(absmax: Tensor | float, bits: int) -> tuple[Tensor, Tensor]:
    """``scale = max(absmax / qmax, EPS)`` (float32) and ``zero_point = 0`` (int32), elementwise.

    ``qmax = 2^(b-1) - 1`` (see :func:`signed_range`). ``absmax`` may be a scalar or a tensor of
    per-channel maxima.
    """
    _, qmax = signed_range(bits)
    absmax = torch.as_tensor(absmax, dtype=torch.float32)
    scale = torch.clamp_min(absmax.clamp_min(0.0) / float(qmax), EPS)
    return scale, torch.zeros_like(scale, dtype=torch.int32)


def asymmetric_qparams(min_val: Tensor | float, max_val: Tensor | float, bits: int) -> tuple[Tensor, Tensor]:
    """Affine parameters mapping ``[min, max]`` onto the unsigned range ``[0, 2^b - 1]``.

    ``min`` is clamped to ``<= 0`` and ``max`` to ``>= 0`` so that zero is exactly representable;
    ``scale = max((max - min) / (2^b - 1), EPS)`` (float32) and
    ``zero_point = clamp(round(-min / scale), 0, 2^b - 1)`` (int32, round half to even). This is
    what ``torch.ao.quantization.MinMaxObserver`` computes for ``per_tensor_affine``.
    """
    qmin, qmax = unsigned_range(bits)
    lo = torch.as_tensor(min_val, dtype=torch.float32).clamp_max(0.0)
    hi = torch.as_tensor(max_val, dtype=torch.float32).clamp_min(0.0)
    scale = torch.clamp_min((hi - lo) / float(qmax - qmin), EPS)
    zero_point = torch.clamp(torch.round(-lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


# --------------------------------------------------------------------------------------------------
# Fake quantization
# --------------------------------------------------------------------------------------------------



def quant_params_like(x: Tensor, scale: Any, zero_point: Any, axis: int | None) -> tuple[Tensor, Tensor]:
    """``scale`` and ``zero_point`` as float32 tensors on ``x``'s device, shaped to broadcast against
    ``x`` along ``axis`` (``None``: as given, per tensor or along the last dimension)."""
    scale_t = torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    zp_t = torch.as_tensor(zero_point, device=x.device).to(torch.float32)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        scale_t, zp_t = scale_t.reshape(shape), zp_t.reshape(shape)
    return scale_t, zp_t

def fake_quantize_reference(
    x: Tensor,
    scale: Tensor | float,
    zero_point: Tensor | int,
    quant_min: int,
    quant_max: int,
    axis: int | None = None,
) -> Tensor:
    """Round/clamp fake quantization in plain torch ops, with exactly ATen's formula.

    Equal to ``torch.fake_quantize_per_tensor_affine`` (``axis=None``) or
    ``torch.fake_quantize_per_channel_affine`` (``axis`` given) for finite inputs whose
    ``|x / scale|`` is below 2^62 (ATen's cast to int64 of larger values is undefined). Used by the
    tests as an independent statement of the formula and by methods that need it on dtypes or
    shapes the fused ops do not take.
    """
    scale_t, zp_t = quant_params_like(x, scale, zero_point, axis)
    inv_scale = 1.0 / scale_t  # float32, like ATen's `1.0f / scale`
    q = torch.round(x.float() * inv_scale) + zp_t  # torch.round == nearbyint (half to even)
    q = torch.clamp(q, quant_min, quant_max)
    return ((q - zp_t) * scale_t).to(x.dtype)


def fake_quantize_per_tensor(x: Tensor, scale: Tensor, zero_point: Tensor, quant_min: int, quant_max: int) -> Tensor:
    """``torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)`` (0-dim
    tensor ``scale`` / ``zero_point``), through the fastest path that gives its bits.

    Where no gradient is needed and ``x`` is float32 (every evaluation pass), the formula runs as
    plain in-place tensor ops on one new tensor: ATen's CPU kernel also writes the backward mask
    and does not vectorize, and took about 5x as long on a (128, 17, 256) activation (3.5 ms vs
    0.7 ms on 2 threads), which made it a third of a small ViT's simulated forward pass. The ops
    and their order are :func:`fake_quantize_reference`'s, equal to ATen's for finite inputs
    (``tests/test_quantize.py``); an infinite input saturates to the range's end it points to
    (ATen's cast of it to an integer is undefined). With autograd (QAT) ATen's op runs: its
    gradient is the straight-through estimator."""
    if x.dtype != torch.float32 or (x.requires_grad and torch.is_grad_enabled()):
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, quant_min, quant_max)
    zp = zero_point.to(torch.float32)
    q = torch.mul(x, 1.0 / scale.to(torch.float32))  # float32 1/scale, multiplied, as ATen does
    q.round_()  # half to even, as nearbyint
    q.add_(zp).clamp_(quant_min, quant_max).sub_(zp).mul_(scale)
    return q


_COMPILED: list[Callable[..., Tensor]] = []


def compiled_fake_quantize() -> Callable[..., Tensor]:
    """One ``torch.compile`` of :func:`fake_quantize_reference` (per tensor, or per channel along
    the last dimension by broadcasting), shared by every :class:`ActQuantizer` (scale and zero
    point are arguments, not module state, so one graph serves all of them and shapes are
    dynamic). Inductor fuses the multiply / round / add /
    clamp / subtract / multiply chain into one loop; ATen's ``fake_quantize_per_tensor_affine``
    (with tensor qparams it also writes a backward mask) cannot be fused. The elementwise ops and
    their order are unchanged, so the outputs are the eager ones bit for bit
    (``tests/test_compile.py``)."""
    if not _COMPILED:
        _COMPILED.append(torch.compile(fake_quantize_reference, dynamic=True))
    return _COMPILED[0]


def quantize_weight_per_channel_symmetric(w: Tensor, bits: int, axis: int = 0) -> Tensor:
    """Fake-quantize ``w`` symmetrically per output channel (``axis``) to ``bits`` bits.

    ``scale_c = absmax_c / (2^(b-1) - 1)`` per channel (``EPS`` for all-zero channels), codes in the
    restricted range of :func:`signed_range`, through ``torch.fake_quantize_per_channel_affine``.
    Returns a new tensor of ``w``'s shape and dtype holding at most ``2^b - 1`` distinct values per
    channel.
    """
    qmin, qmax = signed_range(bits)
    w32 = w.detach().to(torch.float32)
    rows = w32.transpose(0, axis).reshape(w32.shape[axis], -1)
    scale, zero_point = symmetric_qparams(rows.abs().amax(dim=1), bits)
    out = torch.fake_quantize_per_channel_affine(
        w32, scale.to(w32.device), zero_point.to(w32.device), axis, qmin, qmax
    )
    return out.to(w.dtype)


def quantize_weight(w: Tensor, bits: int, *, per_channel: bool = True, symmetric: bool = True, axis: int = 0) -> Tensor:
    """Fake-quantize a weight: per output channel (``axis``) or per tensor, symmetric or asymmetric.

    - symmetric: restricted signed range of :func:`signed_range`, ``scale = absmax / (2^(b-1) - 1)``,
      zero_point 0 (at most ``2^b - 1`` levels); per channel this *is*
      :func:`quantize_weight_per_channel_symmetric`;
    - asymmetric: unsigned range ``[0, 2^b - 1]`` with :func:`asymmetric_qparams` of the channel's
      (or tensor's) min and max (at most ``2^b`` levels).

    Per channel goes through ``torch.fake_quantize_per_channel_affine``, per tensor through
    ``torch.fake_quantize_per_tensor_affine`` (one call each). Returns a new tensor of ``w``'s shape
    and dtype.
    """
    if per_channel and symmetric:
        return quantize_weight_per_channel_symmetric(w, bits, axis)
    w32 = w.detach().to(torch.float32)
    if symmetric:
        qmin, qmax = signed_range(bits)
        scale, zero_point = symmetric_qparams(w32.abs().amax(), bits)
    elif per_channel:
        qmin, qmax = unsigned_range(bits)
        rows = w32.transpose(0, axis).reshape(w32.shape[axis], -1)
        scale, zero_point = asymmetric_qparams(rows.amin(dim=1), rows.amax(dim=1), bits)
    else:
        qmin, qmax = unsigned_range(bits)
        scale, zero_point = asymmetric_qparams(w32.amin(), w32.amax(), bits)
    scale, zero_point = scale.to(w32.device), zero_point.to(w32.device)
    if per_channel:
        out = torch.fake_quantize_per_channel_affine(w32, scale, zero_point, axis, qmin, qmax)
    else:
        out = torch.fake_quantize_per_tensor_affine(w32, scale, zero_point, qmin, qmax)
    return out.to(w.dtype)


WeightQuantizer = Callable[[Tensor, int], Tensor]


def weight_quantizer_for(options: LinearQuantOptions) -> WeightQuantizer:
    """``fn(weight, bits)`` for the weight options of ``options`` (``weight_granularity``,
    ``weight_symmetric``); the default is :func:`quantize_weight_per_channel_symmetric` itself.
    (Here, not a method of the options: :mod:`.options` imports no torch and nothing from this module.)"""
    per_channel = options.weight_granularity == "per_channel"
    if per_channel and options.weight_symmetric:
        return quantize_weight_per_channel_symmetric
    symmetric = options.weight_symmetric

    def quantizer(w: Tensor, bits: int) -> Tensor:
        return quantize_weight(w, bits, per_channel=per_channel, symmetric=symmetric)

    return quantizer
"""``fn(weight, bits) -> fake-quantized weight`` (same shape); e.g. :func:`quantize_weight_per_channel_symmetric`."""


# --------------------------------------------------------------------------------------------------
# Modules
# --------------------------------------------------------------------------------------------------


class QuantModule(nn.Module):
    """Base of every module that takes part in the calibration protocol.

    :func:`observe` calls :meth:`observe` and :func:`freeze` calls :meth:`freeze` on every
    ``QuantModule`` of a model (parents before children); each acts on its *own* state only and is
    idempotent.
    """

    _qrel_compiled: bool = False  # set by the engine's --qrel-compile once it has compiled `forward`

    def observe(self) -> None:
        """Start observing: forward passes now collect statistics and do not quantize."""

    def freeze(self) -> None:
        """Fix the quantization parameters from what was observed; forward now quantizes."""


ActMode = Literal["observe", "quantize", "off"]


class ActQuantizer(QuantModule):
    """Static per-tensor quantizer of an activation, with a min/max observer.

    Asymmetric by default (:func:`asymmetric_qparams`, unsigned range ``[0, 2^b - 1]``); with
    ``symmetric=True`` the scale is :func:`symmetric_qparams` of ``max(|min|, |max|)`` on the
    restricted signed range of :func:`signed_range` and the zero point is 0.

    Modes: ``"observe"`` (the initial one; passes ``x`` through and tracks its running min and max),
    ``"quantize"`` (after :meth:`freeze`; fake-quantizes with the frozen ``scale``/``zero_point``:
    ``torch.fake_quantize_per_tensor_affine``'s bits, :func:`fake_quantize_per_tensor`) and ``"off"`` (passes ``x`` through untouched,
    e.g. for ablations). Buffers: ``min_val``, ``max_val`` (observed range), ``scale`` (float32) and
    ``zero_point`` (int32), all 0-dim.
    """

    uses_compiled_kernel = True
    """Its ``forward`` calls :func:`compiled_fake_quantize` when ``compiled`` is set (a subclass
    with a forward of its own that does not sets this to False)."""

    # Buffers (register_buffer below), declared so that type checkers see tensors, not `Tensor | Module`.
    min_val: Tensor
    max_val: Tensor
    scale: Tensor
    zero_point: Tensor

    def __init__(self, bits: int, *, symmetric: bool = False) -> None:
        super().__init__()
        self.symmetric = symmetric
        self.quant_min, self.quant_max = signed_range(bits) if symmetric else unsigned_range(bits)
        self.bits = bits
        self.mode: ActMode = "observe"
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))
        self.register_buffer("scale", torch.tensor(1.0))
        self.register_buffer("zero_point", torch.tensor(0, dtype=torch.int32))
        self.compiled = False  # set by the engine's --qrel-compile: the fused plain-ops kernel

    @property
    def observed(self) -> bool:
        return bool(self.min_val <= self.max_val)

    def reset(self) -> None:
        """Forget the observed range."""
        self.min_val.fill_(float("inf"))
        self.max_val.fill_(float("-inf"))

    def observe(self, reset: bool = True) -> None:
        if reset:
            self.reset()
        self.mode = "observe"

    def freeze(self) -> None:
        if not self.observed:
            raise RuntimeError(
                "ActQuantizer.freeze(): no input was observed; run calibration batches through the "
                "model in observe mode first (is this module ever called by the model's forward?)"
            )
        if self.symmetric:
            scale, zero_point = symmetric_qparams(torch.maximum(-self.min_val, self.max_val), self.bits)
        else:
            scale, zero_point = asymmetric_qparams(self.min_val, self.max_val, self.bits)
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.mode = "quantize"

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "quantize":
            if self.compiled:
                return compiled_fake_quantize()(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
            return fake_quantize_per_tensor(x, self.scale, self.zero_point, self.quant_min, self.quant_max)
        if self.mode == "observe":
            lo, hi = torch.aminmax(x.detach())
            torch.minimum(self.min_val, lo.to(self.min_val.dtype), out=self.min_val)
            torch.maximum(self.max_val, hi.to(self.max_val.dtype), out=self.max_val)
        return x

    def extra_repr(self) -> str:
        text = f"bits={self.bits}, mode={self.mode}" + (", symmetric" if self.symmetric else "")
        if self.mode == "quantize":
            text += f", scale={self.scale.item():.6g}, zero_point={int(self.zero_point)}"
        return text


DynamicGranularity = Literal["per_token", "per_tensor"]


class DynamicActQuantizer(QuantModule):
    """Dynamic symmetric absmax quantization, recomputed at every call (SmoothQuant's reference
    ``quantize_activation_per_token_absmax`` / ``..._per_tensor_absmax``).

    For every group of values sharing a scale::

        scale = max(absmax(group), 1e-5) / (2^(b-1) - 1)
        x_hat = round(x / scale) * scale              (round half to even; no clamp is needed)

    Groups: ``per_token`` (default): every vector along ``feature_dims`` (default the last
    dimension: one token's channels); ``per_tensor``: everything of one sample (all dimensions but
    the first). The reference computes its per-tensor scale over the whole batch it is given; it
    evaluates one sequence at a time, so one sample per scale is what it computes, and a sample's
    output here does not depend on the other images of its batch. ``feature_dims=(1, 3)`` groups a
    ``(B, heads, N, head_dim)`` attention operand by token across all heads, as the reference's
    quantized ``q_proj`` / ``k_proj`` / ``v_proj`` outputs are.

    Unlike the static quantizers it divides by the scale, as the reference does (the project's
    static quantizers multiply by ``1 / scale``, ATen's formula; results differ only at exact
    rounding ties). At most ``2^b - 1`` distinct values per group; :meth:`grid_rows` gives the groups
    to :func:`~pytest_qrel.quantize.verify.verify_simulation`. Nothing to observe or freeze.
    """

    SCALE_MIN = 1e-5

    def __init__(self, bits: int, granularity: DynamicGranularity = "per_token",
                 feature_dims: tuple[int, ...] = (-1,)) -> None:
        super().__init__()
        if granularity not in ("per_token", "per_tensor"):
            raise ValueError(f"granularity must be 'per_token' or 'per_tensor', got {granularity!r}")
        self.bits = bits
        self.granularity = granularity
        self.feature_dims = tuple(feature_dims)
        self.quant_min, self.quant_max = signed_range(bits)
        self.mode = "quantize"

    def _dims(self, x: Tensor) -> tuple[int, ...]:
        if self.granularity == "per_tensor":
            return tuple(range(1, x.dim())) if x.dim() > 1 else (0,)
        return tuple(d % x.dim() for d in self.feature_dims)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "off":
            return x
        absmax = x.detach().abs().amax(dim=self._dims(x), keepdim=True)
        scale = absmax.clamp_min(self.SCALE_MIN) / float(self.quant_max)
        return torch.round(x / scale) * scale

    def grid_rows(self, x: Tensor) -> Tensor:
        """``x`` as rows of values that share one scale: shape (groups, values per group)."""
        dims = self._dims(x)
        keep = [d for d in range(x.dim()) if d not in dims]
        return x.detach().permute(*keep, *dims).reshape(-1, int(np.prod([x.shape[d] for d in dims])))

    def extra_repr(self) -> str:
        return f"bits={self.bits}, dynamic {self.granularity}, symmetric"


class _FakeQuantWeighted(QuantModule):
    """What :class:`FakeQuantLinear` and :class:`FakeQuantConv2d` share: a frozen copy of a float
    layer's weight and bias, the weight fake-quantized once at :meth:`freeze`, and an optional
    quantizer of the layer's input."""

    weight_bits: int | None
    act_bits: int | None

    def _take_weights(
        self,
        layer: nn.Linear | nn.Conv2d,
        weight_bits: int | None,
        act_bits: int | None,
        weight_quantizer: WeightQuantizer,
        act_symmetric: bool,
        input_quantizer: nn.Module | None,
    ) -> None:
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=False)
        if layer.bias is not None:
            self.bias = nn.Parameter(layer.bias.detach().clone(), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self.input_quantizer: nn.Module | None = None
        if act_bits is not None:
            self.input_quantizer = input_quantizer if input_quantizer is not None else ActQuantizer(act_bits, symmetric=act_symmetric)
        self.weight_quantizer = weight_quantizer
        self.weight_frozen = weight_bits is None

    def freeze(self) -> None:
        if self.weight_frozen:
            return
        assert self.weight_bits is not None
        with torch.no_grad():
            self.weight.copy_(self.weight_quantizer(self.weight, self.weight_bits))
        self.weight_frozen = True

    def dequantized_weight(self) -> Tensor | None:
        """The weight forward uses (fake-quantized once frozen), or ``None`` when weights stay float."""
        return self.weight if self.weight_bits is not None else None

    def quantize_input(self, x: Tensor) -> Tensor:
        return self.input_quantizer(x) if self.input_quantizer is not None else x


class FakeQuantLinear(_FakeQuantWeighted):
    """An ``nn.Linear`` with a fake-quantized weight and a fake-quantized input.

    Built from a float ``nn.Linear`` (its weight and bias are copied). Until :meth:`freeze` the
    weight stays in floating point (so observation runs the FP32 model); :meth:`freeze` replaces it
    ONCE by ``weight_quantizer(weight, weight_bits)`` and freezing never happens again, so forward
    passes never re-quantize weights. ``weight_bits=None`` keeps the weight in floating point;
    ``act_bits=None`` leaves the input unquantized (``input_quantizer`` is then ``None``);
    ``act_symmetric`` selects the symmetric :class:`ActQuantizer`.

    The small interface :mod:`pytest_qrel.quantize.verify` relies on (future fake-quant modules
    expose the same): ``weight_bits``, ``act_bits``, :meth:`dequantized_weight` (the exact tensor
    forward multiplies by, rows = output channels) and ``input_quantizer`` (the module whose output
    is the exact input forward consumes).
    """

    def __init__(
        self,
        linear: nn.Linear,
        *,
        weight_bits: int | None,
        act_bits: int | None,
        weight_quantizer: WeightQuantizer = quantize_weight_per_channel_symmetric,
        act_symmetric: bool = False,
        input_quantizer: nn.Module | None = None,
    ) -> None:
        """``input_quantizer`` replaces the default :class:`ActQuantizer` (e.g. an observer-driven
        one); it is ignored when ``act_bits`` is ``None``."""
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self._take_weights(linear, weight_bits, act_bits, weight_quantizer, act_symmetric, input_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.quantize_input(x), self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, weight_frozen={self.weight_frozen}"
        )


class FakeQuantConv2d(_FakeQuantWeighted):
    """An ``nn.Conv2d`` with a fake-quantized weight and a fake-quantized input (per tensor).

    The same protocol and interface as :class:`FakeQuantLinear` (``weight_bits``, ``act_bits``,
    ``input_quantizer``, :meth:`dequantized_weight` with rows = output channels), built from a float
    ``nn.Conv2d`` whose weight, bias and geometry (stride, padding, dilation, groups, padding mode) are
    copied. Used for the patch embedding of a ViT (``patch_embed: quantized``).
    """

    def __init__(
        self,
        conv: nn.Conv2d,
        *,
        weight_bits: int | None,
        act_bits: int | None,
        weight_quantizer: WeightQuantizer = quantize_weight_per_channel_symmetric,
        act_symmetric: bool = False,
        input_quantizer: nn.Module | None = None,
    ) -> None:
        """``input_quantizer`` replaces the default :class:`ActQuantizer` (e.g. RepQ-ViT's
        percentile-search quantizer); it is ignored when ``act_bits`` is ``None``."""
        super().__init__()
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size, self.stride, self.padding = conv.kernel_size, conv.stride, conv.padding
        self.dilation, self.groups, self.padding_mode = conv.dilation, conv.groups, conv.padding_mode
        self._reversed_padding_repeated_twice = list(getattr(conv, "_reversed_padding_repeated_twice", []))
        self._take_weights(conv, weight_bits, act_bits, weight_quantizer, act_symmetric, input_quantizer)

    def forward(self, x: Tensor) -> Tensor:
        x = self.quantize_input(x)
        if self.padding_mode != "zeros":
            x = F.pad(x, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, weight_frozen={self.weight_frozen}"
        )


# --------------------------------------------------------------------------------------------------
# Model surgery and the calibration protocol
# --------------------------------------------------------------------------------------------------


def replace_linears(model: nn.Module, factory: Callable[[str, nn.Linear], nn.Module | None]) -> list[str]:
    """Replace, in place, every ``nn.Linear`` (subclasses included) inside ``model``.

    ``factory(qualified_name, linear)`` returns the replacement, or ``None`` to keep that linear. A
    linear shared by several parents is built once and the same replacement put everywhere. Returns
    the qualified names replaced, in module order. Caveat: modules that read a child linear's
    ``.weight`` instead of calling it (``nn.MultiheadAttention.out_proj``) bypass the replacement's
    forward; :func:`~pytest_qrel.quantize.verify.verify_simulation` reports such inputs as never quantized.

    Raises:
        ValueError: ``model`` itself is an ``nn.Linear`` (it has no parent to be replaced in).
    """
    if isinstance(model, nn.Linear):
        raise ValueError("replace_linears() needs a container module; wrap the nn.Linear (e.g. nn.Sequential)")
    return replace_modules(model, lambda m: isinstance(m, nn.Linear), factory)


def replace_modules(
    model: nn.Module, select: Callable[[nn.Module], bool], factory: Callable[[str, Any], nn.Module | None]
) -> list[str]:
    """Replace, in place, every child module of ``model`` for which ``select(module)`` is true.

    ``factory(qualified_name, module)`` returns the replacement, or ``None`` to keep it; a module
    shared by several parents is built once and the same replacement put everywhere. Returns the
    qualified names replaced, in module order.
    """
    built: dict[int, nn.Module | None] = {}
    replaced: list[str] = []
    targets = [
        (parent, child_name, f"{parent_name}.{child_name}" if parent_name else child_name, child)
        for parent_name, parent in model.named_modules()
        for child_name, child in parent._modules.items()  # not named_children(): it hides repeats
        if child is not None and select(child)
    ]
    for parent, child_name, qualified, child in targets:
        if id(child) not in built:
            built[id(child)] = factory(qualified, child)
        new = built[id(child)]
        if new is not None:
            setattr(parent, child_name, new)
            replaced.append(qualified)
    return replaced


def quant_modules(model: nn.Module) -> Iterable[QuantModule]:
    return (m for m in model.modules() if isinstance(m, QuantModule))


def observe(model: nn.Module) -> None:
    """Put every :class:`QuantModule` of ``model`` in observe mode (activation observers are reset)."""
    for m in quant_modules(model):
        m.observe()


def freeze(model: nn.Module) -> None:
    """Freeze every :class:`QuantModule` of ``model``: weights quantized once, activation qparams fixed."""
    for m in quant_modules(model):
        m.freeze()


def calibrate(model: nn.Module, images: Tensor, *, batch_size: int = CALIBRATION_BATCH_SIZE) -> None:
    """The whole protocol: :func:`observe`, forward ``images`` in batches under ``torch.no_grad``, :func:`freeze`.

    The forward passes are skipped when no :class:`ActQuantizer` needs statistics. ``images`` are
    moved to the device and floating dtype of the model's first parameter. The model's train/eval
    mode is left as it is (callers put it in eval mode first).
    """
    observe(model)
    if any(isinstance(m, ActQuantizer) for m in model.modules()):
        if images.shape[0] == 0:
            raise ValueError("calibrate(): no calibration images")
        ref = next(iter(model.parameters()), None)
        if ref is not None:
            images = images.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        with torch.no_grad():
            for batch in images.split(batch_size):
                model(batch)
    freeze(model)
