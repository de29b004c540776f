"""Runtime methods in a suite, without running a runtime: options, extras, the check grammar, the
census rules, parity arithmetic, artifact identity, and the parameterless ``python:`` model source.

Nothing here imports onnxruntime, openvino or torchao (fast; runs where they are not installed).
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import numpy as np
import pytest

from pytest_qrel import load_suite
from pytest_qrel.errors import ModelError, QuantOptionError, SpecError

HEAD = """\
version: 1
name: s
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: noise, source: "embedded:noise"}
quantizers:
  W8A8: {method: minmax, weight_bits: 8, act_bits: 8}
"""


def suite(tmp_path: Path, quantizers: str, checks: str = '  - "W8A8 top1 delta <= 1pp"\n') -> Path:
    path = tmp_path / "s.yaml"
    path.write_text(HEAD + quantizers + "checks:\n" + checks)
    return path


def error(tmp_path: Path, quantizers: str, checks: str = '  - "W8A8 top1 delta <= 1pp"\n') -> str:
    with pytest.raises(SpecError) as info:
        load_suite(suite(tmp_path, quantizers, checks))
    text = str(info.value)
    assert "\n" not in text
    return text


# ------------------------------------------------------------------------------------------ options


def test_runtime_quantizers_load(tmp_path: Path) -> None:
    if any(importlib.util.find_spec(m) is None for m in ("onnxruntime", "onnx", "openvino", "nncf", "torchao")):
        pytest.skip("needs every runtime installed (the option checks below need none)")
    s = load_suite(suite(tmp_path, """\
  ORT: {method: onnxruntime, weight_bits: 8, act_bits: 8, options: {mode: dynamic, ops: all, exporter: dynamo}}
  OV: {method: openvino, weight_bits: 8, act_bits: 8, options: {inference_precision: bf16}}
  AO: {method: torchao, weight_bits: 8, act_bits: null, options: {config: int8_weight_only, compile: true}}
""", '  - "ORT parity(W8A8) <= 3 floor"\n  - "ORT,OV,AO int8_share >= 0.5"\n  - "OV latency <= 2"\n'))
    assert [c.metric for c in s.checks] == ["parity", "int8_share", "latency"]
    assert s.checks[0].score == "W8A8" and s.checks[0].bound.amount == 3


def test_missing_runtime_package_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import pytest_qrel.quantize.runtime_options as ro

    real = importlib.util.find_spec
    monkeypatch.setattr(ro.importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real(name, *a))
    text = error(tmp_path, "  ORT: {method: onnxruntime, weight_bits: 8, act_bits: 8}\n")
    assert "field 'quantizers.ORT.method'" in text
    assert "method 'onnxruntime' runs onnxruntime, but onnxruntime is not installed" in text
    assert text.endswith('(fix: pip install "pytest-qrel[onnx]")')
    # an artifact needs the runtime that reads it: a .onnx file names the same extra
    text = error(tmp_path, "  ART: {method: artifact, weight_bits: 8, act_bits: 8, options: {path: m.onnx}}\n")
    assert 'pip install "pytest-qrel[onnx]"' in text


def test_an_openvino_file_needs_openvino_but_not_nncf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # NNCF quantizes (method: openvino); a quantized IR the user hands over is read by openvino alone
    import pytest_qrel.quantize.runtime_options as ro

    monkeypatch.setattr(ro.importlib.util, "find_spec", lambda name, *a: None if name == "nncf" else object())
    assert ro.missing_modules("openvino") == ["nncf"] and ro.missing_modules("openvino", reads_file=True) == []
    text = error(tmp_path, "  OV: {method: openvino, weight_bits: 8, act_bits: 8, options: {inference_precision: f32}}\n")
    assert "method 'openvino' runs openvino, but nncf is not installed" in text
    ro.ArtifactOptions.parse({"path": "m.xml", "inference_precision": "f32"}, method="artifact")  # no error
    monkeypatch.setattr(ro.importlib.util, "find_spec", lambda name, *a: None if name == "openvino" else object())
    with pytest.raises(QuantOptionError, match="method 'artifact' runs openvino, but openvino is not installed"):
        ro.ArtifactOptions.parse({"path": "m.xml", "inference_precision": "f32"}, method="artifact")


@pytest.mark.parametrize(("quantizer", "field", "words"), [
    ("  OV: {method: openvino, weight_bits: 8, act_bits: 8}\n", "quantizers.OV.options.inference_precision", "bf16"),
    ("  OV: {method: openvino, weight_bits: 8, act_bits: 8, options: {inference_precision: fp32}}\n",
     "quantizers.OV.options.inference_precision", "'f32', 'bf16' or 'f16'"),
    ("  ORT: {method: onnxruntime, weight_bits: 4, act_bits: 8}\n", "quantizers.ORT.weight_bits", "8 bits"),
    ("  ORT: {method: onnxruntime, weight_bits: 8, act_bits: null}\n", "quantizers.ORT.act_bits", "act_bits: 8"),
    ("  AO: {method: torchao, weight_bits: 8, act_bits: 8, options: {config: int8_weight_only}}\n", "quantizers.AO.act_bits", "null"),
    ("  AO: {method: torchao, weight_bits: 8, act_bits: 8, options: {threads: 2}}\n", "quantizers.AO.options.threads", "unknown"),
    ("  ORT: {method: onnxruntime, weight_bits: 8, act_bits: 8, options: {mode: qdq}}\n", "quantizers.ORT.options.mode", "'static' or 'dynamic'"),
    ("  ART: {method: artifact, weight_bits: 8, act_bits: 8}\n", "quantizers.ART.options.path", "path: <file>"),
    ("  ART: {method: artifact, weight_bits: 8, act_bits: 8, options: {path: m.bin}}\n", "quantizers.ART.options.runtime", "suffix"),
    ("  ART: {method: artifact, weight_bits: 8, act_bits: 8, options: {path: m.xml}}\n",
     "quantizers.ART.options.inference_precision", "bf16"),
])
def test_bad_runtime_options_are_located(tmp_path: Path, quantizer: str, field: str, words: str) -> None:
    module = {"OV": "openvino", "ORT": "onnxruntime", "AO": "torchao", "ART": "onnxruntime"}[quantizer.split(":")[0].strip()]
    if importlib.util.find_spec(module) is None or (".xml" in quantizer and importlib.util.find_spec("openvino") is None):
        pytest.skip(f"{module} is not installed: the error would be the install line")
    text = error(tmp_path, quantizer)
    assert f"field '{field}'" in text and words in text and "(fix: " in text


# ------------------------------------------------------------------------------------------ checks


@pytest.mark.parametrize(("checks", "words"), [
    ('  - "W8A8 top1 <= 3 floor"\n', "'floor' is the unit of parity only"),
    ('  - "W8A8 parity(W8A8) <= 3"\n', "'W8A8' is not one"),
    ('  - "all latency <= 2"\n', "name them instead of 'all'"),
    ('  - "ART parity <= 3"\n', "name it in parentheses"),
    ('  - "ART parity(ART) <= 3"\n', "'ART' is not a simulated quantizer"),
    ('  - "ART int8_share(W8A8) >= 0.9"\n', "takes no name in parentheses"),
    ('  - "ART latency delta <= 10%"\n', "value bound"),
    ('  - "ART latency on noise <= 2"\n', "measured on the ID test split"),
    ('  - "ART2 latency <= 2"\n', "has 'latency: false'"),
])
def test_runtime_checks_are_validated(tmp_path: Path, checks: str, words: str) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    quantizers = ("  ART: {method: artifact, weight_bits: 8, act_bits: 8, options: {path: m.onnx}}\n"
                  "  ART2: {method: artifact, weight_bits: 8, act_bits: 8, options: {path: m.onnx, latency: false}}\n")
    text = error(tmp_path, quantizers, checks)
    assert words in text and "field 'checks[0]" in text


def test_floor_is_the_unit_of_parity_in_both_forms() -> None:
    from pytest_qrel.spec.checks import parse_check, parse_shorthand
    from pytest_qrel.spec.schema import Location

    short = parse_shorthand("ORT parity(W8A8) <= 3 floors")
    mapping = parse_check({"metric": "parity", "score": "W8A8", "quantizers": ["ORT"], "value": {"max": "3 floor"}}, Location("s", 1), "checks[0]")
    for check in (short, mapping):
        assert (check.metric, check.score, check.bound.amount, check.bound.unit) == ("parity", "W8A8", 3.0, "abs")


def test_runtime_check_messages_say_what_they_compare_against(tmp_path: Path) -> None:
    """A runtime metric has no FP32 value: its verdict names the simulation (parity, agreement) or
    FP32 measured in the same process (ratios) instead of printing "FP32 n/a"."""
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    from pytest_qrel.evaluate import decide
    from pytest_qrel.metrics import RUNTIME_METRICS
    from pytest_qrel.runtimes.checks import COMPARED_WITH
    from pytest_qrel.spec.plan import plan

    assert set(COMPARED_WITH) == set(RUNTIME_METRICS)  # a new runtime metric says what it compares against
    checks = "".join(f'  - "ART {m}(W8A8) <= 5"\n' if meta["ref"] else f'  - "ART {m} <= 5"\n' for m, meta in RUNTIME_METRICS.items())
    planned = plan(load_suite(suite(tmp_path, "  ART: {method: artifact, weight_bits: 8, act_bits: 8, options: {path: m.onnx}}\n", checks)))
    said = {}
    for p in planned:
        meta = RUNTIME_METRICS[p.check.metric]
        v = decide(p, 0.5, None, higher_is_better=meta["higher_is_better"], fraction=meta["fraction"])
        assert "n/a" not in v.message and v.message.split(": ", 1)[1].startswith("ART "), v.message  # was "FP32 n/a, ART ..."
        said[p.check.metric] = v.message
    assert set(said) == set(RUNTIME_METRICS)
    assert "ART 0.5000 floors (mean |logit difference| to the W8A8 simulation on the same ID test images, in that simulation's noise floors)" in said["parity"]
    assert "top-1 agreement with the W8A8 simulation" in said["agreement"]
    for ratio in ("latency", "latency_b1", "memory"):
        assert "over FP32's, measured in the same process" in said[ratio], said[ratio]
    assert "over FP32's parameter bytes" in said["size"] and "in int8 kernels" in said["int8_share"]


# ------------------------------------------------------------------------------------------ census, parity


def census(int8: float, weight_only: float, floating: float, weight_bits: int | None = 8) -> dict:
    from pytest_qrel.runtimes.census import Kernel, census_of

    kernels = [Kernel("Q", "int8", int8, True, weight_bits), Kernel("W", "weight_only", weight_only, True, weight_bits),
               Kernel("F", "float", floating), Kernel("LayerNorm", "other")]
    return census_of("rt", [k for k in kernels if k.macs or k.compute == "other"])


def test_declared_bits_against_the_census() -> None:
    from pytest_qrel.runtimes.census import bits_problem

    int8 = census(90.0, 0.0, 10.0)
    assert int8["int8_share"] == pytest.approx(0.9) and int8["ops"]["float"] == {"F": 1, "LayerNorm": 1}
    assert bits_problem(int8, 8, 8) is None
    assert bits_problem(int8, 8, None)[0].startswith("declared W8A16 (float activations)")
    assert bits_problem(int8, 8, None)[1] == "declare 'act_bits: 8'"
    assert bits_problem(int8, 4, 8) == ("declared 4-bit weights, but the integer kernels use 8-bit weights", "declare 'weight_bits: 8'")
    floating = census(0.0, 0.0, 100.0)
    assert bits_problem(floating, 8, 8)[0] == "declared W8A8, but no matrix op runs with integer weights"
    weight_only = census(0.0, 80.0, 20.0)
    assert bits_problem(weight_only, 8, None) is None
    assert bits_problem(weight_only, 8, 8) == ("declared W8A8, but every matrix op computes with floating-point activations",
                                               "declare 'act_bits: null' for a weight-only model, or give one quantized with integer "
                                               "activations (e.g. torchao's Int8DynamicActivationInt8WeightConfig)")


def test_ort_kernels_are_classified_by_op_and_counted_by_shape() -> None:
    from pytest_qrel.runtimes.onnx import kernel_of

    k = kernel_of("MatMulIntegerToFloat", [("uint8", [1, 17, 64]), ("float", [])], [("float", [1, 17, 192])])
    assert (k.compute, k.macs, k.integer, k.weight_bits) == ("int8", 17 * 192 * 64, True, 8)
    conv = kernel_of("Conv", [("float", [1, 1, 16, 16]), ("float", [64, 1, 4, 4])], [("float", [1, 64, 4, 4])])
    assert (conv.compute, conv.macs) == ("float", 64 * 4 * 4 * 16)
    assert kernel_of("DequantizeLinear", [("int8", [64])], [("float", [64])]).integer
    assert kernel_of("MatMulNBits", [("float", [1, 8])], [("float", [1, 4])]).compute == "weight_only"
    assert not kernel_of("LayerNormalization", [("float", [1, 17, 64])], [("float", [1, 17, 64])]).integer


def test_parity_is_measured_in_noise_floors() -> None:
    from pytest_qrel.runtimes.parity import compare

    sim = np.array([[1.0, 0.0], [0.0, 1.0]])
    p = compare(sim + 0.02, sim, sim + 0.01, sim - 0.5)
    assert p["logit_diff"] == pytest.approx(0.02) and p["floor"] == pytest.approx(0.01)
    assert p["parity"] == pytest.approx(2.0) and p["agreement"] == 1.0
    assert p["sim_error"] == pytest.approx(0.5) and p["runtime_error"] == pytest.approx(0.52)
    flipped = compare(sim[:, ::-1], sim, sim, sim)
    assert flipped["agreement"] == 0.0 and flipped["parity"] == float("inf")


def test_runtime_metrics_read_the_audit_record() -> None:
    from pytest_qrel.runtimes.audit import runtime_metrics
    from pytest_qrel.runtimes.checks import runtime_value

    record = {"census": census(9.0, 0.0, 1.0), "parity": {"W8A8": {"parity": 0.5, "logit_diff": 1e-4, "agreement": 1.0}},
              "latency": {"ratio": {"latency": 0.7, "latency_b1": 0.2, "memory": None}}, "size": {"ratio": 0.3}}
    metrics = {"runtime": runtime_metrics(record)}
    assert runtime_value(metrics, "parity", "W8A8", "x") == 0.5
    assert runtime_value(metrics, "int8_share", None, "x") == pytest.approx(0.9)
    assert runtime_value(metrics, "latency", None, "x") == 0.7 and runtime_value(metrics, "size", None, "x") == 0.3
    with pytest.raises(Exception, match="no memory was measured"):
        runtime_value(metrics, "memory", None, "x")


# ------------------------------------------------------------------------------------------ identity


def test_artifact_identity_hashes_every_file_it_reads(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from pytest_qrel.quantize.runtime_options import ArtifactOptions
    from pytest_qrel.runtimes.identity import artifact_identity

    (tmp_path / "m.xml").write_text("<net/>")
    (tmp_path / "m.bin").write_bytes(b"\x00" * 8)
    options = ArtifactOptions.__new__(ArtifactOptions)
    object.__setattr__(options, "__dict__", {})
    for key, value in {"path": "m.xml", "runtime": "openvino", "threads": 3, "simulation": None, "parity_images": 64, "latency": True,
                       "graph_optimization": "all", "provider": "auto", "inference_precision": "f32"}.items():
        object.__setattr__(options, key, value)
    config = SimpleNamespace(options=options)
    first = artifact_identity(config, tmp_path)
    assert set(first["files"]) == {"m.xml", "m.bin"} and first["threads"] == 3 and first["precision"] == "f32"
    (tmp_path / "m.bin").write_bytes(b"\x01" * 8)  # same size, same path
    assert artifact_identity(config, tmp_path)["files"]["m.bin"] != first["files"]["m.bin"]
    (tmp_path / "m.bin").unlink()
    with pytest.raises(QuantOptionError, match="has no weights file"):
        artifact_identity(config, tmp_path)


# ------------------------------------------------------------------------------------------ python: sources

FACTORY = '''
import numpy as np
import torch


class Session(torch.nn.Module):
    """A model whose weights live in a file it reads at every forward: no parameters, no buffers."""
    num_classes = 8

    def __init__(self, path, fingerprint=None):
        super().__init__()
        self.path = path
        if fingerprint:
            self.qrel_fingerprint = fingerprint

    def forward(self, x):
        w = torch.from_numpy(np.load(self.path))
        return x.flatten(1) @ w


def preprocess(image):
    return torch.as_tensor(np.asarray(image, dtype=np.float32)).reshape(1, 16, 16)


def build(weights="w.npy", fingerprint=None):
    import os
    return Session(os.path.join(os.path.dirname(__file__), weights), fingerprint), preprocess, "raw 16x16 digits"
'''


def _factory(tmp_path: Path, seed: int = 0) -> None:
    (tmp_path / "wrap.py").write_text(textwrap.dedent(FACTORY))
    np.save(tmp_path / "w.npy", np.random.default_rng(seed).normal(size=(256, 8)).astype(np.float32))


def test_parameterless_python_model_is_refused_without_a_fingerprint(tmp_path: Path) -> None:
    from pytest_qrel.models import load_model

    _factory(tmp_path)
    with pytest.raises(ModelError) as info:
        load_model("python:wrap.py:build", base_dir=tmp_path)
    text = str(info.value)
    assert "no parameters or buffers" in text and "qrel_fingerprint" in text and "method: artifact" in text and "\n" not in text
    given = load_model("python:wrap.py:build", options={"fingerprint": "abc"}, base_dir=tmp_path).weights_sha256
    assert given != load_model("python:wrap.py:build", options={"fingerprint": "abd"}, base_dir=tmp_path).weights_sha256


def test_parameterless_python_model_fingerprints_the_files_its_options_name(tmp_path: Path) -> None:
    from pytest_qrel.models import load_model

    _factory(tmp_path)
    empty = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    first = load_model("python:wrap.py:build", options={"weights": "w.npy"}, base_dir=tmp_path).weights_sha256
    assert first != empty
    np.save(tmp_path / "w.npy", np.random.default_rng(1).normal(size=(256, 8)).astype(np.float32))
    assert load_model("python:wrap.py:build", options={"weights": "w.npy"}, base_dir=tmp_path).weights_sha256 != first


def test_swapped_file_of_a_parameterless_python_model_makes_the_baseline_stale(tmp_path: Path) -> None:
    """The false green of a ``python:`` source wrapping a session: its file swapped at the same
    path, the run now says the FP32 baseline no longer matches, even with the cache on."""
    from pytest_qrel import Engine, run

    _factory(tmp_path)
    path = tmp_path / "s.yaml"
    path.write_text(HEAD.replace('{source: "embedded:digits_vit"}', '{source: "python:wrap.py:build", options: {weights: w.npy}}')
                    + 'checks:\n  - "FP32 ece <= 1"\n')
    s = load_suite(path)
    kw = {"baseline_dir": tmp_path / "baselines", "cache_dir": tmp_path / "cache"}
    for engine in (Engine(update_baselines=True, **kw), Engine(**kw)):
        verdicts = run(s, engine=engine)
        assert {v.outcome for v in verdicts} == {"passed"}, [v.message for v in verdicts]
    np.save(tmp_path / "w.npy", np.random.default_rng(1).normal(size=(256, 8)).astype(np.float32))
    verdicts = run(s, engine=Engine(**kw))
    assert {v.outcome for v in verdicts} == {"error"}
    assert all("is stale" in v.message and "model.weights_sha256" in v.message for v in verdicts)


def test_verify_is_for_simulations(tmp_path: Path) -> None:
    from pytest_qrel import Engine

    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed")
    s = load_suite(suite(tmp_path, "  ORT: {method: onnxruntime, weight_bits: 8, act_bits: 8, verify: true}\n"))
    with pytest.raises(SpecError, match=r"field 'quantizers.ORT.verify': verify: true checks a fake-quant simulation"):
        Engine(baseline_dir=tmp_path).quantized_module(s, "vit", "ORT")
