"""The ``torchvision`` dataset source: any image-classification dataset class of ``torchvision.datasets``.

``source: "torchvision:<Name>"`` with ``<Name>`` a class of :mod:`torchvision.datasets`
(``CIFAR10``, ``CIFAR100``, ``SVHN``, ``MNIST``, ``ImageFolder``, ``Food101``, ``ImageNet``, ...).
Nothing is ever downloaded: ``download=False`` is always passed where the class takes it, and
``download`` may not be set through the options.

Options:

==================  ===========================================================================
``root``            the dataset's ``root`` (``${VARS}``, ``~``, relative to the suite's folder);
                    required when the class takes a ``root``. A root from an unset ``${VAR}`` is a
                    :class:`~pytest_qrel.errors.DataMissingError` (dependent checks are skipped
                    unless ``--qrel-strict``); a root that does not exist, or data that torchvision
                    reports as not found under it, is a :class:`~pytest_qrel.errors.DataError` naming it.
``kwargs``          extra constructor arguments, e.g. ``{split: balanced}`` for EMNIST.
``split_names``     ``{train: <name>, val: <name>, test: <name>}``: the values of a ``split=``
                    argument. Defaults: the split's own name, except those in
                    :data:`DEFAULT_SPLIT_NAMES` (``ImageNet`` / ``Imagenette`` / ``Places365``
                    test = ``val`` and no separate val; ``Places365`` train =
                    ``train-standard``; ``OxfordIIITPet`` train = ``trainval``).
``split_kwargs``    ``{train: {...}, val: {...}, test: {...}}``: constructor arguments for one
                    split only (e.g. another ``root`` for the train split of ``ImageFolder``).
``labels``          ``auto`` (the dataset's targets) or ``none`` (every sample -1, an OOD set).
``class_names``     override ``.classes`` (list, file, or a built-in list; see ``classnames``).
``limit``/``seed``  a deterministic uniform subset of ``limit`` samples (kept in dataset order).
``mode``            PIL mode images are converted to (default ``RGB``).
``content_hash``    also hash every decoded image for the fingerprint (slow; see below).
==================  ===========================================================================

*Splits.* ``split="train"``/``"test"`` maps to the class's ``train=True/False`` argument when it
has one (such a class has no ``val`` split unless ``split_kwargs: {val: ...}`` gives one), else to
its ``split=`` argument (through ``split_names``). A class with neither (e.g. ``ImageFolder``) is
the test split; its other splits must come from ``split_kwargs`` (e.g. ``{train: {root: ...}}``).
Two splits that would load the same data (ImageNet's val is its test split) are an error, not a
silent reuse of test images. Precedence of constructor arguments: automatic split argument <
``kwargs`` < ``split_kwargs``.

*Labels.* Read without decoding images from the first of ``targets``, ``labels``, ``_labels``
or the second element of ``samples`` / ``imgs`` / ``_samples`` that has one entry per sample,
else by iterating the dataset once. Targets must be class indices (int-convertible).

*Fingerprint.* SHA-256 over: the class name, the constructor arguments other than ``root``, the
number of samples, the labels, the class names, the options that change content, and the data:
the bytes of the ``data`` array when the dataset keeps its images in memory (CIFAR, SVHN,
MNIST: exact and cheap), else the relative paths and sizes of its image files (``samples``,
``imgs``, ``_image_files``, ``_samples``: the same rule as ``imagefolder``), else (or with
``content_hash: true``) the decoded pixels of every sample.

*Images.* PIL images are converted to ``mode``; a uint8 tensor / array (H, W, C) becomes a PIL
image; a float tensor (C, H, W) in [0, 1] is returned as is.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, UnknownNameError
from .base import DATASET_SOURCES, OOD_LABEL
from ..options import Option, anything, mapping, parse_options, prefixed
from .folders import (
    CLASS_OPTIONS,
    FINGERPRINT_VERSION,
    SAMPLE_OPTIONS,
    SPLITS,
    check_split,
    convert_image,
    labels_option,
    resolve_path,
    subset_indices,
)

OPTIONS: dict[str, Option] = {
    "root": anything(),
    "kwargs": mapping("a mapping of constructor arguments"),
    "split_names": mapping("a mapping {<split>: <the class's name for it>}"),
    "split_kwargs": mapping("a mapping {<split>: {<constructor arguments>}}"),
    "labels": labels_option("auto", "none"),
    "class_names": CLASS_OPTIONS["class_names"],
    **SAMPLE_OPTIONS,
}
"""The options of a ``torchvision`` set."""

DEFAULT_SPLIT_NAMES: dict[str, dict[str, str | None]] = {
    "ImageNet": {"test": "val", "val": None},
    "Imagenette": {"test": "val", "val": None},
    "Places365": {"train": "train-standard", "test": "val", "val": None},
    "OxfordIIITPet": {"train": "trainval", "val": None},
}
"""``split=`` values of classes whose split names differ from ours (``None``: the split does not exist)."""

_MISSING_HINTS = ("not found", "download=true", "not present", "no such file", "does not exist", "couldn't find")


def _dataset_class(name: str) -> type:
    import torchvision.datasets as tvd

    known = sorted(n for n in getattr(tvd, "__all__", dir(tvd)) if inspect.isclass(getattr(tvd, n, None)))
    cls = getattr(tvd, name, None) if not name.startswith("_") else None
    if not inspect.isclass(cls):
        raise UnknownNameError("torchvision dataset", name, known)
    return cls


def _params(cls: type) -> Mapping[str, inspect.Parameter]:
    try:
        return inspect.signature(cls).parameters
    except (TypeError, ValueError):  # pragma: no cover - every torchvision class has a signature
        return {}


def _constructor_args(
    where: str, name: str, cls: type, split: str, values: Mapping[str, Any], root: Path | None, base_dir: Path
) -> dict[str, Any]:
    """``values``: the parsed options (:data:`OPTIONS`)."""
    params = _params(cls)
    kwargs, split_kwargs, split_names = values["kwargs"], values["split_kwargs"], values["split_names"]
    for key, block in (("split_kwargs", split_kwargs), ("split_names", split_names)):
        extra = sorted(set(block) - set(SPLITS))
        if extra:
            raise DataError(f"{where}: option '{key}' takes the keys {', '.join(SPLITS)}, not {', '.join(map(repr, extra))}")
    own = split_kwargs.get(split) or {}
    if not isinstance(own, Mapping):
        raise DataError(f"{where}: split_kwargs.{split} must be a mapping of constructor arguments, got {own!r}")
    for block, label in ((kwargs, "kwargs"), (own, f"split_kwargs.{split}")):
        if "download" in block:
            raise DataError(f"{where}: '{label}' may not set 'download' (pytest-qrel never downloads; fetch the data first)")
        if "transform" in block or "target_transform" in block or "transforms" in block:
            raise DataError(f"{where}: '{label}' may not set transforms (the model's own preprocessing is applied)")
    args: dict[str, Any] = {}
    if root is not None:
        args["root"] = str(root)
    if "download" in params:
        args["download"] = False
    defaults = DEFAULT_SPLIT_NAMES.get(name, {})

    def split_value(s: str) -> str | None:
        return split_names[s] if s in split_names else defaults.get(s, s)

    auto: dict[str, Any] = {}
    if "train" in params:
        reason = "only train and test (a train=True/False argument)"
        if split in ("train", "test"):
            auto = {"train": split == "train"}
    elif "split" in params:
        value = split_value(split)
        reason = f"no '{split}' split"
        if value is not None and split != "test" and value == split_value("test"):
            reason = f"no '{split}' split apart from its test split (split={value!r})"
        elif value is not None:
            auto = {"split": value}
    else:
        reason = "no train/split argument, so it is the test split only"
    if not auto and split != "test" and not own:
        raise DataError(
            f"{where}: torchvision.datasets.{name} has {reason}; give the '{split}' split with the option "
            f"'split_kwargs: {{{split}: {{...}}}}' (e.g. {{root: <folder>}})"
            + (f" or 'split_names: {{{split}: <name>}}'" if "split" in params else "")
        )
    args.update(auto)
    args.update(kwargs)
    args.update(own)
    if "root" in own:
        args["root"] = str(resolve_path(own["root"], base_dir=base_dir, what=f"{split} root of torchvision.datasets.{name}"))
    return args


def _labels(where: str, ds: Any) -> np.ndarray:
    n = len(ds)
    raw: Any = None
    for attr in ("targets", "labels", "_labels"):
        value = getattr(ds, attr, None)
        if value is not None and not callable(value) and len(value) == n:
            raw = value
            break
    if raw is None:
        for attr in ("samples", "imgs", "_samples"):
            value = getattr(ds, attr, None)
            if isinstance(value, (list, tuple)) and len(value) == n and all(isinstance(s, (tuple, list)) and len(s) >= 2 for s in value[:1]):
                raw = [s[1] for s in value]
                break
    if raw is None:
        raw = [ds[i][1] for i in range(n)]
    try:
        labels = np.asarray([int(v) for v in (raw.tolist() if hasattr(raw, "tolist") else raw)], dtype=np.int64)
    except (TypeError, ValueError):
        raise DataError(f"{where}: the targets are not class indices (e.g. {raw[0]!r}); use 'labels: none' to use it as an OOD set") from None
    if labels.size and labels.min() < 0:
        raise DataError(f"{where}: negative targets ({int(labels.min())}); class indices must be >= 0")
    return labels


def _file_list(ds: Any, n: int) -> list[str] | None:
    for attr in ("samples", "imgs", "_samples", "_image_files"):
        value = getattr(ds, attr, None)
        if isinstance(value, (list, tuple)) and len(value) == n and n:
            first = value[0]
            path = first[0] if isinstance(first, (tuple, list)) else first
            if isinstance(path, (str, os.PathLike)):
                return [os.fspath(v[0] if isinstance(v, (tuple, list)) else v) for v in value]
    return None


def _to_image(sample: Any, mode: str) -> Any:
    from PIL import Image

    if isinstance(sample, Image.Image):
        return convert_image(sample, mode, what="a torchvision sample")
    if isinstance(sample, np.ndarray) and (sample.dtype == np.uint8 or (sample.dtype == np.uint16 and sample.ndim == 2)):
        return convert_image(Image.fromarray(sample), mode, what="a torchvision sample")
    if hasattr(sample, "dtype") and hasattr(sample, "is_floating_point"):  # torch tensor
        if sample.is_floating_point():
            return sample
        import torch

        scale = {torch.uint8: 255.0, torch.uint16: 65535.0}.get(sample.dtype)
        if scale is None:
            raise DataError(f"a torchvision sample is an integer tensor of dtype {sample.dtype}; only uint8 and uint16 images can be scaled to [0, 1]")
        return sample.float() / scale
    raise DataError(f"unsupported image type {type(sample).__name__} from a torchvision dataset")


def _pixels(image: Any) -> bytes:
    if hasattr(image, "tobytes") and hasattr(image, "mode"):  # PIL
        return f"{image.mode}{image.size}".encode() + image.tobytes()
    arr = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    return f"{arr.shape}{arr.dtype}".encode() + np.ascontiguousarray(arr).tobytes()


@dataclass
class TorchvisionImageSet:
    """An :class:`~pytest_qrel.data.ImageSet` over a torchvision dataset (``indices`` select the subset)."""

    name: str
    dataset: Any
    indices: np.ndarray
    labels: np.ndarray
    fingerprint: str
    class_names: list[str] | None = None
    mode: str = "RGB"
    info: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        sample = self.dataset[int(self.indices[index])]
        image = sample[0] if isinstance(sample, (tuple, list)) else sample
        return _to_image(image, self.mode), int(self.labels[index])


def check_tv_options(arg: str, options: Mapping[str, Any]) -> None:
    """The suite-load check of a torchvision dataset's options (torchvision is not imported)."""
    parse_options(options, OPTIONS, fail=prefixed(DataError, f"dataset 'torchvision:{arg}'"))


@DATASET_SOURCES.register("torchvision", check_options=check_tv_options)
def torchvision_source(
    arg: str, *, split: str, options: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> TorchvisionImageSet:
    """``source: "torchvision:<Name>"``: a ``torchvision.datasets.<Name>`` (never downloaded).

    Raises:
        UnknownNameError: ``<Name>`` is not a class of torchvision.datasets.
        DataMissingError: the root uses an unset ``${VAR}``.
        DataError: the root does not exist, torchvision reports the data as not found under it, an
            unknown or invalid option, no train split, targets that are not class indices.
    """
    options = dict(options or {})
    base_dir = Path(base_dir or Path.cwd())
    where = f"dataset 'torchvision:{arg}'"
    values = parse_options(options, OPTIONS, fail=prefixed(DataError, where))
    check_split(where, split)
    try:
        cls = _dataset_class(arg)
    except ImportError:
        raise DataError(f"{where}: torchvision is not installed (`pip install torchvision`)") from None
    params = _params(cls)
    labels_mode, mode, limit, seed, content_hash = (values[k] for k in ("labels", "mode", "limit", "seed", "content_hash"))

    root: Path | None = None
    if "root" in params:
        if "root" not in options and "root" not in (values["split_kwargs"].get(split) or {}):
            raise DataError(f"{where}: option 'root' is required (the folder that holds the {arg} files)")
        if "root" in options:
            root = resolve_path(options["root"], base_dir=base_dir, what=f"root of torchvision.datasets.{arg}")
    elif "root" in options:
        raise DataError(f"{where}: torchvision.datasets.{arg} takes no 'root'; remove the option")
    args = _constructor_args(where, arg, cls, split, values, root, base_dir)
    try:
        ds = cls(**args)
    except (RuntimeError, FileNotFoundError) as err:
        msg = str(err).strip() or type(err).__name__
        if isinstance(err, FileNotFoundError) or any(h in msg.lower() for h in _MISSING_HINTS):
            at = args.get("root", "?")
            raise DataError(  # the root exists (resolve_path checked it): the data should be there
                f"{where}: data not found under {at} (torchvision: {msg.splitlines()[0]}); "
                f"put the dataset there first (e.g. run torchvision.datasets.{arg} with its download flag on, on a machine with network access, then copy the folder)"
            ) from None
        raise DataError(f"{where}: torchvision.datasets.{arg}({_show(args)}) failed: {msg}") from None
    except (TypeError, ValueError) as err:
        hint = "; check 'kwargs', 'split_names' and 'split_kwargs'" if "split" in args or "train" in args else ""
        raise DataError(f"{where}: torchvision.datasets.{arg}({_show(args)}) failed: {err}{hint}") from None

    n = len(ds)
    if labels_mode == "none":
        labels = np.full(n, OOD_LABEL, dtype=np.int64)
        class_names = None
    else:
        labels = _labels(where, ds)
        classes = getattr(ds, "classes", None)
        class_names = [str(c) for c in classes] if isinstance(classes, (list, tuple)) and classes else None
    if "class_names" in options:
        from .classnames import resolve_class_list

        class_names = resolve_class_list(options["class_names"], base_dir=base_dir, where=f"{where}: option 'class_names'")
    keep = subset_indices(n, limit, seed)
    labels = np.ascontiguousarray(labels[keep])
    labels.setflags(write=False)
    image_set = TorchvisionImageSet(
        name=f"torchvision:{arg}", dataset=ds, indices=keep, labels=labels, fingerprint="",
        class_names=class_names, mode=mode, info={"split": split, "args": _public_args(args)},
    )
    image_set.fingerprint = _fingerprint(arg, split, args, ds, image_set, keep, labels_mode, mode, content_hash)
    return image_set


def _show(args: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items())


def _public_args(args: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in args.items() if k != "root"}


def _fingerprint(
    name: str, split: str, args: Mapping[str, Any], ds: Any, image_set: TorchvisionImageSet, keep: np.ndarray,
    labels_mode: str, mode: str, content_hash: bool,
) -> str:
    h = hashlib.sha256()
    header = {
        "fingerprint_version": FINGERPRINT_VERSION,
        "source": "torchvision",
        "dataset": name,
        "split": split,
        "args": _public_args(args),
        "samples_in_dataset": len(ds),
        "class_names": image_set.class_names,
        "options": {"labels": labels_mode, "mode": mode, "content_hash": content_hash},
    }
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    h.update(np.ascontiguousarray(keep, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(image_set.labels, dtype="<i8").tobytes())
    data = getattr(ds, "data", None)
    files = _file_list(ds, len(ds))
    if not content_hash and data is not None and hasattr(data, "shape") and len(data) == len(ds):
        arr = data.numpy() if hasattr(data, "numpy") else np.asarray(data)
        h.update(b"data" + f"{arr.shape}{arr.dtype}".encode())
        h.update(np.ascontiguousarray(arr[keep]).tobytes())
    elif not content_hash and files is not None:
        root = Path(args.get("root", "/"))
        for i in keep.tolist():
            path = Path(files[i])
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.as_posix()
            h.update(f"\n{rel}\t{path.stat().st_size}".encode())
    else:
        h.update(b"pixels")
        for i in range(len(image_set)):
            h.update(_pixels(image_set[i][0]))
    return h.hexdigest()
