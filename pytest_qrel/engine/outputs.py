"""What a unit computes and holds per seed: :class:`Needs` (asked for) and :class:`SeedOutputs`
(produced). Plain data, shared by the unit computer, its cache reader and the lifecycle."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..spec.quantizer_ref import variant_name
from .samples import SampleArrays

__all__ = ["BASE", "Needs", "SeedOutputs", "variant_name"]

BASE = ""
"""The variant name of a unit's own outputs (no post-hoc step)."""


@dataclass
class Needs:
    """What a unit computes: ``datasets`` (test splits, the ID set included), post-hoc ``variants``
    (step chains such as ``("temperature",)``), and ``spectrum`` on the ID pass."""

    datasets: set[str] = field(default_factory=set)
    variants: set[tuple[str, ...]] = field(default_factory=set)
    spectrum: bool = False

    def covers(self, other: "Needs") -> bool:
        return other.datasets <= self.datasets and other.variants <= self.variants and (self.spectrum or not other.spectrum)

    def merge(self, other: "Needs") -> None:
        self.datasets |= other.datasets
        self.variants |= other.variants
        self.spectrum = self.spectrum or other.spectrum


@dataclass
class SeedOutputs:
    """One seed of a unit: ``arrays[variant][dataset]``, the ID ``spectrum``, fitted post-hoc
    ``params[variant]`` and ``info`` (e.g. QAT steps taken; ``verify`` report summary)."""

    name: str  # "W8A8", or "W8A8@13" for one seed of a multi-seed quantizer
    seed: int | None
    arrays: dict[str, dict[str, SampleArrays]] = field(default_factory=dict)
    spectrum: np.ndarray | None = None
    params: dict[str, dict[str, float]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)  # name -> plain result (suite's ``diagnostics:``)
