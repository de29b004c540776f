"""Shared helpers of the runtime tests: skip marks, a small suite on the shipped digits ViT, a run.

A runtime's tests skip (with the install line) only where its package is missing *and* the run is
not CI: ``.ci/run`` installs the extras and sets ``QREL_REQUIRE_RUNTIMES=1``, so there a missing
package fails the tests instead of skipping them.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

EXTRAS = {"onnx": ("onnxruntime", "onnx"), "openvino": ("openvino", "nncf"), "torchao": ("torchao",)}


def needs(extra: str) -> Any:
    """A skip mark for tests of the runtime installed by ``pytest-qrel[extra]``."""
    missing = [m for m in EXTRAS[extra] if importlib.util.find_spec(m) is None]
    return pytest.mark.skipif(
        bool(missing) and not os.environ.get("QREL_REQUIRE_RUNTIMES"),
        reason=f"needs {', '.join(missing)}: pip install \"pytest-qrel[{extra}]\" (CI installs it and requires these tests)",
    )


HEAD = """\
version: 1
name: {name}
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
  ood:
    - {{name: noise, source: "embedded:noise"}}
scores: [msp]
"""


def write_suite(folder: Path, name: str, quantizers: str, checks: str) -> Path:
    """A suite file ``folder/<name>.yaml`` on the digits ViT with one OOD set (quantizers and checks as YAML text)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(HEAD.format(name=name) + "quantizers:\n" + quantizers + "checks:\n" + checks)
    return path


def run_suite(path: Path, *, baselines: Path, cache: Path | None = None, update: bool = False) -> tuple[Any, list[Any]]:
    """``(engine, verdicts)`` of one run of the suite at ``path`` (a fresh engine)."""
    from pytest_qrel import Engine, load_suite, run

    engine = Engine(baseline_dir=baselines, cache_dir=cache, update_baselines=update)
    return engine, run(load_suite(path), engine=engine)


def record(engine: Any, quantizer: str) -> Any:
    """The report record (UnitMetrics) of ``quantizer``."""
    return next(u for u in engine.report_units() if u.quantizer == quantizer)


def outcomes(verdicts: list[Any], quantizer: str | None = None) -> dict[str, str]:
    return {f"{v.quantizer} {v.check}": v.outcome for v in verdicts if quantizer is None or v.quantizer == quantizer}
