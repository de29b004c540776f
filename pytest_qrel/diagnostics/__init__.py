"""Opt-in diagnostics: small extra passes over a few images whose results the report shows.

A suite enables them by name (``diagnostics: [attention_rollout]``); the engine runs each one for
every unit (FP32 and each quantizer) on the same few ID and OOD images and stores the plain result
in :attr:`pytest_qrel.results.UnitMetrics.diagnostics` under its name::

    from pytest_qrel.diagnostics import run_diagnostic
    unit.diagnostics["attention_rollout"] = run_diagnostic(
        "attention_rollout", module, images, image_info=[{"dataset": "digits", "index": 0, "kind": "id"}, ...])

Every diagnostic is a function ``fn(module, images, **options) -> dict`` filed in
:data:`DIAGNOSTICS` (a new one is one decorated function); ``images`` is a float tensor (B, C, H, W)
in the model's input space (already preprocessed), and the result holds plain Python types only.
Importing this package does not import torch (the suite loader validates names with it).

Registered: ``attention_rollout`` (:func:`pytest_qrel.diagnostics.rollout.attention_rollout`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Callable

from ..registry import Registry

__all__ = ["DEFAULT_IMAGES", "DIAGNOSTICS", "run_diagnostic"]

DIAGNOSTICS: Registry[Callable[..., dict[str, Any]]] = Registry("diagnostic")
"""``name -> fn(module, images, **options) -> plain dict``; metadata ``summary`` (one line)."""

DEFAULT_IMAGES: dict[str, int] = {"id": 2, "ood_per_set": 1}
"""How many images a diagnostic looks at by default: the first ``id`` images of the ID test split
and the first ``ood_per_set`` image of each OOD set (the same images for every unit)."""


def run_diagnostic(
    name: str,
    module: Any,
    images: Any,
    *,
    image_info: Sequence[Mapping[str, Any]] | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Run the diagnostic ``name`` on ``module`` (eval mode, no gradients) over ``images``.

    Args:
        name: a name in :data:`DIAGNOSTICS` (unknown names raise
            :class:`~pytest_qrel.errors.UnknownNameError` with a "did you mean").
        module: the FP32 or quantized model (an ``nn.Module``).
        images: float tensor (B, C, H, W), preprocessed as the model expects.
        image_info: one plain dict per image (e.g. ``{"dataset": "digits", "index": 3, "kind":
            "id"}``), stored as ``result["images"]`` so the report can label each map.
        options: passed to the diagnostic (``discard_ratio=0.9`` for the rollout).

    Returns:
        The diagnostic's plain dict, plus ``"images"`` (``image_info`` as a list of dicts).

    Raises:
        ValueError: ``image_info`` does not have one entry per image, or the diagnostic cannot
            handle this model (the message says why).
    """
    fn = DIAGNOSTICS.get(name)
    n = int(images.shape[0])
    if image_info is not None and len(image_info) != n:
        raise ValueError(f"image_info has {len(image_info)} entries for {n} images")
    result = dict(fn(module, images, **options))
    result["images"] = [dict(i) for i in image_info] if image_info is not None else [{"index": i} for i in range(n)]
    return result


def _register_builtin() -> None:
    from .rollout import attention_rollout

    DIAGNOSTICS.add(
        "attention_rollout",
        attention_rollout,
        summary="attention rollout maps (lowest 90% of attention discarded, heads fused by max)",
    )


_register_builtin()
