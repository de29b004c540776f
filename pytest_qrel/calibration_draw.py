"""Which training images a quantizer calibrates on: the registry of calibration draws.

A suite's quantizer says ``calibration: {samples: N, seed: S, draw: D}``; the engine asks
:func:`draw_calibration` for the indices of the ``N`` images of the ID set's *train* split, in the
order they are given to the method. A draw is one entry of :data:`CALIBRATION_DRAWS`:
``fn(n, samples, seed) -> int64 array`` of ``samples`` distinct positions in ``range(n)`` of the
draw's own enumeration of the split (``meta["order"]``: ``"dataset"``, the split's own order, or
``"imagefolder"``, torchvision ``ImageFolder``'s order, see :func:`imagefolder_order`).

``numpy`` (the default)
    ``numpy.random.default_rng(seed).permutation(n)[:samples]`` over the split in its own order.

``repq_vit``
    The images RepQ-ViT's reference code (github.com/zkkli/RepQ-ViT, ``classification/``)
    calibrates on for ``--seed S``: it seeds torch's global generator with ``S``, builds
    ``ImageFolder(<imagenet>/train)`` and a ``DataLoader(..., shuffle=True)`` without a generator of
    its own, and takes the first batch (32 images). Iterating such a loader draws one int64 from the
    global generator (the workers' base seed), then the ``RandomSampler`` draws a second one, seeds a
    private ``torch.Generator`` with it and yields ``torch.randperm(n, generator=...)``. This draw
    replays that sequence on a private generator (the global one is not touched) and returns the first
    ``samples`` positions of the permutation: with ``samples: 32`` the reference's calibration batch,
    with more the first batches concatenated. The positions are taken in ``ImageFolder``'s order and
    mapped to the split's own order.

    It gives the reference's images exactly when, and only when:

    - the train split lists the same files as the folder the reference read (``imagefolder`` source
      without ``limit``, ``classes`` / ``class_index`` remappings that skip folders, or
      ``unknown_classes: ignore``); ``n`` is the number of images, and any file more or less changes
      the whole permutation;
    - no hidden image files are present: torchvision lists names starting with ``.`` (e.g. macOS
      ``._x.JPEG`` copies) when their extension is an image one, this package skips them;
    - the installed torch draws as the one the reference ran with: ``randperm`` on a CPU generator and
      the ``DataLoader`` / ``RandomSampler`` seeding above are those of current torch releases (the
      test compares the draw with the installed torch's own ``DataLoader``); releases whose
      ``RandomSampler`` permuted with the global generator directly give another permutation;
    - the preprocessing is the reference's (``Resize(int(224 / crop_pct), bicubic)``,
      ``CenterCrop(224)``, the model's mean and std), which for timm's DeiT and ViT-augreg weights is
      the model's own pretrained configuration, as this package uses.

    On other sources (embedded sets, file lists) it draws the same positions over the split's own
    order: deterministic, but no longer the reference's images.

**What was drawn** (:class:`Drawn`, :func:`drawn_sha256`): the SHA-256 of the split's fingerprint
and the drawn positions identifies the calibration images themselves, not only how they were
asked for: another seed, draw, number of samples, or a train split whose files changed gives
another digest. The engine puts it in each quantized unit's outputs-cache key (cached outputs of
other calibration images are never reused) and in the run info (``quantizers.<suite>.<quantizer>.drawn``,
:mod:`pytest_qrel.runinfo`), so two runs that calibrated on different images say so.
"""

from __future__ import annotations

import functools

import hashlib
import posixpath
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .registry import Registry

DrawFn = Callable[[int, int, int], np.ndarray]

CALIBRATION_DRAWS: Registry[DrawFn] = Registry("calibration draw")
"""YAML name -> ``fn(n, samples, seed) -> positions``; ``meta["order"]`` is ``"dataset"`` or ``"imagefolder"``."""

DEFAULT_DRAW = "numpy"


@CALIBRATION_DRAWS.register("numpy", order="dataset",
                            summary="numpy.random.default_rng(seed).permutation(n)[:samples] over the split's order")
def numpy_draw(n: int, samples: int, seed: int) -> np.ndarray:
    """The first ``samples`` of a permutation of ``range(n)`` by ``numpy.random.default_rng(seed)``."""
    return np.random.default_rng(seed).permutation(n)[:samples].astype(np.int64)


@CALIBRATION_DRAWS.register("repq_vit", order="imagefolder",
                            summary="the first batch(es) of RepQ-ViT's reference loader: a shuffled torch DataLoader "
                                    "after torch.manual_seed(seed), over ImageFolder's order")
def repq_vit_draw(n: int, samples: int, seed: int) -> np.ndarray:
    """The first ``samples`` indices a ``DataLoader(dataset of n, shuffle=True)`` yields right after
    ``torch.manual_seed(seed)`` (module docstring), computed on a private generator."""
    import torch

    global_like = torch.Generator().manual_seed(int(seed))  # what torch.manual_seed(seed) sets up
    torch.empty((), dtype=torch.int64).random_(generator=global_like)  # the loader iterator's base seed
    sampler_seed = int(torch.empty((), dtype=torch.int64).random_(generator=global_like).item())
    order = torch.randperm(n, generator=torch.Generator().manual_seed(sampler_seed))
    return order[:samples].numpy().astype(np.int64)


def imagefolder_order(relpaths: Sequence[str]) -> list[int]:
    """Positions of ``relpaths`` (``<class>/<...>/<file>``, posix) in torchvision ``ImageFolder``'s order.

    ``ImageFolder`` sorts the class folders by name, walks each one with ``sorted(os.walk(...))``
    (sub-folders ordered by their path string, a folder's own files before its sub-folders' when its
    path is a prefix) and sorts the file names of each folder. Returns ``order`` with
    ``relpaths[order[k]]`` the ``k``-th sample of ``ImageFolder``. For a flat ``<class>/<file>``
    layout this is plain sorted order.
    """
    def key(i: int) -> tuple[str, str, str]:
        rel = relpaths[i]
        head, _, _ = rel.partition("/")
        return head, posixpath.dirname(rel), posixpath.basename(rel)

    return sorted(range(len(relpaths)), key=key)


@functools.lru_cache(maxsize=4)
def _imagefolder_positions(relpaths: tuple[str, ...]) -> np.ndarray:
    """:func:`imagefolder_order` of one split, sorted once per run however many seeds draw from it
    (an ImageNet train split: 1.28 M paths, seconds per sort). Read-only: callers index it."""
    order = np.asarray(imagefolder_order(relpaths), dtype=np.int64)
    order.flags.writeable = False
    return order


def draw_calibration(train: Any, samples: int, seed: int, draw: str = DEFAULT_DRAW) -> np.ndarray:
    """Indices into ``train`` (a dataset of ``len(train)`` samples) of the ``samples`` calibration
    images drawn by ``draw`` with ``seed``, in the order the method gets them.

    A draw in ``ImageFolder``'s order is mapped through :func:`imagefolder_order` when ``train`` has
    ``relpaths`` (an ``imagefolder`` / ``filelist`` set), and used on the split's own order otherwise.

    Raises:
        UnknownNameError: ``draw`` is not registered.
        ValueError: ``samples`` exceeds the split (the engine checks this first, with the suite's location).
    """
    fn = CALIBRATION_DRAWS.get(draw)
    n = len(train)
    if not 0 < samples <= n:
        raise ValueError(f"draw_calibration(): {samples} samples from a split of {n}")
    positions = np.asarray(fn(n, samples, seed), dtype=np.int64)
    relpaths = getattr(train, "relpaths", None)
    if CALIBRATION_DRAWS.meta(draw).get("order") == "imagefolder" and relpaths is not None:
        positions = _imagefolder_positions(tuple(relpaths))[positions]
    return positions


def drawn_sha256(split_fingerprint: str, positions: np.ndarray) -> str:
    """SHA-256 identifying a set of calibration images: the split's fingerprint (which files, sizes,
    labels; see its source) and the drawn ``positions`` into it, in the order the method gets them."""
    h = hashlib.sha256(f"calibration draw|{split_fingerprint}|".encode())
    h.update(np.ascontiguousarray(positions, dtype="<i8").tobytes())
    return h.hexdigest()


@dataclass(frozen=True)
class Drawn:
    """The calibration images of one quantizer seed: ``positions`` into the split (its own order),
    drawn by ``draw`` with ``seed``, and ``sha256`` (:func:`drawn_sha256`)."""

    positions: np.ndarray
    draw: str
    seed: int
    sha256: str

    def record(self) -> dict[str, Any]:
        """``{"draw", "seed", "samples", "sha256"}``: what the run info shows of it."""
        return {"draw": self.draw, "seed": int(self.seed), "samples": len(self.positions), "sha256": self.sha256}


def draw_from(train: Any, samples: int, seed: int, draw: str = DEFAULT_DRAW) -> Drawn:
    """:func:`draw_calibration` with the digest of what it drew (``train.fingerprint``: the split's)."""
    positions = draw_calibration(train, samples, seed, draw)
    return Drawn(positions, draw, int(seed), drawn_sha256(str(getattr(train, "fingerprint", "")), positions))
