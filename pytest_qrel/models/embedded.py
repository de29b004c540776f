"""The ``embedded`` model source: tiny models shipped in :mod:`pytest_qrel.zoo`.

``source: "embedded:<name>"`` where ``<name>`` is one of :data:`EMBEDDED_MODELS` (today only
``digits_vit``, a timm ViT trained on the embedded ``digits`` 0-7). The model is built from the
``"architecture"`` of ``zoo/<name>.json``, loaded from ``zoo/<name>.safetensors`` and returned in
eval mode; its preprocessing is the ``"preprocess"`` entry of the same json.

The weights file is checked against the SHA-256 recorded in the json, so a truncated, corrupt or
out-of-sync file is a :class:`~pytest_qrel.errors.ModelError` naming the file and the command that
re-creates it. The loaded tensors are cached per file (keyed by path, size and mtime); every call
returns a *fresh* module, so callers may modify it (quantize it in place) freely.

Importing this module does not import torch or timm.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ModelError
from ..options import parse_options, prefixed
from ..registry import Registry
from ..zoo import ZOO_DIR
from .base import MODEL_SOURCES, LoadedModel, state_dict_sha256


@dataclass(frozen=True)
class EmbeddedModel:
    """One entry of :data:`EMBEDDED_MODELS`: the file stem in the zoo and the script that trains it."""

    stem: str
    train_command: str
    description: str


EMBEDDED_MODELS: Registry[EmbeddedModel] = Registry("embedded model")
EMBEDDED_MODELS.add(
    "digits_vit",
    EmbeddedModel(
        stem="digits_vit",
        train_command="python -m pytest_qrel.zoo.train_digits_vit",
        description="timm ViT (16x16 grey, 4x4 patches, depth 4, width 64) trained on digits 0-7",
    ),
)

EMBEDDED_CLIPS: dict[str, str] = {"digits_clip": "python -m pytest_qrel.zoo.train_digits_clip"}
"""Shipped tiny CLIPs (loaded by the ``open_clip`` source as ``open_clip:<name>``) and the command
that re-creates each. Kept here, with the other shipped models, so that this module needs nothing
from :mod:`.open_clip_source` (which imports from this one)."""


@dataclass(frozen=True)
class GreyNormalize:
    """Preprocessing of the embedded models: one grey (1, size, size) image in [0, 1] -> ``(x - mean) / std``.

    Accepts a float tensor whose last three dimensions are (1, size, size) (a batch works too), or a
    PIL image (converted to grey, resized bilinearly to size x size, scaled to [0, 1]).
    Picklable, with a stable ``repr``.
    """

    mean: float
    std: float
    size: int = 16

    def __call__(self, image: Any) -> Any:
        return self.normalize(self.to_unit(image))

    def to_unit(self, image: Any) -> Any:
        """A grey float tensor (1, size, size) in [0, 1]: a PIL image is converted and resized, a tensor checked."""
        if hasattr(image, "convert") and hasattr(image, "resize"):  # a PIL image
            import numpy as np
            import torch
            from PIL import Image

            grey = image.convert("L").resize((self.size, self.size), Image.Resampling.BILINEAR)
            image = torch.from_numpy(np.asarray(grey, dtype=np.float32) / 255.0).unsqueeze(0)
        shape = tuple(getattr(image, "shape", ()))
        if len(shape) < 3 or shape[-3:] != (1, self.size, self.size):
            raise ValueError(f"{self!r} expects a grey image tensor of shape (1, {self.size}, {self.size}); got {shape}")
        if not image.is_floating_point():
            raise ValueError(f"{self!r} expects a float tensor with values in [0, 1]; got dtype {image.dtype}")
        return image

    def normalize(self, x: Any) -> Any:
        return (x - self.mean) / self.std

    normalize.elementwise = True  # type: ignore[attr-defined]  # a batch at once is the same bits (engine.runner._batched)

    def stages(self) -> Any:
        return self.to_unit, self.normalize

    def __repr__(self) -> str:
        return f"GreyNormalize(size={self.size}, mean={self.mean!r}, std={self.std!r})"

    def describe(self) -> str:
        return f"grey 1x{self.size}x{self.size} in [0,1]; (x - {self.mean!r}) / {self.std!r}"


def _fix(entry: EmbeddedModel) -> str:
    return f"re-run `{entry.train_command}` to re-create it, or reinstall pytest-qrel"


def _read_config(path: Path, entry: EmbeddedModel) -> dict[str, Any]:
    try:
        config = json.loads(path.read_text())
        for key in ("architecture", "preprocess", "class_names", "weights_file_sha256"):
            config[key]  # noqa: B018  (KeyError if missing)
    except FileNotFoundError:
        raise ModelError(f"embedded model config {path} is missing ({_fix(entry)})") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ModelError(f"embedded model config {path} is unreadable: {err!r} ({_fix(entry)})") from None
    return config


@functools.lru_cache(maxsize=8)
def _read_state(path: str, size: int, mtime_ns: int, expected_sha256: str, fix: str) -> dict[str, Any]:
    """The tensors of a safetensors file, after checking its SHA-256 (cached per file version)."""
    import hashlib

    from safetensors.torch import load

    data = Path(path).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != expected_sha256:
        raise ModelError(
            f"embedded model weights {path} are corrupt or do not match their config "
            f"(sha256 {digest[:12]}..., expected {expected_sha256[:12]}...; {fix})"
        )
    try:
        return load(data)
    except Exception as err:  # safetensors raises its own SafetensorError
        raise ModelError(f"embedded model weights {path} cannot be read: {err} ({fix})") from None


def clear_cache() -> None:
    """Forget the cached weight tensors."""
    _read_state.cache_clear()


def paths(name: str) -> tuple[Path, Path]:
    """``(weights, config)`` of the embedded model ``name`` (in :data:`ZOO_DIR` at call time)."""
    entry = EMBEDDED_MODELS.get(name)
    return ZOO_DIR / f"{entry.stem}.safetensors", ZOO_DIR / f"{entry.stem}.json"


def check_name(arg: str) -> None:
    """``arg`` names a shipped model (UnknownNameError with "did you mean" otherwise; a shipped
    CLIP, which has its own scheme, gets a ModelError saying how to write it)."""
    if arg in EMBEDDED_CLIPS and arg not in EMBEDDED_MODELS:
        raise ModelError(f"'{arg}' is the shipped CLIP model, which the open_clip source loads: write 'open_clip:{arg}'")
    EMBEDDED_MODELS.get(arg)


def check_no_options(arg: str, options: Mapping[str, Any]) -> None:
    """Embedded models take no options: any key is an unknown option ``(known: none)``."""
    parse_options(options, {}, fail=prefixed(ModelError, f"model 'embedded:{arg}'"))


@MODEL_SOURCES.register("embedded", check_arg=check_name, check_options=check_no_options, classifier=True)
def embedded_model_source(
    arg: str, *, options: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> LoadedModel:
    """``source: "embedded:<name>"``: a fresh FP32 module of a shipped model (takes no options).

    Raises:
        UnknownNameError: ``<name>`` is not an embedded model (the message lists the known ones).
        ModelError: an option was given, or the weights / config file is missing, corrupt or out of sync.
    """
    check_name(arg)
    entry = EMBEDDED_MODELS.get(arg)
    check_no_options(arg, options or {})
    weights, config_path = paths(arg)
    config = _read_config(config_path, entry)
    try:
        stat = weights.stat()
    except FileNotFoundError:
        raise ModelError(f"embedded model weights {weights} are missing ({_fix(entry)})") from None
    state = _read_state(str(weights), stat.st_size, stat.st_mtime_ns, str(config["weights_file_sha256"]), _fix(entry))

    from ..zoo import build_vit

    try:
        module = build_vit(dict(config["architecture"]), init=False)
        module.load_state_dict(state, strict=True)  # copies: the cached tensors stay untouched
    except (RuntimeError, TypeError, ValueError) as err:
        raise ModelError(f"embedded model weights {weights} do not fit {config_path}: {err} ({_fix(entry)})") from None
    module.eval()
    prep = config["preprocess"]
    preprocess = GreyNormalize(mean=float(prep["mean"]), std=float(prep["std"]), size=int(config["architecture"]["img_size"]))
    metrics = config.get("metrics", {}).get("test", {})
    return LoadedModel(
        name=arg,
        module=module,
        preprocess=preprocess,
        preprocessing=preprocess.describe(),
        weights_sha256=state_dict_sha256(module),
        num_classes=int(config["architecture"]["num_classes"]),
        class_names=list(config["class_names"]),
        info={
            "source": f"embedded:{arg}",
            "weights": str(weights),
            "config": str(config_path),
            "architecture": dict(config["architecture"]),
            "trained_on": config.get("training", {}).get("dataset"),
            "recorded_test_accuracy": metrics.get("accuracy"),
        },
    )
