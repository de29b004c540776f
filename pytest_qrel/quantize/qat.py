"""Light quantization-aware training (QAT): short fine-tuning of a fake-quantized copy of the model.

Five registry entries, the QAT families of Bouguerra et al. ("Can Less Precise Be More Reliable?",
CLIP quantization beyond accuracy; appendix "Quantization and Training Configurations"):

=========================  ================================================================================
``qat``                    Basic QAT: the ``minmax`` quantizer (weights symmetric per output channel with the
                           scale taken from the *current* weight's absmax at every forward; inputs asymmetric
                           per tensor with the static range observed on the calibration images) plus a
                           straight-through estimator; every float parameter of the model is fine-tuned.
``qat_lsq``                LSQ (Esser et al., ICLR 2020): one learnable step per weight tensor and one per
                           input activation tensor, trained with the model's parameters.
``qat_lsq_per_channel``    the same with one learnable weight step per output channel.
``qat_distill``            ``qat_lsq`` (per tensor, or per channel with ``per_channel: true``) trained on a
                           knowledge-distillation loss: the KL divergence to the FP32 input model's softened
                           outputs, mixed with cross-entropy on the labels.
``qat_lora``               LoRA adapters (rank ``lora_r``, scaling ``lora_alpha / lora_r``) beside every
                           quantized ``nn.Linear``; the base weight is frozen and fake-quantized (per-channel
                           steps from minmax, trainable only with ``train_steps: true``); the adapter reads the
                           full-precision input. Only the adapters (and optionally the steps) train.
=========================  ================================================================================

What is quantized is what ``minmax`` quantizes: every ``nn.Linear`` (weight and input), all else in
FP32. The returned model is built from the same parts as ``minmax``'s: each trained layer is exported
as a :class:`~pytest_qrel.quantize.fakequant.FakeQuantLinear` whose weight holds the fake-quantized
values (computed once) and whose :class:`~pytest_qrel.quantize.fakequant.ActQuantizer` is frozen at
the learned step and zero point (``qat_lora`` exports :class:`LoRAFakeQuantLinear`, which adds the
float adapter path). Its forward is the training forward, numerically identical, with no autograd
state: eval mode, every ``requires_grad`` False, no quantizer parameter left to learn.

**Grids.** Weights: restricted signed range ``[-Qp, Qp]``, ``Qp = 2^(b-1) - 1`` (as in ``minmax``;
``zero_point = 0``). Inputs: unsigned ``[0, 2^b - 1]`` with an integer zero point. The LSQ input
quantizer keeps the zero point it was initialised with (an integer, fixed) and learns the step, so
the represented interval ``[-zp * s, (2^b - 1 - zp) * s]`` scales with the step.

**LSQ.** Forward ``x_hat = round(clamp(x * (1/s), lo, hi)) * s`` with ``[lo, hi] = [-Qp, Qp]`` for
weights and ``[-zp, 2^b - 1 - zp]`` for inputs: the exact formula of ATen's fake-quantize kernels
(:func:`~pytest_qrel.quantize.fakequant.fake_quantize_reference`), so the exported model computes the
same numbers. Backward: straight-through round (``d x_hat / dx = 1`` inside ``[lo, hi]``, 0 outside)
and LSQ's step gradient ``round(x/s) - x/s`` inside, ``lo`` or ``hi`` outside, multiplied by the
gradient scale ``g = 1 / sqrt(N * Qp)``. ``N``: the number of elements the step quantizes -- the
whole weight (per tensor), one weight row, i.e. ``in_features`` (per channel), or one *sample*'s
input (``numel / batch``) for activations, as in the LSQ paper. ``Qp`` is ``2^(b-1) - 1`` for weights
and ``2^b - 1`` for inputs (the positive code bound of their ranges). Steps are initialised from
minmax by default (weights: ``absmax / Qp`` per tensor or per row; inputs: minmax's scale and zero
point), so a run with ``steps: 0`` is a PTQ model; ``step_init: lsq`` uses LSQ's
``2 * mean|x| / sqrt(Qp)`` instead (the mean over the whole weight or row; for inputs over all
calibration images, the zero point then ``clamp(round(-min / s), 0, 2^b - 1)``). After every optimizer
step the steps are clamped to at least ``EPS``; they get no weight decay.

**Training.** AdamW on the ``calibration`` images and their ``labels`` only (never test or OOD data),
``steps`` optimizer steps of ``batch_size`` images: the N images are shuffled with a seeded
generator and looped (a batch larger than N repeats images), every step draws the next
``batch_size`` indices of that stream. The model stays in eval mode while it trains (no dropout or
drop-path, normalisation statistics untouched): light QAT adapts to the grid, and it stays
deterministic. Loss: cross-entropy on ``labels``; ``qat_distill``:
``w * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - w) * CE`` with the teacher's
logits computed once, in eval mode, from the input model.

Defaults and where they come from (paper, appendix tables "Full QAT" and "Light QAT"):
``steps: 100`` (light QAT trains for 100 batches), ``batch_size: 100``, the optimizer AdamW,
``lora_r: 8``, ``lora_alpha: 16``, ``distill_weight: 0.5`` ("Distillation 0.5"), the paper's loop over
a small set of unique samples (it uses 100; here they are the ``calibration.samples`` images). Our
copy of the paper lost the learning-rate values of those tables (it only says that light QAT uses a
*smaller* rate and that the LSQ steps have their own rate), so ``lr: 1.0e-5`` (``qat_lora``:
``1.0e-4``, a usual LoRA rate), ``step_lr: 1.0e-4`` and ``weight_decay: 0.01`` (PyTorch's AdamW
default) are our choices; ``temperature: 1`` (no softening) as the paper's KL loss states none.

Options (every key is validated; unknown keys are a SpecError naming ``quantizers.<name>.<key>``):

- all methods: ``steps`` (int >= 0; 0 returns the initialised PTQ model), ``batch_size`` (int >= 1;
  the training batch, also used for the calibration forward passes), ``lr`` and ``weight_decay``
  (numbers; ``1e-5`` written in YAML arrives as a string and is accepted), ``seed`` (int >= 0;
  default ``calibration.seed``), ``head`` (``quantized`` | ``fp32``: as for ``minmax``, ``fp32``
  leaves the classifier head an FP32 ``nn.Linear``; it is then fine-tuned in FP32 by the methods
  that fine-tune the model, and left as it is by ``qat_lora``);
- LSQ methods and ``qat_lora``: ``step_lr``, ``step_init`` (``minmax`` | ``lsq``);
- ``qat_distill``: ``per_channel`` (bool, default false), ``temperature`` (> 0, default 1),
  ``distill_weight`` (in [0, 1]; default 0.5 with labels, 1 -- the KL term alone -- without);
- ``qat_lora``: ``lora_r`` (int >= 1, default 8), ``lora_alpha`` (> 0, default 16), ``train_steps``
  (bool, default false).

Methods other than ``qat_distill`` need ``labels``; without them they raise a SpecError.
The returned model records ``qat_steps`` (optimizer steps taken), ``qat_losses`` (the training loss
of every step) and ``qat_options`` (the resolved options).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..spec.schema import QuantizerSpec
from .base import QUANTIZERS, Option, parse_options, positive_int, spec_error
from .fakequant import (
    EPS,
    ActQuantizer,
    FakeQuantLinear,
    QuantModule,
    calibrate,
    replace_linears,
    signed_range,
    symmetric_qparams,
)

DEFAULT_STEPS = 100
DEFAULT_BATCH_SIZE = 100
DEFAULT_LR = 1e-5
DEFAULT_LORA_LR = 1e-4
DEFAULT_STEP_LR = 1e-4
DEFAULT_WEIGHT_DECAY = 0.01
DEFAULT_DISTILL_WEIGHT = 0.5
DEFAULT_LORA_R = 8
DEFAULT_LORA_ALPHA = 16.0

WeightScheme = Literal["minmax", "lsq_tensor", "lsq_channel"]
ActScheme = Literal["static", "lsq"]
StepInit = Literal["minmax", "lsq"]


# --------------------------------------------------------------------------------------------------
# LSQ primitives
# --------------------------------------------------------------------------------------------------


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the incoming gradient by a constant."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, factor: float) -> Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        return grad * ctx.factor, None


class _RoundSTE(torch.autograd.Function):
    """``torch.round`` (half to even) forward, identity backward (the straight-through estimator)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return torch.round(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad


def scale_grad(x: Tensor, factor: float) -> Tensor:
    """``x`` unchanged in the forward pass; its gradient multiplied by ``factor`` in the backward pass."""
    return _ScaleGrad.apply(x, float(factor))


def round_ste(x: Tensor) -> Tensor:
    """Round half to even, with a straight-through (identity) gradient."""
    return _RoundSTE.apply(x)


def lsq_grad_scale(elements: int, qp: int) -> float:
    """LSQ's step gradient scale ``g = 1 / sqrt(N * Qp)`` (``N`` elements share the step; ``Qp`` is the
    positive code bound)."""
    if elements < 1 or qp < 1:
        raise ValueError(f"lsq_grad_scale needs elements >= 1 and qp >= 1, got {elements}, {qp}")
    return 1.0 / math.sqrt(elements * qp)


def lsq_fake_quantize(
    x: Tensor,
    step: Tensor,
    quant_min: int,
    quant_max: int,
    *,
    grad_factor: float = 1.0,
    zero_point: Tensor | None = None,
    axis: int | None = None,
) -> Tensor:
    """Fake-quantize ``x`` with a learnable ``step`` (LSQ).

    Forward: ``q = clamp(round(x * (1 / s)) + zp, quant_min, quant_max)``, ``x_hat = (q - zp) * s``,
    ATen's formula (computed as ``round(clamp(x * (1/s), quant_min - zp, quant_max - zp)) * s``,
    which is equal because the bounds are integers). ``step`` is 0-dim (per tensor) or 1-D along
    ``axis`` (per channel); ``zero_point`` an integer-valued tensor broadcastable like ``step``, or
    ``None`` for 0.

    Backward: ``d x_hat / d x`` is 1 where ``x / s`` lies in the clamp range and 0 outside (STE);
    ``d x_hat / d s`` is ``round(x/s) - x/s`` inside and the clamp bound outside, times
    ``grad_factor`` (LSQ's gradient scale, see :func:`lsq_grad_scale`).
    """
    s = scale_grad(step, grad_factor)
    shape = None
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        s = s.reshape(shape)
    v = x * (1.0 / s)
    if zero_point is None:
        v = torch.clamp(v, quant_min, quant_max)
    else:
        zp = zero_point.detach().to(dtype=v.dtype, device=v.device)
        if shape is not None and zp.dim() > 0:
            zp = zp.reshape(shape)
        v = torch.clamp(v, quant_min - zp, quant_max - zp)
    return round_ste(v) * s


# --------------------------------------------------------------------------------------------------
# Training-time modules
# --------------------------------------------------------------------------------------------------


class LSQActQuantizer(ActQuantizer):
    """Per-tensor asymmetric input quantizer with a learnable step and a fixed integer zero point.

    ``"observe"`` mode is :class:`ActQuantizer`'s (min/max) plus the mean absolute input (for
    ``step_init="lsq"``). :meth:`freeze` computes minmax's scale and zero point, then sets the step
    (and, for ``"lsq"`` init, the zero point); in ``"quantize"`` mode the forward is
    :func:`lsq_fake_quantize` with the gradient scale ``1 / sqrt(numel_per_sample * (2^b - 1))``.
    """

    def __init__(self, bits: int, *, step_init: StepInit = "minmax") -> None:
        super().__init__(bits)
        self.step_init = step_init
        self.step = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("abs_sum", torch.tensor(0.0, dtype=torch.float64))
        self.register_buffer("abs_count", torch.tensor(0.0, dtype=torch.float64))

    def reset(self) -> None:
        super().reset()
        self.abs_sum.zero_()
        self.abs_count.zero_()

    def freeze(self) -> None:
        super().freeze()  # minmax scale / zero_point from the observed range; mode "quantize"
        with torch.no_grad():
            if self.step_init == "lsq":
                mean_abs = (self.abs_sum / self.abs_count.clamp_min(1.0)).to(torch.float32)
                s = torch.clamp_min(2.0 * mean_abs / math.sqrt(self.quant_max), EPS)
                zp = torch.clamp(torch.round(-self.min_val.clamp_max(0.0) / s), self.quant_min, self.quant_max)
                self.scale.copy_(s)
                self.zero_point.copy_(zp.to(torch.int32))
            self.step.copy_(self.scale)

    def grad_factor(self, x: Tensor) -> float:
        per_sample = x.numel() // x.shape[0] if x.dim() > 1 else x.numel()
        return lsq_grad_scale(max(1, per_sample), self.quant_max)

    def forward(self, x: Tensor) -> Tensor:
        if self.mode == "quantize":
            return lsq_fake_quantize(
                x, self.step, self.quant_min, self.quant_max,
                grad_factor=self.grad_factor(x), zero_point=self.zero_point,
            )
        if self.mode == "observe":
            xd = x.detach()
            self.abs_sum += xd.abs().sum(dtype=torch.float64)
            self.abs_count += xd.numel()
        return super().forward(x)

    def extra_repr(self) -> str:
        text = f"bits={self.bits}, mode={self.mode}, step_init={self.step_init}"
        if self.mode == "quantize":
            text += f", step={self.step.item():.6g}, zero_point={int(self.zero_point)}"
        return text


class QATLinear(QuantModule):
    """An ``nn.Linear`` during QAT: fake-quantized weight and input with straight-through gradients.

    ``weight_scheme``: ``"minmax"`` (per-channel scale from the current weight's absmax, not learned),
    ``"lsq_tensor"`` or ``"lsq_channel"`` (learnable ``weight_step``). ``act_scheme``: ``"static"``
    (an :class:`ActQuantizer`, range frozen at calibration) or ``"lsq"`` (:class:`LSQActQuantizer`).
    ``lora_r > 0`` adds ``lora_A`` (r, in) and ``lora_B`` (out, r, zeros), whose path
    ``(lora_alpha / lora_r) * B A x`` reads the unquantized input ``x``.

    It takes part in the calibration protocol: until :meth:`freeze` it computes the FP32 linear (its
    input quantizer observes); :meth:`freeze` initialises the weight steps. It exposes the interface
    :func:`~pytest_qrel.quantize.verify.verify_simulation` reads, and :meth:`export` returns the
    inference module.
    """

    def __init__(
        self,
        linear: nn.Linear,
        *,
        weight_bits: int,
        act_bits: int | None,
        weight_scheme: WeightScheme,
        act_scheme: ActScheme,
        step_init: StepInit = "minmax",
        lora_r: int = 0,
        lora_alpha: float = 0.0,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.weight_scheme = weight_scheme
        self.step_init = step_init
        self.weight_qmax = signed_range(weight_bits)[1]
        self.weight = nn.Parameter(linear.weight.detach().clone())
        if linear.bias is not None:
            self.bias = nn.Parameter(linear.bias.detach().clone())
        else:
            self.register_parameter("bias", None)
        ref = self.weight
        if weight_scheme == "minmax":
            self.register_parameter("weight_step", None)
        else:
            shape = (self.out_features,) if weight_scheme == "lsq_channel" else ()
            self.weight_step = nn.Parameter(torch.ones(shape, dtype=torch.float32, device=ref.device))
        self.input_quantizer: ActQuantizer | None
        if act_bits is None:
            self.input_quantizer = None
        elif act_scheme == "lsq":
            self.input_quantizer = LSQActQuantizer(act_bits, step_init=step_init).to(ref.device)
        else:
            self.input_quantizer = ActQuantizer(act_bits).to(ref.device)
        self.lora_r = lora_r
        self.lora_alpha = lora_alpha
        if lora_r > 0:
            self.lora_scaling = lora_alpha / lora_r
            bound = 1.0 / math.sqrt(self.in_features)  # LoRA's A init: kaiming_uniform(a=sqrt(5))
            a = torch.rand((lora_r, self.in_features), generator=generator, dtype=torch.float32) * (2 * bound) - bound
            self.lora_A = nn.Parameter(a.to(device=ref.device, dtype=ref.dtype))
            self.lora_B = nn.Parameter(torch.zeros((self.out_features, lora_r), device=ref.device, dtype=ref.dtype))
        self.ready = False

    # -- calibration protocol
    def observe(self) -> None:
        self.ready = False

    def freeze(self) -> None:
        if self.weight_step is not None:
            with torch.no_grad():
                w = self.weight.detach().to(torch.float32)
                per_channel = self.weight_scheme == "lsq_channel"
                rows = w.reshape(w.shape[0], -1) if per_channel else w.reshape(1, -1)
                if self.step_init == "lsq":
                    s = torch.clamp_min(2.0 * rows.abs().mean(dim=1) / math.sqrt(self.weight_qmax), EPS)
                else:
                    s, _ = symmetric_qparams(rows.abs().amax(dim=1), self.weight_bits)
                self.weight_step.copy_(s.reshape(self.weight_step.shape))
        self.ready = True

    # -- quantized tensors
    @property
    def weight_grad_factor(self) -> float:
        per_step = self.in_features if self.weight_scheme == "lsq_channel" else self.weight.numel()
        return lsq_grad_scale(per_step, self.weight_qmax)

    def quantized_weight(self) -> Tensor:
        """The fake-quantized weight forward uses (differentiable: STE, and LSQ's step gradient)."""
        q = self.weight_qmax
        if self.weight_step is None:
            w32 = self.weight.to(torch.float32)
            scale, zero_point = symmetric_qparams(w32.detach().abs().amax(dim=1), self.weight_bits)
            out = torch.fake_quantize_per_channel_affine(
                w32, scale.to(w32.device), zero_point.to(w32.device), 0, -q, q
            )
            return out.to(self.weight.dtype)
        axis = 0 if self.weight_scheme == "lsq_channel" else None
        return lsq_fake_quantize(self.weight, self.weight_step, -q, q, grad_factor=self.weight_grad_factor, axis=axis)

    def dequantized_weight(self) -> Tensor:
        return self.quantized_weight().detach()

    def steps_parameters(self) -> list[nn.Parameter]:
        """The learnable quantizer steps of this layer (weight and input)."""
        out = [self.weight_step] if self.weight_step is not None else []
        if isinstance(self.input_quantizer, LSQActQuantizer):
            out.append(self.input_quantizer.step)
        return out

    def lora_parameters(self) -> list[nn.Parameter]:
        return [self.lora_A, self.lora_B] if self.lora_r > 0 else []

    def forward(self, x: Tensor) -> Tensor:
        if not self.ready:  # observation: the FP32 layer (its input quantizer records the range)
            if self.input_quantizer is not None:
                self.input_quantizer(x)
            return F.linear(x, self.weight, self.bias)
        xq = self.input_quantizer(x) if self.input_quantizer is not None else x
        y = F.linear(xq, self.quantized_weight(), self.bias)
        if self.lora_r > 0:
            y = y + self.lora_scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)
        return y

    # -- export
    def export(self) -> FakeQuantLinear:
        """The inference module: weight fake-quantized once, input quantizer frozen at the learned grid."""
        if not self.ready:
            raise RuntimeError("QATLinear.export(): freeze() (calibration) has not run")
        with torch.no_grad():
            source = SimpleNamespace(
                in_features=self.in_features, out_features=self.out_features,
                weight=self.quantized_weight(), bias=self.bias,
            )
            if self.lora_r > 0:
                out: FakeQuantLinear = LoRAFakeQuantLinear(
                    source, weight_bits=self.weight_bits, act_bits=self.act_bits,
                    lora_A=self.lora_A, lora_B=self.lora_B, lora_alpha=self.lora_alpha,
                )
            else:
                out = FakeQuantLinear(
                    source, weight_bits=self.weight_bits, act_bits=self.act_bits  # type: ignore[arg-type]
                )
            out.weight_frozen = True  # the weight already holds its fake-quantized values
            out.to(self.weight.device)
            if self.input_quantizer is not None:
                assert out.input_quantizer is not None
                _freeze_act_like(out.input_quantizer, self.input_quantizer)
        for p in out.parameters():
            p.requires_grad_(False)
        return out

    def extra_repr(self) -> str:
        text = (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, weight_scheme={self.weight_scheme}")
        if self.lora_r:
            text += f", lora_r={self.lora_r}, lora_alpha={self.lora_alpha:g}"
        return text


def _freeze_act_like(dst: ActQuantizer, src: ActQuantizer) -> None:
    """Put ``dst`` (a fresh ActQuantizer) in ``"quantize"`` mode on ``src``'s final grid."""
    if src.mode != "quantize":
        raise RuntimeError("input quantizer was never frozen")
    scale = src.step.detach().clamp_min(EPS) if isinstance(src, LSQActQuantizer) else src.scale
    zp = src.zero_point
    dst.scale.copy_(scale.to(dst.scale.dtype))
    dst.zero_point.copy_(zp)
    zpf = zp.to(torch.float32)
    dst.min_val.copy_((src.quant_min - zpf) * dst.scale)  # the represented interval
    dst.max_val.copy_((src.quant_max - zpf) * dst.scale)
    dst.mode = "quantize"


class LoRAFakeQuantLinear(FakeQuantLinear):
    """A :class:`FakeQuantLinear` plus a frozen full-precision LoRA path on its *unquantized* input:
    ``y = W_q Q(x) + b + (lora_alpha / r) * B (A x)``.

    The base (``dequantized_weight()``, ``input_quantizer``) is what ``verify_simulation`` checks;
    the adapter path is floating point by design (the paper's QAT-LoRA) and is not on any grid.
    """

    def __init__(self, linear: Any, *, weight_bits: int | None, act_bits: int | None, lora_A: Tensor,
                 lora_B: Tensor, lora_alpha: float) -> None:
        super().__init__(linear, weight_bits=weight_bits, act_bits=act_bits)
        self.lora_r = int(lora_A.shape[0])
        self.lora_alpha = float(lora_alpha)
        self.lora_scaling = self.lora_alpha / self.lora_r
        self.lora_A = nn.Parameter(lora_A.detach().clone(), requires_grad=False)
        self.lora_B = nn.Parameter(lora_B.detach().clone(), requires_grad=False)

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.lora_scaling * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", lora_r={self.lora_r}, lora_alpha={self.lora_alpha:g}"


# --------------------------------------------------------------------------------------------------
# Options
# --------------------------------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    """A finite float from an int, a float or a numeric string (YAML reads ``1e-5`` as a string)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return out if math.isfinite(out) else None


def _positive_number(value: Any) -> bool:
    x = _number(value)
    return x is not None and x > 0


def _nonneg_number(value: Any) -> bool:
    x = _number(value)
    return x is not None and x >= 0


def _fraction_or_none(value: Any) -> bool:
    if value is None:
        return True
    x = _number(value)
    return x is not None and 0.0 <= x <= 1.0


def _nonneg_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _seed(value: Any) -> bool:
    return value is None or _nonneg_int(value)


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool)


def _step_init(value: Any) -> bool:
    return value in ("minmax", "lsq")


def _head_mode(value: Any) -> bool:
    return value in ("quantized", "fp32")


_FLOAT_KEYS = ("lr", "step_lr", "weight_decay", "temperature", "lora_alpha")

_COMMON: dict[str, Option] = {
    "steps": Option(DEFAULT_STEPS, _nonneg_int, "a non-negative integer"),
    "batch_size": Option(DEFAULT_BATCH_SIZE, positive_int, "a positive integer"),
    "lr": Option(DEFAULT_LR, _positive_number, "a positive number"),
    "weight_decay": Option(DEFAULT_WEIGHT_DECAY, _nonneg_number, "a non-negative number"),
    "seed": Option(None, _seed, "a non-negative integer (default: calibration.seed)"),
    "head": Option("quantized", _head_mode, "'quantized' or 'fp32'"),
}
_LSQ: dict[str, Option] = {
    "step_lr": Option(DEFAULT_STEP_LR, _positive_number, "a positive number"),
    "step_init": Option("minmax", _step_init, "'minmax' or 'lsq'"),
}

QAT_OPTIONS: dict[str, Option] = dict(_COMMON)
QAT_LSQ_OPTIONS: dict[str, Option] = {**_COMMON, **_LSQ}
QAT_DISTILL_OPTIONS: dict[str, Option] = {
    **_COMMON,
    **_LSQ,
    "per_channel": Option(False, _is_bool, "true or false"),
    "temperature": Option(1.0, _positive_number, "a positive number"),
    "distill_weight": Option(None, _fraction_or_none, "a number from 0 to 1"),
}
QAT_LORA_OPTIONS: dict[str, Option] = {
    **_COMMON,
    **_LSQ,
    "lr": Option(DEFAULT_LORA_LR, _positive_number, "a positive number"),
    "lora_r": Option(DEFAULT_LORA_R, positive_int, "a positive integer"),
    "lora_alpha": Option(DEFAULT_LORA_ALPHA, _positive_number, "a positive number"),
    "train_steps": Option(False, _is_bool, "true or false"),
}


# --------------------------------------------------------------------------------------------------
# The recipe and the training loop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """What one QAT method quantizes, trains and minimises."""

    weight_scheme: WeightScheme
    act_scheme: ActScheme
    train_model: bool = True  # every float parameter of the model trains
    lora: bool = False
    distill: bool = False


def index_stream(n: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless batches of ``batch_size`` indices into ``range(n)``: seeded permutations, concatenated."""
    buffer = torch.empty(0, dtype=torch.int64)
    while True:
        while buffer.numel() < batch_size:
            buffer = torch.cat([buffer, torch.randperm(n, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def distillation_loss(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, mean over the batch."""
    t = float(temperature)
    return F.kl_div(
        F.log_softmax(student / t, dim=1), F.log_softmax(teacher / t, dim=1), log_target=True, reduction="batchmean"
    ) * (t * t)


def prepare(
    model: nn.Module,
    spec: QuantizerSpec,
    calibration: Tensor,
    recipe: Recipe,
    opts: Mapping[str, Any],
    *,
    seed: int,
) -> nn.Module:
    """A deep copy of ``model`` whose linears are :class:`QATLinear`, calibrated on ``calibration``
    (minmax ranges, steps initialised), with ``requires_grad`` set as ``recipe`` says."""
    qmodel = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    lora_r = int(opts["lora_r"]) if recipe.lora else 0
    lora_alpha = float(opts["lora_alpha"]) if recipe.lora else 0.0
    step_init = opts.get("step_init", "minmax")
    keep: tuple[str, ...] = ()
    if opts.get("head", "quantized") == "fp32":
        from .options import find_head  # the head rule shared with minmax & co.

        keep = find_head(qmodel)

    def factory(name: str, linear: nn.Linear) -> QATLinear | None:
        if name in keep:
            return None
        return QATLinear(
            linear, weight_bits=spec.weight_bits, act_bits=spec.act_bits, weight_scheme=recipe.weight_scheme,
            act_scheme=recipe.act_scheme, step_init=step_init, lora_r=lora_r, lora_alpha=lora_alpha,
            generator=generator,
        )

    if not replace_linears(qmodel, factory):
        raise spec_error(spec, "method", f"the model has no nn.Linear layer for '{spec.method}' to quantize",
                         "use a method that supports this architecture")
    calibrate(qmodel, calibration, batch_size=int(opts["batch_size"]))

    layers = [m for m in qmodel.modules() if isinstance(m, QATLinear)]
    for p in qmodel.parameters():
        p.requires_grad_(False)
    steps_trainable = recipe.weight_scheme != "minmax" and (not recipe.lora or bool(opts.get("train_steps")))
    quantizer_params = {id(p) for m in layers for p in (*m.steps_parameters(), *m.lora_parameters())}
    if recipe.train_model:
        for p in qmodel.parameters():
            if id(p) not in quantizer_params and p.is_floating_point():
                p.requires_grad_(True)
    for m in layers:
        for p in m.steps_parameters():
            p.requires_grad_(steps_trainable)
        for p in m.lora_parameters():
            p.requires_grad_(True)
    return qmodel


def param_groups(qmodel: nn.Module, opts: Mapping[str, Any]) -> list[dict[str, Any]]:
    """AdamW groups: trainable weights (``lr``, ``weight_decay``) and LSQ steps (``step_lr``, no decay)."""
    steps = {id(p): p for m in qmodel.modules() if isinstance(m, QATLinear) for p in m.steps_parameters()}
    step_params = [p for p in steps.values() if p.requires_grad]
    others = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in steps]
    groups: list[dict[str, Any]] = []
    if others:
        groups.append({"params": others, "lr": float(opts["lr"]), "weight_decay": float(opts["weight_decay"])})
    if step_params:
        groups.append({"params": step_params, "lr": float(opts.get("step_lr", opts["lr"])), "weight_decay": 0.0})
    return groups


def train(
    qmodel: nn.Module,
    images: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    opts: Mapping[str, Any],
    *,
    seed: int,
) -> list[float]:
    """``opts["steps"]`` AdamW steps on batches of ``images`` (``loss_fn(logits, indices)``); returns the
    loss of every step. The model stays in eval mode; LSQ steps are clamped to ``>= EPS`` after each step."""
    steps = int(opts["steps"])
    losses: list[float] = []
    groups = param_groups(qmodel, opts)
    if steps == 0 or not groups:
        if steps and not groups:
            raise RuntimeError("QAT has nothing to train")
        return losses
    optimizer = torch.optim.AdamW(groups)
    step_params = [p for m in qmodel.modules() if isinstance(m, QATLinear) for p in m.steps_parameters()]
    batches = index_stream(images.shape[0], int(opts["batch_size"]), torch.Generator().manual_seed(seed))
    qmodel.eval()
    with torch.enable_grad():
        for _ in range(steps):
            idx = next(batches).to(images.device)
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(qmodel(images[idx]), idx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the QAT training loss became {loss.item()} at step {len(losses) + 1}")
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for p in step_params:
                    p.clamp_(min=EPS)
            losses.append(float(loss.detach()))
    return losses


def export(qmodel: nn.Module) -> nn.Module:
    """Replace, in place, every :class:`QATLinear` by its inference module; freeze everything."""
    built: dict[int, nn.Module] = {}
    for _, parent in list(qmodel.named_modules()):
        for child_name, child in list(parent._modules.items()):
            if isinstance(child, QATLinear):
                if id(child) not in built:
                    built[id(child)] = child.export()
                setattr(parent, child_name, built[id(child)])
    for p in qmodel.parameters():
        p.requires_grad_(False)
    return qmodel.eval()


def run_qat(
    model: nn.Module,
    spec: QuantizerSpec,
    calibration: Tensor,
    labels: Tensor | None,
    accepted: Mapping[str, Option],
    recipe: Recipe,
) -> nn.Module:
    """Validate options, prepare, train and export one QAT method (the body shared by every entry)."""
    opts = parse_options(spec, accepted)
    for key in _FLOAT_KEYS:
        if key in opts:
            opts[key] = float(_number(opts[key]))  # type: ignore[arg-type]
    seed = spec.calibration.seed if opts["seed"] is None else int(opts["seed"])
    if recipe.distill:
        if opts["distill_weight"] is None:
            opts["distill_weight"] = DEFAULT_DISTILL_WEIGHT if labels is not None else 1.0
        else:
            opts["distill_weight"] = float(_number(opts["distill_weight"]))  # type: ignore[arg-type]
    needs_labels = not recipe.distill or opts["distill_weight"] < 1.0
    if labels is None and needs_labels:
        if recipe.distill:
            raise spec_error(spec, "distill_weight",
                             f"distill_weight {opts['distill_weight']:g} mixes in cross-entropy, but the calibration "
                             "images have no labels", "use distill_weight: 1 (the teacher's outputs alone)")
        raise spec_error(spec, "method",
                         f"method '{spec.method}' trains on the class labels of the calibration images, and none "
                         "were given", "use method 'qat_distill' (it can learn from the FP32 model's outputs alone) "
                         "or a dataset with labels")
    if calibration.shape[0] == 0:
        raise spec_error(spec, "calibration.samples", "no calibration images to train on",
                         "use calibration.samples >= 1")

    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else calibration.device
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    images = calibration.detach().to(device=device, dtype=dtype).clone()  # clone: may come from inference_mode
    targets = _check_labels(labels, images.shape[0], device) if labels is not None else None

    teacher = None
    if recipe.distill:
        teacher = _teacher_logits(model, images, int(opts["batch_size"]))

    qmodel = prepare(model, spec, images, recipe, opts, seed=seed)
    loss_fn = _make_loss(spec, recipe, opts, targets, teacher)
    try:
        losses = train(qmodel, images, loss_fn, opts, seed=seed)
    except FloatingPointError as exc:
        raise spec_error(spec, "lr", str(exc), "use a smaller lr (and step_lr)") from None
    export(qmodel)
    qmodel.qat_steps = len(losses)
    qmodel.qat_losses = tuple(losses)
    qmodel.qat_options = {**opts, "seed": seed}
    return qmodel


def _check_labels(labels: Tensor, n: int, device: torch.device) -> Tensor:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) like the calibration images, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return labels.detach().to(device=device, dtype=torch.int64).clone()


def _teacher_logits(model: nn.Module, images: Tensor, batch_size: int) -> Tensor:
    """The input model's logits on every calibration image, in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return torch.cat([model(batch).detach().float() for batch in images.split(batch_size)]).clone()
    finally:
        model.train(was_training)


def _make_loss(
    spec: QuantizerSpec,
    recipe: Recipe,
    opts: Mapping[str, Any],
    targets: Tensor | None,
    teacher: Tensor | None,
) -> Callable[[Tensor, Tensor], Tensor]:
    checked = [False]

    def cross_entropy(logits: Tensor, idx: Tensor) -> Tensor:
        assert targets is not None
        y = targets[idx]
        if not checked[0]:
            checked[0] = True
            bad = (targets < 0) | (targets >= logits.shape[1])
            if bool(bad.any()):
                raise spec_error(
                    spec, "method",
                    f"calibration label {int(targets[bad][0])} is not a class of the model "
                    f"({logits.shape[1]} outputs)", "use an in-distribution dataset whose classes the model predicts",
                )
        return F.cross_entropy(logits.float(), y)

    if not recipe.distill:
        return cross_entropy
    assert teacher is not None
    weight = float(opts["distill_weight"])
    temperature = float(opts["temperature"])

    def distill(logits: Tensor, idx: Tensor) -> Tensor:
        loss = weight * distillation_loss(logits.float(), teacher[idx], temperature)
        if weight < 1.0:
            loss = loss + (1.0 - weight) * cross_entropy(logits, idx)
        return loss

    return distill


# --------------------------------------------------------------------------------------------------
# Registry entries
# --------------------------------------------------------------------------------------------------


def _entry(name: str, accepted: Mapping[str, Option], recipe: Callable[[dict[str, Any]], Recipe], summary: str) -> None:
    def method(
        model: nn.Module, spec: QuantizerSpec, calibration: Tensor, *, labels: Tensor | None = None
    ) -> nn.Module:
        """Return a QAT-trained quantized deep copy of ``model`` (eval mode); ``model`` is not modified."""
        return run_qat(model, spec, calibration, labels, accepted, recipe(dict(spec.options)))

    method.__name__ = method.__qualname__ = name
    QUANTIZERS.add(name, method, options=tuple(accepted), summary=summary)


_entry("qat", QAT_OPTIONS, lambda o: Recipe("minmax", "static"),
       "basic light QAT: minmax fake-quant (weights per channel, inputs static per tensor) + STE, model fine-tuned")
_entry("qat_lsq", QAT_LSQ_OPTIONS, lambda o: Recipe("lsq_tensor", "lsq"),
       "light QAT with LSQ: learnable per-tensor steps for weights and inputs, model fine-tuned")
_entry("qat_lsq_per_channel", QAT_LSQ_OPTIONS, lambda o: Recipe("lsq_channel", "lsq"),
       "light QAT with LSQ, one learnable weight step per output channel")
_entry("qat_distill", QAT_DISTILL_OPTIONS,
       lambda o: Recipe("lsq_channel" if o.get("per_channel") is True else "lsq_tensor", "lsq", distill=True),
       "light QAT with LSQ trained on KL divergence to the FP32 model's softened outputs (+ CE)")
_entry("qat_lora", QAT_LORA_OPTIONS, lambda o: Recipe("lsq_channel", "lsq", train_model=False, lora=True),
       "QAT-LoRA: frozen fake-quantized base (per-channel steps) + trainable full-precision LoRA adapters")
