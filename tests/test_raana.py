"""Tests of the ``raana`` method: the randomized Hadamard rotation, RaBitQ codes, AllocateBits, the
weight-only simulated model (checked with independent constructions and brute force) and its
static activation quantization (``act_bits``)."""

from __future__ import annotations

import copy
import itertools
import math

import pytest
import torch
from torch import nn

from pytest_qrel.errors import QuantOptionError
from pytest_qrel.quantize import QUANTIZERS, ActQuantizer, quantize, verify_simulation
from pytest_qrel.quantize import raana as raana_module
from pytest_qrel.quantize.raana import (
    RaBitQLinear,
    RandomizedHadamard,
    allocate_bits,
    fwht,
    layer_coefficients,
    plan_bits,
    rabitq_dequantize,
    rabitq_quantize,
)
from pytest_qrel.quantize import QuantConfig
from tinyvit import logits, rel_error, quant_config, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

timm = pytest.importorskip("timm")

N_LINEARS = 2 * 4 + 1


def spec(wb, ab=None, *, cal_seed=0, **options) -> QuantConfig:
    return quant_config("raana", wb, ab, seed=cal_seed, options=options)



@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return random_images(32, 1)


@pytest.fixture(scope="module")
def labels() -> torch.Tensor:
    return torch.randint(0, 8, (32,), generator=torch.Generator().manual_seed(4))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return random_images(64, 2)


@pytest.fixture(scope="module")
def fp32_logits(vit, images):
    return logits(vit, images)


@pytest.fixture(scope="module")
def qmodels(vit, calib, labels):
    cache: dict[int, nn.Module] = {}

    def get(bits):
        if bits not in cache:
            cache[bits] = quantize(vit, spec(bits), calib, labels=labels)
        return cache[bits]

    return get




def rabitq_layers(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, RaBitQLinear)}


# ------------------------------------------------------------------------------------------------
# 1. rotation
# ------------------------------------------------------------------------------------------------


def sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.kron(torch.tensor([[1.0, 1.0], [1.0, -1.0]]), h)
    return h


@pytest.mark.parametrize("n", [1, 2, 8, 64])
def test_fwht_is_the_normalized_sylvester_hadamard(n):
    x = torch.randn(3, 5, n, generator=torch.Generator().manual_seed(n))
    torch.testing.assert_close(fwht(x), x @ sylvester(n) / math.sqrt(n), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        fwht(torch.randn(2, 6))


@pytest.mark.parametrize("dim", [64, 256, 48, 100, 1])
def test_rotation_is_orthogonal(dim):
    rot = RandomizedHadamard(dim, torch.Generator().manual_seed(dim))
    eye = torch.eye(dim)
    m = rot(eye)  # rows: images of the basis vectors, x -> x @ m
    torch.testing.assert_close(m @ m.T, eye, rtol=0, atol=1e-5)
    x = torch.randn(7, dim, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(rot(x), x @ m, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rot.inverse(rot(x)), x, rtol=1e-5, atol=1e-5)  # x H H^T == x
    torch.testing.assert_close(rot.inverse(x), x @ m.T, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(rot(x).norm(dim=1), x.norm(dim=1), rtol=1e-5, atol=1e-6)
    if dim > 1:  # a real mixing, not a signed permutation
        assert (m.abs() > 1e-6).sum() > 2 * dim


def test_rotation_depends_on_the_seed():
    a = RandomizedHadamard(64, torch.Generator().manual_seed(0))(torch.eye(64))
    b = RandomizedHadamard(64, torch.Generator().manual_seed(1))(torch.eye(64))
    assert not torch.allclose(a, b)


# ------------------------------------------------------------------------------------------------
# 2. RaBitQ codes
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 6, 8])
def test_rabitq_codes_and_estimator(bits):
    w = torch.randn(24, 64, generator=torch.Generator().manual_seed(bits))
    w[3] = 0.0  # an all-zero row
    codes, rescale = rabitq_quantize(w, bits)
    assert codes.dtype == torch.uint8 and int(codes.max()) <= 2**bits - 1
    w_hat = rabitq_dequantize(codes, rescale, bits)
    assert max(torch.unique(row).numel() for row in w_hat) <= 2**bits
    assert torch.equal(w_hat[3], torch.zeros(64)) and rescale[3] == 0
    live = [i for i in range(24) if i != 3]
    # signs are kept, and <w_hat, w> == ||w||^2 (RaBitQ's inner-product estimator)
    assert torch.equal(torch.sign(w_hat[live]), torch.where(w[live] >= 0, 1.0, -1.0))
    torch.testing.assert_close((w_hat * w).sum(1)[live], (w * w).sum(1)[live], rtol=1e-4, atol=0)
    # the dequantized grid is the half-integer one: |w_hat| / r - 1/2 are integers in [0, 2^(b-1) - 1]
    e = w_hat[live].abs() / rescale[live].unsqueeze(1) - 0.5
    assert torch.allclose(e, e.round(), atol=1e-4) and e.round().min() >= 0 and e.round().max() <= 2 ** (bits - 1) - 1


def _best_cosine_brute_force(o: torch.Tensor, top: int) -> torch.Tensor:
    """max over every change point t = k / o_i (evaluated just past it) of cos(min(floor(t o), top) + 1/2, o)."""
    out = []
    for row in o.double():
        best = float((0.5 * row).sum() / math.sqrt(0.25 * row.numel()))
        for i, k in itertools.product(range(row.numel()), range(1, top + 1)):
            t = k / float(row[i]) * (1 + 1e-12)
            y = torch.clamp(torch.floor(t * row), 0, top) + 0.5
            best = max(best, float((y * row).sum() / y.norm()))
        out.append(best)
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_codes_maximize_the_cosine(bits):
    w = torch.randn(6, 12, generator=torch.Generator().manual_seed(10 + bits))
    w[0, 0] = 9.0  # an outlier coordinate
    codes, rescale = rabitq_quantize(w, bits)
    w_hat = rabitq_dequantize(codes, rescale, bits).double()
    cos = (w_hat * w.double()).sum(1) / (w_hat.norm(dim=1) * w.double().norm(dim=1))
    o = w.abs() / w.norm(dim=1, keepdim=True)
    best = _best_cosine_brute_force(o, 2 ** (bits - 1) - 1)
    assert torch.all(cos >= best - 1e-6), (cos, best)


def test_threshold_search_is_close_to_the_exact_sweep(monkeypatch):
    w = torch.randn(16, 96, generator=torch.Generator().manual_seed(5))
    exact = rabitq_dequantize(*rabitq_quantize(w, 5), 5)
    monkeypatch.setattr(raana_module, "EXACT_SWEEP_LIMIT", 0)
    searched = rabitq_dequantize(*rabitq_quantize(w, 5), 5)
    cos = lambda a: (a * w).sum(1) / (a.norm(dim=1) * w.norm(dim=1))  # noqa: E731
    assert torch.all(cos(searched) > cos(exact) - 1e-4)
    assert max(torch.unique(row).numel() for row in searched) <= 32


def test_error_shrinks_about_twofold_per_bit():
    w = torch.randn(64, 128, generator=torch.Generator().manual_seed(7))
    errs = [float((rabitq_dequantize(*rabitq_quantize(w, b), b) - w).norm() / w.norm()) for b in range(2, 9)]
    assert all(b < a for a, b in zip(errs, errs[1:])), errs
    assert errs[-1] < 0.02 and 1.5 < errs[3] / errs[4] < 3.0, errs


# ------------------------------------------------------------------------------------------------
# 3. AllocateBits
# ------------------------------------------------------------------------------------------------


def _brute_force_allocation(sizes, coeffs, avg, cands):
    best, best_cost = None, math.inf
    for bits in itertools.product(cands, repeat=len(sizes)):
        if sum(s * b for s, b in zip(sizes, bits)) <= avg * sum(sizes):
            cost = sum(c * 2.0 ** -b for c, b in zip(coeffs, bits))
            if cost < best_cost - 1e-15:
                best, best_cost = bits, cost
    return best, best_cost


@pytest.mark.parametrize("seed", range(6))
def test_allocation_is_optimal_within_budget(seed):
    g = torch.Generator().manual_seed(seed)
    n = 4
    sizes = [int(s) for s in torch.randint(1, 6, (n,), generator=g) * 64]
    coeffs = [float(c) for c in torch.rand(n, generator=g) ** 3 * 10]
    avg = [3, 4, 4.5, 5][seed % 4]
    cands = [2, 3, 4, 5, 6]
    bits = allocate_bits(sizes, coeffs, avg, cands)
    assert sum(s * b for s, b in zip(sizes, bits)) <= avg * sum(sizes)
    _, best_cost = _brute_force_allocation(sizes, coeffs, avg, cands)
    assert sum(c * 2.0 ** -b for c, b in zip(coeffs, bits)) == pytest.approx(best_cost, rel=1e-9)


def test_more_sensitive_layers_get_more_bits():
    bits = allocate_bits([1000, 1000, 1000, 1000], [1.0, 100.0, 1.0, 10.0], 4, range(2, 9))
    assert bits[1] > bits[3] > bits[0] and bits[0] == bits[2]
    assert sum(bits) <= 16
    assert allocate_bits([10, 20], [1.0, 1.0], 8, [2, 8]) == [8, 8]
    with pytest.raises(ValueError):
        allocate_bits([10, 20], [1.0, 1.0], 1, [2, 3])


def test_coarse_budget_units_still_respect_the_budget(monkeypatch):
    monkeypatch.setattr(raana_module, "MAX_DP_UNITS", 500)
    sizes = [1_000_003, 999_983, 50_021, 7]  # gcd 1: the exact DP would need millions of cells
    coeffs = [3.0, 1.0, 10.0, 0.5]
    bits = allocate_bits(sizes, coeffs, 4, range(2, 9))
    assert sum(s * b for s, b in zip(sizes, bits)) <= 4 * sum(sizes)
    assert bits[2] >= bits[1]


class Toy(nn.Module):
    """Branch ``a``'s output reaches the loss 100x amplified, branch ``b``'s 100x damped."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        x = x.flatten(1)[:, :32]
        return self.head(10.0 * self.a(x) + 0.1 * self.b(x))


def test_gradient_sensitivity_gives_more_bits_to_the_sensitive_layer():
    torch.manual_seed(0)
    toy = Toy().eval()
    x = torch.randn(64, 1, 16, 16, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 4, (64,), generator=torch.Generator().manual_seed(4))
    coeffs = layer_coefficients(toy, {"a": toy.a, "b": toy.b, "head": toy.head}, x, labels=y, batch_size=16)
    assert coeffs["a"] > 100 * coeffs["b"] > 0
    q = quantize(toy, spec(4), x, labels=y)
    bits = {n: m.weight_bits for n, m in rabitq_layers(q).items()}
    assert bits["a"] > bits["b"], bits
    plan = plan_bits(toy, spec(4), x, labels=y)
    assert plan.as_dict() == bits and plan.average_bits <= 4


def test_coefficient_formula_on_one_layer():
    """c = ||dL/dY|| / sqrt(numel Y) * sqrt(mean ||x||^2) * ||W||_F / sqrt(d_in), computed by hand."""
    torch.manual_seed(1)
    lin = nn.Linear(6, 3)
    x = torch.randn(10, 6, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])
    out = lin(x)
    g = torch.autograd.grad(nn.functional.cross_entropy(out, y, reduction="sum"), out)[0]
    with torch.no_grad():
        expected = (g.norm() / math.sqrt(out.numel())) * (x.norm(dim=1) ** 2).mean().sqrt() * lin.weight.norm() / math.sqrt(6)
    got = layer_coefficients(nn.Sequential(lin), {"0": lin}, x, labels=y, batch_size=10)["0"]
    assert got == pytest.approx(float(expected), rel=1e-6)
    # without labels, the targets are the model's own argmax predictions
    own = layer_coefficients(nn.Sequential(lin), {"0": lin}, x, labels=out.argmax(1), batch_size=10)["0"]
    assert layer_coefficients(nn.Sequential(lin), {"0": lin}, x, batch_size=10)["0"] == pytest.approx(own, rel=1e-9)
    assert own != pytest.approx(got)
    assert all(p.requires_grad for p in lin.parameters())  # flags restored


# ------------------------------------------------------------------------------------------------
# the quantized model
# ------------------------------------------------------------------------------------------------


def test_is_registered():
    assert "raana" in QUANTIZERS
    assert set(QUANTIZERS.meta("raana")["options"]) == {"head", "act_symmetric", "batch_size", "bit_candidates", "seed"}


def test_weight_only_and_every_linear_replaced(vit, qmodels):
    q = qmodels(4)
    assert not [m for m in q.modules() if isinstance(m, ActQuantizer)]
    assert not [n for n, m in q.named_modules() if isinstance(m, nn.Linear)]
    layers = rabitq_layers(q)
    assert set(layers) == {n for n, m in vit.named_modules() if isinstance(m, nn.Linear)} and "head" in layers
    assert all(m.act_bits is None and m.input_quantizer is None for m in layers.values())
    assert type(q.patch_embed.proj) is nn.Conv2d


def test_budget_is_respected_and_bits_are_mixed(qmodels):
    layers = rabitq_layers(qmodels(4))
    sizes = {n: m.weight.numel() for n, m in layers.items()}
    total = sum(sizes[n] * m.weight_bits for n, m in layers.items())
    assert total <= 4 * sum(sizes.values())
    assert len({m.weight_bits for m in layers.values()}) > 1  # the allocation is not uniform


@pytest.mark.parametrize("bits", [8, 4, 3])
def test_counting_check_at_each_layers_own_width(qmodels, images, bits):
    q = qmodels(bits)
    report = verify_simulation(q, images)
    assert report.ok, report.summary()
    assert {c.kind for c in report} == {"weight"} and len(report) == N_LINEARS
    layers = rabitq_layers(q)
    for check in report:
        assert check.bits == layers[check.module].weight_bits and check.limit == 2**check.bits
        assert 1 < check.distinct <= 2**check.bits
    # the counted tensor is exactly the code's dequantized value
    for m in layers.values():
        assert torch.equal(m.dequantized_weight(), rabitq_dequantize(m.codes, m.rescale, m.weight_bits))


def test_counting_check_catches_off_grid_weights(qmodels, images):
    q = copy.deepcopy(qmodels(4))
    with torch.no_grad():
        q.blocks[0].mlp.fc2.weight.add_(torch.randn_like(q.blocks[0].mlp.fc2.weight) * 1e-4)
    report = verify_simulation(q, images)
    assert {(c.module, c.kind) for c in report.failures} == {("blocks.0.mlp.fc2", "weight")}


def test_rotated_forward_equals_the_unrotated_weight(vit, qmodels):
    layer = qmodels(8).blocks[1].mlp.fc2
    x = torch.randn(5, 256, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        torch.testing.assert_close(layer(x), x @ layer.effective_weight().T + layer.bias, rtol=1e-4, atol=1e-5)
        original = vit.blocks[1].mlp.fc2.weight
        assert float((layer.effective_weight() - original).norm() / original.norm()) < 0.02


def test_close_to_fp32_at_8_bits_and_further_at_4_and_3(qmodels, images, fp32_logits):
    errors = {b: rel_error(logits(qmodels(b), images), fp32_logits) for b in (8, 4, 3)}
    assert errors[8] < 0.03, errors
    assert errors[8] < errors[4] < errors[3], errors
    assert errors[4] > 3 * errors[8], errors
    agreement = (logits(qmodels(8), images).argmax(1) == fp32_logits.argmax(1)).float().mean()
    assert agreement >= 0.9


def test_head_fp32(vit, calib, labels, images):
    q = quantize(vit, spec(4, head="fp32"), calib, labels=labels)
    assert type(q.head) is nn.Linear and torch.equal(q.head.weight, vit.head.weight)
    assert verify_simulation(q, images, allow_float_linears=True).ok


def test_deterministic_seeded_and_input_untouched(vit, calib, labels):
    before = {k: v.clone() for k, v in vit.state_dict().items()}
    a = quantize(vit, spec(4), calib, labels=labels)
    b = quantize(vit, spec(4), calib, labels=labels)
    c = quantize(vit, spec(4, cal_seed=1), calib, labels=labels)  # the seed defaults to calibration.seed
    d = quantize(vit, spec(4, cal_seed=1, seed=0), calib, labels=labels)  # the option wins
    sa, sb, sc, sd = (m.state_dict() for m in (a, b, c, d))
    assert all(torch.equal(sa[k], sb[k]) for k in sa) and all(torch.equal(sa[k], sd[k]) for k in sa)
    assert not torch.equal(sa["blocks.0.attn.qkv.rotation.signs1"], sc["blocks.0.attn.qkv.rotation.signs1"])
    assert all(torch.equal(before[k], v) for k, v in vit.state_dict().items())


def test_budget_at_the_largest_candidate_skips_the_gradient_pass(vit, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("no gradient pass expected")

    monkeypatch.setattr(raana_module, "layer_coefficients", boom)
    q = quantize(vit, spec(4, bit_candidates=[2, 3, 4]), torch.zeros(0, 1, 16, 16))  # no calibration needed
    assert {m.weight_bits for m in rabitq_layers(q).values()} == {4}


# ------------------------------------------------------------------------------------------------
# option validation
# ------------------------------------------------------------------------------------------------


def _fp32_layer_inputs(model, names, images):
    """The input of every named Linear of the FP32 ``model`` on ``images`` (one batch)."""
    seen = {}
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: seen.__setitem__(n, a[0].detach()))
               for n in names]
    logits(model, images)
    for h in handles:
        h.remove()
    return seen


@pytest.mark.parametrize("act_bits", [8, 4])
def test_activations_are_the_rotated_inputs_static_per_tensor(vit, calib, labels, qmodels, images, act_bits):
    """act_bits: the same weights as weight-only RaanA, and each layer's rotated input R(x) quantized
    with minmax's static per-tensor asymmetric min/max parameters measured on the FP32 model."""
    from pytest_qrel.quantize.fakequant import asymmetric_qparams

    q = quantize(vit, spec(4, act_bits), calib, labels=labels)
    weight_only = rabitq_layers(qmodels(4))
    layers = rabitq_layers(q)
    assert set(layers) == set(weight_only)
    inputs = _fp32_layer_inputs(vit, layers, calib)
    for name, layer in layers.items():
        assert torch.equal(layer.weight, weight_only[name].weight) and layer.weight_bits == weight_only[name].weight_bits
        quantizer = layer.input_quantizer
        assert isinstance(quantizer, ActQuantizer) and quantizer.mode == "quantize" and layer.act_bits == act_bits
        rotated = layer.rotation(inputs[name])
        scale, zero_point = asymmetric_qparams(rotated.min(), rotated.max(), act_bits)
        torch.testing.assert_close(quantizer.scale, scale, rtol=1e-6, atol=0)
        assert int(quantizer.zero_point) == int(zero_point)
        x = torch.randn(3, 5, layer.in_features)
        expected = torch.nn.functional.linear(
            torch.fake_quantize_per_tensor_affine(layer.rotation(x), scale, zero_point, 0, 2**act_bits - 1),
            layer.weight, layer.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    report = verify_simulation(q, images)
    assert report.ok, report.summary()
    acts = [c for c in report if c.kind == "activation"]
    assert len(acts) == N_LINEARS and all(1 < c.distinct <= 2**act_bits for c in acts)
    # every Linear multiplies two quantized operands; only the patch embedding and the fused attention stay float
    assert {p.op for p in report.float_paths} == {"conv2d", "scaled_dot_product_attention"}, report.summary()


def test_activation_bits_cost_accuracy(vit, calib, labels, qmodels, images, fp32_logits):
    e_w = rel_error(logits(qmodels(8), images), fp32_logits)
    e_a8 = rel_error(logits(quantize(vit, spec(8, 8), calib, labels=labels), images), fp32_logits)
    e_a4 = rel_error(logits(quantize(vit, spec(8, 4), calib, labels=labels), images), fp32_logits)
    assert e_w < e_a8 < 0.1 < e_a4, (e_w, e_a8, e_a4)


def test_symmetric_activations_and_no_calibration(vit, calib, labels):
    q = quantize(vit, spec(6, 6, act_symmetric=True), calib, labels=labels)
    assert all(int(m.input_quantizer.zero_point) == 0 and m.input_quantizer.symmetric for m in rabitq_layers(q).values())
    with pytest.raises(QuantOptionError) as info:
        quantize(vit, spec(8, 8), calib[:0])
    assert info.value.option == "calibration"


def test_budget_below_the_candidates_is_an_error():
    with pytest.raises(QuantOptionError) as info:
        spec(3, bit_candidates=[4, 8])
    assert info.value.option == "weight_bits"


@pytest.mark.parametrize(
    "key,value",
    [("bit_candidates", [2, 2, 4]), ("bit_candidates", [0, 4]), ("bit_candidates", [9]), ("bit_candidates", []),
     ("bit_candidates", 4), ("seed", -1), ("seed", "0"), ("head", "float"), ("batch_size", 0)],
)
def test_bad_option_values(key, value):
    with pytest.raises(QuantOptionError) as info:
        spec(4, **{key: value})
    assert info.value.option == key


def test_options_of_other_methods_are_unknown():
    with pytest.raises(QuantOptionError) as info:
        spec(4, patch_embed="quantized")
    msg = str(info.value)
    assert info.value.option == "patch_embed"
    assert all(k in msg for k in ("bit_candidates", "head", "batch_size", "seed"))


def test_no_calibration_images_when_a_choice_is_needed(vit):
    with pytest.raises(QuantOptionError) as info:
        quantize(vit, spec(4), torch.zeros(0, 1, 16, 16))
    assert info.value.option == "calibration"


def test_works_when_called_under_inference_mode(vit, calib, labels, images):
    with torch.inference_mode():
        q = quantize(vit, spec(4), calib, labels=labels)
    ref = quantize(vit, spec(4), calib, labels=labels)
    assert torch.equal(logits(q, images), logits(ref, images))
