"""verify: true on every registered method at 8, 6 and 4 bits, through the engine on the shipped ViT."""

from __future__ import annotations

import pytest
import torch

from pytest_qrel import Engine, load_suite
from pytest_qrel.errors import SimulationError, SpecError
from pytest_qrel.quantize import QUANTIZERS

# Keep training-based methods short here; their own tests cover the defaults.
FAST_OPTIONS = {name: {"steps": 2, "batch_size": 16} for name in QUANTIZERS.names() if name.startswith("qat")}
WEIGHT_ONLY = {"raana"}

SUITE = """\
name: verify
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
quantizers:
  Q: {{method: {method}, weight_bits: {bits}, act_bits: {act}, calibration: {{samples: 32}}, verify: true, options: {options}}}
checks: ["all top1 >= 0"]
"""


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def suite_for(tmp_path, method: str, bits: int):
    act = "null" if method in WEIGHT_ONLY else bits
    options = FAST_OPTIONS.get(method, {})
    path = tmp_path / f"{method}{bits}.yaml"
    path.write_text(SUITE.format(method=method, bits=bits, act=act, options=options or "{}"))
    return load_suite(path)


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("method", QUANTIZERS.names())
def test_every_method_computes_on_its_integer_grid(tmp_path, method, bits):
    engine = Engine(baseline_dir=tmp_path)
    engine.quantized_module(suite_for(tmp_path, method, bits), "vit", "Q")
    report = engine.verified["Q"]
    assert report.ok, report.summary()
    assert any(c.kind == "weight" for c in report) and all(c.distinct <= 2 ** c.bits for c in report if c.distinct)


def test_a_failed_verification_is_a_clear_error(tmp_path, monkeypatch):
    import pytest_qrel.quantize.minmax as minmax

    real = minmax.minmax

    def leaky(model, spec, calibration, *, labels=None):
        qmodel = real(model, spec, calibration, labels=labels)
        lin = next(m for m in qmodel.modules() if hasattr(m, "weight_bits"))
        with torch.no_grad():
            lin.weight.add_(torch.randn_like(lin.weight) * 1e-3)  # off the grid
        return qmodel

    monkeypatch.setitem(QUANTIZERS._entries, "minmax", leaky)
    with pytest.raises(SimulationError, match="quantizer 'Q' failed verify_simulation"):
        Engine(baseline_dir=tmp_path).quantized_module(suite_for(tmp_path, "minmax", 4), "vit", "Q")


def test_verify_must_be_a_boolean(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE.format(method="minmax", bits=8, act=8, options="{}").replace("verify: true", "verify: yes please"))
    with pytest.raises(SpecError, match="'verify' must be true or false"):
        load_suite(path)
