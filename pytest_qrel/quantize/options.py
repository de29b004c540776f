"""The typed options of every built-in quantization method (imports no torch).

Each method's options are a frozen dataclass; ``Cls.parse(raw, method=name)`` validates a raw
``options:`` mapping (unknown keys and bad values are a :class:`~pytest_qrel.errors.QuantOptionError`
naming the key, with a "did you mean" for unknown ones) and returns an instance with every default
filled in. The validity rules live in ``RULES`` tables; the defaults are the dataclass fields'.
``Cls.accepted()`` is the ``{key: Option}`` table a method accepts, defaults included.

The options shared by the methods that quantize a model's linear layers
(:class:`LinearQuantOptions`; ``minmax`` accepts exactly these, with these defaults)::

    weight_granularity: per_channel   # or per_tensor: one weight scale per layer
    weight_symmetric:   true          # false: asymmetric weights, unsigned range [0, 2^b - 1]
    act_symmetric:      false         # true: symmetric activations, range [-(2^(b-1) - 1), 2^(b-1) - 1]
    head:               quantized     # or fp32: the classifier head Linear keeps its FP32 weights and input
    patch_embed:        fp32          # or quantized: the patch-embedding Conv2d's weight per output
                                      # channel (as weight_granularity says) and its input per tensor,
                                      # at the quantizer's weight_bits / act_bits
    batch_size:         64            # images per calibration forward pass (memory only)

Which modules they select is :func:`~pytest_qrel.quantize.selection.select_modules`, shared by
``minmax``, ``percentile``, ``mse``, ``smoothquant`` and ``raana``.

Per method (besides the common keys it accepts):

- ``percentile`` (:class:`PercentileOptions`): every common key but ``act_symmetric``;
  ``percentile`` (default 99.99), ``max_values`` (2^20).
- ``mse`` (:class:`MSEOptions`): every common key but ``act_symmetric``; ``grid`` (100),
  ``max_values`` (2^18).
- ``smoothquant`` (:class:`SmoothQuantOptions`): every common key; ``alpha`` (0.5), ``act_quant``
  (``static`` | ``per_token`` | ``per_tensor``), ``quantize_bmm_input`` (false).
- ``raana`` (:class:`RaanAOptions`): ``head``, ``act_symmetric``, ``batch_size``; ``bit_candidates``, ``seed``.
- ``repq_vit`` (:class:`RepQOptions`): ``reparameterize``, ``softmax_quantizer``, ``log2_levels``,
  ``zero_point``, ``arithmetic`` (defaults: the reference code's behaviour).
- the QAT family (:class:`QATOptions`, :class:`LSQOptions`, :class:`DistillOptions`,
  :class:`LoRAOptions`): see :mod:`pytest_qrel.quantize.qat`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from ..errors import QuantOptionError
from ..options import Option, OptionSet, choice, is_bool, is_number, nonneg_int, positive_int, rule

CALIBRATION_BATCH_SIZE = 64
"""Images per calibration forward pass (memory only: min/max does not depend on batching)."""

Granularity = Literal["per_channel", "per_tensor"]
HeadMode = Literal["quantized", "fp32"]
PatchEmbedMode = Literal["fp32", "quantized"]
ActQuant = Literal["static", "per_token", "per_tensor"]


def _choice(*choices: str) -> Option:
    """A choice rule; its default comes from the dataclass field of the same name."""
    return dataclasses.replace(choice(*choices), default=None)


def _positive_number(value: Any) -> bool:
    return is_number(value) and float(value) > 0


def _nonneg_number(value: Any) -> bool:
    return is_number(value) and float(value) >= 0


def _fraction(value: Any) -> bool:
    return is_number(value) and 0.0 <= float(value) <= 1.0


def _seed(value: Any) -> bool:
    return value is None or nonneg_int(value)


@dataclass(frozen=True)
class MethodOptions(OptionSet):
    """Base of every method's typed options (:class:`pytest_qrel.options.OptionSet`): ``RULES``
    (merged along the class hierarchy) say what is valid, the dataclass fields give the defaults,
    ``KEYS`` (None: every field) what is accepted, ``check`` the rules between options."""

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None, *, method: str) -> Any:
        """Validate ``raw`` into an instance (messages: :func:`~pytest_qrel.quantize.base.parse_options`).

        Raises:
            QuantOptionError: an unknown key, a bad value, or options that contradict each other.
        """
        return cls.from_raw(raw, fail=QuantOptionError, kind=f"{method} option")


# --------------------------------------------------------------------------------------------------
# Methods that quantize linear layers
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinearQuantOptions(MethodOptions):
    """The common options of the linear-layer methods (module docstring). ``minmax`` accepts these."""

    weight_granularity: Granularity = "per_channel"
    weight_symmetric: bool = True
    act_symmetric: bool = False
    head: HeadMode = "quantized"
    patch_embed: PatchEmbedMode = "fp32"
    batch_size: int = CALIBRATION_BATCH_SIZE

    RULES: ClassVar[Mapping[str, Option]] = {
        "weight_granularity": _choice("per_channel", "per_tensor"),
        "weight_symmetric": rule(is_bool, "true or false"),
        "act_symmetric": rule(is_bool, "true or false"),
        "head": _choice("quantized", "fp32"),
        "patch_embed": _choice("fp32", "quantized"),
        "batch_size": rule(positive_int, "a positive integer"),
    }


COMMON_OPTIONS: dict[str, Option] = LinearQuantOptions.accepted()
"""The common options and their defaults, in the order they are documented."""

_NOT_ACT_SYMMETRIC = tuple(k for k in COMMON_OPTIONS if k != "act_symmetric")


def _percentile_value(value: Any) -> bool:
    return is_number(value) and 50.0 < float(value) <= 100.0


@dataclass(frozen=True)
class PercentileOptions(LinearQuantOptions):
    """``percentile``: the common options (but ``act_symmetric``: its ranges are asymmetric) plus
    ``percentile`` (in (50, 100]) and ``max_values`` (values kept per quantizer)."""

    percentile: float = 99.99
    max_values: int = 2**20

    KEYS: ClassVar[tuple[str, ...] | None] = (*_NOT_ACT_SYMMETRIC, "percentile", "max_values")
    RULES: ClassVar[Mapping[str, Option]] = {
        "percentile": rule(_percentile_value, "a number in (50, 100] (a percentile, e.g. 99.99)", float),
        "max_values": rule(positive_int, "a positive integer"),
    }


@dataclass(frozen=True)
class MSEOptions(LinearQuantOptions):
    """``mse``: the common options (but ``act_symmetric``) plus ``grid`` (candidate ranges) and
    ``max_values`` (values the error is measured on)."""

    grid: int = 100
    max_values: int = 2**18

    KEYS: ClassVar[tuple[str, ...] | None] = (*_NOT_ACT_SYMMETRIC, "grid", "max_values")
    RULES: ClassVar[Mapping[str, Option]] = {
        "grid": rule(positive_int, "a positive integer"),
        "max_values": rule(positive_int, "a positive integer"),
    }


@dataclass(frozen=True)
class SmoothQuantOptions(LinearQuantOptions):
    """``smoothquant``: the common options plus ``alpha`` (migration strength, [0, 1]),
    ``act_quant`` (``static``: the common static per-tensor activations; ``per_token`` /
    ``per_tensor``: the reference code's dynamic symmetric absmax quantization) and
    ``quantize_bmm_input`` (quantize the inputs ``q``, ``k``, ``v`` of the attention matmuls with
    the same ``act_quant``, as the reference does)."""

    alpha: float = 0.5
    act_quant: ActQuant = "static"
    quantize_bmm_input: bool = False

    RULES: ClassVar[Mapping[str, Option]] = {
        "alpha": rule(_fraction, "a number from 0 to 1", float),
        "act_quant": _choice("static", "per_token", "per_tensor"),
        "quantize_bmm_input": rule(is_bool, "true or false"),
    }

    def check_bits(self, weight_bits: int, act_bits: int | None) -> None:
        if act_bits is None and self.quantize_bmm_input:
            raise QuantOptionError("quantize_bmm_input", "quantize_bmm_input: true quantizes activations, but "
                                   "act_bits is null", "set act_bits, or remove quantize_bmm_input")


MAX_CANDIDATE_BITS = 8
DEFAULT_CANDIDATES = (2, 3, 4, 5, 6, 7, 8)


def _candidates_valid(value: Any) -> bool:
    return (
        isinstance(value, (list, tuple)) and len(value) > 0
        and all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= MAX_CANDIDATE_BITS for b in value)
        and len(set(value)) == len(value)
    )


@dataclass(frozen=True)
class RaanAOptions(LinearQuantOptions):
    """``raana``: ``head``, ``act_symmetric`` and ``batch_size`` of the common options,
    ``bit_candidates`` (sorted tuple of distinct widths from 1 to 8) and ``seed`` (None: the run's
    seed). ``act_bits`` may be null (weight-only, the RaanA paper) or a width: each quantized layer's
    rotated input is then quantized static per tensor, as ``minmax`` quantizes a layer's input."""

    bit_candidates: tuple[int, ...] = DEFAULT_CANDIDATES
    seed: int | None = None

    KEYS: ClassVar[tuple[str, ...] | None] = ("head", "act_symmetric", "batch_size", "bit_candidates", "seed")
    RULES: ClassVar[Mapping[str, Option]] = {
        "bit_candidates": rule(_candidates_valid, "a list of distinct integers from 1 to 8, e.g. [2, 3, 4, 5, 6, 7, 8]",
                               lambda v: tuple(sorted(v))),
        "seed": rule(_seed, "a non-negative integer (or null: the calibration seed)"),
    }

    def check_bits(self, weight_bits: int, act_bits: int | None) -> None:
        if weight_bits < self.bit_candidates[0]:
            raise QuantOptionError("weight_bits", f"an average of {weight_bits} bits is below the smallest of "
                                   f"bit_candidates {list(self.bit_candidates)}",
                                   "raise weight_bits or add smaller bit_candidates")


# --------------------------------------------------------------------------------------------------
# RepQ-ViT
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepQOptions(MethodOptions):
    """``repq_vit``. The defaults reproduce the reference code (github.com/zkkli/RepQ-ViT) the ViT
    study ran; the other values are stricter choices:

    - ``reparameterize`` (bool, true): the post-LayerNorm scale reparameterization;
    - ``softmax_quantizer`` (``log_sqrt2`` | ``uniform``): the softmax output's quantizer;
    - ``log2_levels`` (``reference`` | ``strict``): ``reference``: 2^b log-sqrt(2) levels plus zero
      (17 values at 4 bits, as the reference); ``strict``: 2^b - 1 levels plus zero (a b-bit code);
    - ``zero_point`` (``mean`` | ``rounded``): the per-tensor zero point after reparameterization is
      the unrounded mean of the per-channel ones (the reference: up to 2^b + 1 values) or rounded
      (then the per-tensor quantization equals the per-channel one exactly);
    - ``arithmetic`` (``reference`` | ``aten``): quantiles by ``torch.quantile`` and ``x / scale``
      (the reference's calls) or exact float64-position quantiles and ATen's ``x * (1 / scale)``.
    """

    reparameterize: bool = True
    softmax_quantizer: Literal["log_sqrt2", "uniform"] = "log_sqrt2"
    log2_levels: Literal["reference", "strict"] = "reference"
    zero_point: Literal["mean", "rounded"] = "mean"
    arithmetic: Literal["reference", "aten"] = "reference"

    RULES: ClassVar[Mapping[str, Option]] = {
        "reparameterize": rule(is_bool, "true or false"),
        "softmax_quantizer": _choice("log_sqrt2", "uniform"),
        "log2_levels": _choice("reference", "strict"),
        "zero_point": _choice("mean", "rounded"),
        "arithmetic": _choice("reference", "aten"),
    }


# --------------------------------------------------------------------------------------------------
# QAT (meaning and provenance of every default: pytest_qrel.quantize.qat)
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QATOptions(MethodOptions):
    """``qat``: ``steps``, ``batch_size``, ``lr``, ``weight_decay``, ``seed`` (None: the run's seed), ``head``."""

    steps: int = 100
    batch_size: int = 100
    lr: float = 1e-5
    weight_decay: float = 0.01
    seed: int | None = None
    head: HeadMode = "quantized"

    RULES: ClassVar[Mapping[str, Option]] = {
        "steps": rule(nonneg_int, "a non-negative integer"),
        "batch_size": rule(positive_int, "a positive integer"),
        "lr": rule(_positive_number, "a positive number", float),
        "weight_decay": rule(_nonneg_number, "a non-negative number", float),
        "seed": rule(_seed, "a non-negative integer (default: calibration.seed)"),
        "head": _choice("quantized", "fp32"),
    }


@dataclass(frozen=True)
class LSQOptions(QATOptions):
    """``qat_lsq``, ``qat_lsq_per_channel``: QAT's plus ``step_lr``, ``step_init`` (``minmax`` | ``lsq``)
    and ``weight_range`` (``restricted``: ``[-(2^(b-1) - 1), 2^(b-1) - 1]``; ``full``: the LSQ paper's
    ``[-2^(b-1), 2^(b-1) - 1]``)."""

    step_lr: float = 1e-4
    step_init: Literal["minmax", "lsq"] = "minmax"
    weight_range: Literal["restricted", "full"] = "restricted"

    RULES: ClassVar[Mapping[str, Option]] = {
        "step_lr": rule(_positive_number, "a positive number", float),
        "step_init": _choice("minmax", "lsq"),
        "weight_range": _choice("restricted", "full"),
    }


@dataclass(frozen=True)
class DistillOptions(LSQOptions):
    """``qat_distill``: LSQ's plus ``per_channel``, ``temperature`` and ``distill_weight`` (None: 0.5
    with labels, 1 without)."""

    per_channel: bool = False
    temperature: float = 1.0
    distill_weight: float | None = None

    RULES: ClassVar[Mapping[str, Option]] = {
        "per_channel": rule(is_bool, "true or false"),
        "temperature": rule(_positive_number, "a positive number", float),
        "distill_weight": rule(lambda v: v is None or _fraction(v), "a number from 0 to 1", float),
    }


@dataclass(frozen=True)
class LoRAOptions(LSQOptions):
    """``qat_lora``: LSQ's (``lr`` defaults to 1e-4) plus ``lora_r``, ``lora_alpha``, ``train_steps``,
    ``lora_merge`` (false, the default: the adapter stays a floating-point path on the unquantized
    input beside the quantized layer, the CLIP paper's forward; true: it is merged into the weight,
    which is then quantized, before evaluation), ``distill`` (``none`` | ``feature_mse``: the CLIP
    paper's LoRA-Distill loss, the MSE between the L2-normalised features of the FP32 and the
    quantized model) and ``distill_weight`` (its weight, 0.5 as in the paper)."""

    lr: float = 1e-4
    lora_r: int = 8
    lora_alpha: float = 16.0
    train_steps: bool = False
    lora_merge: bool = False
    distill: Literal["none", "feature_mse"] = "none"
    distill_weight: float = 0.5

    RULES: ClassVar[Mapping[str, Option]] = {
        "lora_r": rule(positive_int, "a positive integer"),
        "lora_alpha": rule(_positive_number, "a positive number", float),
        "train_steps": rule(is_bool, "true or false"),
        "lora_merge": rule(is_bool, "true or false"),
        "distill": _choice("none", "feature_mse"),
        "distill_weight": rule(_fraction, "a number from 0 to 1", float),
    }
