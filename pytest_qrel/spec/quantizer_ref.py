"""A quantizer reference as a typed value: ``W4A4@13+temperature`` parsed once.

A check, the Python API and the report name a quantizer by a string of three parts: the base
quantizer of the suite (``W4A4``, or ``FP32``), optionally one calibration seed of a multi-seed
quantizer (``@13``), and optionally a chain of post-hoc steps fitted on the held-out split
(``+temperature``; applied left to right). :meth:`QuantizerRef.parse` reads that string; the rest
of the code passes the frozen value and reads its fields, never re-splitting the string.

Parsing never fails: only ``@`` followed by digits is a seed; any other ``@`` stays in the base
name (``W4A4@x`` has the base ``W4A4@x``), which then is not a quantizer of the suite, and the
spec loader says so in its one located line (a ``ValueError`` from ``int()`` would be a traceback).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache

from .schema import FP32

__all__ = ["QuantizerRef", "base_of", "variant_name"]


def variant_name(steps: tuple[str, ...]) -> str:
    """``("temperature",)`` -> ``"+temperature"``; ``()`` -> ``""`` (the unit's own outputs)."""
    return "".join(f"+{s}" for s in steps)


@dataclass(frozen=True)
class QuantizerRef:
    """``base`` (a quantizer of the suite or ``FP32``), ``seed`` (one calibration seed, or None for
    the mean over the quantizer's seeds) and ``steps`` (post-hoc steps, in the order applied)."""

    base: str
    seed: int | None = None
    steps: tuple[str, ...] = ()
    variant: str = field(init=False, repr=False, compare=False)
    """The post-hoc suffix as the unit's arrays are keyed: ``"+temperature"``, ``""`` for none."""
    is_fp32: bool = field(init=False, repr=False, compare=False)
    """FP32 and its post-hoc variants are read from the stored baseline, never computed."""

    def __post_init__(self) -> None:  # plain fields, not properties: read on every check's path
        object.__setattr__(self, "variant", variant_name(self.steps))
        object.__setattr__(self, "is_fp32", self.base == FP32)

    @classmethod
    def parse(cls, text: str) -> QuantizerRef:
        """``"W4A4@13+temperature"`` -> ``QuantizerRef("W4A4", 13, ("temperature",))``."""
        return _parse(text)

    @property
    def head(self) -> str:
        """The name without the post-hoc steps: ``W4A4@13`` (how a check names an unknown quantizer)."""
        return self.base if self.seed is None else f"{self.base}@{self.seed}"

    @property
    def unseeded(self) -> str:
        """The name without the seed: ``W4A4+temperature`` (how units and records name it)."""
        return self.base + self.variant

    def __str__(self) -> str:
        return self.head + self.variant


@lru_cache(maxsize=1024)
def _parse(text: str) -> QuantizerRef:
    head, *steps = text.split("+")
    base, at, seed = head.rpartition("@")
    if at and base and seed.isascii() and seed.isdigit():
        return QuantizerRef(base, int(seed), tuple(steps))
    return QuantizerRef(head, None, tuple(steps))


def base_of(quantizer: str) -> str:
    """``"W8A8-qat+temperature"`` -> ``"W8A8-qat"`` (seed and post-hoc steps dropped)."""
    return _parse(quantizer).base
