"""What a model source returns, and the registry of model sources.

A model source is one function filed under its scheme in :data:`MODEL_SOURCES`; the suite names it
as ``source: "<scheme>:<arg>"`` and calls ``fn(arg, options=..., base_dir=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


ModelSource = Callable[..., LoadedModel]
MODEL_SOURCES: Registry[ModelSource] = Registry("model source")


def load_model(source: str, *, options: Mapping[str, Any] | None = None, base_dir: Path | None = None) -> LoadedModel:
    """Look up the scheme of ``source`` in :data:`MODEL_SOURCES` and call it."""
    from . import _builtin  # noqa: F401  (registers the built-in sources)
    from ..data.base import parse_source

    scheme, arg = parse_source(source)
    fn = MODEL_SOURCES.get(scheme)
    return fn(arg, options=dict(options or {}), base_dir=base_dir or Path.cwd())


def state_dict_sha256(module: Any) -> str:
    """SHA-256 over the names, shapes, dtypes and bytes of every tensor in ``module.state_dict()``."""
    import hashlib

    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.view(-1).view(dtype=__import__("torch").uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
