"""verify: true on every registered method at 8, 6 and 4 bits, through the engine on the shipped ViT:
every quantized tensor on its grid, and exactly the float paths each method is documented to leave."""

from __future__ import annotations

import pytest
import torch

from pytest_qrel import Engine, load_suite
from pytest_qrel.errors import SimulationError, SpecError
from pytest_qrel.quantize import QUANTIZERS
from pytest_qrel.runtimes.checks import is_runtime_method

# Keep training-based methods short here; their own tests cover the defaults.
FAST_OPTIONS = {name: {"steps": 2, "batch_size": 16} for name in QUANTIZERS.names() if name.startswith("qat")}
# RepQ-ViT's defaults are the reference code, whose softmax / post-LayerNorm grids hold 2^b + 1 values;
# these options put every tensor on a true b-bit grid.
FAST_OPTIONS["repq_vit"] = {"log2_levels": "strict", "zero_point": "rounded"}
WEIGHT_ONLY = {"raana"}

SUITE = """\
name: verify
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
quantizers:
  Q: {{method: {method}, weight_bits: {bits}, act_bits: {act}, calibration: {{samples: 32}}, verify: true, allow_float_paths: {allow}, options: {options}}}
checks: ["all top1 >= 0"]
"""


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)


def suite_for(tmp_path, method: str, bits: int, *, allow: bool = True, options: dict | None = None):
    act = "null" if method in WEIGHT_ONLY else bits
    options = {**FAST_OPTIONS.get(method, {}), **(options or {})}
    path = tmp_path / f"{method}{bits}.yaml"
    path.write_text(SUITE.format(method=method, bits=bits, act=act, options=options or "{}",
                                 allow="true" if allow else "false"))
    return load_suite(path)


def float_ops(report) -> set[tuple[str, str]]:
    return {(p.module.split(".")[-1] if p.module.startswith("blocks.") else p.module, p.op) for p in report.float_paths}


# What each method leaves in floating point on a timm ViT (their docstrings and the README say so):
# the patch embedding (a weight-only method: its weight) and, when activations are quantized, the
# fused attention (q, k, v and the softmax output). RepQ-ViT quantizes all of them.
PATCH = ("patch_embed.proj", "conv2d")
ATTENTION = ("attn", "scaled_dot_product_attention")
EXPECTED_FLOAT = {name: {PATCH, ATTENTION} for name in QUANTIZERS.names()}
EXPECTED_FLOAT.update({"repq_vit": set(), "raana": {PATCH}})
# qat_lora evaluates its LoRA adapters unmerged (the CLIP paper's forward): a float linear beside each layer
EXPECTED_FLOAT["qat_lora"] = {PATCH, ATTENTION, *((layer, "linear") for layer in ("qkv", "proj", "fc1", "fc2", "head"))}


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("method", [m for m in QUANTIZERS.names() if not is_runtime_method(m)])  # runtimes: their census
def test_every_method_computes_on_its_integer_grid(tmp_path, method, bits):
    engine = Engine(baseline_dir=tmp_path)
    engine.quantized_module(suite_for(tmp_path, method, bits), "vit", "Q")
    report = engine.verified["Q"]
    assert report.ok, report.summary()
    assert any(c.kind == "weight" for c in report) and all(c.distinct <= 2 ** c.bits for c in report if c.distinct)
    assert float_ops(report) == EXPECTED_FLOAT[method], report.summary()
    assert report.integer_only == (method == "repq_vit")


def test_float_paths_fail_verify_unless_allowed(tmp_path):
    with pytest.raises(SimulationError, match="float path") as info:
        Engine(baseline_dir=tmp_path).quantized_module(suite_for(tmp_path, "minmax", 8, allow=False), "vit", "Q")
    msg = str(info.value)
    assert "patch_embed.proj: conv2d" in msg and "scaled_dot_product_attention" in msg
    assert "allow_float_paths: true" in msg
    # all of RepQ-ViT computes on integer grids: strict verify passes
    engine = Engine(baseline_dir=tmp_path)
    engine.quantized_module(suite_for(tmp_path, "repq_vit", 4, allow=False), "vit", "Q")
    assert engine.verified["Q"].integer_only


def test_unmerged_qat_lora_reports_its_float_adapters(tmp_path):
    engine = Engine(baseline_dir=tmp_path)
    engine.quantized_module(suite_for(tmp_path, "qat_lora", 8, options={"lora_merge": False}), "vit", "Q")
    linears = {p.module for p in engine.verified["Q"].float_paths if p.op == "linear"}
    assert linears and all(name.endswith(("qkv", "proj", "fc1", "fc2", "head")) for name in linears)


def test_a_failed_verification_is_a_clear_error(tmp_path, monkeypatch):
    import pytest_qrel.quantize.minmax as minmax

    real = minmax.minmax

    def leaky(model, config, calibration, *, labels=None):
        qmodel = real(model, config, calibration, labels=labels)
        lin = next(m for m in qmodel.modules() if hasattr(m, "weight_bits"))
        with torch.no_grad():
            lin.weight.add_(torch.randn_like(lin.weight) * 1e-3)  # off the grid
        return qmodel

    monkeypatch.setitem(QUANTIZERS._entries, "minmax", leaky)
    with pytest.raises(SimulationError, match="quantizer 'Q' failed verify_simulation"):
        Engine(baseline_dir=tmp_path).quantized_module(suite_for(tmp_path, "minmax", 4), "vit", "Q")


def test_verify_must_be_a_boolean(tmp_path):
    path = tmp_path / "s.yaml"
    text = SUITE.format(method="minmax", bits=8, act=8, options="{}", allow="false")
    path.write_text(text.replace("verify: true", "verify: yes please"))
    with pytest.raises(SpecError, match="'verify' must be true or false"):
        load_suite(path)
    path.write_text(text.replace("allow_float_paths: false", "allow_float_paths: sometimes"))
    with pytest.raises(SpecError, match="'allow_float_paths' must be true or false"):
        load_suite(path)


SMOOTHQUANT_REFERENCE = {"act_quant": "per_token", "quantize_bmm_input": True, "head": "fp32"}  # the README's recipe


def test_a_float_head_is_named_as_a_float_path_never_as_none(tmp_path):
    # head: fp32 leaves the classifier an nn.Linear: a float path (the linear computes in float),
    # not a tensor check with "None distinct values, limit None (None bits)".
    with pytest.raises(SimulationError) as info:
        Engine(baseline_dir=tmp_path).quantized_module(
            suite_for(tmp_path, "smoothquant", 8, allow=False, options=SMOOTHQUANT_REFERENCE), "vit", "Q")
    msg = str(info.value)
    assert "None" not in msg
    assert "quantized tensors on their grid;" in msg and "FAIL" not in msg  # every quantized tensor is fine
    assert "\n  head: linear with input, weight in floating point" in msg
    assert msg.endswith("(fix: quantize those operations, or set 'allow_float_paths: true' on the quantizer to accept them)")
    engine = Engine(baseline_dir=tmp_path)  # accepted float paths: the recipe verifies
    engine.quantized_module(suite_for(tmp_path, "smoothquant", 8, allow=True, options=SMOOTHQUANT_REFERENCE), "vit", "Q")
    report = engine.verified["Q"]
    assert report.ok and ("head", "linear") in {(p.module, p.op) for p in report.float_paths}
    assert "None" not in report.summary()


def test_an_unwrapped_linear_is_listed_even_without_a_probe():
    from torch import nn

    from pytest_qrel.quantize.verify import FloatPath, TensorCheck, verify_simulation

    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    report = verify_simulation(model, torch.zeros(2, 4), probe_images=0)
    assert report.float_paths == [FloatPath("1", "linear", ("weight",), 0)]
    assert str(report.float_paths[0]) == "1: linear with weight in floating point (an nn.Linear left unwrapped, not run by the probe)"
    assert verify_simulation(model, torch.zeros(2, 4), probe_images=0, allow_float_linears=True).float_paths == []
    never = TensorCheck("blocks.0.fc1", "activation", 4, None, 16, False, "input quantizer never ran: the forward bypasses it")
    assert str(never) == "FAIL blocks.0.fc1 activation (4 bits): input quantizer never ran: the forward bypasses it"
