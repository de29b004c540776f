"""Tests of the ``repq_vit`` method, its quantized attention and log-sqrt(2) quantizer.

Oracles: timm's own ``Attention`` (quantizers off), hand-computed log-sqrt(2) values, numpy
re-statements of the reference code's rules, the FP32 model (reparameterization is exact before
rounding) and the ``minmax`` method (the behaviour RepQ-ViT is for: outlier channels after LayerNorm).
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from torch import nn

from pytest_qrel.errors import QuantOptionError
from pytest_qrel.quantize import QUANTIZERS, FakeQuantLinear, quantize, verify_simulation
from pytest_qrel.quantize.attention import (
    LogSqrt2Quantizer,
    QuantAttention,
    QuantOperand,
    log_sqrt2_quantize,
    replace_attention,
)
from pytest_qrel.quantize.observers import ObservedActQuantizer, PercentileSearchObserver, quantiles
from pytest_qrel.quantize.repq_vit import (
    FakeQuantConv2d,
    repq_weight_quantizer,
    reparameterizable_pairs,
    scale_reparameterize,
)
from pytest_qrel.quantize import QuantConfig

from tinyvit import make_vit, logits, rel_error, quant_config, random_images

timm = pytest.importorskip("timm")
from timm.models.vision_transformer import Attention  # noqa: E402  (after the importorskip)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

N_LINEARS = 2 * 4 + 1
OUTLIER_CHANNELS = [3, 17, 40]


def make_outlier_vit(seed: int = 0, factor: float = 50.0) -> nn.Module:
    """The test ViT with a few post-LayerNorm outlier channels, as trained ViTs have.

    LayerNorm gamma and beta of OUTLIER_CHANNELS are multiplied by ``factor`` and the matching input
    columns of the next Linear divided by it: the FP32 function is unchanged, but those channels of
    the LayerNorm output are ``factor`` times wider than the rest.
    """
    vit = make_vit(seed)
    with torch.no_grad():
        for block in vit.blocks:
            for norm, linear in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
                norm.weight[OUTLIER_CHANNELS] *= factor
                norm.bias[OUTLIER_CHANNELS] *= factor
                linear.weight[:, OUTLIER_CHANNELS] /= factor
    return vit


def spec(wb=4, ab=4, *, method="repq_vit", options=None) -> QuantConfig:
    return quant_config(method, wb, ab, options=options)



@pytest.fixture(scope="module")
def outlier_vit() -> nn.Module:
    return make_outlier_vit()


@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return random_images(32, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return random_images(96, 2)


@pytest.fixture(scope="module")
def qmodels(vit, outlier_vit, calib):
    cache: dict[tuple, nn.Module] = {}

    def get(wb, ab, *, method="repq_vit", outliers=False, **options):
        key = (wb, ab, method, outliers, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = quantize(outlier_vit if outliers else vit, spec(wb, ab, method=method, options=options), calib)
        return cache[key]

    return get




# ------------------------------------------------------------------------------------------------
# quantized attention
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["plain", "qk_norm", "no_qkv_bias"])
def test_quant_attention_off_equals_timm(variant):
    torch.manual_seed(0)
    kwargs = {"plain": dict(qkv_bias=True), "qk_norm": dict(qkv_bias=True, qk_norm=True, norm_layer=nn.LayerNorm),
              "no_qkv_bias": dict(qkv_bias=False)}[variant]
    attn = Attention(64, num_heads=4, **kwargs).eval()
    with torch.no_grad():  # non-trivial norms
        for m in attn.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.normal_(1.0, 0.3)
                m.bias.normal_(0.0, 0.3)
    x = torch.randn(3, 17, 64)
    ref = attn(x)
    q = QuantAttention(attn, act_bits=None)
    torch.testing.assert_close(q(x), ref, rtol=1e-5, atol=1e-6)
    causal = torch.tril(torch.ones(17, 17, dtype=torch.bool))
    torch.testing.assert_close(q(x, attn_mask=causal), attn(x, attn_mask=causal), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(q(x, is_causal=True), attn(x, is_causal=True), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(q(x, is_causal=True), ref, atol=1e-3)  # the mask is honoured, not ignored


def test_quant_attention_with_quantizers_switched_off_equals_timm(qmodels, vit, images):
    q = copy.deepcopy(qmodels(4, 4))
    for m in q.modules():
        if isinstance(m, QuantAttention):
            for op in (m.q_operand, m.k_operand, m.v_operand, m.attn_operand):
                op.input_quantizer.mode = "off"
    x = torch.randn(2, 17, 64)
    for qa, ref in zip([m for m in q.modules() if isinstance(m, QuantAttention)],
                       [m for m in vit.modules() if isinstance(m, Attention)]):
        # same function as timm's block attention apart from the quantized qkv/proj linears
        fq = copy.deepcopy(ref)
        fq.qkv, fq.proj = qa.qkv, qa.proj
        torch.testing.assert_close(qa(x), fq(x), rtol=1e-5, atol=1e-5)


def test_quant_attention_quantizes_the_four_operands():
    attn = Attention(64, num_heads=4, qkv_bias=True).eval()
    seen = {}

    def factory(bits):
        return ObservedActQuantizer(bits, PercentileSearchObserver())

    q = QuantAttention(attn, act_bits=4, act_quantizer=factory, softmax_quantizer="log_sqrt2")
    assert q.softmax_kind == "log_sqrt2" and isinstance(q.attn_operand.input_quantizer, LogSqrt2Quantizer)
    for name in ("q_operand", "k_operand", "v_operand", "attn_operand"):
        op = getattr(q, name)
        op.input_quantizer.calibrate_once()
        op.input_quantizer.register_forward_hook(lambda m, a, out, n=name: seen.setdefault(n, out))
    q(torch.randn(2, 17, 64))
    assert set(seen) == {"q_operand", "k_operand", "v_operand", "attn_operand"}
    assert seen["q_operand"].shape == seen["k_operand"].shape == (2, 4, 17, 16)
    assert seen["attn_operand"].shape == (2, 4, 17, 17)
    for out in seen.values():
        assert out.unique().numel() <= 16
    uniform = QuantAttention(attn, act_bits=4, softmax_quantizer="uniform")
    assert uniform.softmax_kind == "uniform" and type(uniform.attn_operand.input_quantizer).__name__ == "ActQuantizer"
    with pytest.raises(ValueError):
        QuantAttention(attn, act_bits=4, softmax_quantizer="log2")


def test_replace_attention_only_exact_timm_class():
    class MyAttention(Attention):
        pass

    model = nn.Sequential(Attention(64, 4), MyAttention(64, 4), nn.Linear(64, 64))
    names = replace_attention(model, lambda name, a: QuantAttention(a, act_bits=None))
    assert names == ["0"] and isinstance(model[0], QuantAttention) and type(model[1]) is MyAttention


# ------------------------------------------------------------------------------------------------
# log-sqrt(2) quantizer
# ------------------------------------------------------------------------------------------------


S2 = math.sqrt(2.0)


def test_log_sqrt2_hand_computed_values():
    x = torch.tensor([2.0, 1.0, 0.75, 0.5, 0.3, 0.2, 0.125, 0.1, 0.05, 0.0])
    # codes round(-2 log2 x): -2->0, 0, 0.83->1, 2, 3.47->3, 4.64->5, 6, 6.64->7, 8.64->9, inf
    strict = [1.0, 1.0, S2 / 2, 0.5, S2 / 4, S2 / 8, 0.125, 0.0, 0.0, 0.0]  # 3 bits: code 7 means zero
    reference = [1.0, 1.0, S2 / 2, 0.5, S2 / 4, S2 / 8, 0.125, S2 / 16, 0.0, 0.0]  # reference: codes >= 8 are 0
    torch.testing.assert_close(log_sqrt2_quantize(x, 1.0, 3, strict=True), torch.tensor(strict), rtol=1e-6, atol=0)
    torch.testing.assert_close(log_sqrt2_quantize(x, 1.0, 3), torch.tensor(reference), rtol=1e-6, atol=0)  # default
    # the scale is the top level: x / s is what is coded
    torch.testing.assert_close(log_sqrt2_quantize(x * 0.5, 0.5, 3, strict=True), torch.tensor(strict) * 0.5,
                               rtol=1e-6, atol=0)


@pytest.mark.parametrize("bits", [2, 3, 4, 6, 8])
def test_log_sqrt2_levels_and_monotone(bits):
    x = torch.cat([torch.zeros(1, dtype=torch.float64),
                   torch.logspace(-140, 0.3, 40000, base=2.0, dtype=torch.float64)])  # sorted, reaches every code
    out = log_sqrt2_quantize(x, 1.0, bits, strict=True)
    assert out.unique().numel() == 2**bits  # 2^b - 1 levels and zero: exactly a b-bit code
    assert bool((out[1:] >= out[:-1]).all())  # monotone non-decreasing
    levels = out.unique()
    nonzero = levels[levels > 0].sort(descending=True).values
    ratio = torch.full((nonzero.numel() - 1,), 2**-0.5, dtype=torch.float64)
    torch.testing.assert_close(nonzero[1:] / nonzero[:-1], ratio, rtol=1e-6, atol=0)  # a sqrt(2) grid
    ref = log_sqrt2_quantize(x, 1.0, bits)  # the default: the reference's form, one value too many
    assert ref.unique().numel() == 2**bits + 1
    differ = out != ref
    expected_code = 2**bits - 1
    top_level = torch.tensor(2.0 ** (-expected_code / 2), dtype=torch.float64)
    assert torch.allclose(ref[differ], top_level)  # only the top code differs


@pytest.mark.parametrize("strict", [False, True])
def test_log_sqrt2_quantizer_scale_search(strict):
    torch.manual_seed(0)
    x = torch.randn(4, 4, 17, 17).mul(3).softmax(-1)
    q = LogSqrt2Quantizer(4, strict=strict)
    q.calibrate_once()
    y = q(x)
    assert q.mode == "quantize"
    candidates = torch.quantile(x.reshape(-1), torch.tensor([0.999, 0.9999, 0.99999]))  # the reference's calls
    assert any(torch.equal(q.scale, c) for c in candidates)
    err = float((y - x).square().mean())
    for c in candidates:
        assert err <= float((log_sqrt2_quantize(x, c, 4, strict=strict) - x).square().mean()) + 1e-12
    assert y.unique().numel() <= 2**4 + (0 if strict else 1) == q.levels
    # the observe / freeze protocol gives the same scale
    p = LogSqrt2Quantizer(4, strict=strict)
    p.observe()
    for part in x.split(2):
        assert p(part) is part
    p.freeze()
    assert torch.equal(p.scale, q.scale)
    # arithmetic="aten": the exact float64-position quantiles of pytest_qrel.quantize.observers.quantiles
    a = LogSqrt2Quantizer(4, strict=strict, arithmetic="aten")
    a.calibrate_once()
    a(x)
    assert any(torch.equal(a.scale, c) for c in quantiles(x.reshape(-1), [0.999, 0.9999, 0.99999]))


# ------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------


def _numpy_reference_weight(w: np.ndarray, bits: int) -> np.ndarray:
    """The reference code's per-channel weight quantization, restated row by row in float64 numpy."""
    out = np.empty_like(w)
    levels = 2**bits - 1
    for c, row in enumerate(w.reshape(w.shape[0], -1)):
        best = None
        for p in (0.999, 0.9999, 0.99999):
            hi, lo = np.percentile(row, p * 100), np.percentile(row, (1 - p) * 100)
            s = (hi - lo) / levels
            z = np.round(-lo / s)
            q = (np.clip(np.round(row / s) + z, 0, levels) - z) * s
            e = np.mean((q - row) ** 2)
            if best is None or e < best[0]:
                best = (e, q)
        out[c] = best[1].reshape(w.shape[1:])
    return out


@pytest.mark.parametrize("bits", [3, 4, 8])
def test_weight_quantizer_matches_reference_rule(bits):
    w = torch.randn(24, 40, generator=torch.Generator().manual_seed(bits)) + torch.linspace(-2, 2, 24)[:, None]
    wq = repq_weight_quantizer(w, bits)
    expected = _numpy_reference_weight(w.double().numpy(), bits)
    np.testing.assert_allclose(wq.double().numpy(), expected, rtol=0, atol=1e-5)
    for row in wq:
        assert row.unique().numel() <= 2**bits
    conv_w = torch.randn(8, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    cq = repq_weight_quantizer(conv_w, bits)
    assert cq.shape == conv_w.shape
    np.testing.assert_allclose(cq.double().numpy(), _numpy_reference_weight(conv_w.double().numpy(), bits), atol=1e-5)


# ------------------------------------------------------------------------------------------------
# scale reparameterization
# ------------------------------------------------------------------------------------------------


def _norm_outputs(model, x):
    """The output of every reparameterizable LayerNorm of ``model`` on ``x`` (FP32 forward)."""
    pairs = reparameterizable_pairs(model)
    outs = {}
    hooks = [norm.register_forward_hook(lambda m, a, out, i=i: outs.__setitem__(i, out))
             for i, (norm, _) in enumerate(pairs)]
    logits(model, x)
    for h in hooks:
        h.remove()
    return pairs, outs


def test_reparameterization_keeps_fp32_function_and_gives_one_scale(outlier_vit, calib, images):
    model = copy.deepcopy(outlier_vit)
    pairs, outs = _norm_outputs(model, calib)
    assert len(pairs) == 4
    calibrated = {}
    for i, (norm, linear) in enumerate(pairs):
        obs = PercentileSearchObserver(per_channel=True)
        obs.update(outs[i])
        s, z = obs.qparams(4)
        assert float(s.max() / s.min()) > 20  # the outlier channels really are wider
        target_scale, target_zp = scale_reparameterize(norm, linear, s, z)
        assert target_scale.dim() == 0 and target_zp.dim() == 0
        assert float(target_scale) == pytest.approx(float(s.mean()), rel=1e-6)
        assert target_zp.is_floating_point() and float(target_zp) == pytest.approx(float(z.float().mean()), rel=1e-6)
        assert float(target_zp) != round(float(target_zp))  # the reference's mean is not rounded
        calibrated[i] = (s, z, target_scale, target_zp)
    # 1. the FP32 function is unchanged
    torch.testing.assert_close(logits(model, images), logits(outlier_vit, images), rtol=1e-4, atol=1e-4)
    # 2. one scale: in units of the per-tensor (s~, z~) the new output is the per-channel code
    #    coordinate x / s_c + z_c of the old one, for every channel
    _, new_outs = _norm_outputs(model, calib)
    for i, (s, z, target_scale, target_zp) in calibrated.items():
        torch.testing.assert_close(new_outs[i] / target_scale + target_zp, outs[i] / s + z, rtol=0, atol=2e-3)


def test_reparameterized_per_tensor_quantization_is_the_per_channel_one():
    torch.manual_seed(0)
    norm, linear = nn.LayerNorm(32), nn.Linear(32, 16)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_(0.0, 0.5)
        norm.weight[[2, 9]] *= 40  # outlier channels, compensated in the next layer
        norm.bias[[2, 9]] *= 40
        linear.weight[:, [2, 9]] /= 40
    x = torch.randn(64, 10, 32)
    with torch.no_grad():
        y = norm(x)
        obs = PercentileSearchObserver(per_channel=True)
        obs.update(y)
        s, z = obs.qparams(4)
        codes_channel = torch.clamp(torch.round(y / s) + z, 0, 15)
        ref = linear((codes_channel - z) * s)
        norm2, linear2 = copy.deepcopy(norm), copy.deepcopy(linear)
        ts, tz = scale_reparameterize(norm2, linear2, s, z, zero_point="rounded")
        assert tz.dtype == torch.int32
        y2 = norm2(x)
        codes_tensor = torch.clamp(torch.round(y2 / ts) + tz, 0, 15)
        assert (codes_tensor == codes_channel).float().mean().item() > 0.999  # equal up to float ties
        # the reference's unrounded mean zero point: the per-tensor grid is shifted by frac(z~) and a
        # share of the values no longer gets the per-channel code
        norm3, linear3 = copy.deepcopy(norm), copy.deepcopy(linear)
        ms, mz = scale_reparameterize(norm3, linear3, s, z)
        assert mz.is_floating_point() and 0.05 < float(mz - torch.floor(mz)) < 0.95
        y3 = norm3(x)
        dequant_mean = (torch.clamp(torch.round(y3 / ms) + mz, 0, 15) - mz) * ms
        dequant_channel = (codes_channel - z) * s
        # the per-channel result in x' units: x' = x / r - b, so x_hat' = (x_hat - x) / r + x'
        same = torch.isclose(dequant_mean, (dequant_channel - norm(x)) / (s / ms) + y3, atol=1e-4)
        assert 1.0 - same.float().mean().item() > 0.5  # the grids are offset by frac(z~) s~
        out = linear2((codes_tensor - tz) * ts)
        assert torch.isclose(out, ref, rtol=1e-4, atol=1e-4).float().mean().item() > 0.99
        # without reparameterization one per-tensor grid loses the narrow channels
        obs_t = PercentileSearchObserver()
        obs_t.update(y)
        st, zt = obs_t.qparams(4)
        coarse = linear((torch.clamp(torch.round(y / st) + zt, 0, 15) - zt) * st)
        exact = linear(y)
        assert rel_error(out, exact) < 0.5 * rel_error(coarse, exact)


def test_reparameterize_creates_missing_bias():
    norm, linear = nn.LayerNorm(8), nn.Linear(8, 4, bias=False)
    x = torch.randn(5, 8)
    before = linear(norm(x))
    scale_reparameterize(norm, linear, torch.linspace(0.1, 2.0, 8), torch.arange(8).float())
    assert linear.bias is not None
    torch.testing.assert_close(linear(norm(x)), before, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        scale_reparameterize(nn.LayerNorm(8), nn.Linear(8, 4), torch.ones(7), torch.zeros(7))


# ------------------------------------------------------------------------------------------------
# the method
# ------------------------------------------------------------------------------------------------


def test_registered_with_options():
    assert "repq_vit" in QUANTIZERS
    assert set(QUANTIZERS.meta("repq_vit")["options"]) == {
        "reparameterize", "softmax_quantizer", "log2_levels", "zero_point", "arithmetic"}


def test_what_is_quantized(vit, qmodels):
    q = qmodels(4, 4)
    assert not [n for n, m in q.named_modules() if type(m) in (nn.Linear, nn.Conv2d, Attention)]
    linears = {n for n, m in q.named_modules() if isinstance(m, FakeQuantLinear)}
    assert linears == {n for n, m in vit.named_modules() if isinstance(m, nn.Linear)} and len(linears) == N_LINEARS
    for m in q.modules():
        if isinstance(m, FakeQuantLinear):
            assert m.weight_bits == 4 and m.act_bits == 4 and m.weight_frozen
            assert isinstance(m.input_quantizer, ObservedActQuantizer) and not m.input_quantizer.per_channel
    conv = q.patch_embed.proj
    assert isinstance(conv, FakeQuantConv2d)
    assert conv.act_bits == 8 and conv.input_quantizer.bits == 8 and conv.weight_bits == 4
    operands = {n for n, m in q.named_modules() if isinstance(m, QuantOperand)}
    assert operands == {f"blocks.{b}.attn.{o}_operand" for b in range(2) for o in ("q", "k", "v", "attn")}
    for b in range(2):
        attn = q.blocks[b].attn
        assert attn.softmax_kind == "log_sqrt2" and isinstance(attn.attn_operand.input_quantizer, LogSqrt2Quantizer)
        assert all(getattr(attn, f"{o}_operand").act_bits == 4 for o in ("q", "k", "v", "attn"))


def test_layernorms_and_weights_are_reparameterized(vit, qmodels):
    q = qmodels(8, 8)
    for b in range(2):
        for norm_name in ("norm1", "norm2"):
            assert not torch.equal(getattr(q.blocks[b], norm_name).weight, getattr(vit.blocks[b], norm_name).weight)
    assert torch.equal(q.norm.weight, vit.norm.weight)  # the final norm feeds the head through pooling: untouched
    plain = qmodels(8, 8, reparameterize=False)
    assert torch.equal(plain.blocks[0].norm1.weight, vit.blocks[0].norm1.weight)


def test_post_layernorm_input_has_one_scale_after_reparameterization(outlier_vit, qmodels, calib):
    """In the quantized model: block 0's norm1 (whose input the reparameterization does not change)
    now outputs, in units of the qkv input's per-tensor (scale, zero point), the per-channel code
    coordinates of the original LayerNorm output calibrated channel by channel."""
    q = qmodels(4, 4, outliers=True)
    quantizer = q.blocks[0].attn.qkv.input_quantizer
    assert quantizer.scale.dim() == 0 and quantizer.mode == "quantize"
    original = copy.deepcopy(q)
    original.blocks[0].norm1 = copy.deepcopy(outlier_vit.blocks[0].norm1)
    captured = {}
    hooks = [m.blocks[0].norm1.register_forward_hook(lambda mod, a, out, k=k: captured.setdefault(k, out))
             for k, m in (("new", q), ("old", original))]
    logits(q, calib)
    logits(original, calib)
    for h in hooks:
        h.remove()
    obs = PercentileSearchObserver(per_channel=True)  # what calibration computed on the original output
    obs.update(captured["old"])
    s, z = obs.qparams(4)
    assert float(s.max() / s.min()) > 20
    assert float(quantizer.scale) == pytest.approx(float(s.mean()), rel=1e-5)
    torch.testing.assert_close(captured["new"] / quantizer.scale + quantizer.zero_point, captured["old"] / s + z,
                               rtol=0, atol=2e-3)


def test_outlier_channels_repq_beats_minmax(outlier_vit, vit, qmodels, images):
    """The defining behaviour: per-tensor 4-bit post-LayerNorm inputs break on outlier channels,
    RepQ-ViT's per-channel-then-reparameterized inputs do not."""
    ref = logits(outlier_vit, images)
    torch.testing.assert_close(ref, logits(vit, images), rtol=1e-4, atol=1e-4)  # same FP32 function
    err_repq = rel_error(logits(qmodels(4, 4, outliers=True), images), ref)
    err_minmax = rel_error(logits(qmodels(4, 4, method="minmax", outliers=True), images), ref)
    err_norep = rel_error(logits(qmodels(4, 4, outliers=True, reparameterize=False), images), ref)
    err_clean = rel_error(logits(qmodels(4, 4), images), ref)
    assert err_repq * 2.5 < err_minmax, (err_repq, err_minmax)
    assert err_repq * 2.5 < err_norep, (err_repq, err_norep)  # it is the reparameterization that does it
    assert err_repq < 1.5 * err_clean, (err_repq, err_clean)  # outliers barely matter to RepQ-ViT


STRICT = {"log2_levels": "strict", "zero_point": "rounded"}
"""The options under which every RepQ-ViT tensor is on a true b-bit grid (verify: true passes)."""


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_verify_simulation(qmodels, images, bits):
    q = qmodels(bits, bits, **STRICT)
    report = verify_simulation(q, images)
    assert report.ok, report.summary()
    assert len(report) == 2 * N_LINEARS + 2 + 8  # linears, the conv (weight + input), 8 matmul operands
    by_name = {(c.module, c.kind): c for c in report}
    for b in range(2):
        for o in ("q", "k", "v", "attn"):
            check = by_name[(f"blocks.{b}.attn.{o}_operand", "activation")]
            assert check.bits == bits and 1 < check.distinct <= 2**bits
    conv_in = by_name[("patch_embed.proj", "activation")]
    assert conv_in.bits == 8 and conv_in.limit == 256
    if bits < 8:
        assert conv_in.distinct > 2**bits  # the patch-embedding input really is 8-bit
    assert by_name[("patch_embed.proj", "weight")].bits == bits


def test_verify_catches_an_unquantized_operand(qmodels, images):
    q = copy.deepcopy(qmodels(4, 4, **STRICT))
    q.blocks[1].attn.v_operand.input_quantizer.mode = "off"
    report = verify_simulation(q, images)
    assert {(c.module, c.kind) for c in report.failures} == {("blocks.1.attn.v_operand", "activation")}


def test_reference_defaults_are_not_a_b_bit_grid(qmodels, images):
    """What the reference computes: the qkv / fc1 inputs, quantized per tensor with a fractional mean
    zero point, take one value more than 4 bits allow; every other tensor is on its grid."""
    q = qmodels(4, 4)
    for b in range(2):
        for lin in (q.blocks[b].attn.qkv, q.blocks[b].mlp.fc1):
            zp = lin.input_quantizer.zero_point
            assert zp.is_floating_point() and float(zp) != round(float(zp))
    report = verify_simulation(q, images)
    failed = {(c.module, c.kind) for c in report.failures}
    assert failed and failed <= {(f"blocks.{b}.{m}", "activation") for b in range(2) for m in ("attn.qkv", "mlp.fc1")}
    assert all(c.distinct == 2**4 + 1 for c in report.failures)


def test_close_to_fp32_at_8_bits_and_worse_at_4(qmodels, vit, images):
    ref = logits(vit, images)
    e8, e4 = rel_error(logits(qmodels(8, 8), images), ref), rel_error(logits(qmodels(4, 4), images), ref)
    assert e8 < 0.1 and e4 > 2 * e8, (e8, e4)


def test_uniform_softmax_option(qmodels, images):
    q = qmodels(6, 6, softmax_quantizer="uniform", **STRICT)
    attn = q.blocks[0].attn
    assert attn.softmax_kind == "uniform" and isinstance(attn.attn_operand.input_quantizer, ObservedActQuantizer)
    assert verify_simulation(q, images).ok


def test_weight_only(vit, calib, images):
    q = quantize(vit, spec(4, None), calib)
    assert not any(isinstance(m, (QuantAttention, ObservedActQuantizer)) for m in q.modules())
    report = verify_simulation(q, images)
    assert report.ok and {c.kind for c in report} == {"weight"} and len(report) == N_LINEARS + 1
    assert 0 < rel_error(logits(q, images), logits(vit, images)) < 0.5


def test_input_model_untouched_deterministic_and_calibration_matters(calib, images):
    model = make_outlier_vit().train()
    before = copy.deepcopy(model.state_dict())
    types_before = [type(m) for m in model.modules()]
    a = quantize(model, spec(4, 4), calib)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert [type(m) for m in model.modules()] == types_before
    assert model.training and not a.training
    b = quantize(model, spec(4, 4), calib.clone())
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert torch.equal(logits(a, images), logits(b, images))
    c = quantize(model, spec(4, 4), calib[:16] * 2.0)
    assert not torch.equal(a.blocks[0].mlp.fc2.input_quantizer.scale, c.blocks[0].mlp.fc2.input_quantizer.scale)


@pytest.mark.parametrize(
    "options,field,needle",
    [
        ({"reparametrize": False}, "reparametrize", "did you mean 'reparameterize'"),
        ({"reparameterize": "no"}, "reparameterize", "true or false"),
        ({"softmax_quantizer": "log2"}, "softmax_quantizer", "'log_sqrt2' or 'uniform'"),
    ],
)
def test_bad_options(options, field, needle):
    with pytest.raises(QuantOptionError) as info:
        spec(4, 4, options=options)
    assert info.value.option == field and needle in str(info.value)


def test_model_without_timm_attention_is_an_error(calib):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 8))
    with pytest.raises(QuantOptionError, match="no timm Attention") as info:
        quantize(model, spec(4, 4), calib)
    assert info.value.option == "method"
    with pytest.raises(QuantOptionError, match="calibration") as info:
        quantize(make_vit(), spec(4, 4), calib[:0])
    assert info.value.option == "calibration"


# ------------------------------------------------------------------------------------------------
# the defaults are the reference code (tests/reference_repq.py restates it independently)
# ------------------------------------------------------------------------------------------------


def _attention_like(seed: int, tokens: int = 197) -> torch.Tensor:
    """Softmax rows of a ViT-sized attention map: a few dominant tokens, a long tail near zero."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(4, 3, tokens, tokens, generator=g) * 2.5
    scores[..., 0] += 4.0  # a strong class-token column, as trained ViTs have
    return scores.softmax(-1)


@pytest.mark.parametrize("bits", [4, 6, 8])
def test_quantizers_equal_the_reference_on_the_same_tensors(bits):
    from reference_repq import LazyLogSqrt2, LazyUniform

    g = torch.Generator().manual_seed(bits)
    act = torch.randn(8, 50, 48, generator=g) * torch.linspace(0.2, 6.0, 48) + torch.randn(48, generator=g)
    act[0, 0, 5] = 80.0  # an outlier the clipping search must cut
    # per tensor
    ours = ObservedActQuantizer(bits, PercentileSearchObserver(), arithmetic="reference")
    ours.calibrate_once()
    theirs = LazyUniform(bits)
    assert torch.equal(ours(act), theirs(act))
    assert torch.equal(ours.scale, theirs.delta) and float(ours.zero_point) == float(theirs.zp)
    # per channel (the post-LayerNorm inputs before reparameterization)
    ours_c = ObservedActQuantizer(bits, PercentileSearchObserver(per_channel=True), arithmetic="reference")
    ours_c.calibrate_once()
    theirs_c = LazyUniform(bits, per_channel=True)
    assert torch.equal(ours_c(act), theirs_c(act))
    # weights, per output row of a Linear and per output filter of a Conv2d
    for w in (torch.randn(40, 64, generator=g) * torch.rand(40, 1, generator=g), torch.randn(16, 3, 4, 4, generator=g)):
        assert torch.equal(repq_weight_quantizer(w, bits), LazyUniform(bits, per_channel=True)(w))
    # the softmax output
    attn = _attention_like(bits)
    log_q = LogSqrt2Quantizer(bits)
    log_q.calibrate_once()
    ref_log = LazyLogSqrt2(bits)
    out = log_q(attn)
    assert torch.equal(out, ref_log(attn)) and torch.equal(log_q.scale, ref_log.delta)
    if bits == 4:  # (deeper codes than softmax values reach at 6 and 8 bits)
        assert out.unique().numel() == 2**bits + 1  # all 2^b codes are levels, and underflow is zero
        strict = log_sqrt2_quantize(attn, log_q.scale, bits, strict=True)
        changed = (strict != out).float().mean().item()
        assert strict.unique().numel() == 2**bits  # the strict grid moves the top code to zero
        assert 0.005 < changed < 0.1, changed


@pytest.mark.parametrize("wb,ab", [(4, 4), (8, 8),
                                   pytest.param(6, 6, marks=pytest.mark.slow),
                                   pytest.param(4, 8, marks=pytest.mark.slow),
                                   pytest.param(8, 4, marks=pytest.mark.slow)])
def test_defaults_equal_the_reference_end_to_end(vit, calib, images, wb, ab):
    """Every quantizer parameter and every logit of repq_vit with default options equal the
    reference pipeline restated in tests/reference_repq.py (calibration pass, reparameterization
    with the unrounded mean zero point, second pass)."""
    from reference_repq import reference_repq_vit

    ref = reference_repq_vit(vit, calib, wb, ab)
    ours = quantize(vit, spec(wb, ab), calib)
    for b in range(2):
        r, o = ref.blocks[b], ours.blocks[b]
        for norm in ("norm1", "norm2"):
            assert torch.equal(getattr(r, norm).weight, getattr(o, norm).weight)
            assert torch.equal(getattr(r, norm).bias, getattr(o, norm).bias)
        for rl, ol in ((r.attn.qkv, o.attn.qkv), (r.attn.proj, o.attn.proj), (r.mlp.fc1, o.mlp.fc1), (r.mlp.fc2, o.mlp.fc2)):
            assert torch.equal(rl.wq(rl.weight), ol.weight)
            assert torch.equal(rl.xq.delta.reshape(()), ol.input_quantizer.scale)
            assert torch.equal(rl.xq.zp.reshape(()).float(), ol.input_quantizer.zero_point.float())
        assert torch.equal(r.attn.p_in.delta, o.attn.attn_operand.input_quantizer.scale)
        for name in ("q", "k", "v"):
            ref_q = getattr(r.attn, {"q": "q_in", "k": "k_in", "v": "v_in"}[name])
            assert torch.equal(ref_q.delta, getattr(o.attn, f"{name}_operand").input_quantizer.scale)
    expected = logits(ref, images)
    assert torch.equal(expected, logits(ours, images))
    if (wb, ab) == (4, 4):  # the comparison can fail: each of the project's stricter choices changes the model
        for options in ({"zero_point": "rounded"}, {"arithmetic": "aten"}):
            assert not torch.equal(logits(quantize(vit, spec(4, 4, options=options), calib), images), expected)


def test_reference_quantiles_fall_back_to_numpy_where_torch_refuses(monkeypatch):
    """Older torch releases refuse torch.quantile past 2^24 values; the reference then calls
    np.percentile(x, 100 q), and so does reference_quantiles (simulated here with a small limit)."""
    from pytest_qrel.quantize.observers import reference_quantiles

    x = torch.randn(5000, 3, generator=torch.Generator().manual_seed(0))
    real = torch.quantile

    def limited(t, q, *args, **kwargs):
        if t.numel() > 1000:
            raise RuntimeError("quantile() input tensor is too large")
        return real(t, q, *args, **kwargs)

    qs = [1.0 - 0.9999, 0.9999]
    assert torch.equal(reference_quantiles(x, qs), torch.quantile(x, torch.tensor(qs), dim=0))
    monkeypatch.setattr(torch, "quantile", limited)
    expected = torch.tensor(np.percentile(x.numpy(), [q * 100 for q in qs], axis=0), dtype=torch.float32)
    assert torch.equal(reference_quantiles(x, qs), expected)
    assert not torch.equal(expected, real(x, torch.tensor(qs), dim=0))  # the two libraries really differ here
