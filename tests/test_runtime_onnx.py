"""ONNX Runtime as a quantization method and a user's own .onnx file, end to end on the digits ViT.

One module-scoped run of a suite with the minmax W8A8 simulation, ONNX Runtime static (the
simulation's recipe) and dynamic: every check passes, the census counts integer kernels, the
parity to the simulation is within 3 noise floors, identity and latency are recorded and shown.
Then ``method: artifact`` on .onnx files written here: an int8 file passes; overwritten at the same
path by a broken int8 file, with the outputs cache on, the unit is recomputed and fails; a float
file declared W8A8 fails every check with its census; a missing or non-ONNX file is one line.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from runtime_support import needs, outcomes, record, run_suite, write_suite

pytestmark = needs("onnx")

QUANTIZERS = """\
  W8A8: {method: minmax, weight_bits: 8, act_bits: 8, calibration: {samples: 128, seed: 0}}
  ORT: {method: onnxruntime, weight_bits: 8, act_bits: 8, calibration: {samples: 128, seed: 0}, options: {simulation: W8A8}}
  ORTdyn: {method: onnxruntime, weight_bits: 8, act_bits: 8, calibration: {samples: 8, seed: 0}, options: {mode: dynamic, latency: false}}
"""
CHECKS = """\
  - "ORT,ORTdyn top1 delta <= 2pp"
  - "ORT,ORTdyn ece <= 0.1"
  - "ORT,ORTdyn aupr_out delta <= 5%"
  - "ORT,ORTdyn int8_share >= 90%"
  - "ORT parity(W8A8) <= 3 floor"
  - "ORT agreement(W8A8) >= 98%"
"""


@pytest.fixture(scope="module")
def ort_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Any], Path]:
    folder = tmp_path_factory.mktemp("ort")
    suite = write_suite(folder, "rt_onnx", QUANTIZERS, CHECKS)
    engine, verdicts = run_suite(suite, baselines=folder / "baselines", update=True)
    return engine, verdicts, suite


def test_onnxruntime_methods_pass_the_suite(ort_run: tuple[Any, list[Any], Path]) -> None:
    _, verdicts, _ = ort_run
    assert len(verdicts) == 10
    bad = {k: o for k, o in outcomes(verdicts).items() if o != "passed"}
    assert not bad, [v.message for v in verdicts if v.outcome != "passed"]


def test_census_counts_integer_kernels(ort_run: tuple[Any, list[Any], Path]) -> None:
    engine, _, _ = ort_run
    static, dynamic = record(engine, "ORT").runtime["census"], record(engine, "ORTdyn").runtime["census"]
    assert static["ops"]["integer"]["MatMulIntegerToFloat"] == 16  # 4 blocks x (qkv, proj, fc1, fc2)
    assert static["ops"]["integer"]["QGemm"] == 1  # the head
    assert static["ops"]["float"]["MatMul"] == 8  # the attention matmuls stay float, as in the simulation
    assert "LayerNormalization" in static["ops"]["float"] and "Conv" in static["ops"]["float"]
    assert dynamic["ops"]["integer"]["DynamicQuantizeMatMul"] == 17
    for census in (static, dynamic):
        assert (census["weight_bits"], census["act_bits"]) == (8, 8)
        assert 0.9 < census["int8_share"] < 1.0  # attention matmuls and the patch embedding are the float rest
        assert census["macs"]["weight_only"] == 0


def test_linear_recipe_is_within_three_noise_floors_of_the_simulation(ort_run: tuple[Any, list[Any], Path]) -> None:
    engine, verdicts, _ = ort_run
    parity = record(engine, "ORT").runtime["parity"]["W8A8"]
    assert parity["images"] == 64 and parity["floor"] > 0
    assert parity["logit_diff"] <= 3 * parity["floor"]
    assert parity["parity"] == pytest.approx(parity["logit_diff"] / parity["floor"])
    assert parity["agreement"] == 1.0
    # the runtime is as far from FP32 as the simulation is: the int8 kernels add no error of their own
    assert parity["runtime_error"] == pytest.approx(parity["sim_error"], rel=0.05)
    (check,) = [v for v in verdicts if v.metric == "parity"]
    assert check.value == pytest.approx(parity["parity"]) and check.fp32 is None
    assert "to the W8A8 simulation on the same ID test images" in check.message and "n/a" not in check.message  # no FP32 value
    assert "parity" not in record(engine, "ORTdyn").runtime or not record(engine, "ORTdyn").runtime["parity"]


def test_identity_latency_and_report(ort_run: tuple[Any, list[Any], Path]) -> None:
    from pytest_qrel.report import render_html
    from pytest_qrel.shards import run_results

    engine, verdicts, suite = ort_run
    rt = record(engine, "ORT").runtime
    identity = rt["identity"]
    assert identity["runtime"] == "onnxruntime" and identity["provider"] == "CPUExecutionProvider"
    assert identity["threads"] >= 1 and identity["graph_optimization"] == "all" and identity["exporter"] == "legacy"
    (sha,) = identity["files"].values()
    assert len(sha) == 64 and identity["versions"]["onnxruntime"] != "absent"
    latency = rt["latency"]
    assert latency["batch"] == 128
    for side in ("fp32", "runtime"):
        assert latency[side]["b1_ms"] > 0 and latency[side]["batch_ms"] > 0
    assert latency["ratio"]["latency"] > 0 and latency["ratio"]["latency_b1"] > 0
    assert 0 < rt["size"]["ratio"] < 1  # int8 weights: smaller than the FP32 parameters
    assert record(engine, "ORTdyn").runtime["latency"] == {}  # latency: false

    from pytest_qrel import load_suite

    results = run_results(verdicts, engine.report_units(), suites=[load_suite(suite)], planned={"rt_onnx": len(verdicts)}, started=0.0)
    assert set(results.run["runtimes"]) == {"rt_onnx/vit/ORT", "rt_onnx/vit/ORTdyn"}
    page = render_html(results, figures=False)
    for text in ("Deployed runtimes", "runtime-census", "runtime-parity", "runtime-latency", "MatMulIntegerToFloat", sha[:12]):
        assert text in page, text
    from pytest_qrel.report.markdown import summary_markdown

    text = summary_markdown(results)  # the pull-request comment: one row per runtime unit, the record's numbers
    rows = {line.split(" | ")[1]: line for line in text[text.index("### Deployed runtimes"):].splitlines() if line.startswith("| rt_onnx / vit |")}
    assert set(rows) == {"ORT", "ORTdyn"}
    parity = rt["parity"]["W8A8"]
    assert f"| {parity['parity']:.3g} vs W8A8 | {100 * parity['agreement']:.1f}% vs W8A8 |" in rows["ORT"]
    assert f"| {latency['ratio']['latency']:.2f} / {latency['ratio']['latency_b1']:.2f} |" in rows["ORT"]
    assert f"| {100 * rt['census']['int8_share']:.1f}% |" in rows["ORT"] and "MatMulIntegerToFloat \u00d716" in rows["ORT"]


# ------------------------------------------------------------------------------------------ artifacts


def _int8_onnx(path: Path, *, broken: bool = False, quantized: bool = True) -> Path:
    """The digits ViT exported to ``path`` (int8 with ORT's static linear recipe, or float);
    ``broken``: its head's rows rotated first, so every class reads another's logit."""
    import numpy as np
    import torch

    from pytest_qrel.data import load_dataset
    from pytest_qrel.models import load_model
    from pytest_qrel.quantize.runtime_options import OnnxRuntimeOptions
    from pytest_qrel.runtimes.onnx import export_onnx, quantize_onnx

    loaded = load_model("embedded:digits_vit")
    model = copy.deepcopy(loaded.module).eval()
    if broken:
        with torch.no_grad():
            model.head.weight.copy_(model.head.weight.roll(1, 0))
            model.head.bias.copy_(model.head.bias.roll(1, 0))
    train = load_dataset("embedded:digits", split="train")
    # the calibration images of the suite's W8A8 simulation (128 samples, seed 0), as the engine draws them
    index = np.random.default_rng(0).permutation(len(train))[:128]
    images = torch.stack([loaded.preprocess(train[int(i)][0]) for i in index])
    path.parent.mkdir(parents=True, exist_ok=True)
    fp32 = path.with_suffix(".fp32.onnx")
    export_onnx(model, images, fp32, exporter="legacy", opset=17)
    if not quantized:
        fp32.replace(path)
        return path
    quantize_onnx(fp32, path, OnnxRuntimeOptions.parse({}, method="onnxruntime"), images.numpy())
    fp32.unlink()
    return path


ARTIFACT = """\
  W8A8: {method: minmax, weight_bits: 8, act_bits: 8, calibration: {samples: 128, seed: 0}}
  ART: {method: artifact, weight_bits: 8, act_bits: 8, calibration: {samples: 8, seed: 0}, options: {path: files/vit.int8.onnx, simulation: W8A8, latency: false}}
"""
ARTIFACT_CHECKS = """\
  - "ART top1 delta <= 2pp"
  - "ART parity(W8A8) <= 3 floor"
"""


def test_user_int8_onnx_file_is_gated_and_a_swapped_file_is_recomputed(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "rt_artifact", ARTIFACT, ARTIFACT_CHECKS)
    artifact = _int8_onnx(tmp_path / "files" / "vit.int8.onnx")
    cache = tmp_path / "cache"
    engine, verdicts = run_suite(suite, baselines=tmp_path / "baselines", cache=cache, update=True)
    assert set(outcomes(verdicts).values()) == {"passed"}, [v.message for v in verdicts]
    rt = record(engine, "ART").runtime
    from pytest_qrel.runtimes.identity import file_sha256

    assert rt["identity"]["files"] == {"vit.int8.onnx": file_sha256(artifact)}
    assert rt["census"]["ops"]["integer"]["MatMulIntegerToFloat"] == 16
    key = ("rt_artifact", "vit", "ART", "digits")

    engine, verdicts = run_suite(suite, baselines=tmp_path / "baselines", cache=cache)  # unchanged: from the cache
    assert set(outcomes(verdicts).values()) == {"passed"}
    assert engine.forward_passes[key] == 0 and engine.cache_hits[key] >= 1
    assert engine.units.quantizations.get("ART", 0) == 0  # nor rebuilt: its audit is cached with its arrays
    assert record(engine, "ART").runtime["census"]["ops"]["integer"]["MatMulIntegerToFloat"] == 16

    _int8_onnx(artifact, broken=True)  # overwritten at the same path
    engine, verdicts = run_suite(suite, baselines=tmp_path / "baselines", cache=cache)
    assert engine.forward_passes[key] == 1 and engine.units.quantizations["ART"] == 1  # recomputed, not served from the cache
    top1 = next(v for v in verdicts if v.metric == "top1")
    assert top1.outcome == "failed" and top1.value < 0.5, top1.message
    assert next(v for v in verdicts if v.metric == "parity").outcome == "failed"


def test_float_onnx_declared_w8a8_fails_with_its_census(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "rt_float", ARTIFACT, ARTIFACT_CHECKS)
    _int8_onnx(tmp_path / "files" / "vit.int8.onnx", quantized=False)  # a float model under an int8 name
    _, verdicts = run_suite(suite, baselines=tmp_path / "baselines", update=True)
    assert [v.outcome for v in verdicts] == ["error", "error"]
    for v in verdicts:
        assert "quantizer 'ART' (method artifact) is not what it declares" in v.message
        assert "declared W8A8, but no matrix op runs with integer weights" in v.message
        assert "census: onnxruntime: 0.0% of Linear/MatMul/Conv MACs in int8" in v.message
        assert v.message.endswith("(fix: give the quantized model (a float export is not one), or a recipe that quantizes its Linear layers)")
        assert "\n" not in v.message


def test_missing_or_unreadable_artifact_is_one_line(tmp_path: Path) -> None:
    suite = write_suite(tmp_path, "rt_missing", ARTIFACT, '  - "ART top1 delta <= 2pp"\n')
    _, verdicts = run_suite(suite, baselines=tmp_path / "baselines", update=True)
    (v,) = verdicts
    assert v.outcome == "error" and "\n" not in v.message
    assert "field 'quantizers.ART.options.path'" in v.message
    assert str(tmp_path / "files" / "vit.int8.onnx") in v.message and "does not exist" in v.message and "(fix: " in v.message

    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "vit.int8.onnx").write_text("not an onnx model")
    _, verdicts = run_suite(suite, baselines=tmp_path / "baselines")
    (v,) = verdicts
    assert v.outcome == "error" and "\n" not in v.message
    assert "quantizers.ART.options.path" in v.message and f"ONNX Runtime cannot load {tmp_path / 'files' / 'vit.int8.onnx'}: " in v.message
