"""pytest-qrel: gate quantized vision models on reliability (calibration, OOD detection).

Public API (the pytest plugin is a thin layer over it): ``load_suite(path) -> Suite``,
``run(suite, baseline_dir=...) -> list[Verdict]``, ``render_report(results, path)`` and the
:class:`Engine` behind them; the README's "Python API" section has a complete example.

Importing this package is cheap: torch, timm and scikit-learn load only when a model runs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._version import __version__

from .errors import (
    BaselineError,
    BaselineMissingError,
    BaselineStaleError,
    DataError,
    DataMissingError,
    ModelError,
    NumericsError,
    QrelError,
    SimulationError,
    SpecError,
    UnknownNameError,
)
from .results import UnitMetrics, Verdict
from .spec import Suite, load_suite, plan

if TYPE_CHECKING:
    from .api import run
    from .engine import Engine
    from .report import render_report

_LAZY = {"run": ("api", "run"), "Engine": ("engine", "Engine"), "render_report": ("report", "render_report")}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'pytest_qrel' has no attribute {name!r}")


__all__ = [
    "BaselineError", "BaselineMissingError", "BaselineStaleError", "DataError", "DataMissingError", "Engine",
    "ModelError", "NumericsError", "QrelError", "SimulationError", "SpecError", "Suite", "UnitMetrics", "UnknownNameError", "Verdict", "__version__",
    "load_suite", "plan", "render_report", "run",
]
