"""Which modules a linear-layer method quantizes: the one place that finds the classifier head and
the patch embedding and decides which ``nn.Linear`` / ``nn.Conv2d`` are replaced.

Shared by ``minmax``, ``percentile``, ``mse``, ``smoothquant`` and ``raana`` (and the head rule by
the QAT methods), so one option (``head``, ``patch_embed``) means the same thing for all of them.

How modules are found:

- **head**: the ``nn.Linear`` modules of ``model.get_classifier()`` (timm's API; a tuple such as
  DeiT-distilled's ``(head, head_dist)`` counts as a whole), else of ``model.head``; a model with
  neither has no head (``head: fp32`` then keeps nothing in FP32).
- **patch embedding**: the ``nn.Conv2d`` named ``patch_embed.proj`` (timm) or ``conv1`` beside a
  ``positional_embedding`` (open_clip's visual tower), at any depth; else the model's only
  ``nn.Conv2d`` if it has exactly one; else none (``patch_embed: quantized`` is then a
  :class:`~pytest_qrel.errors.QuantOptionError`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .options import LinearQuantOptions


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
    get_classifier = getattr(model, "get_classifier", None)
    if callable(get_classifier):
        try:
            head = get_classifier()
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
    patch embedding is not an error here; methods that were asked to quantize it raise.
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
