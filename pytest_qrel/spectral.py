"""Fourier relative spectral error (RSE) of a model's last-block feature map, after the CLIP paper.

The feature map is the token sequence at the output of the **last transformer block** (before the
final norm, pooling and head), without its prefix (class / register) tokens, laid out on the patch
grid: an array (N, h, w, C) of N images with C channels on an h x w grid. Which module that is for
a given model is :func:`pytest_qrel.models.features.last_block_feature_map`'s job.

Definitions (all arrays are numpy float64):

- **Spectrum** S = the mean over images and channels of ``|FFT2|`` over the two grid axes
  (numpy's unnormalised forward transform), ``fftshift``-ed so the zero frequency sits at index
  ``(h // 2, w // 2)``: an (h, w) array. A constant map of value ``a`` puts ``|a| * h * w`` at the
  centre and nothing elsewhere.
- **RSE map** = ``|S_q - S_fp32| / (|S_fp32| + eps)`` with ``eps = 1e-8``, per frequency.
- ``spectral_error`` = the mean of the RSE map; ``spectral_error_high`` = its mean over the
  high-frequency band. Both are dimensionless, lower is better, and 0 for FP32 itself.
- **Radius**: each axis is measured in cycles per token divided by the Nyquist frequency
  (``fftfreq(n) / 0.5``, so values lie in [-1, 1)); the radius of a frequency is
  ``sqrt(u_y**2 + u_x**2)``. Both axes share this unit, so non-square grids work. The
  **high-frequency band** is every frequency whose radius exceeds half of the largest radius on the
  grid (compared on squared radii, so the boundary is exact for even grids).

Everything here is numpy except :class:`SpectrumAccumulator` and :func:`record_spectrum`, which run
on torch tensors inside a forward pass (torch is imported only there): the spectrum is summed batch
by batch, so the features themselves are never stored.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np

__all__ = [
    "EPS",
    "SpectrumAccumulator",
    "high_frequency_mask",
    "magnitude_spectrum",
    "normalised_radius",
    "record_spectrum",
    "relative_spectral_error_map",
    "spectral_error",
    "spectral_error_high",
]

EPS = 1e-8
"""Added to ``|S_fp32|`` in the RSE denominator, for frequencies where the FP32 spectrum is ~0."""


def _checked(x: Any, name: str, ndims: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be numeric ({exc})") from None
    if arr.ndim not in ndims:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndims))} dimensions, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {arr.shape})")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return arr


def magnitude_spectrum(feature_maps: Any) -> np.ndarray:
    """The spectrum S (h, w) of feature maps (N, h, w, C), or of one map (h, w).

    Mean over images and channels of ``|np.fft.fft2|`` over the grid axes, fftshift-ed (zero
    frequency at ``(h // 2, w // 2)``). Raises ValueError on other shapes, empty or non-finite input.
    """
    x = _checked(feature_maps, "feature_maps", (2, 4))
    if x.ndim == 2:
        x = x[None, :, :, None]
    mag = np.abs(np.fft.fft2(x, axes=(1, 2))).mean(axis=(0, 3))
    return np.fft.fftshift(mag)


def _pair(quantized: Any, reference: Any) -> tuple[np.ndarray, np.ndarray]:
    q = _checked(quantized, "quantized spectrum", (2,))
    r = _checked(reference, "FP32 spectrum", (2,))
    if q.shape != r.shape:
        raise ValueError(f"spectra differ in shape: quantized {q.shape}, FP32 {r.shape}")
    return q, r


def relative_spectral_error_map(quantized: Any, reference: Any, eps: float = EPS) -> np.ndarray:
    """``|S_q - S_fp32| / (|S_fp32| + eps)`` per frequency, an (h, w) array; 0 where the spectra agree."""
    q, r = _pair(quantized, reference)
    return np.abs(q - r) / (np.abs(r) + eps)


def _squared_radius(shape: tuple[int, int]) -> np.ndarray:
    h, w = (int(n) for n in shape)
    if h < 1 or w < 1:
        raise ValueError(f"a grid needs at least one row and column, got {tuple(shape)}")
    uy = np.fft.fftshift(np.fft.fftfreq(h)) / 0.5
    ux = np.fft.fftshift(np.fft.fftfreq(w)) / 0.5
    return uy[:, None] ** 2 + ux[None, :] ** 2


def normalised_radius(shape: tuple[int, int]) -> np.ndarray:
    """Radius of each frequency of a fftshift-ed (h, w) spectrum, each axis in units of its Nyquist
    frequency (``fftshift(fftfreq(n)) / 0.5``); 0 at the centre."""
    return np.sqrt(_squared_radius(shape))


def high_frequency_mask(shape: tuple[int, int]) -> np.ndarray:
    """True for frequencies whose normalised radius is more than half the largest one on the grid
    (compared on squared radii, which are exact for even grid sizes)."""
    r2 = _squared_radius(shape)
    return r2 > r2.max() / 4


def spectral_error(quantized: Any, reference: Any) -> float:
    """Mean of the RSE map over every frequency (dimensionless; lower is better; 0 when equal)."""
    return float(relative_spectral_error_map(quantized, reference).mean())


def spectral_error_high(quantized: Any, reference: Any) -> float:
    """Mean of the RSE map over the high-frequency band (see :func:`high_frequency_mask`).

    Raises ValueError for a grid without such a band (1 x 1).
    """
    rse = relative_spectral_error_map(quantized, reference)
    mask = high_frequency_mask(rse.shape)
    if not mask.any():
        raise ValueError(f"a {rse.shape[0]}x{rse.shape[1]} grid has no high-frequency band")
    return float(rse[mask].mean())


# ------------------------------------------------------------------------------ during a forward pass


class SpectrumAccumulator:
    """Running sum of ``|FFT2|`` of feature maps (B, h, w, C), batch by batch (torch tensors).

    :meth:`spectrum` gives the same array as :func:`magnitude_spectrum` over all batches at once.
    """

    def __init__(self) -> None:
        self._sum: np.ndarray | None = None
        self._count = 0

    def add(self, grid: Any) -> None:
        """Add a batch (B, h, w, C) of feature maps (a torch tensor on any device)."""
        import torch

        if grid.ndim != 4 or grid.numel() == 0:
            raise ValueError(f"expected feature maps (B, h, w, C), got shape {tuple(grid.shape)}")
        mag = torch.fft.fft2(grid.detach().to(torch.float64), dim=(1, 2)).abs().sum(dim=(0, 3))
        part = mag.cpu().numpy()
        if self._sum is not None and self._sum.shape != part.shape:
            raise ValueError(f"feature grid changed from {self._sum.shape} to {part.shape} between batches")
        self._sum = part if self._sum is None else self._sum + part
        self._count += int(grid.shape[0]) * int(grid.shape[3])

    def spectrum(self) -> np.ndarray:
        """The spectrum S (h, w) of everything added so far."""
        if self._sum is None:
            raise ValueError("no feature maps were recorded (empty dataset?)")
        s = np.fft.fftshift(self._sum / self._count)
        if not np.isfinite(s).all():
            raise ValueError("the feature spectrum is not finite (the model produced NaN or infinite features)")
        return s


@contextlib.contextmanager
def record_spectrum(site: Any) -> Iterator[SpectrumAccumulator]:
    """Accumulate the spectrum of ``site``'s block output while the ``with`` body runs forwards.

    ``site`` is a :class:`~pytest_qrel.models.features.FeatureMapSite`: a forward hook on its block
    turns each output into a grid with ``site.grid_features`` and adds it; the hook is removed on exit.
    """
    acc = SpectrumAccumulator()

    def hook(_module: Any, _inputs: Any, output: Any) -> None:
        acc.add(site.grid_features(output))

    handle = site.block.register_forward_hook(hook)
    try:
        yield acc
    finally:
        handle.remove()
