"""The hook through which a module adds figures to the report: one registry entry per figure set.

An entry is ``fn(b, models) -> list[FigureSpec]`` filed with ``scope="model"`` (called with one
:class:`~pytest_qrel.summary.ModelSummary` per model section: ``fn(b, ms)``) or ``scope="suite"``
(called once per suite with the suite's model summaries: ``fn(b, suite, models)``).
:mod:`.figspecs` appends every entry's figures after its own. A leaf module (only the registry),
so a figure module and :mod:`.figspecs` both import it without a cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..registry import Registry

FIGURE_SETS: Registry[Callable[..., list[Any]]] = Registry("figure set")


def figures_of(scope: str, *args: Any) -> list[Any]:
    """Every registered figure set of ``scope`` (``"model"`` or ``"suite"``) called with ``args``."""
    out: list[Any] = []
    for name in FIGURE_SETS.names():
        if FIGURE_SETS.meta(name).get("scope") == scope:
            out.extend(FIGURE_SETS.get(name)(*args))
    return out
