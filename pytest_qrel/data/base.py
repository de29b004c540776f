"""What a dataset source returns, and the registry of dataset sources.

A dataset source is one function filed under its scheme in :data:`DATASET_SOURCES`; the suite
names it as ``source: "<scheme>:<arg>"``. It is called as
``fn(arg, split=..., options=..., base_dir=...)`` and returns an :class:`ImageSet`.

``split`` is ``"test"`` (evaluation) or ``"train"`` (the in-distribution split that calibration and
QAT draw from; never used for evaluation). OOD sets are only ever asked for ``"test"``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..errors import DataError, QrelError
from ..registry import Registry

OOD_LABEL = -1
"""Label of every sample of an out-of-distribution set."""


class ImageSet(Protocol):
    """A finite, ordered, labelled set of images (order is part of its identity).

    ``__getitem__`` returns ``(image, label)``: ``image`` is either a PIL image or a float tensor of
    shape (C, H, W) with values in [0, 1], before the model's preprocessing; ``label`` is an int
    class index, or ``OOD_LABEL`` for OOD samples. ``fingerprint`` is a stable hex digest of the
    content and order (a change means stored baselines no longer apply).
    """

    name: str
    fingerprint: str
    labels: np.ndarray
    class_names: list[str] | None

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> tuple[Any, int]: ...


@dataclass
class TensorImageSet:
    """An in-memory :class:`ImageSet`: ``images`` float32 (N, C, H, W) in [0, 1]."""

    name: str
    images: Any  # torch.Tensor; typed loosely so importing this module does not import torch
    labels: np.ndarray
    fingerprint: str
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        return self.images[index], int(self.labels[index])


DatasetSource = Callable[..., ImageSet]
DATASET_SOURCES: Registry[DatasetSource] = Registry("dataset source")


def parse_source(source: str, error: type[QrelError] = DataError) -> tuple[str, str]:
    """Split ``"scheme:arg"`` (a bare word is not read as ``embedded:<word>``: be explicit).

    Raises:
        error: (DataError by default; ModelError for model sources) ``source`` is not a string of
            the form ``<scheme>:<arg>`` with both parts non-empty.
    """
    if not isinstance(source, str):
        raise error(f"source {source!r} is not a string of the form '<scheme>:<arg>' (e.g. 'embedded:digits')")
    scheme, sep, arg = source.partition(":")
    if not sep or not scheme or not arg:
        raise error(f"source '{source}' is not of the form '<scheme>:<arg>' (e.g. 'embedded:digits')")
    return scheme, arg


def validate_source(registry: Registry[Any], source: str, options: Mapping[str, Any] | None = None) -> None:
    """Check ``source`` (and, when given, its ``options``) without loading anything or importing torch.

    The scheme must be in ``registry``; a source registered with ``check_arg=fn(arg)`` and/or
    ``check_options=fn(arg, options)`` metadata has them called (e.g. the embedded sets check the
    name, ``shift`` checks the corruption and its ``of`` source). The suite loader calls this once
    with ``options=None`` (errors belong to ``source:``) and once with the options.

    Raises:
        UnknownNameError: unknown scheme or name ("did you mean").
        QrelError: whatever the source's checks raise (DataError, ModelError).
        DataError: ``source`` is not ``<scheme>:<arg>``.
    """
    scheme, arg = parse_source(source)
    meta = registry.meta(scheme)
    if options is None:
        if meta.get("check_arg"):
            meta["check_arg"](arg)
    elif meta.get("check_options"):
        meta["check_options"](arg, dict(options))


def validate_dataset_source(source: str, options: Mapping[str, Any] | None = None) -> None:
    """:func:`validate_source` against :data:`DATASET_SOURCES` (built-in sources registered first)."""
    validate_source(DATASET_SOURCES, source, options)


def load_dataset(
    source: str, *, split: str, options: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> ImageSet:
    """Look up the scheme of ``source`` in :data:`DATASET_SOURCES` and call it."""
    scheme, arg = parse_source(source)
    fn = DATASET_SOURCES.get(scheme)
    return fn(arg, split=split, options=dict(options or {}), base_dir=base_dir or Path.cwd())

