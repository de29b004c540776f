"""OpenVINO (NNCF post-training quantization) as a quantization method and an OpenVINO IR as an
artifact, end to end on the digits ViT.

The method passes the suite with its precision pinned and reported; its census finds integer
``FullyConnected`` layers; an FP32 IR handed over as an artifact declared W8A8 fails with its census.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from runtime_support import needs, outcomes, record, run_suite, write_suite

pytestmark = [needs("openvino"), pytest.mark.slow]  # converting and NNCF take ~20 s

QUANTIZERS = """\
  W8A8: {method: minmax, weight_bits: 8, act_bits: 8, calibration: {samples: 64, seed: 0}}
  OV: {method: openvino, weight_bits: 8, act_bits: 8, calibration: {samples: 64, seed: 0},
       options: {inference_precision: f32, simulation: W8A8, latency: false}}
"""
CHECKS = """\
  - "OV top1 delta <= 2pp"
  - "OV aupr_out delta <= 5%"
  - "OV int8_share >= 90%"
  - "OV agreement(W8A8) >= 95%"
"""


@pytest.fixture(scope="module")
def ov_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Any]]:
    folder = tmp_path_factory.mktemp("ov")
    return run_suite(write_suite(folder, "rt_openvino", QUANTIZERS, CHECKS), baselines=folder / "baselines", update=True)


def test_openvino_passes_the_suite_with_its_precision_reported(ov_run: tuple[Any, list[Any]]) -> None:
    engine, verdicts = ov_run
    assert len(verdicts) == 4
    assert set(outcomes(verdicts).values()) == {"passed"}, [v.message for v in verdicts if v.outcome != "passed"]
    rt = record(engine, "OV").runtime
    assert rt["identity"]["precision"] == "f32" and rt["identity"]["provider"] == "CPU"
    assert set(rt["identity"]["files"]) == {"model.int8.xml", "model.int8.bin"}
    census = rt["census"]
    assert census["ops"]["integer"]["FullyConnected"] == 17  # every Linear, fused with its dequantization
    assert "MVN" in census["ops"]["float"]  # LayerNorm stays float
    assert (census["weight_bits"], census["act_bits"]) == (8, 8)
    assert "inference precision f32" in census["notes"] and "not found" not in census["notes"]
    assert rt["parity"]["W8A8"]["agreement"] >= 0.95


def test_fp32_ir_declared_w8a8_fails_with_its_census(tmp_path: Path) -> None:
    import warnings

    import openvino as ov
    import torch

    from pytest_qrel.models import load_model

    model = load_model("embedded:digits_vit").module.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript tracer's deprecation notes
        ov.save_model(ov.convert_model(model, example_input=torch.zeros(1, 1, 16, 16)), str(tmp_path / "vit.xml"), compress_to_fp16=False)
    quantizers = ("  ART: {method: artifact, weight_bits: 8, act_bits: 8, calibration: {samples: 8, seed: 0},\n"
                  "        options: {path: vit.xml, inference_precision: f32, latency: false}}\n")
    _, verdicts = run_suite(write_suite(tmp_path, "rt_ir", quantizers, '  - "ART top1 delta <= 2pp"\n'), baselines=tmp_path / "b", update=True)
    (v,) = verdicts
    assert v.outcome == "error" and "census: openvino: 0.0% of Linear/MatMul/Conv MACs in int8" in v.message
