"""The ``embedded`` dataset source: tiny, deterministic, offline image sets shipped with the plugin.

``source: "embedded:<name>"`` where ``<name>`` is one of :data:`EMBEDDED_SETS`:

==========  ======  ==========================================================================
name        splits  content
==========  ======  ==========================================================================
digits      train,  scikit-learn's handwritten digits 0-7 (in-distribution), labels 0..7;
            val,    a fixed stratified 60/40 train/rest split (seed 0); "rest" is split again,
            test    stratified, into val (1/3, for post-hoc fitting) and test (2/3). The shipped
                    model was trained on train only, so val is genuinely held out.
digits89    test    the held-out digits 8 and 9, all of them (near-OOD, semantic shift)
textures    test    300 random crops of scikit-image's brick / grass / gravel (OOD)
photos      test    300 random crops of natural photos from scikit-image (far-OOD)
noise       test    300 Gaussian-noise images clipped to [0, 1] (far-OOD)
==========  ======  ==========================================================================

Every image is a float32 tensor (1, 16, 16) in [0, 1] (one grey channel). Digits are upsampled
8x8 -> 16x16 (bilinear, ``align_corners=False``) from the raw 0..16 values and then divided by 16;
crops of 32, 48 or 64 px are block-averaged down to 16x16 and min-max normalised per crop. OOD
samples carry the label :data:`~pytest_qrel.data.base.OOD_LABEL`.

Determinism: everything is drawn from ``numpy.random.default_rng`` with fixed seeds, the split is
computed here (not by a scikit-learn helper whose algorithm could change between versions), and the
arithmetic is exact or done in float64 before one final rounding to float32, so the fingerprints
are meant to be identical on every machine. Only lossless (PNG) source images are used: JPEG
decoders differ between builds of libjpeg, which would change the pixels and the fingerprint.

Built sets are memoised in-process; treat the returned tensors as read-only. :func:`clear_cache`
forgets them (tests use it to check that a rebuild gives the same fingerprint).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError
from ..options import parse_options, prefixed
from ..registry import Registry
from .base import DATASET_SOURCES, OOD_LABEL, TensorImageSet

IMAGE_SIZE = 16
ID_DIGITS = tuple(range(8))
"""The in-distribution classes of ``digits`` (8 and 9 are held out as ``digits89``)."""
CLASS_NAMES = [str(d) for d in ID_DIGITS]
TRAIN_FRACTION = 0.6
SPLIT_SEED = 0
N_OOD = 300
CROP_SIZES = (32, 48, 64)  # multiples of 16, so the block average is exact
MIN_CROP_RANGE = 16  # grey levels (of 255); flatter crops are redrawn
TEXTURE_IMAGES = ("brick", "grass", "gravel")
PHOTO_IMAGES = ("astronaut", "camera", "chelsea", "coffee", "coins", "moon", "motorcycle")
SPLITS = ("train", "val", "test")
VAL_FRACTION_OF_REST = 1 / 3


@dataclass(frozen=True)
class EmbeddedSet:
    """One entry of :data:`EMBEDDED_SETS`: how to build a set and which splits it has.

    ``build(split)`` returns ``(images, labels)``: float32 numpy (N, 1, 16, 16) in [0, 1] and int64 (N,).
    """

    build: Callable[[str], tuple[np.ndarray, np.ndarray]]
    splits: tuple[str, ...]
    in_distribution: bool
    description: str


EMBEDDED_SETS: Registry[EmbeddedSet] = Registry("embedded dataset")


# ----------------------------------------------------------------------------------------- digits


def _package_file(package: str, *parts: str) -> Path | None:
    """A data file shipped inside the installed top-level ``package`` (found, not imported: importing
    scikit-learn or skimage.io costs a cold run a second or a third of one), or None."""
    import importlib.util

    spec = importlib.util.find_spec(package)
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root).joinpath(*parts)
        if path.is_file():
            return path
    return None


def _load_digits_file() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as (1797, 8, 8) pixel values 0..16 and their labels 0..9.

    Read straight from the file scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``: one
    image a row, 64 pixels then the label; what ``load_digits`` parses), located without importing
    scikit-learn: importing it costs about a second (scipy.stats) that a run computing no
    scikit-learn metric need not pay. Falls back to ``load_digits`` when the file is not there."""
    import gzip

    path = _package_file("sklearn", "datasets", "data", "digits.csv.gz")
    if path is not None:
        with gzip.open(path, "rt") as fh:
            table = np.loadtxt(fh, delimiter=",")
        return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(np.int64)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images, bunch.target


@functools.lru_cache(maxsize=None)
def _digits_raw() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 digits as float32 (N, 1, 16, 16) in [0, 1] and their int64 labels 0..9."""
    import torch

    pixels, targets = _load_digits_file()
    raw = torch.from_numpy(np.ascontiguousarray(pixels, dtype=np.float32)).unsqueeze(1)
    # Interpolating the integer values 0..16 with weights 1/4, 3/4 is exact in float32, and so is
    # the division by 16: the result is bit-identical on every platform.
    up = torch.nn.functional.interpolate(raw, size=(IMAGE_SIZE, IMAGE_SIZE), mode="bilinear", align_corners=False)
    images = (up / 16.0).clamp_(0.0, 1.0).numpy()
    return images, np.asarray(targets, dtype=np.int64)


@functools.lru_cache(maxsize=None)
def _digits_split_indices() -> dict[str, np.ndarray]:
    """Indices (into the 0-7 subset) of the stratified train / test split; sorted, disjoint."""
    _, labels = _digits_raw()
    keep = np.flatnonzero(np.isin(labels, ID_DIGITS))
    rng = np.random.default_rng(SPLIT_SEED)
    train: list[np.ndarray] = []
    for cls in ID_DIGITS:
        members = keep[labels[keep] == cls]
        members = members[rng.permutation(len(members))]
        train.append(members[: int(round(TRAIN_FRACTION * len(members)))])
    train_idx = np.sort(np.concatenate(train))
    rest = np.setdiff1d(keep, train_idx)  # sorted
    val: list[np.ndarray] = []
    rng_val = np.random.default_rng(SPLIT_SEED + 1)
    for cls in ID_DIGITS:
        members = rest[labels[rest] == cls]
        members = members[rng_val.permutation(len(members))]
        val.append(members[: int(round(VAL_FRACTION_OF_REST * len(members)))])
    val_idx = np.sort(np.concatenate(val))
    test_idx = np.setdiff1d(rest, val_idx)
    return {"train": train_idx, "val": val_idx, "test": test_idx}


def _build_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _digits_raw()
    idx = _digits_split_indices()[split]
    return images[idx], labels[idx]


def _build_digits89(split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _digits_raw()
    idx = np.flatnonzero(np.isin(labels, (8, 9)))
    return images[idx], np.full(len(idx), OOD_LABEL, dtype=np.int64)


# ------------------------------------------------------------------------------------ crops, noise


def _grey(image: np.ndarray) -> np.ndarray:
    """uint8 grey or RGB(A) -> float64 grey in 0..255 (ITU-R 709 weights, as skimage.color.rgb2gray)."""
    if image.ndim == 2:
        return image.astype(np.float64)
    rgb = image[..., :3].astype(np.float64)
    return 0.2125 * rgb[..., 0] + 0.7154 * rgb[..., 1] + 0.0721 * rgb[..., 2]


_SKIMAGE_FILES = {"motorcycle": "motorcycle_left.png"}
"""The data file of a sample image whose file is not ``<name>.png`` (``stereo_motorcycle()[0]``)."""


def _load_skimage(name: str) -> np.ndarray:
    """scikit-image's sample image ``name`` (the left view of ``motorcycle``) as uint8 pixels.

    Decoded with Pillow straight from scikit-image's data folder, which is what
    ``skimage.data.<name>()`` does through ``skimage.io`` and imageio (whose PNG reader is
    Pillow's), without importing ``skimage.io``: that import (scipy.linalg, every imageio plugin)
    costs about 0.3 s of a cold run. Where the file is not in the folder (a scikit-image that
    fetches its data), ``skimage.data`` loads it. ``tests/test_embedded_data.py`` compares both."""
    path = _package_file("skimage", "data", _SKIMAGE_FILES.get(name, f"{name}.png"))
    if path is not None:
        from PIL import Image

        with Image.open(path) as image:
            return np.asarray(image)
    import skimage.data

    if name == "motorcycle":
        return skimage.data.stereo_motorcycle()[0]
    return np.asarray(getattr(skimage.data, name)())


def _random_crops(names: tuple[str, ...], n: int, seed: int) -> np.ndarray:
    """``n`` crops, round-robin over the images ``names``: float32 (n, 1, 16, 16) in [0, 1]."""
    greys = [_grey(_load_skimage(name)) for name in names]
    rng = np.random.default_rng(seed)
    out = np.empty((n, 1, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    for i in range(n):
        grey = greys[i % len(greys)]
        for _attempt in range(100):
            size = int(rng.choice(CROP_SIZES))
            top = int(rng.integers(0, grey.shape[0] - size + 1))
            left = int(rng.integers(0, grey.shape[1] - size + 1))
            crop = grey[top : top + size, left : left + size]
            lo, hi = crop.min(), crop.max()
            if hi - lo >= MIN_CROP_RANGE:
                break
        else:  # pragma: no cover - every shipped image has texture almost everywhere
            raise DataError(f"could not find a non-flat crop in {names[i % len(names)]!r}")
        k = size // IMAGE_SIZE
        small = crop.reshape(IMAGE_SIZE, k, IMAGE_SIZE, k).mean(axis=(1, 3))  # area downsample
        lo, hi = small.min(), small.max()
        out[i, 0] = (small - lo) / (hi - lo) if hi > lo else 0.0
    return out


def _ood(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return images, np.full(len(images), OOD_LABEL, dtype=np.int64)


def _build_textures(split: str) -> tuple[np.ndarray, np.ndarray]:
    return _ood(_random_crops(TEXTURE_IMAGES, N_OOD, seed=1))


def _build_photos(split: str) -> tuple[np.ndarray, np.ndarray]:
    return _ood(_random_crops(PHOTO_IMAGES, N_OOD, seed=2))


def _build_noise(split: str) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    noise = rng.normal(0.5, 0.25, size=(N_OOD, 1, IMAGE_SIZE, IMAGE_SIZE))
    return _ood(np.clip(noise, 0.0, 1.0).astype(np.float32))


EMBEDDED_SETS.add("digits", EmbeddedSet(_build_digits, SPLITS, True, "handwritten digits 0-7 (in-distribution)"))
EMBEDDED_SETS.add("digits89", EmbeddedSet(_build_digits89, ("test",), False, "held-out digits 8 and 9 (near-OOD)"))
EMBEDDED_SETS.add("textures", EmbeddedSet(_build_textures, ("test",), False, "brick / grass / gravel crops (OOD)"))
EMBEDDED_SETS.add("photos", EmbeddedSet(_build_photos, ("test",), False, "natural photo crops (far-OOD)"))
EMBEDDED_SETS.add("noise", EmbeddedSet(_build_noise, ("test",), False, "Gaussian noise (far-OOD)"))


# ------------------------------------------------------------------------------------- the source


def fingerprint(name: str, split: str, images: np.ndarray, labels: np.ndarray) -> str:
    """SHA-256 over the set's name, split, shape, dtype, image bytes and labels (int64, little-endian)."""
    h = hashlib.sha256()
    h.update(f"embedded:{name};{split};{images.shape};{images.dtype};".encode())
    h.update(np.ascontiguousarray(images, dtype="<f4").tobytes())
    h.update(np.ascontiguousarray(labels, dtype="<i8").tobytes())
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _build(name: str, split: str) -> TensorImageSet:
    import torch

    entry = EMBEDDED_SETS.get(name)
    images, labels = entry.build(split)
    images = np.ascontiguousarray(images, dtype=np.float32)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    labels.setflags(write=False)
    return TensorImageSet(
        name=name,
        images=torch.from_numpy(images.copy()),
        labels=labels,
        fingerprint=fingerprint(name, split, images, labels),
        class_names=list(CLASS_NAMES) if entry.in_distribution else None,
    )


def clear_cache() -> None:
    """Forget every memoised set (the next request rebuilds it from the source data)."""
    for fn in (_build, _digits_raw, _digits_split_indices):
        fn.cache_clear()


def check_name(arg: str) -> None:
    """``arg`` names an embedded set (UnknownNameError with "did you mean" otherwise)."""
    EMBEDDED_SETS.get(arg)


def check_no_options(arg: str, options: Mapping[str, Any]) -> None:
    """Embedded datasets take no options: any key is an unknown option ``(known: none)``."""
    parse_options(options, {}, fail=prefixed(DataError, f"dataset 'embedded:{arg}'"))


@DATASET_SOURCES.register("embedded", check_arg=check_name, check_options=check_no_options)
def embedded_source(
    arg: str, *, split: str, options: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> TensorImageSet:
    """``source: "embedded:<name>"``: one of the sets in :data:`EMBEDDED_SETS` (takes no options).

    Raises:
        UnknownNameError: ``<name>`` is not an embedded set (the message lists the known ones).
        DataError: ``split`` is not one the set has, or an option was given.
    """
    entry = EMBEDDED_SETS.get(arg)
    check_no_options(arg, options or {})
    if split not in entry.splits:
        if split in SPLITS:
            raise DataError(
                f"dataset 'embedded:{arg}' is out-of-distribution and has only the split 'test', not "
                f"'{split}'; calibration and training data must come from an in-distribution set such "
                "as 'embedded:digits'"
            )
        raise DataError(
            f"dataset 'embedded:{arg}': unknown split '{split}' (known: {', '.join(entry.splits)})"
        )
    return _build(arg, split)
