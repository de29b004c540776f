"""Tests of the ``smoothquant`` method: the smoothing is an exact FP32 rewrite with the published
factors, and it makes per-tensor activation quantization of outlier channels work."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from pytest_qrel.errors import QuantOptionError
from pytest_qrel.quantize import QUANTIZERS, FakeQuantLinear, quantize, verify_simulation
from pytest_qrel.quantize.smoothquant import (
    SmoothGroup,
    layernorm_statistics,
    smooth_ln_linears,
    smooth_model,
    smoothing_scales,
)
from pytest_qrel.quantize import DynamicActQuantizer, QuantConfig
from pytest_qrel.quantize.attention import QuantAttention
from tinyvit import logits, rel_error, quant_config, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

timm = pytest.importorskip("timm")

N_LINEARS = 2 * 4 + 1
OUTLIER_CHANNELS = torch.tensor([3, 17, 40])


def with_outliers(model: nn.Module, factor: float = 40.0) -> nn.Module:
    """A copy whose LayerNorm outputs have a few channels ``factor`` times larger, compensated in the
    next Linear's input columns (the FP32 function is unchanged; per-tensor quantization suffers)."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for blk in model.blocks:
            for ln, lin in ((blk.norm1, blk.attn.qkv), (blk.norm2, blk.mlp.fc1)):
                ln.weight[OUTLIER_CHANNELS] *= factor
                ln.bias[OUTLIER_CHANNELS] *= factor
                lin.weight[:, OUTLIER_CHANNELS] /= factor
    return model


def spec(wb, ab, *, method="smoothquant", **options) -> QuantConfig:
    return quant_config(method, wb, ab, options=options)



@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return random_images(48, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return random_images(64, 2)




# ------------------------------------------------------------------------------------------------
# the smoothing arithmetic
# ------------------------------------------------------------------------------------------------


def test_is_registered_with_alpha():
    assert "smoothquant" in QUANTIZERS
    assert {"alpha", "batch_size", "head", "patch_embed"} <= set(QUANTIZERS.meta("smoothquant")["options"])


def test_scale_formula_against_an_independent_computation():
    ln = nn.LayerNorm(4)
    a_lin, b_lin = nn.Linear(4, 3), nn.Linear(4, 2, bias=False)
    with torch.no_grad():
        ln.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        ln.bias.copy_(torch.tensor([0.1, 0.2, -0.3, 0.4]))
        a_lin.weight.copy_(torch.tensor([[0.5, -1.0, 0.0, 0.2], [-2.0, 0.1, 0.0, 0.3], [0.4, 0.4, 0.0, -0.1]]))
        b_lin.weight.copy_(torch.tensor([[1.5, 0.2, 0.0, 0.05], [0.1, -0.3, 0.0, 0.6]]))
    act = torch.tensor([8.0, 0.5, 2.0, 0.0])  # channel 2 has all-zero weights, channel 3 a dead activation
    alpha = 0.7
    w_np = np.concatenate([a_lin.weight.detach().numpy(), b_lin.weight.detach().numpy()])
    expected = []
    for j in range(4):
        wmax = max(max(abs(float(w_np[i, j])) for i in range(w_np.shape[0])), 1e-5)
        expected.append(max(float(act[j]) ** alpha / wmax ** (1 - alpha), 1e-5))
    expected = torch.tensor(expected)
    torch.testing.assert_close(smoothing_scales(act, [a_lin.weight, b_lin.weight], alpha), expected)

    ln_w, ln_b = ln.weight.detach().clone(), ln.bias.detach().clone()
    wa, wb = a_lin.weight.detach().clone(), b_lin.weight.detach().clone()
    s = smooth_ln_linears(ln, [a_lin, b_lin], act, alpha)
    torch.testing.assert_close(s, expected)
    torch.testing.assert_close(ln.weight, ln_w / expected)
    torch.testing.assert_close(ln.bias, ln_b / expected)
    torch.testing.assert_close(a_lin.weight, wa * expected)
    torch.testing.assert_close(b_lin.weight, wb * expected)
    assert s[3] == pytest.approx(1e-5)  # clamped


def test_one_block_product_is_unchanged(vit, calib):
    model = copy.deepcopy(vit)
    blk = model.blocks[0]
    ln0, w0 = copy.deepcopy(blk.norm1), blk.attn.qkv.weight.detach().clone()
    _, absmax = layernorm_statistics(model, calib)
    s = smooth_ln_linears(blk.norm1, [blk.attn.qkv], absmax["blocks.0.norm1"], 0.5)
    assert not torch.allclose(s, torch.ones_like(s))  # a real rescaling, not the identity
    x = torch.randn(5, 17, 64, generator=torch.Generator().manual_seed(3)) * 3
    with torch.no_grad():
        before = nn.functional.linear(ln0(x), w0)
        after = nn.functional.linear(blk.norm1(x), blk.attn.qkv.weight)
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_groups_are_found_by_data_flow(vit, calib):
    groups, absmax = layernorm_statistics(vit, calib)
    assert groups == [
        SmoothGroup("blocks.0.norm1", ("blocks.0.attn.qkv",)),
        SmoothGroup("blocks.0.norm2", ("blocks.0.mlp.fc1",)),
        SmoothGroup("blocks.1.norm1", ("blocks.1.attn.qkv",)),
        SmoothGroup("blocks.1.norm2", ("blocks.1.mlp.fc1",)),
    ]  # the final `norm` feeds the head only through the class-token slice: not a group
    # absmax is the per-channel max over every token of every image (an independent hook)
    seen = []
    h = vit.blocks[1].norm2.register_forward_hook(lambda m, a, out: seen.append(out.detach().abs().amax(dim=(0, 1))))
    with torch.no_grad():
        vit(calib)
    h.remove()
    torch.testing.assert_close(absmax["blocks.1.norm2"], seen[0])


def test_smoothed_model_computes_the_same_fp32_function(vit, calib, images):
    model = copy.deepcopy(vit)
    scales = smooth_model(model, calib)
    assert set(scales) == {"blocks.0.norm1", "blocks.0.norm2", "blocks.1.norm1", "blocks.1.norm2"}
    assert not torch.equal(model.blocks[0].norm1.weight, vit.blocks[0].norm1.weight)
    assert not torch.equal(model.blocks[1].mlp.fc1.weight, vit.blocks[1].mlp.fc1.weight)
    torch.testing.assert_close(logits(model, images), logits(vit, images), rtol=1e-4, atol=1e-5)


def test_smoothing_flattens_outlier_channels(vit, calib):
    model = with_outliers(vit)
    _, before = layernorm_statistics(model, calib)
    smooth_model(model, calib)
    _, after = layernorm_statistics(model, calib)
    for name in before:
        ratio = lambda a: float(a.max() / a.median())  # noqa: E731
        assert ratio(after[name]) < ratio(before[name]) / 4, name


def test_alpha_changes_the_factors(vit, calib, images):
    s_low = smooth_model(copy.deepcopy(vit), calib, alpha=0.2)
    s_high = smooth_model(copy.deepcopy(vit), calib, alpha=0.8)
    for name in s_low:
        assert not torch.allclose(s_low[name], s_high[name]), name
    # alpha = 0: s_j = 1 / max_j |W| (activations do not matter)
    s0 = smooth_model(copy.deepcopy(vit), calib * 5, alpha=0.0)
    torch.testing.assert_close(s0["blocks.0.norm2"], 1 / vit.blocks[0].mlp.fc1.weight.detach().abs().amax(0))
    # through the option
    q5 = quantize(vit, spec(8, 8), calib)
    q8 = quantize(vit, spec(8, 8, alpha=0.8), calib)
    assert not torch.allclose(q5.blocks[0].norm1.weight, q8.blocks[0].norm1.weight)
    assert not torch.equal(logits(q5, images), logits(q8, images))


def test_method_smooths_then_quantizes_like_minmax(vit, calib, images):
    q = quantize(vit, spec(8, 8), calib)
    ref = copy.deepcopy(vit)
    smooth_model(ref, calib)
    assert torch.equal(q.blocks[1].norm2.weight, ref.blocks[1].norm2.weight)
    assert len([m for m in q.modules() if isinstance(m, FakeQuantLinear)]) == N_LINEARS
    assert not [m for m in q.modules() if type(m) is nn.Linear]
    # minmax applied to the smoothed model gives the same quantized model
    minmax_of_smoothed = quantize(ref, spec(8, 8, method="minmax"), calib)
    assert torch.equal(logits(q, images), logits(minmax_of_smoothed, images))


# ------------------------------------------------------------------------------------------------
# what smoothing is for
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("wb,ab", [(8, 8), (8, 6)])
def test_outlier_channels_smoothquant_beats_minmax(vit, calib, images, wb, ab):
    model = with_outliers(vit)
    ref = logits(model, images)
    torch.testing.assert_close(ref, logits(vit, images), rtol=1e-4, atol=1e-4)  # same FP32 function
    err_minmax = rel_error(logits(quantize(model, spec(wb, ab, method="minmax"), calib), images), ref)
    err_smooth = rel_error(logits(quantize(model, spec(wb, ab), calib), images), ref)
    assert err_smooth < err_minmax / 3, (err_smooth, err_minmax)
    assert err_smooth < 0.1


@pytest.mark.parametrize("bits", [8, 6, 4])
def test_verify_simulation(vit, calib, images, bits):
    q = quantize(vit, spec(bits, bits), calib)
    report = verify_simulation(q, images)
    assert report.ok, report.summary()
    assert len(report) == 2 * N_LINEARS
    assert all(c.bits == bits and 1 < c.distinct <= 2**bits for c in report)


# ------------------------------------------------------------------------------------------------
# other architectures and errors
# ------------------------------------------------------------------------------------------------


def test_model_without_layernorm_is_plain_minmax(calib, images):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 32), nn.GELU(), nn.Linear(32, 8)).eval()
    with pytest.warns(UserWarning, match="nothing is smoothed"):
        q = quantize(model, spec(8, 8), calib)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = quantize(model, spec(8, 8, method="minmax"), calib)
    assert torch.equal(logits(q, images), logits(m, images))


class SideConsumer(nn.Module):
    """ln1 feeds fc1 AND a residual (smoothing it would change the function); ln2 feeds fc2 only."""

    def __init__(self):
        super().__init__()
        self.ln1, self.fc1 = nn.LayerNorm(16), nn.Linear(16, 16)
        self.ln2, self.fc2 = nn.LayerNorm(16), nn.Linear(16, 4)
        with torch.no_grad():
            self.ln1.weight.uniform_(0.5, 3.0)
            self.ln2.weight.uniform_(0.5, 3.0)

    def forward(self, x):
        h = self.ln1(x.flatten(1)[:, :16])
        h = self.fc1(h) + h
        return self.fc2(self.ln2(h))


def test_group_whose_output_feeds_something_else_is_left_alone(calib, images):
    torch.manual_seed(0)
    model = SideConsumer().eval()
    before = logits(model, images)
    smoothed = copy.deepcopy(model)
    with pytest.warns(UserWarning, match="ln1 would change"):
        scales = smooth_model(smoothed, calib)
    assert set(scales) == {"ln2"}
    assert torch.equal(smoothed.ln1.weight, model.ln1.weight) and torch.equal(smoothed.fc1.weight, model.fc1.weight)
    assert not torch.equal(smoothed.ln2.weight, model.ln2.weight)
    torch.testing.assert_close(logits(smoothed, images), before, rtol=1e-4, atol=1e-5)


def test_input_model_untouched(vit, calib):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    quantize(vit, spec(4, 4), calib)
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())


@pytest.mark.parametrize("value", [1.5, -0.1, "0.5", True, None])
def test_bad_alpha_names_the_option(value):
    with pytest.raises(QuantOptionError) as info:
        spec(8, 8, alpha=value)
    assert info.value.option == "alpha" and "a number from 0 to 1" in str(info.value)


def test_unknown_option_lists_alpha():
    with pytest.raises(QuantOptionError) as info:
        spec(8, 8, alfa=0.5)
    assert info.value.option == "alfa" and "did you mean 'alpha'" in str(info.value)


@pytest.mark.parametrize("options,needle", [({"act_quant": "dynamic"}, "one of 'static', 'per_token', 'per_tensor'"),
                                            ({"quantize_bmm_input": "yes"}, "true or false")])
def test_bad_reference_options(options, needle):
    with pytest.raises(QuantOptionError, match=needle):
        spec(8, 8, **options)


def test_bmm_input_quantization_needs_activation_bits():
    with pytest.raises(QuantOptionError) as info:
        spec(8, None, quantize_bmm_input=True)
    assert info.value.option == "quantize_bmm_input"


def test_no_calibration_images_is_an_error(vit):
    with pytest.raises(QuantOptionError) as info:
        quantize(vit, spec(8, None), torch.zeros(0, 1, 16, 16))
    assert info.value.option == "calibration"


# ------------------------------------------------------------------------------------------------
# the reference's variant: dynamic symmetric activations, quantized attention matmul inputs
# ------------------------------------------------------------------------------------------------
# Written here from the behaviour of mit-han-lab/smoothquant's fake_quant.py: weights per output
# channel, scale = max(absmax, 1e-5) / (2^(b-1) - 1), w = round(w / scale) * scale; activations the
# same formula with the absmax of each token (per_token) or of everything (per_tensor) at every call;
# with quantize_bmm_input the outputs of the q, k and v projections are quantized the same way.


def ref_fake_quant(t: torch.Tensor, bits: int, dims) -> torch.Tensor:
    qmax = 2 ** (bits - 1) - 1
    scale = t.abs().amax(dim=dims, keepdim=True).clamp(min=1e-5) / qmax
    return (t / scale).round() * scale


class RefLinear(nn.Module):
    """The reference's W8A8Linear at ``bits``; ``split_output=3``: a fused qkv whose q, k and v
    outputs are each quantized per token (the reference's separate q/k/v projections)."""

    def __init__(self, lin: nn.Linear, bits: int, act: str, split_output: int = 0):
        super().__init__()
        self.bits, self.act, self.split = bits, act, split_output
        self.weight = nn.Parameter(ref_fake_quant(lin.weight.detach(), bits, dims=1), requires_grad=False)
        self.bias = lin.bias

    def quant(self, t):
        dims = -1 if self.act == "per_token" else tuple(range(1, t.dim()))  # per_tensor: one image at a time
        return ref_fake_quant(t, self.bits, dims)

    def forward(self, x):
        y = nn.functional.linear(self.quant(x), self.weight, self.bias)
        if self.split:
            y = torch.cat([self.quant(part) for part in y.chunk(self.split, dim=-1)], dim=-1)
        return y


def reference_smoothquant(model, calib, bits, act, bmm):
    ref = copy.deepcopy(model).eval()
    smooth_model(ref, calib, alpha=0.5)  # SmoothQuant's smoothing (tested above against its formula)
    for blk in ref.blocks:
        blk.attn.qkv = RefLinear(blk.attn.qkv, bits, act, split_output=3 if bmm else 0)
        blk.attn.proj = RefLinear(blk.attn.proj, bits, act)
        blk.mlp.fc1 = RefLinear(blk.mlp.fc1, bits, act)
        blk.mlp.fc2 = RefLinear(blk.mlp.fc2, bits, act)
    return ref  # the head stays in floating point, as the reference's lm_head


def test_dynamic_quantizer_matches_the_reference_formula():
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(0)) * torch.linspace(0.1, 4, 16)
    for bits in (8, 4):
        torch.testing.assert_close(DynamicActQuantizer(bits)(x), ref_fake_quant(x, bits, -1), rtol=0, atol=0)
        torch.testing.assert_close(DynamicActQuantizer(bits, "per_tensor")(x), ref_fake_quant(x, bits, (1, 2)),
                                   rtol=0, atol=0)
    heads = torch.randn(2, 4, 5, 8, generator=torch.Generator().manual_seed(1))  # (B, heads, N, head_dim)
    tokens = heads.transpose(1, 2).reshape(2, 5, 32)  # the projection output the reference quantizes
    ours = DynamicActQuantizer(8, feature_dims=(1, 3))(heads).transpose(1, 2).reshape(2, 5, 32)
    torch.testing.assert_close(ours, ref_fake_quant(tokens, 8, -1), rtol=0, atol=0)
    # one image's scale does not depend on the rest of the batch
    torch.testing.assert_close(DynamicActQuantizer(8, "per_tensor")(x)[:1], DynamicActQuantizer(8, "per_tensor")(x[:1]))


@pytest.mark.parametrize("act", ["per_token", "per_tensor"])
@pytest.mark.parametrize("bmm", [True, False])
def test_reference_variant_matches_an_independent_implementation(vit, calib, images, act, bmm):
    ours = quantize(vit, spec(8, 8, act_quant=act, quantize_bmm_input=bmm, head="fp32"), calib)
    ref = reference_smoothquant(vit, calib, 8, act, bmm)
    assert rel_error(logits(ours, images), logits(ref, images)) < 1e-5
    assert rel_error(logits(ours, images), logits(reference_smoothquant(vit, calib, 8, act, not bmm), images)) > 1e-3
    assert isinstance(ours.blocks[0].attn, QuantAttention) == bmm
    static = quantize(vit, spec(8, 8, head="fp32"), calib)  # and the options do change the model
    assert rel_error(logits(static, images), logits(ref, images)) > 1e-4


def test_reference_variant_verifies_with_its_float_attention_weights(vit, calib, images):
    q = quantize(vit, spec(4, 4, act_quant="per_token", quantize_bmm_input=True), calib)
    report = verify_simulation(q, images)
    assert report.ok, report.summary()
    dynamic = [c for c in report if c.kind == "activation"]
    assert dynamic and all(c.distinct <= 15 for c in dynamic)  # at most 2^4 - 1 values per token
    floats = {(p.module, p.op, p.operands) for p in report.float_paths}
    # q @ k^T is quantized; attn @ v multiplies float softmax outputs (as in the reference)
    assert ("blocks.0.attn", "matmul", ("a",)) in floats
    assert not any(p.op == "scaled_dot_product_attention" for p in report.float_paths)
    plain = verify_simulation(quantize(vit, spec(4, 4, act_quant="per_token"), calib), images)
    assert any(p.op == "scaled_dot_product_attention" for p in plain.float_paths)


# ------------------------------------------------------------------------------------------------
# the reference's variant on OpenCLIP's visual tower (open_clip:digits_clip)
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clip():
    from pytest_qrel.models import load_model

    return load_model("open_clip:digits_clip")


@pytest.fixture(scope="module")
def clip_images(clip):
    g = torch.Generator().manual_seed(3)
    return torch.stack([clip.preprocess(torch.rand(1, 16, 16, generator=g)) for _ in range(40)])


@pytest.mark.parametrize("batch_first", [True, False])
def test_quant_self_attention_without_quantizers_is_open_clips_attention(clip, batch_first):
    from pytest_qrel.models.clip_zoo import LinearSelfAttention
    from pytest_qrel.quantize.attention import QuantSelfAttention, quant_attention

    attn = copy.deepcopy(clip.module.visual.transformer.resblocks[0].attn)
    assert type(attn) is LinearSelfAttention
    attn.batch_first = batch_first
    quant = quant_attention(attn, act_bits=None)
    assert type(quant) is QuantSelfAttention and quant.qkv is attn.qkv
    x = torch.randn(3, 17, 64, generator=torch.Generator().manual_seed(0))
    x = x if batch_first else x.transpose(0, 1)
    mask = torch.zeros(17, 17).masked_fill_(torch.ones(17, 17, dtype=torch.bool).triu_(1), float("-inf"))
    with torch.no_grad():
        for m in (None, mask):
            out, none = quant(x, x, x, need_weights=False, attn_mask=m)
            torch.testing.assert_close(out, attn(x, x, x, need_weights=False, attn_mask=m)[0], rtol=1e-5, atol=1e-5)
            assert none is None
    with pytest.raises(ValueError, match="self-attention only"):
        quant(x, x.clone(), x)


def reference_smoothquant_clip(model, calib, bits, act):
    """The reference variant (per-token activations, q/k/v quantized, softmax in float) written on
    OpenCLIP's blocks with the independent RefLinear above."""
    ref = copy.deepcopy(model).eval()
    smooth_model(ref, calib, alpha=0.5)
    for blk in ref.visual.transformer.resblocks:
        blk.attn.qkv = RefLinear(blk.attn.qkv, bits, act, split_output=3)
        blk.attn.proj = RefLinear(blk.attn.proj, bits, act)
        blk.mlp.c_fc = RefLinear(blk.mlp.c_fc, bits, act)
        blk.mlp.c_proj = RefLinear(blk.mlp.c_proj, bits, act)
    ref.proj = RefLinear(ref.proj, bits, act)  # CLIP's classifier is the fixed text embedding: no Linear head to keep
    return ref


def test_reference_variant_on_open_clip(clip, clip_images):
    """The options the README gives for mit-han-lab/smoothquant's variant work on OpenCLIP: every
    attention's q, k, v quantized per token, the ln_1 / ln_2 groups smoothed, and the logits those of
    an independent implementation of the reference."""
    from pytest_qrel.quantize.attention import QuantSelfAttention

    calib, test = clip_images[:24], clip_images[24:]
    groups, _ = layernorm_statistics(clip.module, calib)
    assert {(g.norm.split(".")[-1], g.linears[0].split(".")[-1]) for g in groups} == {("ln_1", "qkv"), ("ln_2", "c_fc")}
    assert len(groups) == 2 * len(clip.module.visual.transformer.resblocks)
    ours = quantize(clip.module, spec(8, 8, act_quant="per_token", quantize_bmm_input=True, head="fp32"), calib)
    blocks = ours.visual.transformer.resblocks
    assert all(type(b.attn) is QuantSelfAttention for b in blocks)
    assert all(isinstance(getattr(b.attn, f"{o}_operand").input_quantizer, DynamicActQuantizer)
               for b in blocks for o in "qkv") and all(b.attn.attn_operand.input_quantizer is None for b in blocks)
    expected = logits(reference_smoothquant_clip(clip.module, calib, 8, "per_token"), test)
    assert rel_error(logits(ours, test), expected) < 1e-5
    no_bmm = quantize(clip.module, spec(8, 8, act_quant="per_token", head="fp32"), calib)
    assert rel_error(logits(no_bmm, test), expected) > 1e-4  # the q/k/v quantization is really there
    assert rel_error(logits(ours, test), logits(clip.module, test)) < 0.05  # and W8A8 stays close to FP32
    report = verify_simulation(ours, test)
    assert report.ok, report.summary()
    assert {p.op for p in report.float_paths} <= {"matmul", "conv2d"}  # attn @ v (float softmax), the patch conv


def test_reference_variant_through_the_engine_on_open_clip(tmp_path):
    from pytest_qrel import Engine, load_suite

    (tmp_path / "s.yaml").write_text(
        "name: sqclip\nmodels:\n  clip: {source: 'open_clip:digits_clip'}\n"
        "datasets:\n  id: {name: digits, source: 'embedded:digits'}\n"
        "quantizers:\n  W8A8-sq: {method: smoothquant, weight_bits: 8, act_bits: 8, calibration: {samples: 32}, "
        "verify: true, allow_float_paths: true, options: {act_quant: per_token, quantize_bmm_input: true, head: fp32}}\n"
        "scores: [msp, mcm]\nchecks: ['W8A8-sq top1 delta <= 1pp']\n")
    engine = Engine(baseline_dir=tmp_path)
    engine.quantized_module(load_suite(tmp_path / "s.yaml"), "clip", "W8A8-sq")
    assert engine.verified["W8A8-sq"].ok
