"""--qrel-compile: forward passes through torch.compile give the eager simulation's outputs bit for bit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pytest_qrel import Engine, load_suite

SUITE = """\
version: 1
name: comp
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood: [{name: noise, source: "embedded:noise"}]
quantizers:
  W8A8: {method: minmax, calibration: {samples: 32}}
  W4A4-repq: {method: repq_vit, weight_bits: 4, act_bits: 4, calibration: {samples: 32}}
scores: [msp, energy]
batch_size: 256
checks: ["all top1 >= 0"]
"""


@pytest.mark.slow
@pytest.mark.parametrize("quantizer", ["W8A8", "W4A4-repq"])
def test_compiled_simulation_is_bit_identical_to_eager(tmp_path: Path, quantizer: str) -> None:
    (tmp_path / "s.yaml").write_text(SUITE)
    suite = load_suite(tmp_path / "s.yaml")
    eager = Engine(baseline_dir=tmp_path / "b").samples(suite, "vit", quantizer, "digits")
    compiled_engine = Engine(baseline_dir=tmp_path / "b", compile=True)
    compiled = compiled_engine.samples(suite, "vit", quantizer, "digits")
    assert compiled_engine.runner.compile and set(compiled) == set(eager)
    module = compiled_engine.quantized_module(suite, "vit", quantizer)
    from pytest_qrel.engine.runner import compile_quantizers

    assert compile_quantizers(module) > 0  # there is something to compile in this simulation
    for field in eager:
        np.testing.assert_array_equal(compiled[field], eager[field], err_msg=field)
