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
                           full-precision input. Only the adapters (and optionally the steps) train. It is
                           evaluated with the adapter as a float path beside the quantized layer (the
                           paper's unmerged forward; ``lora_merge: true`` folds it into the weight, which is
                           then quantized, as a deployment would). ``distill: feature_mse`` adds the paper's
                           LoRA-Distill loss (MSE on normalised features, weight ``distill_weight`` 0.5).
=========================  ================================================================================

What is quantized is what ``minmax`` quantizes: every ``nn.Linear`` (weight and input), all else in
FP32. The returned model is built from the same parts as ``minmax``'s: each trained layer is exported
as a :class:`~pytest_qrel.quantize.fakequant.FakeQuantLinear` whose weight holds the fake-quantized
values (computed once) and whose :class:`~pytest_qrel.quantize.fakequant.ActQuantizer` is frozen at
the learned step and zero point. Its forward is the training forward, numerically identical, with no
autograd state: eval mode, every ``requires_grad`` False, no quantizer parameter left to learn.

``qat_lora`` is the exception, by design of QAT-LoRA: its training forward adds a floating-point
adapter ``(alpha / r) B A x`` on the *unquantized* input beside the quantized layer. The CLIP paper
evaluates that forward (its appendix: the base path fake-quantized, the parallel LoRA path on the
full-precision input; it points to LR-QAT for re-fusing the adapters), so by default
(``lora_merge: false``) each layer is exported as a :class:`LoRAFakeQuantLinear`, the training
forward itself; :func:`~pytest_qrel.quantize.verify.verify_simulation` then reports every adapter as
a float path, and ``verify: true`` fails unless the quantizer sets ``allow_float_paths: true``. A
deployed model has no such path: ``lora_merge: true`` exports one
:class:`~pytest_qrel.quantize.fakequant.FakeQuantLinear` whose weight is ``Q(W + (alpha / r) B A)``,
the adapter folded into the float weight and the sum quantized on the layer's weight grid (its
steps, minmax-initialised, learned with ``train_steps: true``). That model computes entirely on the
grids it claims, at the price of the rounding of the merged weight (the adapter was trained against
``Q(W) Q(x)``, not ``Q(W + BA) Q(x)``).

**Grids.** Weights: restricted signed range ``[-Qp, Qp]``, ``Qp = 2^(b-1) - 1`` (as in ``minmax``;
``zero_point = 0``); with ``weight_range: full`` (LSQ methods) the LSQ paper's ``[-Qn, Qp]``,
``Qn = 2^(b-1)`` (one more negative code: at 2 bits ``{-2, -1, 0, 1}`` instead of ``{-1, 0, 1}``;
the forward and the step gradient then differ from the restricted range wherever a weight falls
below ``-(Qp + 1/2) s``). Inputs: unsigned ``[0, 2^b - 1]`` with an integer zero point. The LSQ input
quantizer keeps the zero point it was initialised with (an integer, fixed) and learns the step, so
the represented interval ``[-zp * s, (2^b - 1 - zp) * s]`` scales with the step.

**LSQ.** Forward ``x_hat = round(clamp(x * (1/s), lo, hi)) * s`` with ``[lo, hi] = [-Qp, Qp]``
(``[-Qn, Qp]`` with ``weight_range: full``) for weights and ``[-zp, 2^b - 1 - zp]`` for inputs: the exact formula of ATen's fake-quantize kernels
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

**Training.** AdamW on the ``calibration`` images and their ``labels`` (or captions) only (never
test or OOD data), ``steps`` optimizer steps of ``batch_size`` images: the N images are shuffled
with a seeded generator and looped (a batch larger than N repeats images), every step draws the next
``batch_size`` indices of that stream. The model stays in eval mode while it trains (no dropout or
drop-path, normalisation statistics untouched): light QAT adapts to the grid, and it stays
deterministic.

**Losses** (the CLIP paper's, as options). The *task* loss is cross-entropy on ``labels`` or, when
the calibration data are image-text pairs (the paper adapts on CC3M; the method then gets
``targets=``:class:`TextTargets`, one caption embedding per image, through
:func:`~pytest_qrel.quantize.base.quantize`), CLIP's symmetric contrastive loss
(:func:`contrastive_loss`) between the quantized model's image features and the captions, with the
model's own logit scale; with captions, labels are not used. The paper does not name light QAT's
task loss on CC3M; contrastive is CLIP's own objective on image-text pairs, and cross-entropy on
zero-shot class logits would need class labels that CC3M does not have. Distillation, with weight
``w``: ``qat_distill`` (the paper's light-QAT "Distill"): ``w * T^2 * KL(softmax(teacher / T) ||
softmax(student / T)) + (1 - w) * task`` on the zero-shot / classifier logits; ``qat_lora`` with
``distill: feature_mse`` (the paper's LoRA "Distill"): ``w * mean((normalize(f_student) -
normalize(f_teacher))^2) + (1 - w) * task`` (:func:`feature_distillation_loss`) on the image features
(:func:`logits_and_features`: a CLIP model's image embedding, a timm model's pre-logits features).
The teacher's outputs are computed once, in eval mode, from the input model. The paper's
"Distillation 0.5" is read as the weight ``w`` of a convex mix (the other reading, ``task + 0.5 KD``,
is a rescaled learning rate of the task term); with ``w = 1`` no labels or captions are needed.

Defaults and where they come from (paper, appendix tables "Full QAT" and "Light QAT"):
``steps: 100`` (light QAT trains for 100 batches), ``batch_size: 100``, the optimizer AdamW,
``lora_r: 8``, ``lora_alpha: 16``, ``distill_weight: 0.5`` ("Distillation 0.5"), the paper's loop over
a small set of unique samples (it uses 100; here they are the ``calibration.samples`` images). Our
copy of the paper lost the learning-rate values of those tables (it only says that light QAT uses a
*smaller* rate and that the LSQ steps have their own rate), so ``lr: 1.0e-5`` (``qat_lora``:
``1.0e-4``, a usual LoRA rate), ``step_lr: 1.0e-4`` and ``weight_decay: 0.01`` (PyTorch's AdamW
default) are our choices; ``temperature: 1`` (no softening) as the paper's KL loss states none.

Options (:class:`~pytest_qrel.quantize.options.QATOptions` and its subclasses; every key is
validated, an unknown key or bad value is a :class:`~pytest_qrel.errors.QuantOptionError` naming it):

- all methods: ``steps`` (int >= 0; 0 returns the initialised PTQ model), ``batch_size`` (int >= 1;
  the training batch, also used for the calibration forward passes), ``lr`` and ``weight_decay``
  (numbers; the suite loader reads ``1e-5`` as a number), ``seed`` (int >= 0; default the run's
  seed, i.e. ``calibration.seed``), ``head`` (``quantized`` | ``fp32``: as for ``minmax``, ``fp32``
  leaves the classifier head an FP32 ``nn.Linear``; it is then fine-tuned in FP32 by the methods
  that fine-tune the model, and left as it is by ``qat_lora``);
- LSQ methods and ``qat_lora``: ``step_lr``, ``step_init`` (``minmax`` | ``lsq``), ``weight_range``
  (``restricted`` (default) | ``full``: the LSQ paper's range, above);
- ``qat_distill``: ``per_channel`` (bool, default false), ``temperature`` (> 0, default 1),
  ``distill_weight`` (in [0, 1]; default 0.5 with labels, 1 -- the KL term alone -- without);
- ``qat_lora``: ``lora_r`` (int >= 1, default 8), ``lora_alpha`` (> 0, default 16), ``train_steps``
  (bool, default false), ``lora_merge`` (bool, default false: above), ``distill`` (``none`` |
  ``feature_mse``, default none), ``distill_weight`` (in [0, 1], default 0.5).

The paper's schedules are suite values: light QAT ``steps: 100, batch_size: 100`` (the defaults), QAT-
LoRA 100 to 8,100 ``steps`` of ``batch_size: 100``.

Methods need ``labels`` (or caption ``targets``) unless they distill with weight 1; without them
they raise a QuantOptionError. The returned model records ``qat_steps`` (optimizer steps taken),
``qat_losses`` (the training loss of every step), ``qat_task`` (``cross_entropy``, ``contrastive`` or
``none``) and ``qat_options`` (the resolved typed options, ``seed`` and ``distill_weight`` filled in).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import QuantOptionError
from .base import QuantConfig, calibration_error, no_linear_error
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
from .options import DistillOptions, LoRAOptions, LSQOptions, QATOptions
from .selection import find_head
from .. import progress

DEFAULT_DISTILL_WEIGHT = 0.5
"""``distill_weight`` when it is not given and the calibration images have labels."""

WeightScheme = Literal["minmax", "lsq_tensor", "lsq_channel"]
ActScheme = Literal["static", "lsq"]
StepInit = Literal["minmax", "lsq"]
WeightRange = Literal["restricted", "full"]


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

    uses_compiled_kernel = False  # its own forward (learned step, LSQ gradients)
    abs_sum: Tensor  # buffers registered in __init__ (declared: nn.Module attributes type as `Tensor | Module`)
    abs_count: Tensor

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
    ``(lora_alpha / lora_r) * B A x`` reads the unquantized input ``x``. ``weight_range``:
    ``"restricted"`` codes ``[-Qp, Qp]`` or ``"full"`` ``[-Qp - 1, Qp]`` (the LSQ paper's ``-Qn = -2^(b-1)``),
    ``Qp = 2^(b-1) - 1``.

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
        weight_range: WeightRange = "restricted",
    ) -> None:
        super().__init__()
        if weight_range not in ("restricted", "full"):
            raise ValueError(f"weight_range must be 'restricted' or 'full', got {weight_range!r}")
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.weight_bits = weight_bits
        self.act_bits = act_bits
        self.weight_scheme = weight_scheme
        self.step_init = step_init
        self.weight_qmax = signed_range(weight_bits)[1]
        self.weight_range = weight_range
        self.weight_qmin = -self.weight_qmax - (1 if weight_range == "full" else 0)
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

    def quantized_weight(self, weight: Tensor | None = None) -> Tensor:
        """The fake-quantized weight forward uses (differentiable: STE, and LSQ's step gradient);
        ``weight`` (default: the layer's own) is what gets quantized on the layer's grid."""
        w = self.weight if weight is None else weight
        q, qmin = self.weight_qmax, self.weight_qmin
        if self.weight_step is None:
            w32 = w.to(torch.float32)
            scale, zero_point = symmetric_qparams(w32.detach().abs().amax(dim=1), self.weight_bits)
            out = torch.fake_quantize_per_channel_affine(
                w32, scale.to(w32.device), zero_point.to(w32.device), 0, qmin, q
            )
            return out.to(w.dtype)
        axis = 0 if self.weight_scheme == "lsq_channel" else None
        return lsq_fake_quantize(w, self.weight_step, qmin, q, grad_factor=self.weight_grad_factor, axis=axis)

    def merged_weight(self) -> Tensor:
        """The float weight with the LoRA adapter folded in: ``W + (lora_alpha / r) B A`` (``W`` without one)."""
        if self.lora_r == 0:
            return self.weight.detach()
        return (self.weight + self.lora_scaling * (self.lora_B @ self.lora_A)).detach()

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
    def export(self, *, merge_lora: bool = True) -> FakeQuantLinear:
        """The inference module: weight fake-quantized once, input quantizer frozen at the learned grid.

        With a LoRA adapter and ``merge_lora`` (default) the adapter is folded into the float weight
        and the sum quantized on the layer's weight grid (its steps), ``Q(W + (alpha / r) B A)``: the
        deployed layer is one quantized matmul. ``merge_lora=False`` keeps the adapter as a float
        path beside the quantized layer (:class:`LoRAFakeQuantLinear`, QAT-LoRA's training forward).
        """
        if not self.ready:
            raise RuntimeError("QATLinear.export(): freeze() (calibration) has not run")
        with torch.no_grad():
            merge = self.lora_r > 0 and merge_lora
            source = SimpleNamespace(
                in_features=self.in_features, out_features=self.out_features,
                weight=self.quantized_weight(self.merged_weight() if merge else None), bias=self.bias,
            )
            if self.lora_r > 0 and not merge:
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
                assert isinstance(out.input_quantizer, ActQuantizer)  # act_bits given: FakeQuantLinear made one
                _freeze_act_like(out.input_quantizer, self.input_quantizer)
        for p in out.parameters():
            p.requires_grad_(False)
        return out

    def extra_repr(self) -> str:
        text = (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight_bits={self.weight_bits}, act_bits={self.act_bits}, weight_scheme={self.weight_scheme}")
        if self.lora_r:
            text += f", lora_r={self.lora_r}, lora_alpha={self.lora_alpha:g}"
        if self.weight_range != "restricted":
            text += f", weight_range={self.weight_range}"
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
# The recipe and the training loop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recipe:
    """What one QAT method quantizes, trains and minimises."""

    weight_scheme: WeightScheme
    act_scheme: ActScheme
    train_model: bool = True  # every float parameter of the model trains
    lora: bool = False
    distill: bool = False  # KL divergence to the FP32 model's softened logits (qat_distill)
    feature_distill: bool = False  # MSE between the L2-normalised features of the FP32 and QAT models


RECIPES: dict[str, Callable[[QATOptions], Recipe]] = {
    "qat": lambda o: Recipe("minmax", "static"),
    "qat_lsq": lambda o: Recipe("lsq_tensor", "lsq"),
    "qat_lsq_per_channel": lambda o: Recipe("lsq_channel", "lsq"),
    "qat_distill": lambda o: Recipe("lsq_channel" if getattr(o, "per_channel", False) else "lsq_tensor", "lsq",
                                    distill=True),
    "qat_lora": lambda o: Recipe("lsq_channel", "lsq", train_model=False, lora=True,
                                 feature_distill=getattr(o, "distill", "none") == "feature_mse"),
}
"""Method name -> the recipe its options select."""


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


def feature_distillation_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """``mean((normalize(student) - normalize(teacher))^2)`` over every element (``F.mse_loss`` of the
    L2-normalised feature rows): the CLIP paper's "MSE on normalized features"."""
    return F.mse_loss(F.normalize(student.float(), dim=-1), F.normalize(teacher.float(), dim=-1))


def contrastive_loss(image_features: Tensor, text_features: Tensor, logit_scale: Tensor | float,
                     pair_ids: Tensor | None = None) -> Tensor:
    """CLIP's symmetric contrastive loss of a batch of image-text pairs.

    ``logits = logit_scale * normalize(image) @ normalize(text).T`` (B, B); the loss is the mean of the
    cross-entropies image -> text and text -> image. Row ``i``'s positives are the pairs with the same
    ``pair_ids`` entry (the default ``arange(B)``: the diagonal), with equal probability: a batch drawn
    by looping over fewer pairs than its size holds repeats, which are positives of each other, not
    negatives.
    """
    img = F.normalize(image_features.float(), dim=-1)
    txt = F.normalize(text_features.float(), dim=-1)
    logits = torch.as_tensor(logit_scale, dtype=img.dtype, device=img.device) * img @ txt.T
    ids = torch.arange(img.shape[0], device=img.device) if pair_ids is None else pair_ids.to(img.device)
    same = (ids.view(-1, 1) == ids.view(1, -1)).to(img.dtype)
    target = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))


@dataclass(frozen=True)
class TextTargets:
    """What image-text calibration data (a CC3M-style folder of images with captions) gives a QAT
    method instead of class labels: one caption embedding per calibration image, ``features`` (N, D)
    float, encoded by the model's own text tower (normalised here). With them the task loss is CLIP's
    :func:`contrastive_loss` between the quantized model's image features and the captions, with the
    model's ``logit_scale``; the distillation losses are unchanged (they need no labels)."""

    features: Tensor

    def checked(self, n: int, device: torch.device) -> Tensor:
        f = self.features
        if not isinstance(f, Tensor) or f.dim() != 2 or f.shape[0] != n or not f.is_floating_point():
            shape = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"TextTargets.features must be a float tensor of shape ({n}, D), got {shape}")
        return F.normalize(f.detach().to(device=device, dtype=torch.float32), dim=-1).clone()


def logits_and_features(model: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(logits, image features)`` of one forward pass: a CLIP model's ``forward_with_features``
    (:class:`~pytest_qrel.models.clip_zoo.ZeroShotCLIP`: the unit-norm image embedding), or a timm
    model's pre-logits features (``forward_head(forward_features(x), pre_logits=True)``) and logits
    (the same ``forward_features`` through the whole head: ``model(x)``'s values).

    Raises:
        QuantOptionError: the model exposes neither.
    """
    with_features = getattr(model, "forward_with_features", None)
    if callable(with_features):
        return with_features(x)
    forward_features, forward_head = getattr(model, "forward_features", None), getattr(model, "forward_head", None)
    if callable(forward_features) and callable(forward_head):
        tokens = forward_features(x)
        return forward_head(tokens), forward_head(tokens, pre_logits=True)
    raise QuantOptionError("distill", f"{type(model).__name__} exposes no image features (forward_with_features, "
                           "or timm's forward_features / forward_head) for a feature loss",
                           "use a CLIP or timm model, or distill: none")


def prepare(
    model: nn.Module,
    config: QuantConfig,
    calibration: Tensor,
    recipe: Recipe,
    *,
    seed: int,
) -> nn.Module:
    """A deep copy of ``model`` whose linears are :class:`QATLinear`, calibrated on ``calibration``
    (minmax ranges, steps initialised), with ``requires_grad`` set as ``recipe`` says.
    ``config.options`` is the method's :class:`~pytest_qrel.quantize.options.QATOptions`."""
    opts: QATOptions = config.options
    qmodel = copy.deepcopy(model).eval()
    generator = torch.Generator().manual_seed(seed)
    lora_r = opts.lora_r if isinstance(opts, LoRAOptions) else 0
    lora_alpha = opts.lora_alpha if isinstance(opts, LoRAOptions) else 0.0
    step_init = opts.step_init if isinstance(opts, LSQOptions) else "minmax"
    weight_range = opts.weight_range if isinstance(opts, LSQOptions) else "restricted"
    keep = find_head(qmodel) if opts.head == "fp32" else ()

    def factory(name: str, linear: nn.Linear) -> QATLinear | None:
        if name in keep:
            return None
        return QATLinear(
            linear, weight_bits=config.weight_bits, act_bits=config.act_bits, weight_scheme=recipe.weight_scheme,
            act_scheme=recipe.act_scheme, step_init=step_init, lora_r=lora_r, lora_alpha=lora_alpha,
            generator=generator, weight_range=weight_range,
        )

    if not replace_linears(qmodel, factory):
        raise no_linear_error(config.method)
    calibrate(qmodel, calibration, batch_size=opts.batch_size)

    layers = [m for m in qmodel.modules() if isinstance(m, QATLinear)]
    for p in qmodel.parameters():
        p.requires_grad_(False)
    train_steps = opts.train_steps if isinstance(opts, LoRAOptions) else False
    steps_trainable = recipe.weight_scheme != "minmax" and (not recipe.lora or train_steps)
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


def param_groups(qmodel: nn.Module, opts: QATOptions) -> list[dict[str, Any]]:
    """AdamW groups: trainable weights (``lr``, ``weight_decay``) and LSQ steps (``step_lr``, no decay)."""
    steps = {id(p): p for m in qmodel.modules() if isinstance(m, QATLinear) for p in m.steps_parameters()}
    step_params = [p for p in steps.values() if p.requires_grad]
    others = [p for p in qmodel.parameters() if p.requires_grad and id(p) not in steps]
    groups: list[dict[str, Any]] = []
    if others:
        groups.append({"params": others, "lr": opts.lr, "weight_decay": opts.weight_decay})
    if step_params:
        step_lr = opts.step_lr if isinstance(opts, LSQOptions) else opts.lr
        groups.append({"params": step_params, "lr": step_lr, "weight_decay": 0.0})
    return groups


def train(
    qmodel: nn.Module,
    images: Tensor,
    loss_fn: Callable[[Any, Tensor], Tensor],
    opts: QATOptions,
    *,
    seed: int,
    forward: Callable[[nn.Module, Tensor], Any] | None = None,
) -> list[float]:
    """``opts.steps`` AdamW steps on batches of ``images``: ``loss_fn(forward(qmodel, batch), indices)``
    (``forward`` default: the logits ``qmodel(batch)``; :func:`logits_and_features` for the feature
    losses); returns the loss of every step. The model stays in eval mode; LSQ steps are clamped to
    ``>= EPS`` after each step."""
    losses: list[float] = []
    groups = param_groups(qmodel, opts)
    if opts.steps == 0 or not groups:
        if opts.steps and not groups:
            raise RuntimeError("QAT has nothing to train")
        return losses
    optimizer = torch.optim.AdamW(groups)
    step_params = [p for m in qmodel.modules() if isinstance(m, QATLinear) for p in m.steps_parameters()]
    batches = index_stream(images.shape[0], opts.batch_size, torch.Generator().manual_seed(seed))
    qmodel.eval()
    progress.step("QAT", 0, opts.steps)  # the phase starts now: its rate counts from here
    with torch.enable_grad():
        for _ in range(opts.steps):
            idx = next(batches).to(images.device)
            optimizer.zero_grad(set_to_none=True)
            batch = images[idx]
            loss = loss_fn(qmodel(batch) if forward is None else forward(qmodel, batch), idx)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the QAT training loss became {loss.item()} at step {len(losses) + 1}")
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for p in step_params:
                    p.clamp_(min=EPS)
            losses.append(float(loss.detach()))
            progress.step("QAT", len(losses), opts.steps)
    return losses


def export(qmodel: nn.Module, *, merge_lora: bool = True) -> nn.Module:
    """Replace, in place, every :class:`QATLinear` by its inference module (see :meth:`QATLinear.export`);
    freeze everything."""
    built: dict[int, nn.Module] = {}
    for _, parent in list(qmodel.named_modules()):
        for child_name, child in list(parent._modules.items()):
            if isinstance(child, QATLinear):
                if id(child) not in built:
                    built[id(child)] = child.export(merge_lora=merge_lora)
                setattr(parent, child_name, built[id(child)])
    for p in qmodel.parameters():
        p.requires_grad_(False)
    return qmodel.eval()


def run_qat(
    model: nn.Module,
    config: QuantConfig,
    calibration: Tensor,
    labels: Tensor | None,
    recipe: Recipe,
    targets: TextTargets | None = None,
) -> nn.Module:
    """Prepare, train and export one QAT method (the body shared by every entry)."""
    opts: QATOptions = config.options
    seed = config.seed if opts.seed is None else opts.seed
    distill_weight = _distill_weight(recipe, opts, has_task=labels is not None or targets is not None)
    _check_task(config, distill_weight, has_task=labels is not None or targets is not None)
    if calibration.shape[0] == 0:
        raise calibration_error(config.method, "train on")

    ref = next(iter(model.parameters()), None)
    device = ref.device if ref is not None else calibration.device
    dtype = ref.dtype if ref is not None and ref.is_floating_point() else torch.float32
    images = calibration.detach().to(device=device, dtype=dtype).clone()  # clone: may come from inference_mode
    task: Tensor | None = None
    if targets is not None:  # captions: the contrastive task loss (class labels, if any, are not used)
        task = targets.checked(images.shape[0], device)
    elif labels is not None:
        task = _check_labels(labels, images.shape[0], device)

    uses_features = recipe.feature_distill or targets is not None
    teacher = teacher_features = None
    if recipe.distill or recipe.feature_distill:
        teacher, teacher_features = _teacher_outputs(model, images, opts.batch_size, features=recipe.feature_distill)

    qmodel = prepare(model, config, images, recipe, seed=seed)
    scale = _logit_scale(qmodel) if targets is not None else None
    loss_fn = _make_loss(recipe, opts, distill_weight, task, teacher, teacher_features, scale,
                         uses_features=uses_features)
    try:
        losses = train(qmodel, images, loss_fn, opts, seed=seed,
                       forward=logits_and_features if uses_features else None)
    except FloatingPointError as exc:
        raise QuantOptionError("lr", str(exc), "use a smaller lr (and step_lr)") from None
    export(qmodel, merge_lora=opts.lora_merge if isinstance(opts, LoRAOptions) else True)
    resolved: dict[str, Any] = {"distill_weight": distill_weight} if distill_weight is not None else {}
    record = {
        "qat_steps": len(losses),
        "qat_losses": tuple(losses),
        "qat_options": dataclasses.replace(opts, seed=seed, **resolved),
        "qat_task": "contrastive" if targets is not None else "cross_entropy" if labels is not None else "none",
    }
    for name, value in record.items():
        setattr(qmodel, name, value)  # plain attributes (nn.Module.__setattr__ is typed for tensors and modules)
    return qmodel


def reads_class_logits(config: QuantConfig, *, labels: bool, targets: bool) -> bool:
    """Whether the training loss of QAT ``config`` reads the model's class logits, i.e. whether the
    trained weights depend on the classifier head (a CLIP model's zero-shot class embeddings).

    ``labels`` / ``targets``: the calibration images come with class labels / caption
    :class:`TextTargets`. True for ``qat_distill`` (KL on the logits) and for cross-entropy on labels;
    False when every term of the loss reads image features only: the contrastive task on captions
    (labels are then ignored) and ``distill: feature_mse``. The engine's in-run QAT memo
    (:mod:`pytest_qrel.engine.trainmemo`) keys a training by the head only when this is True.
    """
    recipe = RECIPES[config.method](config.options)
    if recipe.distill:
        return True
    weight = _distill_weight(recipe, config.options, has_task=labels or targets)
    task = weight is None or weight < 1.0
    return task and not targets


def _distill_weight(recipe: Recipe, opts: QATOptions, *, has_task: bool) -> float | None:
    """The weight of the distillation loss (None: the recipe does not distill). Distill variants
    without a stated weight use :data:`DEFAULT_DISTILL_WEIGHT` when there is a task loss to mix
    with, and the FP32 model's outputs alone (1.0) when there is none."""
    if recipe.distill:
        assert isinstance(opts, DistillOptions)
        if opts.distill_weight is not None:
            return opts.distill_weight
        return DEFAULT_DISTILL_WEIGHT if has_task else 1.0
    if recipe.feature_distill:
        assert isinstance(opts, LoRAOptions)
        return opts.distill_weight
    return None


def _check_task(config: QuantConfig, distill_weight: float | None, *, has_task: bool) -> None:
    """Refuse a recipe whose loss needs labels or captions when the calibration images have neither."""
    needs_task = distill_weight is None or distill_weight < 1.0
    if has_task or not needs_task:
        return
    if distill_weight is not None:
        raise QuantOptionError("distill_weight",
                               f"distill_weight {distill_weight:g} mixes in the task loss (cross-entropy on labels, "
                               "or contrastive on captions), but the calibration images have neither",
                               "use distill_weight: 1 (the FP32 model's outputs alone)")
    raise QuantOptionError("method",
                           f"method '{config.method}' trains on the class labels (or captions) of the calibration "
                           "images, and none were given", "use method 'qat_distill' (it can learn from the FP32 "
                           "model's outputs alone) or a dataset with labels")


def _logit_scale(model: nn.Module) -> Tensor:
    scale = getattr(model, "logit_scale", None)
    if not isinstance(scale, Tensor) or not callable(getattr(model, "forward_with_features", None)):
        raise QuantOptionError("method", f"training on captions needs a CLIP model (image features and a logit "
                               f"scale); {type(model).__name__} has none", "use class labels, or a CLIP model")
    return scale.detach().float()


def _check_labels(labels: Tensor, n: int, device: torch.device) -> Tensor:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) like the calibration images, got {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    return labels.detach().to(device=device, dtype=torch.int64).clone()


def _teacher_outputs(model: nn.Module, images: Tensor, batch_size: int, *,
                     features: bool = False) -> tuple[Tensor, Tensor | None]:
    """The input model's logits (and, with ``features``, image features: :func:`logits_and_features`)
    on every calibration image, in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            if not features:
                return torch.cat([model(batch).detach().float() for batch in images.split(batch_size)]).clone(), None
            parts = [logits_and_features(model, batch) for batch in images.split(batch_size)]
            return (torch.cat([p[0].detach().float() for p in parts]).clone(),
                    torch.cat([p[1].detach().float() for p in parts]).clone())
    finally:
        model.train(was_training)


def _make_loss(
    recipe: Recipe,
    opts: QATOptions,
    distill_weight: float | None,
    task: Tensor | None,
    teacher: Tensor | None,
    teacher_features: Tensor | None,
    logit_scale: Tensor | None,
    *,
    uses_features: bool,
) -> Callable[[Any, Tensor], Tensor]:
    """The training loss ``loss(outputs, indices)``; ``outputs`` are the logits, or ``(logits,
    features)`` when ``uses_features``. ``task``: class indices (cross-entropy) or caption embeddings
    (contrastive, with ``logit_scale``); distillation mixes in ``distill_weight`` of its loss."""
    checked = [False]

    def task_loss(logits: Tensor, features: Tensor | None, idx: Tensor) -> Tensor:
        assert task is not None
        if task.is_floating_point():  # caption embeddings
            assert features is not None and logit_scale is not None
            return contrastive_loss(features, task[idx], logit_scale, pair_ids=idx)
        y = task[idx]
        if not checked[0]:
            checked[0] = True
            bad = (task < 0) | (task >= logits.shape[1])
            if bool(bad.any()):
                raise QuantOptionError(
                    "method",
                    f"calibration label {int(task[bad][0])} is not a class of the model "
                    f"({logits.shape[1]} outputs)", "use an in-distribution dataset whose classes the model predicts",
                )
        return F.cross_entropy(logits.float(), y)

    def distill_term(logits: Tensor, features: Tensor | None, idx: Tensor) -> Tensor:
        if recipe.feature_distill:
            assert teacher_features is not None and features is not None
            return feature_distillation_loss(features, teacher_features[idx])
        assert teacher is not None and isinstance(opts, DistillOptions)
        return distillation_loss(logits.float(), teacher[idx], opts.temperature)

    weight = 0.0 if distill_weight is None else float(distill_weight)

    def loss(outputs: Any, idx: Tensor) -> Tensor:
        logits, features = outputs if uses_features else (outputs, None)
        if distill_weight is None:
            return task_loss(logits, features, idx)
        total = weight * distill_term(logits, features, idx)
        if weight < 1.0:
            total = total + (1.0 - weight) * task_loss(logits, features, idx)
        return total

    return loss


def qat_method(model: nn.Module, config: QuantConfig, calibration: Tensor, *,
               labels: Tensor | None = None, targets: TextTargets | None = None) -> nn.Module:
    """Every QAT entry (``qat``, ``qat_lsq``, ``qat_lsq_per_channel``, ``qat_distill``, ``qat_lora``):
    a QAT-trained quantized deep copy of ``model`` (eval mode); ``model`` is not modified.

    The task loss is cross-entropy on ``labels`` (class indices (N,)) or, with ``targets`` (a
    :class:`TextTargets` of caption embeddings, for image-text calibration data), CLIP's contrastive
    loss; ``targets`` take precedence over ``labels``."""
    if targets is not None and not isinstance(targets, TextTargets):
        raise TypeError(f"targets must be a TextTargets, got {type(targets).__name__}")
    return run_qat(model, config, calibration, labels, RECIPES[config.method](config.options), targets)
