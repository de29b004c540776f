"""Tests of pytest_qrel.quantize.options: the common linear-quantization options and module selection.

Quantized values are checked against PyTorch's own ``torch.ao`` observers and integer kernels (an
independent statement of per-tensor / per-channel / symmetric / affine quantization).
"""

from __future__ import annotations

import re
import warnings

import pytest
import torch
from torch import nn

from pytest_qrel.errors import QuantOptionError
from pytest_qrel.quantize import QUANTIZERS, ActQuantizer, FakeQuantLinear, QuantConfig, quantize, verify_simulation
from pytest_qrel.quantize import minmax as minmax_module
from pytest_qrel.quantize import options as options_module
from pytest_qrel.quantize.fakequant import FakeQuantConv2d
from pytest_qrel.quantize.options import (
    COMMON_OPTIONS,
    LinearQuantOptions,
)
from pytest_qrel.quantize.selection import find_head, find_patch_embed, select_modules
from tinyvit import logits, quant_config, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

timm = pytest.importorskip("timm")
observer = pytest.importorskip("torch.ao.quantization.observer")


def spec(wb, ab, *, method="minmax", **options) -> QuantConfig:
    return quant_config(method, wb, ab, options=options)



@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return random_images(32, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return random_images(48, 2)



def fq_linears(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, FakeQuantLinear)}


def _ao(fn, *args):
    """Call a torch.ao / integer-quantization function quietly; skip if a future torch removed it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fn(*args)
        except (RuntimeError, NotImplementedError) as exc:
            pytest.skip(f"PyTorch integer quantize kernels unavailable: {exc}")


def _ao_dequant_per_channel(w, bits, symmetric):
    if symmetric:
        qmax = 2 ** (bits - 1) - 1
        obs = observer.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric,
                                                quant_min=-qmax, quant_max=qmax)
        dtype = torch.qint8
    else:
        obs = observer.PerChannelMinMaxObserver(ch_axis=0, dtype=torch.quint8, qscheme=torch.per_channel_affine,
                                                quant_min=0, quant_max=2**bits - 1)
        dtype = torch.quint8
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obs(w)
        s, z = obs.calculate_qparams()
        try:
            return torch.quantize_per_channel(w, s, z, 0, dtype).dequantize()
        except (RuntimeError, NotImplementedError) as exc:
            pytest.skip(f"PyTorch integer quantize kernels unavailable: {exc}")


# ------------------------------------------------------------------------------------------------
# defaults: documented and applied
# ------------------------------------------------------------------------------------------------

EXPECTED_DEFAULTS = {
    "weight_granularity": "per_channel",
    "weight_symmetric": True,
    "act_symmetric": False,
    "head": "quantized",
    "patch_embed": "fp32",
    "batch_size": 64,
}


def _yaml(value):
    return str(value).lower() if isinstance(value, bool) else str(value)


def test_defaults():
    opts = spec(8, 8).options
    assert isinstance(opts, LinearQuantOptions)
    assert {k: getattr(opts, k) for k in EXPECTED_DEFAULTS} == EXPECTED_DEFAULTS
    assert {k: o.default for k, o in COMMON_OPTIONS.items()} == EXPECTED_DEFAULTS
    assert opts == LinearQuantOptions()  # the dataclass defaults are the documented ones
    assert set(QUANTIZERS.meta("minmax")["options"]) == set(EXPECTED_DEFAULTS)


def test_defaults_are_documented():
    doc = options_module.__doc__
    for key, default in EXPECTED_DEFAULTS.items():
        assert re.search(rf"^\s*{key}:\s+{_yaml(default)}\b", doc, re.M), key
    mdoc = minmax_module.__doc__
    for key in EXPECTED_DEFAULTS:
        assert f"``{key}``" in mdoc, key
    assert "is quantized like every other Linear by default" in mdoc  # the head default


def test_default_minmax_is_unchanged_by_spelling_out_the_defaults(vit, calib, images):
    explicit = quantize(vit, spec(4, 4, **EXPECTED_DEFAULTS), calib)
    implicit = quantize(vit, spec(4, 4), calib)
    assert torch.equal(logits(explicit, images), logits(implicit, images))


# ------------------------------------------------------------------------------------------------
# granularity and symmetry, against torch.ao
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [4, 8])
def test_per_tensor_weights_have_one_scale_per_layer(vit, calib, bits):
    q = quantize(vit, spec(bits, None, weight_granularity="per_tensor"), calib)
    originals = dict(vit.named_modules())
    qmax = 2 ** (bits - 1) - 1
    for name, m in fq_linears(q).items():
        w = originals[name].weight.detach()
        scale = float(w.abs().max()) / qmax  # the one scale of the layer
        expected = _ao(torch.quantize_per_tensor, w, scale, 0, torch.qint8).dequantize()
        torch.testing.assert_close(m.weight, expected, rtol=0, atol=1e-7 * scale, msg=name)
        assert torch.unique(m.weight).numel() <= 2 * qmax + 1, name
        codes = m.weight / scale
        assert torch.allclose(codes, codes.round(), atol=1e-4), name
    per_channel = quantize(vit, spec(bits, None), calib)
    # per channel, a layer as a whole uses far more values than one grid allows
    assert max(torch.unique(m.weight).numel() for m in fq_linears(per_channel).values()) > 2 * qmax + 1


@pytest.mark.parametrize("bits", [3, 8])
def test_asymmetric_per_channel_weights_match_torch_ao(vit, calib, bits):
    q = quantize(vit, spec(bits, None, weight_symmetric=False), calib)
    originals = dict(vit.named_modules())
    for name, m in fq_linears(q).items():
        expected = _ao_dequant_per_channel(originals[name].weight.detach(), bits, symmetric=False)
        torch.testing.assert_close(m.weight, expected, rtol=0, atol=1e-6, msg=name)
        assert max(torch.unique(row).numel() for row in m.weight) <= 2**bits


def test_asymmetric_per_tensor_weights(vit, calib):
    q = quantize(vit, spec(4, None, weight_symmetric=False, weight_granularity="per_tensor"), calib)
    originals = dict(vit.named_modules())
    for name, m in fq_linears(q).items():
        w = originals[name].weight.detach()
        obs = observer.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=15)
        obs(w)
        s, z = obs.calculate_qparams()
        expected = _ao(torch.quantize_per_tensor, w, float(s), int(z), torch.quint8).int_repr().clamp(0, 15)
        expected = (expected.float() - int(z)) * float(s)
        torch.testing.assert_close(m.weight, expected, rtol=0, atol=1e-6, msg=name)
        assert torch.unique(m.weight).numel() <= 16


@pytest.mark.parametrize("bits", [4, 8])
def test_symmetric_activations_match_torch_ao(vit, calib, images, bits):
    q = quantize(vit, spec(8, bits, act_symmetric=True), calib)
    qmax = 2 ** (bits - 1) - 1
    aqs = [m for m in q.modules() if isinstance(m, ActQuantizer)]
    assert aqs and all(a.symmetric for a in aqs)
    for a in aqs:
        obs = observer.MinMaxObserver(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric,
                                      quant_min=-qmax, quant_max=qmax)
        obs(torch.stack([a.min_val, a.max_val]))
        s, z = obs.calculate_qparams()
        assert torch.equal(a.scale.reshape(1), s) and int(a.zero_point) == 0 == int(z)
        assert (a.quant_min, a.quant_max) == (-qmax, qmax)
    report = verify_simulation(q, images)
    assert report.ok
    assert max(c.distinct for c in report if c.kind == "activation") <= 2 * qmax + 1
    default = quantize(vit, spec(8, bits), calib)
    assert not any(m.symmetric for m in default.modules() if isinstance(m, ActQuantizer))
    assert not torch.equal(logits(q, images), logits(default, images))


# ------------------------------------------------------------------------------------------------
# head and patch embedding
# ------------------------------------------------------------------------------------------------


def test_head_fp32_keeps_the_original_linear(vit, calib, images):
    q = quantize(vit, spec(4, 4, head="fp32"), calib)
    assert type(q.head) is nn.Linear
    assert torch.equal(q.head.weight, vit.head.weight) and torch.equal(q.head.bias, vit.head.bias)
    assert set(fq_linears(q)) == {n for n, m in vit.named_modules() if isinstance(m, nn.Linear)} - {"head"}
    report = verify_simulation(q, images)  # the float head is a float path, not a tensor with None bits
    assert report.ok and not report.passes() and report.passes(allow_float_paths=True)
    assert {(p.module, p.op) for p in report.float_paths if p.op == "linear"} == {("head", "linear")}
    assert "None" not in report.summary()
    assert verify_simulation(q, images, allow_float_linears=True).ok
    # the head's input is no longer quantized, so the logits differ from the default's
    assert not torch.equal(logits(q, images), logits(quantize(vit, spec(4, 4), calib), images))


def test_patch_embed_quantized(vit, calib, images):
    q = quantize(vit, spec(4, 6, patch_embed="quantized"), calib)
    conv = q.patch_embed.proj
    assert isinstance(conv, FakeQuantConv2d) and conv.weight_bits == 4 and conv.act_bits == 6
    original = vit.patch_embed.proj.weight.detach()
    assert not torch.equal(conv.weight, original)
    torch.testing.assert_close(conv.weight, _ao_dequant_per_channel(original, 4, symmetric=True), rtol=0, atol=1e-6)
    report = verify_simulation(q, images)
    assert report.ok
    assert {c.kind for c in report if c.module == "patch_embed.proj"} == {"weight", "activation"}
    # the conv reads a quantized input: its forward equals conv2d on the fake-quantized image
    x = images[:4]
    expected = nn.functional.conv2d(conv.input_quantizer(x), conv.weight, conv.bias, conv.stride)
    with torch.no_grad():
        assert torch.equal(conv(x), expected)
    default = quantize(vit, spec(4, 6), calib)
    assert type(default.patch_embed.proj) is nn.Conv2d
    assert not torch.equal(logits(q, images), logits(default, images))


def test_patch_embed_per_tensor_follows_weight_granularity(vit, calib):
    q = quantize(vit, spec(4, None, patch_embed="quantized", weight_granularity="per_tensor"), calib)
    assert torch.unique(q.patch_embed.proj.weight).numel() <= 15


def test_patch_embed_quantized_without_one_is_an_option_error(calib):
    model = nn.Sequential(nn.Flatten(), nn.Linear(256, 8))
    with pytest.raises(QuantOptionError) as info:
        quantize(model, spec(8, 8, patch_embed="quantized"), calib)
    assert info.value.option == "patch_embed" and "no patch-embedding Conv2d" in str(info.value)


def test_find_head_and_patch_embed(vit):
    assert find_head(vit) == ("head",)
    assert find_patch_embed(vit) == "patch_embed.proj"

    class Distilled(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 4)
            self.head, self.head_dist = nn.Linear(4, 2), nn.Linear(4, 2)

        def get_classifier(self):
            return self.head, self.head_dist

    assert find_head(Distilled()) == ("head", "head_dist")

    class NoHead(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 2, 3), nn.Conv2d(2, 2, 3)
            self.fc = nn.Linear(2, 2)

    assert find_head(NoHead()) == ()
    assert find_patch_embed(NoHead()) is None  # two convs and none named like a patch embedding
    assert find_patch_embed(nn.Sequential(nn.Conv2d(1, 4, 4, 4), nn.Flatten())) == "0"

    class OpenClipLike(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 8, 4, 4)
            self.other = nn.Conv2d(8, 8, 1)
            self.positional_embedding = nn.Parameter(torch.zeros(4, 8))

    assert find_patch_embed(OpenClipLike()) == "conv1"

    sel = select_modules(vit, LinearQuantOptions(head="fp32", patch_embed="quantized"))
    assert sel.head == ("head",) and sel.fp32_linears == ("head",) and "head" not in sel.linears
    assert len(sel.linears) == 8 and sel.patch_embed == "patch_embed.proj" and sel.quantize_patch_embed
    sel = select_modules(vit, LinearQuantOptions())
    assert "head" in sel.linears and not sel.fp32_linears and not sel.quantize_patch_embed


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key,value,expect",
    [
        ("weight_granularity", "per_row", "'per_channel' or 'per_tensor'"),
        ("weight_granularity", None, "'per_channel' or 'per_tensor'"),
        ("weight_symmetric", "yes", "true or false"),
        ("weight_symmetric", 1, "true or false"),
        ("act_symmetric", 0, "true or false"),
        ("head", "float", "'quantized' or 'fp32'"),
        ("head", False, "'quantized' or 'fp32'"),
        ("patch_embed", True, "'fp32' or 'quantized'"),
        ("batch_size", 0, "a positive integer"),
    ],
)
def test_bad_values_raise_an_error_naming_the_option(key, value, expect):
    with pytest.raises(QuantOptionError) as info:
        spec(8, 8, **{key: value})
    err = info.value
    assert err.option == key
    assert expect in str(err) and repr(value) in str(err)


def test_unknown_key_lists_the_accepted_ones():
    with pytest.raises(QuantOptionError) as info:
        spec(8, 8, heads="fp32")
    msg = str(info.value)
    assert info.value.option == "heads" and "did you mean 'head'" in msg
    for key in EXPECTED_DEFAULTS:
        assert key in msg


def test_accepted_tables_follow_the_typed_options():
    from pytest_qrel.quantize.options import MSEOptions, PercentileOptions, RaanAOptions, SmoothQuantOptions

    assert list(PercentileOptions.accepted()) == [k for k in COMMON_OPTIONS if k != "act_symmetric"] + [
        "percentile", "max_values"]
    assert list(RaanAOptions.accepted()) == ["head", "act_symmetric", "batch_size", "bit_candidates", "seed"]
    assert set(SmoothQuantOptions.accepted()) == {*COMMON_OPTIONS, "alpha", "act_quant", "quantize_bmm_input"}
    for cls in (PercentileOptions, MSEOptions, RaanAOptions, SmoothQuantOptions):  # parse({}) == the defaults
        assert cls.parse({}, method="m") == cls()
    with pytest.raises(QuantOptionError, match="did you mean 'percentile'"):
        PercentileOptions.parse({"percentil": 99.0}, method="percentile")
    with pytest.raises(QuantOptionError) as info:  # a common key the method does not accept
        RaanAOptions.parse({"weight_granularity": "per_tensor"}, method="raana")
    assert info.value.option == "weight_granularity"
