"""What a model source returns, and the registry of model sources.

A model source is one function filed under its scheme in :data:`MODEL_SOURCES`; the suite names it
as ``source: "<scheme>:<arg>"`` and calls ``fn(arg, options=..., base_dir=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..registry import Registry


@dataclass
class LoadedModel:
    """A classifier ready for evaluation.

    ``module`` is an FP32 ``torch.nn.Module`` in eval mode on the CPU whose forward maps a batch
    (B, C, H, W) of preprocessed images to logits (B, num_classes). ``preprocess`` maps one raw image
    (PIL image, or float tensor (C, H, W) in [0, 1]) to the model's input tensor. ``preprocessing``
    is a stable, human-readable description of it and ``weights_sha256`` a digest of the state
    dict; both go into baseline fingerprints.
    """

    name: str
    module: Any
    preprocess: Callable[[Any], Any]
    preprocessing: str
    weights_sha256: str
    num_classes: int
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    class_ids: list[str] | None = None
    """Machine ids of the classes in index order (ImageNet WordNet ids ``n01440764`` for a timm
    ImageNet head), the names class folders are usually given; None when unknown."""


ModelSource = Callable[..., LoadedModel]
MODEL_SOURCES: Registry[ModelSource] = Registry("model source")
"""Scheme -> source function. Entry metadata: ``zero_shot=True`` (the head is built from the ID set's
class names: a CLIP), ``classifier=True`` (only ever logits, never image features and text
embeddings: CLIP scores cannot read it), ``check_arg`` / ``check_options`` (validated at suite load)."""


def load_model(source: str, *, options: Mapping[str, Any] | None = None, base_dir: Path | None = None) -> LoadedModel:
    """Look up the scheme of ``source`` in :data:`MODEL_SOURCES` and call it."""
    from ..data.base import parse_source
    from ..errors import ModelError

    scheme, arg = parse_source(source, ModelError)
    fn = MODEL_SOURCES.get(scheme)
    return fn(arg, options=dict(options or {}), base_dir=base_dir or Path.cwd())


def validate_model_source(source: str, options: Mapping[str, Any] | None = None) -> None:
    """Check a model ``source`` (and, when given, its options) without loading it or importing torch;
    see :func:`pytest_qrel.data.base.validate_source`."""
    from ..data.base import validate_source

    validate_source(MODEL_SOURCES, source, options)


def model_source_meta(source: str) -> dict[str, Any]:
    """The registry metadata of ``source``'s scheme (e.g. ``{"zero_shot": True}``); ``{}`` for an unknown scheme.

    The built-in sources are registered by this package's ``__init__``, which runs before this module.
    """
    from ..data.base import parse_source

    scheme = parse_source(source)[0]
    return dict(MODEL_SOURCES.meta(scheme)) if scheme in MODEL_SOURCES else {}


def state_dict_sha256(module: Any, skip: Collection[str] = ()) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every tensor in ``module.state_dict()``
    (but the entries named in ``skip``)."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        if name in skip:
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


# ------------------------------------------------------------------------------ preprocessing stages
Stages = tuple[Callable[[Any], Any], Callable[[Any], Any]]


def _normalize_index(transforms: list[Any]) -> int | None:
    names = [type(t).__name__ for t in transforms]
    return names.index("Normalize") if "Normalize" in names else None


def compose_stages(transforms: list[Any]) -> Stages | None:
    """``(to_unit, normalize)`` of a torchvision ``Compose``'s list of steps, split before its ``Normalize``.

    ``to_unit`` runs every step before ``Normalize`` (resize, crop, to-tensor) and clamps the result
    to [0, 1] (antialiased resampling of a float tensor may overshoot); ``normalize`` runs the rest.
    None when there is no ``Normalize`` to split at.
    """
    from torchvision.transforms import Compose

    at = _normalize_index(transforms)
    if at is None:
        return None
    before, after = Compose(list(transforms[:at])), Compose(list(transforms[at:]))

    def to_unit(image: Any) -> Any:
        return before(image).clamp(0.0, 1.0)

    return to_unit, after


def preprocess_stages(preprocess: Callable[[Any], Any]) -> Stages | None:
    """Split a model's preprocessing into ``(to_unit, normalize)``, or None when it cannot be split.

    ``to_unit`` maps one raw image (PIL, or float tensor (C, H, W) in [0, 1]) to a float tensor
    (C, H, W) with values in [0, 1] at the model's resolution (resize, crop, channel conversion);
    ``normalize`` maps that to the model's input, so ``preprocess(x) == normalize(to_unit(x))``.
    Covariate-shift corruptions run between the two (ImageNet-C corrupts the 224 x 224 crop, before
    normalisation). A preprocess object provides it with a ``stages()`` method; a plain torchvision
    ``Compose`` (e.g. from a ``python:`` source) is split before its ``Normalize``.
    """
    stages = getattr(preprocess, "stages", None)
    if callable(stages):
        return stages()
    transforms = getattr(preprocess, "transforms", None)
    if type(preprocess).__name__ == "Compose" and isinstance(transforms, list):
        return compose_stages(transforms)
    return None
