"""Tests of pytest_qrel.quantize: the minmax method, the fake-quant primitives and verify_simulation.

Correctness is checked against an independent oracle (PyTorch's own ``torch.ao`` min/max observers
and integer ``quantize_per_tensor`` / ``quantize_per_channel`` kernels), never against numbers
taken from this implementation's output.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

from pytest_qrel.errors import QuantOptionError, UnknownNameError
from pytest_qrel.quantize import (
    QUANTIZERS,
    ActQuantizer,
    FakeQuantLinear,
    asymmetric_qparams,
    calibrate,
    fake_quantize_per_tensor,
    fake_quantize_reference,
    quantize,
    quantize_weight_per_channel_symmetric,
    replace_linears,
    signed_range,
    symmetric_qparams,
    unsigned_range,
    verify_simulation,
)
from pytest_qrel.quantize.verify import assert_simulation_ok
from pytest_qrel.quantize import QuantConfig, validate_quantizer
from tinyvit import make_vit, logits, rel_error, quant_config, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

timm = pytest.importorskip("timm")

N_LINEARS = 2 * 4 + 1  # depth 2 x (qkv, proj, fc1, fc2) + head


def spec(wb, ab, *, options=None) -> QuantConfig:
    return quant_config("minmax", wb, ab, options=options)



@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return random_images(64, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return random_images(128, 2)


@pytest.fixture(scope="module")
def fp32_logits(vit, images) -> torch.Tensor:
    with torch.no_grad():
        return vit(images)


@pytest.fixture(scope="module")
def qmodels(vit, calib):
    """Quantized models by (weight_bits, act_bits), built once per module."""
    cache: dict[tuple, nn.Module] = {}

    def get(wb, ab):
        if (wb, ab) not in cache:
            cache[wb, ab] = quantize(vit, spec(wb, ab), calib)
        return cache[wb, ab]

    return get




# ------------------------------------------------------------------------------------------------
# minmax against FP32 and against an independent PyTorch reference
# ------------------------------------------------------------------------------------------------


def test_minmax_is_registered():
    assert "minmax" in QUANTIZERS
    assert "batch_size" in QUANTIZERS.meta("minmax")["options"]


def test_w8a8_is_close_to_fp32(qmodels, images, fp32_logits):
    out = logits(qmodels(8, 8), images)
    assert rel_error(out, fp32_logits) < 0.05
    agreement = (out.argmax(1) == fp32_logits.argmax(1)).float().mean().item()
    assert agreement >= 0.9


def test_error_grows_as_bits_shrink(qmodels, images, fp32_logits):
    errors = {b: rel_error(logits(qmodels(b, b), images), fp32_logits) for b in (8, 6, 4)}
    assert errors[8] < errors[6] < errors[4], errors
    assert errors[4] > 2 * errors[8], errors


def _reference_minmax(model, calib, images, wb, ab):
    """minmax rebuilt from PyTorch's observers and INTEGER quantize kernels (independent of our code)."""
    observer = pytest.importorskip("torch.ao.quantization.observer")
    ref = copy.deepcopy(model).eval()
    linears = {n: m for n, m in ref.named_modules() if isinstance(m, nn.Linear)}
    amax = 2**ab - 1
    obs = {n: observer.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                                      quant_max=amax) for n in linears}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: obs[n](args[0])) for n, m in linears.items()]
    with torch.no_grad():
        ref(calib)  # FP32 model, one batch (minmax's default batch is 64 = len(calib))
    for h in hooks:
        h.remove()
    wmax = 2 ** (wb - 1) - 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for n, m in linears.items():
            pc = observer.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                   quant_min=-wmax, quant_max=wmax)
            pc(m.weight.detach())
            s, z = pc.calculate_qparams()
            m.weight.data = torch.quantize_per_channel(m.weight.detach(), s, z, 0, torch.qint8).dequantize()
            s, z = obs[n].calculate_qparams()

            def pre(mod, args, s=float(s), z=int(z)):
                q = torch.quantize_per_tensor(args[0], s, z, torch.quint8).int_repr().to(torch.int32)
                return ((q.clamp(0, amax) - z).to(torch.float32) * s,)

            m.register_forward_pre_hook(pre)
        try:
            return logits(ref, images)
        except (RuntimeError, NotImplementedError) as exc:  # quantized tensors removed from a future torch
            pytest.skip(f"PyTorch integer quantize kernels unavailable: {exc}")


@pytest.mark.parametrize("wb,ab", [(8, 8), (4, 8), (8, 4), (4, 4), (3, 5), (2, 2)])
def test_minmax_equals_pytorch_integer_reference(vit, calib, images, qmodels, wb, ab):
    expected = _reference_minmax(vit, calib, images, wb, ab)
    torch.testing.assert_close(logits(qmodels(wb, ab), images), expected, rtol=0, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# structure: copy, replacement, weights quantized once
# ------------------------------------------------------------------------------------------------


def test_input_model_untouched(calib):
    model = make_vit().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    types_before = [type(m) for m in model.modules()]
    q = quantize(model, spec(4, 4), calib)
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [type(m) for m in model.modules()] == types_before
    assert model.training and not q.training
    assert q is not model


def test_every_linear_replaced_conv_left_fp32(vit, qmodels):
    q = qmodels(8, 8)
    assert not [n for n, m in q.named_modules() if isinstance(m, nn.Linear)]
    fq = {n for n, m in q.named_modules() if isinstance(m, FakeQuantLinear)}
    assert fq == {n for n, m in vit.named_modules() if isinstance(m, nn.Linear)}
    assert len(fq) == N_LINEARS and "head" in fq
    assert type(q.patch_embed.proj) is nn.Conv2d
    torch.testing.assert_close(q.patch_embed.proj.weight, vit.patch_embed.proj.weight, rtol=0, atol=0)


def test_weights_quantized_once_and_activations_in_every_forward(vit, calib, images, monkeypatch):
    from pytest_qrel.quantize import fakequant

    calls = {"per_channel": 0, "per_tensor": 0}
    per_channel, per_tensor = torch.fake_quantize_per_channel_affine, fakequant.fake_quantize_per_tensor

    def count_channel(*a, **k):
        calls["per_channel"] += 1
        return per_channel(*a, **k)

    def count_tensor(*a, **k):
        calls["per_tensor"] += 1
        return per_tensor(*a, **k)

    monkeypatch.setattr(torch, "fake_quantize_per_channel_affine", count_channel)
    monkeypatch.setattr(fakequant, "fake_quantize_per_tensor", count_tensor)  # ATen's bits, the fast path in evaluation
    q = quantize(vit, spec(8, 8), calib)
    assert calls["per_channel"] == N_LINEARS
    assert calls["per_tensor"] == 0  # calibration observes, it does not quantize
    logits(q, images)
    logits(q, images)
    assert calls["per_channel"] == N_LINEARS  # no weight re-quantization in forward
    assert calls["per_tensor"] == 2 * N_LINEARS  # one fused activation fake-quant per linear per forward


def test_weight_only_when_act_bits_is_none(vit, calib, images, fp32_logits, monkeypatch):
    q = quantize(vit, spec(8, None), calib)
    assert all(m.input_quantizer is None for m in q.modules() if isinstance(m, FakeQuantLinear))
    report = verify_simulation(q, images)
    assert report.ok and {c.kind for c in report} == {"weight"}
    out = logits(q, images)
    assert not torch.equal(out, fp32_logits)
    assert rel_error(out, fp32_logits) < 0.05


def test_deterministic_and_calibration_matters(vit, calib, images):
    a, b = quantize(vit, spec(4, 4), calib), quantize(vit, spec(4, 4), calib.clone())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(logits(a, images), logits(b, images))
    c = quantize(vit, spec(4, 4), calib * 3.0)
    assert not torch.equal(a.blocks[0].attn.qkv.input_quantizer.scale, c.blocks[0].attn.qkv.input_quantizer.scale)


def test_batch_size_option_does_not_change_ranges(vit, calib):
    one = quantize(vit, spec(8, 8), calib)
    many = quantize(vit, spec(8, 8, options={"batch_size": 16}), calib)
    for (n, m1), m2 in zip(one.named_modules(), many.modules()):
        if isinstance(m1, ActQuantizer):
            # ranges from the same images (the FP32 forward may differ in the last ulp between batchings)
            torch.testing.assert_close(m1.min_val, m2.min_val, rtol=1e-5, atol=1e-6, msg=n)
            torch.testing.assert_close(m1.max_val, m2.max_val, rtol=1e-5, atol=1e-6, msg=n)


# ------------------------------------------------------------------------------------------------
# verify_simulation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [8, 6, 4, 2])
def test_verify_simulation_within_grid(qmodels, images, bits):
    report = verify_simulation(qmodels(bits, bits), images)
    assert report.ok, report.summary()
    assert len(report) == 2 * N_LINEARS
    for check in report:
        assert check.bits == bits and check.limit == 2**bits
        assert 1 < check.distinct <= 2**bits
        if check.kind == "weight":  # restricted symmetric range: 2^b - 1 levels at most
            assert check.distinct <= 2**bits - 1


def test_weight_and_act_bits_are_independent(qmodels, images):
    report = verify_simulation(qmodels(4, 8), images)
    assert report.ok
    assert max(c.distinct for c in report if c.kind == "weight") <= 15
    assert max(c.distinct for c in report if c.kind == "activation") > 16  # 8-bit inputs use more than 16 levels
    report = verify_simulation(qmodels(8, 4), images)
    assert report.ok
    assert max(c.distinct for c in report if c.kind == "weight") > 16
    assert max(c.distinct for c in report if c.kind == "activation") <= 16


def _failing(report):
    return {(c.module, c.kind) for c in report.failures}


def test_verify_fails_on_tampered_weight(qmodels, images):
    q = copy.deepcopy(qmodels(4, 4))
    with torch.no_grad():
        q.head.weight.add_(torch.randn_like(q.head.weight) * 1e-3)
    report = verify_simulation(q, images)
    assert not report.ok and _failing(report) == {("head", "weight")}
    with pytest.raises(AssertionError, match="head weight"):
        assert_simulation_ok(q, images)


def test_verify_fails_on_unquantized_activation(qmodels, images):
    q = copy.deepcopy(qmodels(4, 4))
    q.blocks[1].mlp.fc1.input_quantizer.mode = "off"
    report = verify_simulation(q, images)
    assert _failing(report) == {("blocks.1.mlp.fc1", "activation")}


def test_verify_fails_on_unwrapped_linear(vit, qmodels, images):
    q = copy.deepcopy(qmodels(4, 4))
    q.head = copy.deepcopy(vit.head)
    report = verify_simulation(q, images)
    # A float nn.Linear is a float path (what ``head: fp32`` leaves), not a tensor off its grid:
    # every quantized tensor is on its grid, but ``verify: true`` fails unless float paths are allowed.
    assert _failing(report) == set() and report.ok
    before = {p.module for p in verify_simulation(qmodels(4, 4), images).float_paths}
    assert {p.module for p in report.float_paths} - before == {"head"}
    assert not report.passes() and report.passes(allow_float_paths=True)


def test_verify_fails_when_forward_bypasses_input_quantizer(qmodels, images):
    class Bypass(FakeQuantLinear):
        def forward(self, x):
            return nn.functional.linear(x, self.weight, self.bias)

    q = copy.deepcopy(qmodels(4, 4))
    q.blocks[0].attn.proj.__class__ = Bypass
    report = verify_simulation(q, images)
    assert _failing(report) == {("blocks.0.attn.proj", "activation")}
    assert [c.distinct for c in report.failures] == [None]


def test_verify_with_nothing_quantized_is_not_ok(vit, images):
    report = verify_simulation(copy.deepcopy(vit), images, allow_float_linears=True)
    assert len(report) == 0 and not report.ok


# ------------------------------------------------------------------------------------------------
# float paths: matmul / linear / conv whose operands are not on an integer grid
# ------------------------------------------------------------------------------------------------


def _paths(report):
    return {(p.module, p.op, p.operands) for p in report.float_paths}


def test_minmax_reports_the_patch_embedding_and_attention_as_float(qmodels, images):
    report = verify_simulation(qmodels(4, 4), images)
    assert report.ok and not report.integer_only and not report.passes()
    assert report.passes(allow_float_paths=True)
    sdpa = ("query", "key", "value", "attention weights")
    assert _paths(report) == {("patch_embed.proj", "conv2d", ("input", "weight")),
                              ("blocks.0.attn", "scaled_dot_product_attention", sdpa),
                              ("blocks.1.attn", "scaled_dot_product_attention", sdpa)}
    assert report.ops == 2 * 4 + 2 + 1 + 1  # linears, fused attentions, head, patch embedding
    assert "float path" in report.summary() and "patch_embed.proj: conv2d" in report.summary()


def test_quantized_patch_embedding_leaves_only_attention(vit, calib, images):
    q = quantize(vit, spec(4, 4, options={"patch_embed": "quantized"}), calib)
    assert {op for _, op, _ in _paths(verify_simulation(q, images))} == {"scaled_dot_product_attention"}


def test_weight_only_expects_float_activations(qmodels, images):
    report = verify_simulation(qmodels(4, None), images)
    assert _paths(report) == {("patch_embed.proj", "conv2d", ("weight",))}  # attention: activations only
    strict = verify_simulation(qmodels(4, None), images, weight_only=False)
    assert ("blocks.0.attn", "scaled_dot_product_attention", ("query", "key", "value", "attention weights")) in _paths(strict)


class _Tail(nn.Module):
    """A model around a quantized one, with extra matmuls of the kinds a forward can hide."""

    def __init__(self, inner: nn.Module, mode: str):
        super().__init__()
        self.inner, self.mode = inner, mode
        self.register_buffer("table", torch.randn(8, 5))
        self.quant = FakeQuantLinear(nn.Linear(8, 5), weight_bits=4, act_bits=4)

    def forward(self, x):
        y = self.inner(x)
        if self.mode == "buffer":  # a float buffer multiplied in (a zero-shot text head, say)
            return y @ self.table
        if self.mode == "views":  # grid values reshaped and copied, then multiplied: still integer
            q = self.quant.input_quantizer(y)
            w = self.quant.weight.t().contiguous().t()
            return torch.matmul(q.reshape(-1, 8).clone(), w.T)
        return y


def test_float_operands_are_found_through_views_and_buffers(qmodels, calib, images):
    base = copy.deepcopy(qmodels(4, 4))
    report = verify_simulation(_Tail(base, "buffer"), images)
    assert ("", "matmul", ("a", "b (a model parameter or buffer)")) in _paths(report)
    views = _Tail(copy.deepcopy(base), "views")
    calibrate(views.quant, torch.randn(64, 8))
    report = verify_simulation(views, images, allow_float_linears=True)
    assert not any(module == "" for module, _, _ in _paths(report)), report.summary()


# ------------------------------------------------------------------------------------------------
# primitives: ranges, qparams, fused op vs round/clamp formula
# ------------------------------------------------------------------------------------------------


def test_ranges():
    assert signed_range(8) == (-127, 127) and signed_range(4) == (-7, 7) and signed_range(2) == (-1, 1)
    assert unsigned_range(8) == (0, 255) and unsigned_range(2) == (0, 3)


def test_reference_rounds_half_to_even():
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, 3.49, 300.0, -9.0])
    out = fake_quantize_reference(x, 1.0, 2, 0, 255)
    assert out.tolist() == [0.0, 2.0, 2.0, 0.0, 3.0, 253.0, -2.0]


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 6, 7, 8])
def test_fused_ops_equal_round_clamp_formula(bits):
    g = torch.Generator().manual_seed(bits)
    qmin, qmax = unsigned_range(bits)
    scale = float(torch.rand(1, generator=g)) * 0.3 + 0.01
    zp = int(torch.randint(qmin, qmax + 1, (1,), generator=g))
    x = torch.randn(4096, generator=g) * scale * 2**bits / 3
    ties = (torch.randint(-2**bits, 2**bits, (512,), generator=g) + 0.5) * scale  # exact .5 codes (up to fp)
    x = torch.cat([x, ties, torch.tensor([0.0, 1e6, -1e6])])
    fused = torch.fake_quantize_per_tensor_affine(x, scale, zp, qmin, qmax)
    assert torch.equal(fused, fake_quantize_reference(x, scale, zp, qmin, qmax))
    fused_t = torch.fake_quantize_per_tensor_affine(x, torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), qmin, qmax)
    assert torch.equal(fused_t, fused)
    # the evaluation path (plain in-place ops) gives ATen's bits, and leaves its input alone
    x_before = x.clone()
    fast = fake_quantize_per_tensor(x.reshape(-1, 1), torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), qmin, qmax)
    assert torch.equal(fast.reshape(-1), fused) and torch.equal(x, x_before)
    # with autograd ATen's op runs: the straight-through gradient (1 inside the range, 0 outside)
    xg = x.clone().requires_grad_(True)
    fake_quantize_per_tensor(xg, torch.tensor(scale), torch.tensor(zp, dtype=torch.int32), qmin, qmax).sum().backward()
    inside = ((torch.round(x * (1.0 / torch.tensor(scale))) + zp) >= qmin) & ((torch.round(x * (1.0 / torch.tensor(scale))) + zp) <= qmax)
    assert torch.equal(xg.grad, inside.float())

    smin, smax = signed_range(bits)
    w = torch.randn(16, 33, generator=g)
    s, z = symmetric_qparams(w.abs().amax(1), bits)
    fused = torch.fake_quantize_per_channel_affine(w, s, z, 0, smin, smax)
    assert torch.equal(fused, fake_quantize_reference(w, s, z, smin, smax, axis=0))
    wt = w.t().contiguous()
    assert torch.equal(torch.fake_quantize_per_channel_affine(wt, s, z, 1, smin, smax),
                       fake_quantize_reference(wt, s, z, smin, smax, axis=1))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_asymmetric_qparams_match_pytorch_observer(bits):
    observer = pytest.importorskip("torch.ao.quantization.observer")
    for seed, shift in [(0, 0.0), (1, 3.0), (2, -3.0)]:
        x = torch.randn(1000, generator=torch.Generator().manual_seed(seed)) + shift
        obs = observer.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0,
                                      quant_max=2**bits - 1)
        obs(x)
        s_ref, z_ref = obs.calculate_qparams()
        s, z = asymmetric_qparams(x.min(), x.max(), bits)
        assert torch.equal(s.reshape(1), s_ref) and int(z) == int(z_ref)


def test_qparams_zero_is_representable_and_zero_rows_are_safe():
    s, z = asymmetric_qparams(0.5, 2.0, 8)  # all-positive range: min is clamped to 0
    assert int(z) == 0 and torch.isclose(s, torch.tensor(2.0 / 255))
    s, z = asymmetric_qparams(0.0, 0.0, 4)  # constant zero activation
    assert s > 0 and torch.isfinite(s)
    w = torch.randn(4, 8)
    w[2] = 0.0
    wq = quantize_weight_per_channel_symmetric(w, 4)
    assert torch.isfinite(wq).all() and torch.equal(wq[2], torch.zeros(8))
    # the row maximum is exactly on the grid's end; the weight is not modified in place
    assert torch.allclose(wq.abs().amax(1)[[0, 1, 3]], w.abs().amax(1)[[0, 1, 3]])
    assert not torch.equal(w, wq)


def test_act_quantizer_protocol():
    aq = ActQuantizer(4)
    with pytest.raises(RuntimeError, match="no input was observed"):
        aq.freeze()
    batches = [torch.randn(10, 5) + k for k in (-1.0, 0.0, 2.0)]
    for b in batches:
        assert aq(b) is b  # observe mode passes through
    allx = torch.cat(batches)
    assert aq.min_val == allx.min() and aq.max_val == allx.max()
    aq.freeze()
    s, z = asymmetric_qparams(allx.min(), allx.max(), 4)
    assert torch.equal(aq.scale, s) and torch.equal(aq.zero_point, z)
    y = aq(allx)
    assert torch.equal(y, fake_quantize_reference(allx, s, z, 0, 15))
    assert torch.unique(y).numel() <= 16


def test_replace_linears_shared_and_skipped():
    shared = nn.Linear(4, 4)
    model = nn.Sequential(shared, nn.ReLU(), shared, nn.Sequential(nn.Linear(4, 2)))
    names = replace_linears(model, lambda name, lin: None if name == "3.0" else
                            FakeQuantLinear(lin, weight_bits=8, act_bits=8))
    assert names == ["0", "2"]
    assert model[0] is model[2] and isinstance(model[0], FakeQuantLinear)
    assert type(model[3][0]) is nn.Linear
    with pytest.raises(ValueError):
        replace_linears(nn.Linear(2, 2), lambda n, lin: None)
    calibrate(model, torch.randn(8, 4), batch_size=3)
    assert model[0].weight_frozen and model[0].input_quantizer.mode == "quantize"


# ------------------------------------------------------------------------------------------------
# option validation (plain data; the suite loader locates these errors, see test_quant_validation.py)
# ------------------------------------------------------------------------------------------------


BAD_BITS = [1, 9, "4", 4.0, True]


@pytest.mark.parametrize(
    "field,value",
    [("weight_bits", v) for v in [*BAD_BITS, None]] + [("act_bits", v) for v in BAD_BITS],  # act_bits: null is valid
)
def test_bad_bits_raise_quant_option_error(vit, calib, field, value):
    bits = {"weight_bits": 4, "act_bits": 4, field: value}
    with pytest.raises(QuantOptionError) as info:
        quantize(vit, spec(bits["weight_bits"], bits["act_bits"]), calib)
    err = info.value
    assert err.option == field
    msg = str(err)
    assert "use an integer from 2 to 8" in msg and repr(value) in msg
    assert "quantizers." not in msg and "yaml" not in msg  # plain data: no suite path in quantize/ errors


def test_unknown_option_names_it_with_did_you_mean(vit, calib):
    with pytest.raises(QuantOptionError) as info:
        quantize(vit, spec(8, 8, options={"batchsize": 32}), calib)
    msg = str(info.value)
    assert info.value.option == "batchsize"
    assert "batch_size" in msg and "did you mean" in msg


@pytest.mark.parametrize("value", [0, -1, 2.5, "64", True])
def test_bad_option_value_names_the_option(vit, calib, value):
    with pytest.raises(QuantOptionError) as info:
        quantize(vit, spec(8, 8, options={"batch_size": value}), calib)
    assert info.value.option == "batch_size" and "positive integer" in str(info.value)


def test_unknown_method():
    with pytest.raises(UnknownNameError, match="did you mean 'minmax'"):
        validate_quantizer("minmaks", 8, 8, {})


def test_quantize_takes_a_validated_config(vit, calib):
    with pytest.raises(TypeError, match="QuantConfig"):
        quantize(vit, {"method": "minmax", "weight_bits": 8, "act_bits": 8}, calib)
