"""Shared fixtures: small generated suites on the embedded model, run through pytester."""

from __future__ import annotations

import textwrap

# pytester's in-process runs restore sys.modules afterwards; extension modules (numpy, torch)
# cannot be imported twice in one process, so import everything the plugin loads up front.
import numpy  # noqa: F401
import pytest
import safetensors.torch  # noqa: F401
import scipy.special  # noqa: F401
import skimage.data  # noqa: F401
import sklearn.datasets  # noqa: F401
import sklearn.metrics  # noqa: F401
import timm  # noqa: F401
import torch  # noqa: F401

import pytest_qrel.api  # noqa: F401
import pytest_qrel.data._builtin  # noqa: F401
import pytest_qrel.models._builtin  # noqa: F401
import pytest_qrel.plugin  # noqa: F401
import pytest_qrel.quantize  # noqa: F401
import pytest_qrel.report  # noqa: F401
import pytest_qrel.scores  # noqa: F401  (also registers the CLIP scores)

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


@pytest.fixture
def write_suite(pytester: pytest.Pytester):
    """Write ``suites/<name>.yaml`` into the pytester directory; returns its path."""

    def write(checks: str = DEFAULT_CHECKS, name: str = "mini") -> object:
        suites = pytester.path / "suites"
        suites.mkdir(exist_ok=True)
        path = suites / f"{name}.yaml"
        body = MINI_SUITE.format(checks=textwrap.indent(textwrap.dedent(checks), "  ")).replace("name: mini", f"name: {name}")
        path.write_text(body)
        return path

    return write
