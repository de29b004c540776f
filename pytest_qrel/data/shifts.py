"""Covariate shift: ImageNet-C style corruptions of an image set, at five severities.

Entry points:

- :func:`corrupt` ``(image (C, H, W) in [0, 1], name, severity, seed) -> image``: one corruption
  of one image (torch tensor or numpy array in, the same kind out, float32, still in [0, 1]);
- :func:`corrupt_released` ``(PIL image, name, severity, seed) -> PIL image``: the same as the
  released ImageNet-C files store it (8-bit floor, JPEG quality 85), and
  :func:`imagenet_c_geometry` (Resize 256 / CenterCrop 224);
- :class:`ShiftedImageSet` ``(base, corruption, severity, seed)``: an
  :class:`~pytest_qrel.data.ImageSet` whose sample ``i`` is ``base[i]`` corrupted with the seed
  ``(seed, i)`` (deterministic per sample, independent of access order), corrupted in the model's
  geometry by the engine; :class:`ImageNetCSet`, the released-files version;
- the dataset source ``source: "shift:<corruption>/<severity>"`` with the options

  ============  ==========================================================================
  ``of``        (required) the source of the clean set, e.g. ``"embedded:digits"``
  ``of_options``  options passed to that source
  ``seed``      base seed of the noise (default 0)
  ``table``     ``imagenet`` (default) or ``cifar``: which parameter table (below)
  ``as_ood``    ``true``: every sample is labelled -1, so the corrupted set can be an OOD set
                (AUROC of clean ID vs corrupted); default ``false`` keeps the base labels, so
                top-1 / NLL / ECE under shift can be computed
  ``resize``    PIL bases only: resize the shorter side to this many pixels (bilinear) ...
  ``crop``      ... then center-crop to this square size, before corrupting. ``resize: 256,
                crop: 224`` is the ImageNet-C geometry.
  ``protocol``  ``model`` (default) or ``imagenet_c``: where and how the corruption is applied
                (below). ``imagenet_c`` is how a suite says a set reproduces ImageNet-C.
  ``frost_dir`` ``frost`` only (required there): the folder of ImageNet-C's frost photographs
                ``frost1.png`` ... ``frost5.jpg``, which pytest-qrel does not ship; their SHA-256
                are part of the fingerprint
  ============  ==========================================================================

  e.g. ``{name: digits_noise3, source: "shift:gaussian_noise/3", options: {of: "embedded:digits"}}``.

Corruptions (:data:`CORRUPTIONS`; ``c`` is the severity's parameter, ``x`` the image in [0, 1]):

=================  =====================================================  =========================  ==========================
name               operation (then clipped to [0, 1])                      ``imagenet`` c (sev 1..5)  ``cifar`` c (sev 1..5)
=================  =====================================================  =========================  ==========================
gaussian_noise     x + N(0, c^2)                                           .08 .12 .18 .26 .38        .04 .06 .08 .09 .10
shot_noise         Poisson(x c) / c                                        60 25 12 5 3               500 250 100 75 50
impulse_noise      a fraction c of the values set to 0 or 1 (salt/pepper)  .03 .06 .09 .17 .27        .01 .02 .03 .05 .07
speckle_noise      x + x N(0, c^2)                                         .15 .20 .35 .45 .60        .06 .10 .12 .16 .20
gaussian_blur      Gaussian filter, sigma = c pixels (edges: nearest)      1 2 3 4 6                  .4 .6 .7 .8 1
contrast           (x - mean) c + mean, per channel                        .40 .30 .20 .10 .05        .75 .50 .40 .30 .15
brightness         HSV value + c (grey images: x + c)                      .1 .2 .3 .4 .5             .05 .10 .15 .20 .30
jpeg_compression   JPEG round trip at quality c (alias ``jpeg``)           25 18 15 10 7              80 65 58 50 40
pixelate           box-downsample to c x size, box-upsample back           .60 .50 .40 .30 .25        .95 .90 .85 .75 .65
=================  =====================================================  =========================  ==========================

The other ten -- ``defocus_blur``, ``glass_blur``, ``motion_blur``, ``zoom_blur``, ``snow``,
``frost``, ``fog``, ``spatter``, ``saturate`` and ``elastic_transform`` (alias ``elastic``) -- take a
tuple per severity (``docs/shifts.md`` lists them); their OpenCV and ImageMagick steps are
re-implemented in :mod:`.imaging` and equal the reference code's 8-bit output on every pixel
checked (``docs/shifts.md``: three photos, all severities; one pixel of defocus blur off by 1).

The constants are the per-severity tables of Hendrycks & Dietterich, "Benchmarking Neural Network
Robustness to Common Corruptions and Perturbations" (ICLR 2019): ``imagenet`` from the
``imagenet_c`` package (``ImageNet-C/imagenet_c/imagenet_c/corruptions.py`` of
github.com/hendrycks/robustness, made for 224 x 224 images), ``cifar`` from
``ImageNet-C/create_c/make_cifar_c.py`` (32 x 32 images). The operations are re-implemented here
(numpy, scipy.ndimage, PIL; no OpenCV / ImageMagick) and match the reference up to the random
streams: noise is drawn from ``numpy.random.default_rng`` seeded per sample, not from the global
``np.random`` state. The blur sigma is in pixels of the image it is applied to (as in the
reference): choose the table that matches the resolution the corruption sees.

*Two protocols.*

``protocol: imagenet_c`` -- **the released ImageNet-C files** (:class:`ImageNetCSet`). What
Hendrycks & Dietterich's generator (``make_imagenet_c.py``) wrote to disk and what models reading
those files see: the image is loaded as RGB, resized with torchvision's ``Resize(256)`` and
centre-cropped with ``CenterCrop(224)`` (``resize`` / ``crop`` override 256 / 224), corrupted with
the ``imagenet`` table, the float result (in [0, 255]) cut to 8 bits with ``np.uint8`` (a floor) and
saved as JPEG at quality 85 (``optimize=True``); the decoded JPEG is the sample, a PIL image, and the
model's *own full* preprocessing runs on it (its resize, crop and normalisation: for a 224 model the
resize and crop change nothing). The floor and the JPEG step weaken the noise corruptions: on
natural images the PSNR of gaussian / shot / speckle noise at severity 3 is ~2.6 dB higher than
with ``protocol: model`` (measured in ``tests/test_shifts.py``), and only the released-file numbers
are comparable with results computed on the downloaded ImageNet-C. Random corruptions draw from a
per-sample seeded ``numpy`` generator, so they match the released files in distribution, not pixel
for pixel; deterministic ones (blur, contrast, brightness, JPEG, pixelate) match the reference
computation to the bit on the images we checked.

``protocol: model`` (default) -- **corrupt the model's own crop, in float** (:class:`ShiftedImageSet`,
the CLIP paper's "resize, then corrupt" order, its ``ResizeThenCorruptDataset``).

*Where in the pipeline (protocol model).* The corruption runs on the model's resized and cropped
image: after resize / crop and before normalisation (so the model's resampling never blurs or
averages away the corruption). The engine does exactly that for every model whose
preprocessing splits into ``(to_unit, normalize)`` (:func:`~pytest_qrel.models.base.preprocess_stages`:
timm, OpenCLIP, the embedded models, and any torchvision ``Compose`` with a ``Normalize``): sample
``i`` is ``normalize(corrupt_unit(to_unit(raw(i)), i))``, in float, without an 8-bit round trip.
``resize`` / ``crop`` (optional) run on the raw image before the model's own resize / crop.

Indexing the set directly (``ds[i]``, the path for a model whose preprocessing cannot be split)
corrupts what the base returns: tensor sets at their own resolution; PIL sets (``imagefolder``,
``filelist``, ``torchvision``) on the raw image (after ``resize`` / ``crop``), quantised back to 8
bits (as ImageNet-C stores its images) and returned as a PIL image, which the model then
preprocesses. There, without ``resize`` / ``crop``, the model's resize changes the corruption's
effective strength (downsampling averages noise away).

*Fingerprint.* SHA-256 over the base set's fingerprint, the canonical corruption name, severity,
parameter, table, seed, ``as_ood``, ``resize``, ``crop`` and :data:`SHIFT_VERSION` (bumped when an
operation changes); ``protocol: imagenet_c`` adds the protocol and the JPEG quality (the
``protocol: model`` fingerprint is unchanged, so existing baselines stay valid). It does not hash the corrupted pixels: a numpy release that changed the
``Generator`` normal / Poisson streams would change the images without changing the fingerprint.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, QrelError, strip_source
from ..registry import Registry
from .base import DATASET_SOURCES, OOD_LABEL, ImageSet
from ..options import Option, anything, boolean, choice, integer, mapping, parse_options, prefixed
from .imaging import (
    affine_from_points,
    box_blur,
    canny,
    chamfer_distance,
    clipped_zoom,
    disk_kernel,
    equalize_hist,
    filter2d_u8,
    magick_to_8bit,
    motion_blur,
    plasma_fractal,
    resize_linear,
    rgb_to_grey,
    warp_affine,
)

SHIFT_VERSION = 2  # 2: corruption between the model's crop and its normalisation
SEVERITIES = (1, 2, 3, 4, 5)
TABLES = ("imagenet", "cifar")

Op = Callable[..., np.ndarray]  # (image (C, H, W) float64, parameter, generator, **needs) -> image
PilOp = Callable[[Any, Any], Any]  # (PIL image, parameter) -> PIL image


@dataclass(frozen=True)
class Corruption:
    """One entry of :data:`CORRUPTIONS`: the operation on a float64 (C, H, W) array and its tables."""

    name: str
    op: Op
    params: Mapping[str, tuple[Any, ...]]  # table -> 5 parameters (severity 1..5)
    description: str
    random: bool
    pil_op: PilOp | None = None  # the operation on an 8-bit PIL image, where ImageNet-C's code works on one
    released_op: Op | None = None  # protocol imagenet_c: the operation where the reference's differs (8-bit output)
    needs: tuple[str, ...] = ()  # extra keyword inputs of ``op`` (``frost_dir``)

    def parameter(self, severity: int, table: str = "imagenet") -> Any:
        return self.params[table][severity - 1]


CORRUPTIONS: Registry[Corruption] = Registry("corruption")


def _register(name: str, imagenet: Sequence[Any], cifar: Sequence[Any], description: str, random: bool, aliases: Sequence[str] = (),
              pil_op: PilOp | None = None, released_op: Op | None = None, needs: Sequence[str] = ()) -> Callable[[Op], Op]:
    def deco(op: Op) -> Op:
        entry = Corruption(name, op, {"imagenet": tuple(imagenet), "cifar": tuple(cifar)}, description, random, pil_op,
                           released_op, tuple(needs))
        CORRUPTIONS.add(name, entry, canonical=name)
        for alias in aliases:
            CORRUPTIONS.add(alias, entry, canonical=name)
        return op

    return deco


# ------------------------------------------------------------------------------------ operations


@_register("gaussian_noise", (0.08, 0.12, 0.18, 0.26, 0.38), (0.04, 0.06, 0.08, 0.09, 0.10), "additive Gaussian noise", True)
def _gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return x + rng.normal(0.0, c, size=x.shape)


@_register("shot_noise", (60, 25, 12, 5, 3), (500, 250, 100, 75, 50), "Poisson (photon) noise", True)
def _shot_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return rng.poisson(x * c) / c


@_register("impulse_noise", (0.03, 0.06, 0.09, 0.17, 0.27), (0.01, 0.02, 0.03, 0.05, 0.07), "salt-and-pepper noise", True)
def _impulse_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    flipped = rng.random(x.shape) < c
    salt = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salt] = 1.0
    out[flipped & ~salt] = 0.0
    return out


@_register("speckle_noise", (0.15, 0.2, 0.35, 0.45, 0.6), (0.06, 0.1, 0.12, 0.16, 0.2), "multiplicative Gaussian noise", True)
def _speckle_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    return x + x * rng.normal(0.0, c, size=x.shape)


@_register("gaussian_blur", (1, 2, 3, 4, 6), (0.4, 0.6, 0.7, 0.8, 1), "Gaussian blur (sigma in pixels)", False)
def _gaussian_blur(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    # skimage.filters.gaussian's defaults (which the reference uses): mode 'nearest', truncate 4
    return gaussian_filter(x, sigma=(0.0, float(c), float(c)), mode="nearest", truncate=4.0)


@_register("contrast", (0.4, 0.3, 0.2, 0.1, 0.05), (0.75, 0.5, 0.4, 0.3, 0.15), "contrast reduction towards the channel mean", False)
def _contrast(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    means = x.mean(axis=(1, 2), keepdims=True)
    return (x - means) * c + means


@_register("brightness", (0.1, 0.2, 0.3, 0.4, 0.5), (0.05, 0.1, 0.15, 0.2, 0.3), "HSV value increase", False)
def _brightness(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    if x.shape[0] == 1:  # the HSV value of a grey pixel is the pixel itself
        return x + c
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(np.moveaxis(x, 0, -1))
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0.0, 1.0)
    return np.moveaxis(hsv2rgb(hsv), -1, 0)


def _to_pil(x: np.ndarray) -> Any:
    from PIL import Image

    u8 = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Image.fromarray(u8[0], mode="L") if x.shape[0] == 1 else Image.fromarray(np.moveaxis(u8, 0, -1), mode="RGB")


def _from_pil(image: Any) -> np.ndarray:
    arr = np.asarray(image, dtype=np.float64) / 255.0
    return arr[None] if arr.ndim == 2 else np.moveaxis(arr, -1, 0)


def _jpeg_round_trip(image: Any, quality: int, **save: Any) -> Any:
    """Encode an 8-bit PIL image as JPEG at ``quality`` and decode it again (same mode)."""
    import io

    from PIL import Image

    buf = io.BytesIO()
    image.save(buf, format="JPEG", quality=int(quality), **save)
    buf.seek(0)
    with Image.open(buf) as im:
        return im.convert(image.mode)


def _pixelate_pil(image: Any, c: float) -> Any:
    from PIL import Image

    w, h = image.size
    return image.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX)


@_register("jpeg_compression", (25, 18, 15, 10, 7), (80, 65, 58, 50, 40), "JPEG round trip (quality)", False, aliases=("jpeg",),
           pil_op=_jpeg_round_trip)
def _jpeg(x: np.ndarray, c: int, rng: np.random.Generator) -> np.ndarray:
    import io

    from PIL import Image

    buf = io.BytesIO()
    _to_pil(x).save(buf, format="JPEG", quality=int(c))
    buf.seek(0)
    with Image.open(buf) as im:
        return _from_pil(im.convert("L" if x.shape[0] == 1 else "RGB"))


@_register("pixelate", (0.6, 0.5, 0.4, 0.3, 0.25), (0.95, 0.9, 0.85, 0.75, 0.65), "box down- and up-sampling", False,
           pil_op=_pixelate_pil)
def _pixelate(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    from PIL import Image

    _, h, w = x.shape
    small = (max(1, int(w * c)), max(1, int(h * c)))
    out = np.empty_like(x)
    for ch in range(x.shape[0]):
        im = Image.fromarray(x[ch].astype(np.float32), mode="F")
        out[ch] = np.asarray(im.resize(small, Image.Resampling.BOX).resize((w, h), Image.Resampling.BOX), dtype=np.float64)
    return out


# ------------------------------------------------------- blur, weather and digital: ImageNet-C's others
# Each follows the reference function of the same name in make_imagenet_c.py / make_cifar_c.py on an
# (H, W, C) float image in [0, 1]; OpenCV and ImageMagick calls are the re-implementations of
# :mod:`.imaging`. Random draws happen in the reference's order (from the per-sample generator).
# Where the reference assumes a 224 x 224 (or 32 x 32) image, the image's own H and W are used.


def _hwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(x, 0, -1))


def _chw(x: np.ndarray) -> np.ndarray:
    return np.moveaxis(np.asarray(x, dtype=np.float64), -1, 0)


def _grey_of(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of (..., 3), as PIL's ``convert("L")`` weighs it, keeping a channel axis."""
    return (rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114)[..., None]


def _blur_chw(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(x, sigma=(0.0, float(sigma), float(sigma)), mode="nearest", truncate=4.0)


@_register("defocus_blur", ((3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)),
           ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)), "anti-aliased disk blur (radius, alias sigma)", False)
def _defocus_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    from scipy.signal import fftconvolve

    kernel = disk_kernel(c[0], c[1]).astype(np.float64)
    r = kernel.shape[0] // 2
    if r >= min(x.shape[1:]):  # numpy's one-fold reflection needs an image larger than the kernel
        from scipy.ndimage import correlate

        return np.stack([correlate(x[ch], kernel, mode="mirror") for ch in range(x.shape[0])])
    # OpenCV's filter2D (correlation, reflect-101 border), through the FFT as OpenCV does for large kernels
    padded = np.pad(x, ((0, 0), (r, r), (r, r)), mode="reflect")
    return fftconvolve(padded, kernel[None, ::-1, ::-1], mode="valid", axes=(1, 2))


@_register("glass_blur", ((0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)),
           ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
           "blur, local pixel shuffle, blur (sigma, max shift, passes)", True)
def _glass_blur(x: np.ndarray, c: tuple[float, int, int], rng: np.random.Generator) -> np.ndarray:
    sigma, delta, passes = c
    channels, h, w = x.shape
    pixels = (_blur_chw(x, sigma) * 255).astype(np.uint8).reshape(channels, h * w)
    rows = np.arange(h - delta, delta, -1)
    cols = np.arange(w - delta, delta, -1)
    source = list(range(h * w))
    if len(rows) and len(cols):
        here = (rows[:, None] * w + cols[None, :]).ravel()
        for _ in range(passes):
            shift = rng.integers(-delta, delta, size=(len(here), 2))  # (dx, dy) per pixel, in scan order
            there = here + shift[:, 1] * w + shift[:, 0]
            # The reference's `x[h, w], x[h', w'] = x[h', w'], x[h, w]` on numpy row views copies
            # (h', w') onto (h, w) and leaves (h', w') as it was; sequentially, so track sources.
            for a, b in zip(here.tolist(), there.tolist()):
                source[a] = source[b]
    shuffled = pixels[:, np.asarray(source)].reshape(channels, h, w) / 255.0
    return _blur_chw(shuffled, sigma)


def _motion_blur(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(-45, 45)
    return _chw(motion_blur(_hwc(x), c[0], c[1], angle))


def _motion_blur_released(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    """What the reference stores: ImageMagick blurs the 8-bit image and writes 8 bits (rounded)."""
    return magick_to_8bit(_motion_blur(np.round(x * 255.0), c, rng)) / 255.0


_register("motion_blur", ((10, 3), (15, 5), (15, 8), (15, 12), (20, 15)), ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
          "ImageMagick motion blur at a random angle in [-45, 45] degrees (radius, sigma)", True,
          released_op=_motion_blur_released)(_motion_blur)


@_register("zoom_blur", ((1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.02), (1, 1.26, 0.02), (1, 1.31, 0.03)),
           ((1, 1.06, 0.01), (1, 1.11, 0.01), (1, 1.16, 0.01), (1, 1.21, 0.01), (1, 1.26, 0.01)),
           "mean of centre zooms by numpy.arange(start, stop, step)", False)
def _zoom_blur(x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    img = _hwc(x).astype(np.float32)
    factors = np.arange(*c)
    out = np.zeros_like(img)
    for factor in factors:
        out += clipped_zoom(img, factor)
    return _chw((img + out) / (len(factors) + 1))


@_register("snow", ((0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
                    (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)),
           ((0.1, 0.2, 1, 0.6, 8, 3, 0.95), (0.1, 0.2, 1, 0.5, 10, 4, 0.9), (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
            (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85), (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8)),
           "motion-blurred flakes over a whitened image (mean, std, zoom, threshold, radius, sigma, mix)", True)
def _snow(x: np.ndarray, c: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    loc, scale, zoom, threshold, radius, sigma, mix = c
    img = _hwc(x).astype(np.float32)
    h, w = img.shape[:2]
    flakes = rng.normal(size=(h, w), loc=loc, scale=scale)
    flakes = clipped_zoom(flakes[..., None], zoom)
    flakes[flakes < threshold] = 0
    flakes8 = (np.clip(flakes[..., 0], 0, 1) * 255).astype(np.uint8)  # stored as an 8-bit PNG ...
    angle = rng.uniform(-135, -45)
    layer = (magick_to_8bit(motion_blur(flakes8, radius, sigma, angle)) / 255.0)[..., None]  # ... blurred by ImageMagick
    grey = rgb_to_grey(img)[..., None] if img.shape[-1] == 3 else img
    img = mix * img + (1 - mix) * np.maximum(img, grey * 1.5 + 0.5)
    return _chw(img + layer + np.rot90(layer, k=2))


FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
"""ImageNet-C's frost photographs, in the reference's order. It draws ``randint(5)``, so only the
first five are ever used; ``frost6.jpg`` is listed for completeness and not required."""
FROST_USED = FROST_FILES[:5]


def frost_files(frost_dir: Path | str) -> dict[str, Path]:
    """The frost images of ``frost_dir`` the corruption reads, checked to exist.

    Raises:
        DataMissingError: the folder or one of :data:`FROST_USED` is missing (names them).
    """
    from ..errors import DataMissingError

    folder = Path(frost_dir)
    missing = [name for name in FROST_USED if not (folder / name).is_file()]
    if missing:
        raise DataMissingError(
            f"frost_dir {folder}: missing {', '.join(missing)} (corruption 'frost' blends ImageNet-C's frost photographs "
            "frost1.png ... frost5.jpg, from ImageNet-C/imagenet_c/imagenet_c/frost/ of github.com/hendrycks/robustness)"
        )
    return {name: folder / name for name in FROST_USED}


_FROST_CACHE: dict[tuple[Any, ...], tuple[np.ndarray, ...]] = {}


def _frost_images(frost_dir: Path | str) -> tuple[np.ndarray, ...]:
    """The five frost images as uint8 RGB (H, W, 3), decoded once per process and file state."""
    files = frost_files(frost_dir)
    key = tuple((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files.values())
    if key not in _FROST_CACHE:
        from .folders import load_image

        _FROST_CACHE.clear()
        _FROST_CACHE[key] = tuple(np.asarray(load_image(p, "RGB"), dtype=np.uint8) for p in files.values())
    return _FROST_CACHE[key]


def _frost_crop(x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator, frost_dir: Path | str) -> np.ndarray:
    """The frost crop (C, H, W), 0..255, drawn as the reference draws it: image index, then top, then left."""
    channels, h, w = x.shape
    images = _frost_images(frost_dir)
    frost = images[int(rng.integers(5))]
    if c[2] != 1.0:
        frost = resize_linear(frost, c[2])
    fh, fw = frost.shape[:2]
    if fh < h or fw < w:
        raise DataError(f"corruption 'frost': a frost image ({fw}x{fh} after scaling by {c[2]}) is smaller than the "
                        f"image ({w}x{h}); frost covers images up to 315 pixels a side (corrupt a smaller crop)")
    top = int(rng.integers(0, fh - h)) if fh > h else 0
    left = int(rng.integers(0, fw - w)) if fw > w else 0
    crop = frost[top : top + h, left : left + w].astype(np.float64)
    return _chw(_grey_of(crop) if channels == 1 else crop)


def _frost_released(x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator, *, frost_dir: Path | str) -> np.ndarray:
    """The reference blends in 0..255 (``c0 * image + c1 * frost``) before its 8-bit floor; floored
    here in the same units, so values that land on an integer are not a float step below it."""
    return np.floor(np.clip(c[0] * np.round(x * 255.0) + c[1] * _frost_crop(x, c, rng, frost_dir), 0, 255)) / 255.0


@_register("frost", ((1, 0.4, 1.0), (0.8, 0.6, 1.0), (0.7, 0.7, 1.0), (0.65, 0.7, 1.0), (0.6, 0.75, 1.0)),
           ((1, 0.2, 0.2), (1, 0.3, 0.2), (0.9, 0.4, 0.2), (0.85, 0.4, 0.2), (0.75, 0.45, 0.2)),
           "blend with a random crop of a frost photograph (image weight, frost weight, frost scale)", True,
           released_op=_frost_released, needs=("frost_dir",))
def _frost(x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator, *, frost_dir: Path | str) -> np.ndarray:
    return c[0] * x + c[1] * _frost_crop(x, c, rng, frost_dir) / 255.0


@_register("fog", ((1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)), ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
           "plasma-fractal haze (strength, roughness decay)", True)
def _fog(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    _, h, w = x.shape
    mapsize = 1 << max(1, (max(h, w) - 1).bit_length())  # 256 for 224 (the reference), 32 for 32 (CIFAR)
    max_val = x.max()
    out = x + c[0] * plasma_fractal(mapsize, c[1], rng)[None, :h, :w]
    return out * max_val / (max_val + c[0])


@_register("spatter", ((0.65, 0.3, 4, 0.69, 0.6, 0), (0.65, 0.3, 3, 0.68, 0.6, 0), (0.65, 0.3, 2, 0.68, 0.5, 0),
                       (0.65, 0.3, 1, 0.65, 1.5, 1), (0.67, 0.4, 1, 0.65, 1.5, 1)),
           ((0.62, 0.1, 0.7, 0.7, 0.5, 0), (0.65, 0.1, 0.8, 0.7, 0.5, 0), (0.65, 0.3, 1, 0.69, 0.5, 0),
            (0.65, 0.1, 0.7, 0.69, 0.6, 1), (0.65, 0.1, 0.5, 0.68, 0.6, 1)),
           "water (severity 1-3) or mud (4-5) splashes (mean, std, sigma, threshold, strength, mud)", True)
def _spatter(x: np.ndarray, c: tuple[float, ...], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    loc, scale, sigma, threshold, strength, mud = c
    img = _hwc(x).astype(np.float32)
    liquid = rng.normal(size=img.shape[:2], loc=loc, scale=scale)
    liquid = gaussian_filter(liquid, sigma, mode="nearest", truncate=4.0)
    liquid[liquid < threshold] = 0
    if mud == 0:  # water: pale turquoise drops, shaded by the distance to their edges
        liquid8 = (liquid * 255).astype(np.uint8)
        dist = chamfer_distance(255 - canny(liquid8, 50, 150))
        dist = np.minimum(dist, np.float32(20))
        dist = equalize_hist(box_blur(dist).astype(np.uint8))
        dist = filter2d_u8(dist, np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]]))
        m = liquid8 * box_blur(dist).astype(np.float32)
        peak = m.max()
        m = (m / peak if peak > 0 else m) * np.float32(strength)
        colour = np.array([175, 238, 238], dtype=np.float32) / np.float32(255.0)
        if img.shape[-1] == 1:
            colour = _grey_of(colour[None, :])[0].astype(np.float32)
        return _chw(np.clip(img + m[..., None] * colour, 0, 1))
    mask = np.where(liquid > threshold, 1, 0).astype(np.float32)  # mud: opaque brown blots
    mask = gaussian_filter(mask, strength, mode="nearest", truncate=4.0)
    mask[mask < 0.8] = 0
    colour = np.array([63, 42, 20], dtype=np.float32) / np.float32(255.0)
    if img.shape[-1] == 1:
        colour = _grey_of(colour[None, :])[0].astype(np.float32)
    return _chw(img * (1 - mask[..., None]) + colour * mask[..., None])


@_register("saturate", ((0.3, 0), (0.1, 0), (2, 0), (5, 0.1), (20, 0.2)), ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
           "HSV saturation s -> s a + b (a, b)", False)
def _saturate(x: np.ndarray, c: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    from skimage.color import hsv2rgb, rgb2hsv

    rgb = _hwc(x)
    if rgb.shape[-1] == 1:  # a grey image as the reference sees it (RGB), read back as grey
        rgb = np.repeat(rgb, 3, axis=-1)
    hsv = rgb2hsv(rgb)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    out = hsv2rgb(hsv)
    return _chw(_grey_of(out) if x.shape[0] == 1 else out)


@_register("elastic_transform", ((244 * 2, 244 * 0.7, 244 * 0.1), (244 * 2, 244 * 0.08, 244 * 0.2),
                                 (244 * 0.05, 244 * 0.01, 244 * 0.02), (244 * 0.07, 244 * 0.01, 244 * 0.02),
                                 (244 * 0.12, 244 * 0.01, 244 * 0.02)),
           ((32 * 0, 32 * 0, 32 * 0.08), (32 * 0.05, 32 * 0.2, 32 * 0.07), (32 * 0.08, 32 * 0.06, 32 * 0.06),
            (32 * 0.1, 32 * 0.04, 32 * 0.05), (32 * 0.1, 32 * 0.03, 32 * 0.03)),
           "random affine, then a smoothed random displacement field (alpha, sigma, affine shift; pixels)", True,
           aliases=("elastic",))
def _elastic_transform(x: np.ndarray, c: tuple[float, float, float], rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter, map_coordinates

    alpha, sigma, shift = c
    img = _hwc(x).astype(np.float32)
    shape = img.shape
    centre = np.array(shape[:2], dtype=np.float32) // 2
    square = min(shape[:2]) // 3
    # the reference builds the points from (rows, cols) and hands them to OpenCV as (x, y): kept
    pts1 = np.array([centre + square, [centre[0] + square, centre[1] - square], centre - square], dtype=np.float32)
    pts2 = pts1 + rng.uniform(-shift, shift, size=pts1.shape).astype(np.float32)
    img = warp_affine(img, affine_from_points(pts1, pts2))
    dx = (gaussian_filter(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian_filter(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    xx, yy, zz = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    coords = (yy + dy[..., None]).reshape(-1), (xx + dx[..., None]).reshape(-1), zz.reshape(-1)
    return _chw(map_coordinates(img, coords, order=1, mode="reflect").reshape(shape))


# ------------------------------------------------------------------------------------- corrupt()


def _check_severity(severity: Any, table: str) -> int:
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)) or int(severity) not in SEVERITIES:
        raise DataError(f"corruption severity must be an integer from 1 to 5, got {severity!r}")
    if table not in TABLES:
        raise DataError(f"unknown corruption table '{table}' (known: {', '.join(TABLES)})")
    return int(severity)


def _extras(entry: Corruption, frost_dir: Path | str | None) -> dict[str, Any]:
    """The extra inputs ``entry.op`` needs (:attr:`Corruption.needs`); DataError when one is not given."""
    if "frost_dir" in entry.needs and frost_dir is None:
        raise DataError(FROST_NEEDS_DIR)
    return {"frost_dir": frost_dir} if "frost_dir" in entry.needs else {}


FROST_NEEDS_DIR = ("corruption 'frost' blends ImageNet-C's frost photographs, which pytest-qrel does not ship: give the folder "
                   "holding frost1.png ... frost5.jpg as 'frost_dir' (they are in ImageNet-C/imagenet_c/imagenet_c/frost/ "
                   "of github.com/hendrycks/robustness)")


def corrupt(image: Any, name: str, severity: int, seed: int | Sequence[int] = 0, *, table: str = "imagenet",
            frost_dir: Path | str | None = None) -> Any:
    """Corrupt one image ``(C, H, W)`` with values in [0, 1]; ``C`` is 1 (grey) or 3 (RGB).

    ``seed`` (an int or a sequence of ints, e.g. ``(base_seed, index)``) seeds
    ``numpy.random.default_rng``: the same arguments give the same output. Returns the same kind
    as the input (a float32 torch tensor for a tensor, a float32 numpy array otherwise), clipped
    to [0, 1].

    Raises:
        UnknownNameError: ``name`` is not in :data:`CORRUPTIONS` (the message lists the known names).
        DataError: severity not in 1..5, unknown table, or not a (1|3, H, W) image in [0, 1];
            ``frost`` without ``frost_dir`` (the folder of ImageNet-C's frost images).
    """
    entry = CORRUPTIONS.get(name)
    extras = _extras(entry, frost_dir)
    severity = _check_severity(severity, table)
    is_tensor = hasattr(image, "detach") and hasattr(image, "is_floating_point")
    arr = image.detach().cpu().double().numpy() if is_tensor else np.asarray(image, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[0] not in (1, 3) or arr.shape[1] < 1 or arr.shape[2] < 1:
        raise DataError(f"corruption '{name}' needs an image of shape (1 or 3, H, W); got {tuple(arr.shape)}")
    if is_tensor and not image.is_floating_point():
        raise DataError(f"corruption '{name}' needs a float image with values in [0, 1]; got dtype {image.dtype}")
    if arr.size and (arr.min() < -1e-6 or arr.max() > 1 + 1e-6 or not np.isfinite(arr).all()):
        raise DataError(f"corruption '{name}' needs values in [0, 1]; got [{arr.min():.3g}, {arr.max():.3g}]")
    rng = np.random.default_rng(list(seed) if isinstance(seed, Sequence) else int(seed))
    out = np.clip(entry.op(np.clip(arr, 0.0, 1.0), entry.parameter(severity, table), rng, **extras), 0.0, 1.0).astype(np.float32)
    if is_tensor:
        import torch

        return torch.from_numpy(np.ascontiguousarray(out)).to(device=image.device)
    return out


# ------------------------------------------------------------------------------- ShiftedImageSet


def _frost_state(entry: Corruption, frost_dir: Path | str | None) -> tuple[Path | None, dict[str, str]]:
    """``(frost_dir, {file: sha256})`` of a set of ``entry``: the frost images are read from disk,
    so they are part of the set's fingerprint. Other corruptions: ``(None, {})``."""
    if "frost_dir" not in entry.needs:
        return None, {}
    if frost_dir is None:
        raise DataError(FROST_NEEDS_DIR)
    from ..fingerprint import file_sha256

    files = frost_files(frost_dir)
    return Path(frost_dir), {name: file_sha256(path) for name, path in files.items()}


def _is_pil(image: Any) -> bool:
    return hasattr(image, "convert") and hasattr(image, "mode") and hasattr(image, "resize")


class ShiftedImageSet:
    """``base`` with every sample corrupted (``corruption`` at ``severity``, per-sample seed ``(seed, i)``).

    Labels are the base's, or all -1 with ``as_ood``. Tensor samples come back as float32 tensors
    (C, H, W) in [0, 1]; PIL samples as PIL images (grey stays ``L``, anything else ``RGB``).
    """

    def __init__(
        self,
        base: ImageSet,
        corruption: str,
        severity: int,
        seed: int = 0,
        *,
        table: str = "imagenet",
        as_ood: bool = False,
        resize: int | None = None,
        crop: int | None = None,
        name: str | None = None,
        frost_dir: Path | str | None = None,
    ) -> None:
        entry = CORRUPTIONS.get(corruption)
        self.base = base
        self.corruption = entry.name  # canonical (``jpeg`` -> ``jpeg_compression``)
        self.frost_dir, frost_hashes = _frost_state(entry, frost_dir)
        self.logit_mask = getattr(base, "logit_mask", None)  # ImageNet-R/A: the base's class subset
        self.severity = _check_severity(severity, table)
        self.seed = int(seed)
        self.table = table
        self.as_ood = bool(as_ood)
        self.resize = resize
        self.crop = crop
        self.parameter = entry.parameter(self.severity, table)
        self.name = name or f"{getattr(base, 'name', 'dataset')}+{self.corruption}/{self.severity}"
        labels = np.full(len(base), OOD_LABEL, dtype=np.int64) if self.as_ood else np.array(base.labels, dtype=np.int64, copy=True)
        labels.setflags(write=False)
        self.labels = labels
        self.class_names = None if self.as_ood else getattr(base, "class_names", None)
        # the base's label order and where it came from, so its folders are checked against the model's classes
        self.class_order = None if self.as_ood else getattr(base, "class_order", None)
        self.class_order_from = None if self.as_ood else getattr(base, "class_order_from", None)
        spec = {
            "shift_version": SHIFT_VERSION,
            "base": base.fingerprint,
            "corruption": self.corruption,
            "severity": self.severity,
            "parameter": self.parameter,
            "table": table,
            "seed": self.seed,
            "as_ood": self.as_ood,
            "resize": resize,
            "crop": crop,
            **({"frost_files": frost_hashes} if frost_hashes else {}),
        }
        self.fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.base)

    def __repr__(self) -> str:
        return f"ShiftedImageSet({self.name!r}, {len(self)} samples)"

    def _geometry_pil(self, image: Any) -> Any:
        from PIL import Image

        if self.resize:
            w, h = image.size
            scale = self.resize / min(w, h)
            image = image.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR)
        if self.crop:
            w, h = image.size
            left, top = int(round((w - self.crop) / 2.0)), int(round((h - self.crop) / 2.0))
            image = image.crop((left, top, left + self.crop, top + self.crop))
        return image

    def _geometry_tensor(self, image: Any) -> Any:
        import torch

        if self.resize:
            _, h, w = image.shape
            scale = self.resize / min(h, w)
            size = (max(1, round(h * scale)), max(1, round(w * scale)))
            image = torch.nn.functional.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0].clamp(0, 1)
        if self.crop:
            _, h, w = image.shape
            top, left = int(round((h - self.crop) / 2.0)), int(round((w - self.crop) / 2.0))
            if top < 0 or left < 0:
                raise DataError(f"{self.name}: crop {self.crop} is larger than the image ({h}x{w})")
            image = image[:, top : top + self.crop, left : left + self.crop]
        return image

    def raw(self, index: int) -> Any:
        """Sample ``index`` of the base set, resized / cropped by ``resize`` / ``crop`` if set, not yet corrupted."""
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        image, _ = self.base[index % len(self)]
        if _is_pil(image):
            return self._geometry_pil(image)
        if hasattr(image, "detach") and (self.resize or self.crop):
            return self._geometry_tensor(image)
        return image

    def corrupt_unit(self, x: Any, index: int) -> Any:
        """Corrupt sample ``index`` given as a float tensor (C, H, W) in the model's geometry.

        The engine's path (see the module docstring): ``x`` is the model's resized / cropped image,
        clamped to [0, 1] here; the result goes to the model's normalisation. Same seed as ``self[index]``.
        """
        import torch

        x = x.clamp(0.0, 1.0) if isinstance(x, torch.Tensor) else np.clip(x, 0.0, 1.0)
        return corrupt(x, self.corruption, self.severity, (self.seed, index % len(self)), table=self.table, frost_dir=self.frost_dir)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        image, _ = self.base[index]
        seed = (self.seed, index)
        if _is_pil(image):
            image = self._geometry_pil(image)
            if image.mode not in ("L", "RGB"):
                image = image.convert("RGB")
            out = corrupt(_from_pil(image), self.corruption, self.severity, seed, table=self.table, frost_dir=self.frost_dir)
            return _to_pil(out), int(self.labels[index])
        if not (hasattr(image, "detach") or isinstance(image, np.ndarray)):
            raise DataError(f"{self.name}: cannot corrupt a sample of type {type(image).__name__}")
        if hasattr(image, "detach") and (self.resize or self.crop):
            image = self._geometry_tensor(image)
        return corrupt(image, self.corruption, self.severity, seed, table=self.table, frost_dir=self.frost_dir), int(self.labels[index])


# ------------------------------------------------------------------------ the released ImageNet-C files

IMAGENET_C_RESIZE = 256
IMAGENET_C_CROP = 224
IMAGENET_C_JPEG_QUALITY = 85
PROTOCOLS = ("model", "imagenet_c")


def imagenet_c_geometry(image: Any, resize: int = IMAGENET_C_RESIZE, crop: int = IMAGENET_C_CROP) -> Any:
    """torchvision's ``Resize(resize)`` then ``CenterCrop(crop)`` on a PIL image, as ImageNet-C's
    generator applies them: the shorter side becomes ``resize`` and the longer ``int(resize * long /
    short)`` (bilinear, PIL's antialiased filter), then the centre ``crop`` x ``crop``
    (``top = round((h - crop) / 2)``). A crop larger than the image is a DataError."""
    from PIL import Image

    w, h = image.size
    if w <= h:
        size = (resize, int(resize * h / w))
    else:
        size = (int(resize * w / h), resize)
    if size != (w, h):
        image = image.resize(size, Image.Resampling.BILINEAR)
    w, h = image.size
    if crop > w or crop > h:
        raise DataError(f"ImageNet-C geometry: crop {crop} is larger than the resized image ({w}x{h})")
    top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
    return image.crop((left, top, left + crop, top + crop))


def corrupt_released(image: Any, name: str, severity: int, seed: int | Sequence[int] = 0, *, frost_dir: Path | str | None = None) -> Any:
    """One image as the released ImageNet-C files hold it: ``image`` (an RGB PIL image, already at
    the ImageNet-C geometry) corrupted with the ``imagenet`` table, the float result scaled to
    [0, 255] and cut to 8 bits with ``np.uint8`` (floor), then stored as JPEG at quality 85 and decoded.

    JPEG compression and pixelation work on the 8-bit image itself (as the reference does); motion
    blur returns ImageMagick's 8-bit result; the other corruptions work on ``array / 255`` in
    float64. Returns an RGB PIL image of the same size.
    """
    from PIL import Image

    entry = CORRUPTIONS.get(name)
    extras = _extras(entry, frost_dir)
    severity = _check_severity(severity, "imagenet")
    image = image.convert("RGB")
    c = entry.parameter(severity, "imagenet")
    if entry.pil_op is not None:
        out = entry.pil_op(image, c)
    else:
        rng = np.random.default_rng(list(seed) if isinstance(seed, Sequence) else int(seed))
        x = np.moveaxis(np.asarray(image, dtype=np.float64) / 255.0, -1, 0)
        y = np.clip((entry.released_op or entry.op)(x, c, rng, **extras), 0.0, 1.0) * 255.0
        out = Image.fromarray(np.moveaxis(y, 0, -1).astype(np.uint8), mode="RGB")  # astype: floor, as np.uint8()
    return _jpeg_round_trip(out, IMAGENET_C_JPEG_QUALITY, optimize=True)


class ImageNetCSet:
    """``base`` as the released ImageNet-C files: every sample resized and centre-cropped
    (:func:`imagenet_c_geometry`), corrupted, floored to 8 bits and JPEG-compressed
    (:func:`corrupt_released`), returned as an RGB PIL image that the model then preprocesses fully
    (its own resize / crop / normalisation), exactly as a model reads the released files.

    There is deliberately no ``corrupt_unit``: the engine gives these samples the model's whole
    preprocessing. Tensor samples (C, H, W in [0, 1]) are first made 8-bit PIL images (rounded); grey
    images become RGB, as ImageNet-C's loader converts every image. Labels: the base's, or all -1 with
    ``as_ood``.
    """

    protocol = "imagenet_c"

    def __init__(
        self,
        base: ImageSet,
        corruption: str,
        severity: int,
        seed: int = 0,
        *,
        as_ood: bool = False,
        resize: int = IMAGENET_C_RESIZE,
        crop: int = IMAGENET_C_CROP,
        name: str | None = None,
        frost_dir: Path | str | None = None,
    ) -> None:
        entry = CORRUPTIONS.get(corruption)
        self.base = base
        self.corruption = entry.name
        self.frost_dir, frost_hashes = _frost_state(entry, frost_dir)
        self.logit_mask = getattr(base, "logit_mask", None)
        self.severity = _check_severity(severity, "imagenet")
        self.seed = int(seed)
        self.table = "imagenet"
        self.as_ood = bool(as_ood)
        self.resize, self.crop = int(resize), int(crop)
        self.parameter = entry.parameter(self.severity, "imagenet")
        self.name = name or f"{getattr(base, 'name', 'dataset')}+{self.corruption}/{self.severity}"
        labels = np.full(len(base), OOD_LABEL, dtype=np.int64) if self.as_ood else np.array(base.labels, dtype=np.int64, copy=True)
        labels.setflags(write=False)
        self.labels = labels
        self.class_names = None if self.as_ood else getattr(base, "class_names", None)
        # the base's label order and where it came from, so its folders are checked against the model's classes
        self.class_order = None if self.as_ood else getattr(base, "class_order", None)
        self.class_order_from = None if self.as_ood else getattr(base, "class_order_from", None)
        spec = {
            "shift_version": SHIFT_VERSION,
            "protocol": self.protocol,
            "jpeg_quality": IMAGENET_C_JPEG_QUALITY,
            "base": base.fingerprint,
            "corruption": self.corruption,
            "severity": self.severity,
            "parameter": self.parameter,
            "seed": self.seed,
            "as_ood": self.as_ood,
            "resize": self.resize,
            "crop": self.crop,
            **({"frost_files": frost_hashes} if frost_hashes else {}),
        }
        self.fingerprint = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        return len(self.base)

    def __repr__(self) -> str:
        return f"ImageNetCSet({self.name!r}, {len(self)} samples)"

    def clean(self, index: int) -> Any:
        """Sample ``index`` at the ImageNet-C geometry, RGB, not corrupted."""
        image, _ = self.base[index % len(self)]
        if not _is_pil(image):
            if not (hasattr(image, "detach") or isinstance(image, np.ndarray)):
                raise DataError(f"{self.name}: cannot corrupt a sample of type {type(image).__name__}")
            image = _to_pil(np.asarray(image.detach().cpu() if hasattr(image, "detach") else image, dtype=np.float64))
        return imagenet_c_geometry(image.convert("RGB"), self.resize, self.crop)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        index = index % len(self)
        out = corrupt_released(self.clean(index), self.corruption, self.severity, (self.seed, index), frost_dir=self.frost_dir)
        return out, int(self.labels[index])


# ------------------------------------------------------------------------------------- the source

SHIFT_OPTIONS: dict[str, Option] = {
    "of": anything(),  # required: checked (and its source validated) by _parse_options
    "of_options": mapping("a mapping (the options of the 'of' source)"),
    "seed": integer(0, lo=0, allow_none=True),
    "table": choice(*TABLES),
    "as_ood": boolean(False),
    "resize": integer(None, lo=1, allow_none=True),
    "crop": integer(None, lo=1, allow_none=True),
    "protocol": choice(*PROTOCOLS),
    "frost_dir": anything(),  # only for frost: _check_frost_dir
}
"""The options of a ``shift:`` set (module docstring)."""
_ARG = re.compile(r"^\s*([A-Za-z_][\w]*)\s*/\s*(\S+)\s*$")


def _parse_arg(arg: str) -> tuple[str, int]:
    """``"gaussian_noise/3"`` -> ``("gaussian_noise", 3)``; UnknownNameError / DataError otherwise."""
    where = f"dataset 'shift:{arg}'"
    m = _ARG.match(arg)
    if not m:
        raise DataError(f"{where}: write 'shift:<corruption>/<severity>', e.g. 'shift:gaussian_noise/3' (corruptions: {', '.join(CORRUPTIONS.names())})")
    name, sev = m.group(1), m.group(2)
    CORRUPTIONS.get(name)
    if not sev.isdigit() or int(sev) not in SEVERITIES:
        raise DataError(f"{where}: severity must be an integer from 1 to 5, got '{sev}'")
    return name, int(sev)


def _check_frost_dir(where: str, corruption: str, options: Mapping[str, Any]) -> None:
    """``frost_dir`` is required by ``frost`` and read by nothing else (a path string; checked on load)."""
    needs = "frost_dir" in CORRUPTIONS.get(corruption).needs
    value = options.get("frost_dir")
    if needs and value is None:
        raise DataError(f"{where}: {FROST_NEEDS_DIR}, e.g. options: {{frost_dir: ${{IMAGENET_C_FROST}}}}")
    if not needs and value is not None:
        raise DataError(f"{where}: option 'frost_dir' is only read by corruption 'frost'; remove it")
    if needs and not (isinstance(value, str) and value.strip()):
        raise DataError(f"{where}: option 'frost_dir' must be a folder path, got {value!r}")


def _parse_options(where: str, options: Mapping[str, Any]) -> tuple[Any, ...]:
    """``(of, of_options, seed, table, as_ood, resize, crop, protocol)``; DataError on a bad option."""
    values = parse_options(options, SHIFT_OPTIONS, fail=prefixed(DataError, where))
    of = values["of"]
    if not isinstance(of, str) or ":" not in of:
        raise DataError(f"{where}: option 'of' is required: the source of the clean set, e.g. {{of: \"embedded:digits\"}}")
    protocol, table = values["protocol"], values["table"]
    if protocol == "imagenet_c" and table != "imagenet":
        raise DataError(f"{where}: protocol 'imagenet_c' uses ImageNet-C's own parameters; remove 'table: {table}' "
                        "(or use protocol: model)")
    return (of, dict(values["of_options"]), *(values[k] for k in ("seed", "table", "as_ood", "resize", "crop", "protocol")))


def check_shift_options(arg: str, options: Mapping[str, Any]) -> None:
    """The suite-load check of a shifted set: its options, and its ``of`` source (name and options)."""
    from .base import validate_dataset_source

    where = f"dataset 'shift:{arg}'"
    of, of_options, *_ = _parse_options(where, options)
    m = _ARG.match(arg)
    if m:
        _check_frost_dir(where, m.group(1), options)
    try:
        validate_dataset_source(of)
        validate_dataset_source(of, of_options)
    except QrelError as exc:
        raise (strip_source(exc, of) or exc).with_context(f"{where}: base set '{of}'") from None


@DATASET_SOURCES.register("shift", check_arg=_parse_arg, check_options=check_shift_options)
def shift_source(
    arg: str, *, split: str, options: Mapping[str, Any] | None = None, base_dir: Path | None = None
) -> ShiftedImageSet | ImageNetCSet:
    """``source: "shift:<corruption>/<severity>"`` with ``options: {of: "<source>"}``: a corrupted copy of a set.

    The requested ``split`` is passed on to the base source.

    Raises:
        UnknownNameError: unknown corruption (lists the known ones).
        DataError: malformed ``<corruption>/<severity>``, missing ``of``, bad option; errors of the
            base source pass through (a base root from an unset ${VAR} stays a DataMissingError).
    """
    from .base import load_dataset

    options = dict(options or {})
    where = f"dataset 'shift:{arg}'"
    name, sev = _parse_arg(arg)
    of, of_options, seed, table, as_ood, resize, crop, protocol = _parse_options(where, options)
    _check_frost_dir(where, name, options)
    frost_dir = None
    if options.get("frost_dir") is not None:
        from .paths import resolve_path

        frost_dir = resolve_path(options["frost_dir"], base_dir=base_dir, what=f"{where}: frost_dir")
    try:
        base = load_dataset(of, split=split, options=of_options, base_dir=base_dir)
    except QrelError as exc:
        raise (strip_source(exc, of) or exc).with_context(f"{where}: base set '{of}'") from None
    if protocol == "imagenet_c":
        return ImageNetCSet(base, name, sev, seed or 0, as_ood=as_ood, resize=resize or IMAGENET_C_RESIZE,
                            crop=crop or IMAGENET_C_CROP, name=f"{of}+{name}/{sev}", frost_dir=frost_dir)
    return ShiftedImageSet(base, name, sev, seed or 0, table=table, as_ood=as_ood, resize=resize, crop=crop, name=f"{of}+{name}/{sev}",
                           frost_dir=frost_dir)
