"""Shared fixtures: small generated suites on the embedded model, run through pytester."""

from __future__ import annotations

import importlib
import os
import textwrap
from pathlib import Path

import pytest

# The report package, imported whole before any pytester in-process run: such a run removes from
# sys.modules what it imported, but the package object that stays keeps its submodules as attributes,
# so a later test would mix old and new report modules (the CLIP figure sets registered in the old
# registry, drawn from the new one: a demo_clip report without its CLIP figures). 0.1 s, no matplotlib.
import pytest_qrel.report.figspecs  # noqa: E402,F401
import pytest_qrel.report.figures  # noqa: E402,F401
import pytest_qrel.report.render  # noqa: E402,F401

# This conftest is also loaded when a user runs `pytest --qrel-suite ...` from the repository root
# (testpaths = ["tests"]), so it imports nothing heavy at module level: a suite run must not pay
# for the project's own tests.
PRELOAD = (
    # pytester's in-process runs restore sys.modules afterwards; extension modules (numpy, torch)
    # cannot be imported twice in one process, so everything the plugin loads is imported up front.
    "numpy", "safetensors.torch", "scipy.special", "skimage.data", "sklearn.datasets", "sklearn.metrics",
    "timm", "torch", "pytest_qrel.api", "pytest_qrel.data._builtin", "pytest_qrel.models._builtin",
    "pytest_qrel.plugin", "pytest_qrel.quantize", "pytest_qrel.report", "pytest_qrel.scores",
)


def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("qrel_suite", None):
        return  # a suite run: neither pytester nor the preloads
    if not config.pluginmanager.has_plugin("pytester"):
        config.pluginmanager.import_plugin("pytester")
    # The project's tests run 2 xdist workers plus pytester subprocesses (some with -n 2 of their
    # own) on 2 cores: OpenMP threads that spin while waiting burn the cores the other processes
    # need. Passive waiting changes no result, only who gets the CPU. Set before torch loads, and
    # inherited by the subprocesses; a user's own setting wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # No spawned figure worker per pytester run (pytest_qrel.figure_pool): the xdist workers keep
    # both cores busy already; tests/test_figure_pool.py starts one on purpose.
    os.environ.setdefault("QREL_FIGURE_WORKER", "0")
    for name in PRELOAD:
        importlib.import_module(name)


MINI_SUITE = """\
version: 1
name: mini
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
  ood:
    - {{name: digits89, source: "embedded:digits89"}}
    - {{name: noise, source: "embedded:noise"}}
quantizers:
  W8A8: {{method: minmax, weight_bits: 8, act_bits: 8, calibration: {{samples: 64, seed: 0}}}}
  W4A4: {{method: minmax, weight_bits: 4, act_bits: 4, calibration: {{samples: 64, seed: 0}}}}
scores: [msp, energy]
checks:
{checks}
"""

DEFAULT_CHECKS = """\
- "W8A8 top1 delta <= 2pp"
- "W4A4 aupr_out(msp) on mean(ood) delta <= 50%"
- "all ece <= 0.5"
"""


@pytest.fixture(autouse=True)
def _pytester_rootdir(request: pytest.FixtureRequest) -> None:
    """Pin each pytester directory as its own rootdir: without a config file pytest would take the
    nearest ancestor holding a setup.py (a stray /tmp/setup.py changes every node id)."""
    if "pytester" in request.fixturenames:
        request.getfixturevalue("pytester").makeini("[pytest]\n")


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one torch thread: tiny matmuls gain nothing from threads, and thread
    spinning is slow on a shared 2-core box. Modules opt in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch  # not at module level: a `pytest --qrel-suite` run loads this conftest too

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def vit():
    """The default tiny random ViT of tests/tinyvit.py, once per test module."""
    from tinyvit import make_vit

    return make_vit()


@pytest.fixture
def suite_file(request: pytest.FixtureRequest):
    """``suite_file(text, name)`` writes a suite's YAML to ``suites/<name>.yaml`` under the test's
    directory (pytester's when the test uses pytester, else ``tmp_path``); returns its path."""
    root = request.getfixturevalue("pytester" if "pytester" in request.fixturenames else "tmp_path")
    folder = getattr(root, "path", root) / "suites"

    def write(text: str, name: str = "suite") -> Path:
        folder.mkdir(exist_ok=True)
        path = folder / f"{name}.yaml"
        path.write_text(text)
        return path

    return write


@pytest.fixture
def write_suite(pytester: pytest.Pytester, suite_file):
    """Write the mini suite (embedded ViT and digits) with ``checks`` as ``suites/<name>.yaml`` into the
    pytester directory; returns its path."""

    def write(checks: str = DEFAULT_CHECKS, name: str = "mini") -> Path:
        body = MINI_SUITE.format(checks=textwrap.indent(textwrap.dedent(checks), "  ")).replace("name: mini", f"name: {name}")
        return suite_file(body, name)

    return write
