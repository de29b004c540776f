"""Options shared by the methods that quantize a model's linear layers, and which modules they touch.

Two parts that every such method (``minmax``, ``smoothquant``, ...) reuses instead of re-parsing:

- :class:`LinearQuantOptions`: the common ``options:`` of a quantizer, validated by
  :func:`~pytest_qrel.quantize.base.parse_options` (an unknown key or a bad value is a
  :class:`~pytest_qrel.errors.SpecError` naming ``quantizers.<name>.<key>`` and listing the accepted
  keys). A method may accept only some of them (``keys=``), add its own (``extra=``) or change a
  default (``defaults=``).
- :func:`select_modules`: the one place that decides which ``nn.Linear`` layers and which
  ``nn.Conv2d`` a method quantizes, and how the classifier head and the patch embedding are found.

The common options, with their defaults (those of ``minmax``)::

    weight_granularity: per_channel   # or per_tensor: one weight scale per layer
    weight_symmetric:   true          # false: asymmetric weights, unsigned range [0, 2^b - 1]
    act_symmetric:      false         # true: symmetric activations, range [-(2^(b-1) - 1), 2^(b-1) - 1]
    head:               quantized     # or fp32: the classifier head Linear keeps its FP32 weights and input
    patch_embed:        fp32          # or quantized: the patch-embedding Conv2d's weight per output
                                      # channel (as weight_granularity says) and its input per tensor,
                                      # at the quantizer's weight_bits / act_bits
    batch_size:         64            # images per calibration forward pass (memory only)

How modules are found:

- **head**: the ``nn.Linear`` modules of ``model.get_classifier()`` (timm's API; a tuple such as
  DeiT-distilled's ``(head, head_dist)`` counts as a whole), else of ``model.head``; a model with
  neither has no head (``head: fp32`` then keeps nothing in FP32).
- **patch embedding**: the ``nn.Conv2d`` named ``patch_embed.proj`` (timm) or ``conv1`` beside a
  ``positional_embedding`` (open_clip's visual tower), at any depth; else the model's only
  ``nn.Conv2d`` if it has exactly one; else none (``patch_embed: quantized`` is then a SpecError).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from torch import nn

from ..spec.schema import QuantizerSpec
from .base import Option, parse_options, positive_int
from .fakequant import CALIBRATION_BATCH_SIZE, WeightQuantizer, quantize_weight, quantize_weight_per_channel_symmetric

Granularity = Literal["per_channel", "per_tensor"]
HeadMode = Literal["quantized", "fp32"]
PatchEmbedMode = Literal["fp32", "quantized"]


def one_of(*choices: str) -> Option:
    """An :class:`Option` whose value must be one of ``choices`` (the first is the default)."""
    expect = " or ".join(f"'{c}'" for c in choices)
    return Option(choices[0], lambda v: isinstance(v, str) and v in choices, expect)


def boolean(default: bool) -> Option:
    return Option(default, lambda v: isinstance(v, bool), "true or false")


COMMON_OPTIONS: dict[str, Option] = {
    "weight_granularity": one_of("per_channel", "per_tensor"),
    "weight_symmetric": boolean(True),
    "act_symmetric": boolean(False),
    "head": one_of("quantized", "fp32"),
    "patch_embed": one_of("fp32", "quantized"),
    "batch_size": Option(CALIBRATION_BATCH_SIZE, positive_int, "a positive integer"),
}
"""The common options and their defaults, in the order they are documented."""


@dataclass(frozen=True)
class LinearQuantOptions:
    """The validated common options of one quantizer (see the module docstring for their meaning).

    ``extra`` holds the method-specific options asked for with ``extra=`` in :meth:`from_spec`,
    validated and with defaults filled in.
    """

    weight_granularity: Granularity = "per_channel"
    weight_symmetric: bool = True
    act_symmetric: bool = False
    head: HeadMode = "quantized"
    patch_embed: PatchEmbedMode = "fp32"
    batch_size: int = CALIBRATION_BATCH_SIZE
    extra: Mapping[str, Any] = field(default_factory=dict)

    @staticmethod
    def accepted(
        *,
        keys: Iterable[str] | None = None,
        extra: Mapping[str, Option] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> dict[str, Option]:
        """The ``{key: Option}`` table a method validates against.

        ``keys``: the common keys the method accepts (default: all of :data:`COMMON_OPTIONS`);
        ``extra``: method-specific options; ``defaults``: overrides of common defaults.

        Raises:
            ValueError: an unknown common key, or a default override for a key not accepted.
        """
        names = list(COMMON_OPTIONS) if keys is None else list(keys)
        unknown = [k for k in names if k not in COMMON_OPTIONS]
        if unknown:
            raise ValueError(f"not common options: {unknown}; known: {list(COMMON_OPTIONS)}")
        table = {k: COMMON_OPTIONS[k] for k in names}
        for key, value in (defaults or {}).items():
            if key not in table:
                raise ValueError(f"default given for '{key}', which is not accepted")
            if not table[key].valid(value):
                raise ValueError(f"default {value!r} for '{key}' is not {table[key].expect}")
            table[key] = dataclasses.replace(table[key], default=value)
        overlap = set(table) & set(extra or {})
        if overlap:
            raise ValueError(f"method options shadow common ones: {sorted(overlap)}")
        table.update(extra or {})
        return table

    @classmethod
    def from_spec(
        cls,
        spec: QuantizerSpec,
        *,
        keys: Iterable[str] | None = None,
        extra: Mapping[str, Option] | None = None,
        defaults: Mapping[str, Any] | None = None,
    ) -> LinearQuantOptions:
        """Validate ``spec.options`` (see :meth:`accepted`) and return them.

        Common keys a method does not accept keep their class defaults here (the method ignores them).

        Raises:
            SpecError: an unknown key (field ``quantizers.<name>.<key>``, listing the accepted keys with
                a "did you mean"), or a value that is not valid for its key.
        """
        table = cls.accepted(keys=keys, extra=extra, defaults=defaults)
        values = parse_options(spec, table)
        common = {k: v for k, v in values.items() if k in COMMON_OPTIONS}
        return cls(**common, extra={k: v for k, v in values.items() if k not in COMMON_OPTIONS})

    def weight_quantizer(self) -> WeightQuantizer:
        """``fn(weight, bits)`` for these options; the default is
        :func:`~pytest_qrel.quantize.fakequant.quantize_weight_per_channel_symmetric` itself."""
        per_channel = self.weight_granularity == "per_channel"
        if per_channel and self.weight_symmetric:
            return quantize_weight_per_channel_symmetric
        symmetric = self.weight_symmetric

        def quantizer(w: Any, bits: int) -> Any:
            return quantize_weight(w, bits, per_channel=per_channel, symmetric=symmetric)

        return quantizer


# --------------------------------------------------------------------------------------------------
# Module selection
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ModuleSelection:
    """What a method quantizes in one model (qualified module names, in module order).

    ``linears``: the ``nn.Linear`` layers to quantize; ``head``: the classifier head's Linears that
    were found (quantized or not); ``fp32_linears``: Linears deliberately left in floating point;
    ``patch_embed``: the patch-embedding ``nn.Conv2d`` that was found (or ``None``);
    ``quantize_patch_embed``: whether it is to be quantized.
    """

    linears: tuple[str, ...]
    head: tuple[str, ...]
    fp32_linears: tuple[str, ...]
    patch_embed: str | None
    quantize_patch_embed: bool

    def keeps(self, name: str) -> bool:
        """True when the Linear ``name`` stays in floating point."""
        return name in self.fp32_linears


def _linear_names(model: nn.Module, targets: Iterable[nn.Module]) -> tuple[str, ...]:
    ids = {id(m) for m in targets}
    return tuple(name for name, m in model.named_modules(remove_duplicate=False) if id(m) in ids and name)


def find_head(model: nn.Module) -> tuple[str, ...]:
    """Qualified names of the ``nn.Linear`` modules of the classifier head (empty if none is found).

    The head is ``model.get_classifier()`` (timm; a tuple of modules is taken whole) when the model
    has it, else ``model.head``; its Linears are the module itself when it is one, else those inside.
    """
    head: Any = None
    if callable(getattr(model, "get_classifier", None)):
        try:
            head = model.get_classifier()
        except Exception:  # noqa: BLE001 - a custom get_classifier may need arguments or fail
            head = None
    if head is None:
        head = getattr(model, "head", None)
    parts = head if isinstance(head, (tuple, list)) else (head,)
    linears = [m for part in parts if isinstance(part, nn.Module) for m in part.modules() if isinstance(m, nn.Linear)]
    return _linear_names(model, linears)


def find_patch_embed(model: nn.Module) -> str | None:
    """Qualified name of the patch-embedding ``nn.Conv2d``, or ``None`` (rules in the module docstring)."""
    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    modules = dict(model.named_modules())
    for name, _ in convs:
        if name == "patch_embed.proj" or name.endswith(".patch_embed.proj"):
            return name
    for name, _ in convs:
        parent_name, _, leaf = name.rpartition(".")
        if leaf == "conv1" and hasattr(modules.get(parent_name, model) if parent_name else model, "positional_embedding"):
            return name
    if len(convs) == 1:
        return convs[0][0]
    return None


def select_modules(model: nn.Module, options: LinearQuantOptions) -> ModuleSelection:
    """Decide which Linears (and whether the patch-embedding Conv2d) ``options`` quantize in ``model``.

    Every ``nn.Linear`` is quantized except the head's when ``options.head == 'fp32'``. Finding no
    patch embedding is not an error here; methods that were asked to quantize it raise a SpecError.
    """
    head = find_head(model)
    fp32 = head if options.head == "fp32" else ()
    linears = tuple(
        name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name and name not in fp32
    )
    patch = find_patch_embed(model)
    return ModuleSelection(
        linears=linears,
        head=head,
        fp32_linears=fp32,
        patch_embed=patch,
        quantize_patch_embed=options.patch_embed == "quantized" and patch is not None,
    )
