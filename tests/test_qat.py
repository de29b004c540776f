"""Tests of the light-QAT family in pytest_qrel.quantize.qat (qat, qat_lsq, qat_lsq_per_channel,
qat_distill, qat_lora).

LSQ's forward and gradients are checked against formulas written out here (and against ATen's fused
fake-quantize ops), never against numbers taken from the implementation. Training runs on a tiny
random timm ViT and a small learnable synthetic task, for a handful of steps.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pytest_qrel.errors import QuantOptionError
from pytest_qrel.quantize import (
    QUANTIZERS,
    ActQuantizer,
    FakeQuantLinear,
    quantize,
    verify_simulation,
)
from pytest_qrel.quantize import qat as qat_mod
from pytest_qrel.quantize.qat import (
    LoRAFakeQuantLinear,
    LSQActQuantizer,
    QATLinear,
    lsq_fake_quantize,
)
from pytest_qrel.quantize import QuantConfig
import tinyvit
from tinyvit import logits, quant_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

timm = pytest.importorskip("timm")

METHODS = ("qat", "qat_lsq", "qat_lsq_per_channel", "qat_distill", "qat_lora")
CE_METHODS = ("qat", "qat_lsq", "qat_lsq_per_channel", "qat_lora")
N_LINEARS = 4 + 1  # depth 1 x (qkv, proj, fc1, fc2) + head
N_CLASSES = 4
FAST = {"steps": 3, "batch_size": 16}


def make_vit(seed: int = 0, width: int = 32) -> nn.Module:
    return tinyvit.make_vit(seed, width=width, depth=1, heads=2, num_classes=N_CLASSES)


def spec(method: str, wb: int = 8, ab: int | None = 8, *, calib_seed: int = 0, **options) -> QuantConfig:
    return quant_config(method, wb, ab, seed=calib_seed, options=options)


@pytest.fixture(scope="module")
def vit() -> nn.Module:
    return make_vit()


@pytest.fixture(scope="module")
def task() -> tuple[torch.Tensor, torch.Tensor]:
    """32 images whose class (0..3) is the bright quadrant: a task the ViT can start to learn in a few steps."""
    g = torch.Generator().manual_seed(3)
    labels = torch.arange(32) % N_CLASSES
    images = 0.3 * torch.randn(32, 1, 16, 16, generator=g)
    for i, c in enumerate(labels.tolist()):
        r, col = divmod(c, 2)
        images[i, 0, 8 * r:8 * r + 8, 8 * col:8 * col + 8] += 1.5
    return images, labels



def ce(model, images, labels) -> float:
    return float(F.cross_entropy(logits(model, images), labels))


def kl_to(teacher, model, images) -> float:
    t, s = logits(teacher, images), logits(model, images)
    return float(F.kl_div(F.log_softmax(s, 1), F.log_softmax(t, 1), log_target=True, reduction="batchmean"))


# ------------------------------------------------------------------------------------------------
# LSQ primitives: forward = ATen's fake quantization, gradients = the LSQ formulas
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_lsq_forward_equals_aten_fake_quant(bits):
    g = torch.Generator().manual_seed(bits)
    x = 3 * torch.randn(4, 50, generator=g)
    qmax_u = 2**bits - 1
    zp = torch.tensor(qmax_u // 3, dtype=torch.int32)
    s = torch.tensor(0.07)
    ours = lsq_fake_quantize(x, s, 0, qmax_u, zero_point=zp)
    assert torch.equal(ours, torch.fake_quantize_per_tensor_affine(x, s, zp, 0, qmax_u))

    q = 2 ** (bits - 1) - 1
    steps = torch.tensor([0.05, 0.2, 0.5, 1.0])
    ours = lsq_fake_quantize(x, steps, -q, q, axis=0)
    ref = torch.fake_quantize_per_channel_affine(x, steps, torch.zeros(4, dtype=torch.int32), 0, -q, q)
    assert torch.equal(ours, ref)
    assert int(torch.unique(ours[0]).numel()) <= 2 * q + 1


def _lsq_step_grad_reference(x, s, lo, hi, upstream, g):
    """LSQ's d x_hat / d s, written out elementwise: round(v) - v inside [lo, hi], the bound outside."""
    total = 0.0
    for xi, ui in zip(x.tolist(), upstream.tolist()):
        v = xi / s
        if v < lo:
            d = lo
        elif v > hi:
            d = hi
        else:
            d = round(v) - v  # Python's round is half to even, like torch.round
        total += ui * d
    return g * total


def test_lsq_step_receives_scaled_gradient():
    x = torch.tensor([-2.0, -0.61, -0.2, 0.05, 0.33, 0.74, 1.1, 3.0])
    upstream = torch.tensor([0.3, -1.0, 0.5, 2.0, -0.7, 1.2, 0.9, -0.4])
    s_value, lo, hi = 0.25, -3, 3
    g = 1.0 / math.sqrt(x.numel() * hi)

    step = torch.tensor(s_value, requires_grad=True)
    (lsq_fake_quantize(x, step, lo, hi, grad_factor=g) * upstream).sum().backward()
    assert step.grad is not None and step.grad.abs().item() > 0
    expected = _lsq_step_grad_reference(x, s_value, lo, hi, upstream, g)
    assert step.grad.item() == pytest.approx(expected, rel=1e-5)

    unscaled = torch.tensor(s_value, requires_grad=True)
    (lsq_fake_quantize(x, unscaled, lo, hi) * upstream).sum().backward()
    assert unscaled.grad.item() == pytest.approx(step.grad.item() / g, rel=1e-5)


def test_lsq_step_gradient_with_zero_point():
    x = torch.tensor([-1.0, -0.34, 0.0, 0.26, 0.94, 2.5])
    upstream = torch.tensor([1.0, -0.5, 0.25, 2.0, -1.5, 0.75])
    s_value, zp, qmax = 0.2, 4, 15
    step = torch.tensor(s_value, requires_grad=True)
    (lsq_fake_quantize(x, step, 0, qmax, zero_point=torch.tensor(zp, dtype=torch.int32), grad_factor=0.5)
     * upstream).sum().backward()
    expected = _lsq_step_grad_reference(x, s_value, -zp, qmax - zp, upstream, 0.5)
    assert step.grad.item() == pytest.approx(expected, rel=1e-5)


def test_per_channel_steps_get_their_rows_gradient():
    w = torch.tensor([[0.4, -0.9, 0.13], [2.0, 0.05, -0.3]])  # no x/s exactly at .5 (float32 vs float64 ties)
    upstream = torch.tensor([[1.0, 0.5, -2.0], [0.3, -0.6, 1.1]])
    s_values, q = [0.2, 0.5], 3
    g = 1.0 / math.sqrt(3 * q)
    steps = torch.tensor(s_values, requires_grad=True)
    (lsq_fake_quantize(w, steps, -q, q, grad_factor=g, axis=0) * upstream).sum().backward()
    for c in range(2):
        expected = _lsq_step_grad_reference(w[c], s_values[c], -q, q, upstream[c], g)
        assert steps.grad[c].item() == pytest.approx(expected, rel=1e-5)


def test_ste_gradient_is_one_inside_zero_outside():
    s, q = 0.5, 3  # range [-1.5, 1.5]
    x = torch.tensor([-4.0, -1.2, -0.3, 0.0, 0.74, 1.49, 1.6, 9.0], requires_grad=True)
    lsq_fake_quantize(x, torch.tensor(s), -q, q).sum().backward()
    inside = (x.detach() / s >= -q) & (x.detach() / s <= q)
    assert torch.allclose(x.grad[inside], torch.ones(int(inside.sum())))
    assert torch.equal(x.grad[~inside], torch.zeros(int((~inside).sum())))
    assert 0 < int(inside.sum()) < x.numel()

    y = torch.tensor([-3.0, -0.5, 0.4, 2.0, 5.0], requires_grad=True)  # zero point 2: range [-2 s, 5 s]
    lsq_fake_quantize(y, torch.tensor(0.5), 0, 7, zero_point=torch.tensor(2, dtype=torch.int32)).sum().backward()
    assert torch.allclose(y.grad, torch.tensor([0.0, 1.0, 1.0, 1.0, 0.0]))


def test_activation_grad_scale_counts_one_sample():
    """LSQ's g for activations uses the elements of ONE sample (T * C), not of the batch."""
    aq = LSQActQuantizer(4)
    x = torch.linspace(-2, 3, 5 * 3 * 4).reshape(5, 3, 4)
    aq.observe()
    aq(x)
    aq.freeze()
    with torch.no_grad():
        aq.step.fill_(0.29)  # away from minmax's exact range ends, where float32 and float64 disagree
    s = aq.step.item()
    upstream = torch.cos(torch.arange(x.numel(), dtype=torch.float32)).reshape(x.shape)
    (aq(x) * upstream).sum().backward()
    zp = int(aq.zero_point)
    g = 1.0 / math.sqrt(3 * 4 * 15)
    expected = _lsq_step_grad_reference(x.flatten(), s, -zp, 15 - zp, upstream.flatten(), g)
    assert aq.step.grad.item() == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("scheme, per_step", [("lsq_tensor", 6), ("lsq_channel", 3)])
def test_weight_grad_scale_in_qat_linear(scheme, per_step):
    lin = nn.Linear(3, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[0.4, -0.9, 0.1], [2.0, 0.05, -0.3]]))
    layer = QATLinear(lin, weight_bits=3, act_bits=None, weight_scheme=scheme, act_scheme="lsq")
    layer.freeze()
    with torch.no_grad():  # steps away from minmax's exact range ends, where float32 and float64 disagree
        chosen = torch.tensor([0.27, 0.31][: layer.weight_step.numel()])
        layer.weight_step.copy_(chosen.reshape(layer.weight_step.shape))
    q = 3
    upstream = torch.tensor([[1.0, 0.5, -2.0], [0.3, -0.6, 1.1]])
    (layer.quantized_weight() * upstream).sum().backward()
    g = 1.0 / math.sqrt(per_step * q)
    steps = layer.weight_step.detach().reshape(-1).tolist()
    w = lin.weight.detach()
    if scheme == "lsq_tensor":
        expected = [_lsq_step_grad_reference(w.flatten(), steps[0], -q, q, upstream.flatten(), g)]
    else:
        expected = [_lsq_step_grad_reference(w[c], steps[c], -q, q, upstream[c], g) for c in range(2)]
    assert layer.weight_step.grad.reshape(-1).tolist() == pytest.approx(expected, rel=1e-5)
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0  # STE reaches the weight


def test_step_init_minmax_and_lsq():
    torch.manual_seed(1)
    lin = nn.Linear(8, 4)
    w = lin.weight.detach()
    a = QATLinear(lin, weight_bits=4, act_bits=None, weight_scheme="lsq_channel", act_scheme="lsq")
    a.freeze()
    assert torch.allclose(a.weight_step, w.abs().amax(dim=1) / 7)
    b = QATLinear(lin, weight_bits=4, act_bits=None, weight_scheme="lsq_tensor", act_scheme="lsq", step_init="lsq")
    b.freeze()
    assert b.weight_step.item() == pytest.approx(2 * w.abs().mean().item() / math.sqrt(7), rel=1e-6)

    x = torch.linspace(-1.0, 3.0, 40).reshape(4, 10)
    for init, expected in [("minmax", 4.0 / 255), ("lsq", 2 * x.abs().mean().item() / math.sqrt(255))]:
        aq = LSQActQuantizer(8, step_init=init)
        aq.observe()
        aq(x)
        aq.freeze()
        assert aq.step.item() == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# The registry entries
# ------------------------------------------------------------------------------------------------


def test_methods_are_registered_with_their_options():
    for name in METHODS:
        opts = QUANTIZERS.meta(name)["options"]
        assert {"steps", "lr", "batch_size", "weight_decay", "seed"} <= set(opts), name
    assert {"temperature", "distill_weight"} <= set(QUANTIZERS.meta("qat_distill")["options"])
    assert {"lora_r", "lora_alpha", "train_steps"} <= set(QUANTIZERS.meta("qat_lora")["options"])
    assert "lora_r" not in QUANTIZERS.meta("qat_lsq")["options"]


@pytest.mark.parametrize("method", ["qat", "qat_lsq_per_channel", "qat_lora"])
def test_zero_steps_is_the_minmax_ptq_model(vit, task, method):
    images, labels = task
    ptq = quantize(vit, spec("minmax", 4, 6), images)
    initial = quantize(vit, spec(method, 4, 6, steps=0), images, labels=labels)
    assert initial.qat_steps == 0
    assert torch.equal(logits(initial, images), logits(ptq, images))


@pytest.mark.parametrize("method", CE_METHODS)
def test_training_lowers_the_calibration_loss(vit, task, method):
    images, labels = task
    initial = quantize(vit, spec(method, 6, 6, steps=0), images, labels=labels)
    trained = quantize(vit, spec(method, 6, 6, steps=8, lr=3e-3, step_lr=1e-3) if method != "qat" else
                       spec(method, 6, 6, steps=8, lr=3e-3), images, labels=labels)
    before, after = ce(initial, images, labels), ce(trained, images, labels)
    assert after < before - 0.02, (before, after)
    assert len(trained.qat_losses) == 8


def test_distill_lowers_kl_to_teacher_without_labels(vit, task):
    images, _ = task
    initial = quantize(vit, spec("qat_distill", 4, 4, steps=0), images)
    trained = quantize(vit, spec("qat_distill", 4, 4, steps=8, lr=3e-3, step_lr=1e-3), images)
    assert trained.qat_options.distill_weight == 1.0  # no labels: the KL term alone
    before, after = kl_to(vit, initial, images), kl_to(vit, trained, images)
    assert after < 0.9 * before, (before, after)


def test_distill_weight_mixes_cross_entropy(vit, task):
    images, labels = task
    lsq = quantize(vit, spec("qat_lsq", 6, 6, **FAST, lr=1e-3), images, labels=labels)
    ce_only = quantize(vit, spec("qat_distill", 6, 6, **FAST, lr=1e-3, distill_weight=0), images, labels=labels)
    assert torch.equal(logits(ce_only, images), logits(lsq, images))  # weight 0: exactly qat_lsq
    default = quantize(vit, spec("qat_distill", 6, 6, **FAST, lr=1e-3), images, labels=labels)
    assert default.qat_options.distill_weight == 0.5
    assert not torch.equal(logits(default, images), logits(lsq, images))
    # temperature T: the loss of the very first step is T^2 KL at T plus CE, computed here independently
    t = 2.0
    run = quantize(vit, spec("qat_distill", 6, 6, steps=1, batch_size=32, temperature=t, distill_weight=0.25),
                   images, labels=labels)
    start = quantize(vit, spec("qat_distill", 6, 6, steps=0), images, labels=labels)
    s, te = logits(start, images), logits(vit, images)
    kl = F.kl_div(F.log_softmax(s / t, 1), F.log_softmax(te / t, 1), log_target=True, reduction="batchmean")
    expected = 0.25 * t * t * kl + 0.75 * F.cross_entropy(s, labels)
    assert run.qat_losses[0] == pytest.approx(float(expected), rel=1e-4)


@pytest.fixture
def optimizer_steps():
    """Counts every optimizer.step() in the process, independently of the code under test."""
    count = [0]
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def hook(optimizer, args, kwargs):
        count[0] += 1

    handle = register_optimizer_step_post_hook(hook)
    yield count
    handle.remove()


def test_steps_option_counts_optimizer_steps(vit, task, optimizer_steps):
    images, labels = task
    qmodel = quantize(vit, spec("qat_lsq", 8, 8, steps=7, batch_size=8), images, labels=labels)
    assert optimizer_steps[0] == 7
    assert qmodel.qat_steps == 7 and len(qmodel.qat_losses) == 7


def test_default_is_100_steps_of_100_images(task, optimizer_steps, monkeypatch):
    images, labels = task
    seen: list[int] = []
    real = qat_mod.index_stream

    def spy(n, batch_size, generator):
        for idx in real(n, batch_size, generator):
            seen.append(int(idx.numel()))
            yield idx

    monkeypatch.setattr(qat_mod, "index_stream", spy)
    qmodel = quantize(make_vit(width=16), spec("qat_lora", 8, 8), images, labels=labels)  # narrow: 100 real steps
    assert optimizer_steps[0] == 100 and qmodel.qat_steps == 100
    assert seen == [100] * 100  # 32 calibration images looped into batches of 100
    assert qmodel.qat_options.lora_r == 8 and qmodel.qat_options.lora_alpha == 16


def test_batches_loop_over_a_seeded_shuffle():
    stream = qat_mod.index_stream(5, 3, torch.Generator().manual_seed(0))
    batches = [next(stream) for _ in range(5)]
    flat = torch.cat(batches)
    assert flat.numel() == 15
    for epoch in flat.reshape(3, 5):
        assert sorted(epoch.tolist()) == [0, 1, 2, 3, 4]  # every image once per pass
    again = qat_mod.index_stream(5, 3, torch.Generator().manual_seed(0))
    assert all(torch.equal(b, next(again)) for b in batches)


def test_deterministic_and_seeded(vit, task):
    images, labels = task
    opts = {"steps": 4, "batch_size": 8, "lr": 1e-3}
    a = quantize(vit, spec("qat_lsq_per_channel", 4, 4, **opts), images, labels=labels)
    b = quantize(vit, spec("qat_lsq_per_channel", 4, 4, **opts), images, labels=labels)
    assert torch.equal(logits(a, images), logits(b, images))
    other = quantize(vit, spec("qat_lsq_per_channel", 4, 4, **opts, seed=1), images, labels=labels)
    assert not torch.equal(logits(other, images), logits(a, images))
    # the default seed is calibration.seed
    from_calib = quantize(vit, spec("qat_lsq_per_channel", 4, 4, calib_seed=1, **opts), images, labels=labels)
    assert torch.equal(logits(from_calib, images), logits(other, images))
    assert from_calib.qat_options.seed == 1


@pytest.mark.parametrize("method", ["qat", "qat_distill", "qat_lora"])
def test_input_model_untouched(task, method):
    images, labels = task
    model = make_vit(5)
    model.head.weight.requires_grad_(False)
    before = copy.deepcopy(model.state_dict())
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    quantize(model, spec(method, 4, 4, **FAST, lr=1e-2), images, labels=labels)
    assert not model.training
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not any(isinstance(m, (FakeQuantLinear, QATLinear)) for m in model.modules())


@pytest.mark.parametrize("method", METHODS)
def test_returned_model_is_a_frozen_inference_model(vit, task, method):
    images, labels = task
    qmodel = quantize(vit, spec(method, 4, 4, **FAST), images, labels=labels)
    assert not qmodel.training
    assert not any(p.requires_grad for p in qmodel.parameters())
    assert not any(isinstance(m, (QATLinear, LSQActQuantizer)) for m in qmodel.modules())
    linears = [m for m in qmodel.modules() if isinstance(m, FakeQuantLinear)]
    assert len(linears) == N_LINEARS and all(m.weight_frozen for m in linears)
    acts = [m for m in qmodel.modules() if isinstance(m, ActQuantizer)]
    assert len(acts) == N_LINEARS and all(m.mode == "quantize" for m in acts)
    # qat_lora keeps its adapters beside the quantized layers (the paper's unmerged forward)
    assert any(isinstance(m, LoRAFakeQuantLinear) for m in linears) == (method == "qat_lora")
    assert not qmodel(images[:2]).requires_grad


@pytest.mark.parametrize("recipe", [
    qat_mod.Recipe("minmax", "static"),
    qat_mod.Recipe("lsq_tensor", "lsq"),
    qat_mod.Recipe("lsq_channel", "lsq", train_model=False, lora=True),
])
def test_exported_model_computes_what_was_trained(vit, task, recipe):
    images, labels = task
    s = spec("qat_lora", 4, 4, steps=3, batch_size=16, lr=1e-2, step_lr=1e-3, weight_decay=0.0, lora_r=4,
             lora_alpha=8.0, train_steps=True)
    model = qat_mod.prepare(vit, s, images, recipe, seed=0)
    qat_mod.train(model, images, lambda out, idx: F.cross_entropy(out, labels[idx]), s.options, seed=0)
    trained = logits(model, images)
    qat_mod.export(model, merge_lora=False)
    assert torch.equal(logits(model, images), trained)


def test_lora_trains_only_the_adapters(vit, task):
    images, labels = task
    initial = quantize(vit, spec("qat_lora", 4, 4, steps=0, lora_r=4, lora_alpha=12, lora_merge=False), images,
                       labels=labels)
    trained = quantize(vit, spec("qat_lora", 4, 4, steps=6, lr=1e-2, lora_r=4, lora_alpha=12, lora_merge=False),
                       images, labels=labels)
    s0, s1 = initial.state_dict(), trained.state_dict()
    lora_keys = [k for k in s1 if ".lora_" in k]
    assert len(lora_keys) == 2 * N_LINEARS
    for k in s1:
        if k in lora_keys:
            continue
        assert torch.equal(s0[k], s1[k]), k  # base quantized weights, biases, act grids, norms, embeddings
    assert all(float(s1[k].abs().sum()) > 0 for k in lora_keys if k.endswith("lora_B"))
    assert ce(trained, images, labels) < ce(initial, images, labels)

    layer = trained.blocks[0].mlp.fc1
    assert isinstance(layer, LoRAFakeQuantLinear)
    assert layer.lora_r == 4 and layer.lora_scaling == 3.0
    assert layer.lora_A.shape == (4, layer.in_features) and layer.lora_B.shape == (layer.out_features, 4)
    x = torch.randn(2, 17, layer.in_features)
    base = F.linear(layer.input_quantizer(x), layer.weight, layer.bias)  # the adapter sees the FP input
    expected = base + 3.0 * (x @ layer.lora_A.T) @ layer.lora_B.T
    with torch.no_grad():
        assert torch.allclose(layer(x), expected, atol=1e-5)


def test_lora_train_steps_moves_the_base_grid(vit, task):
    images, labels = task
    frozen = quantize(vit, spec("qat_lora", 4, 4, steps=4, lr=1e-2, lora_merge=False), images, labels=labels)
    moving = quantize(vit, spec("qat_lora", 4, 4, steps=4, lr=1e-2, step_lr=1e-3, train_steps=True, lora_merge=False),
                      images, labels=labels)
    assert not torch.equal(moving.blocks[0].attn.qkv.weight, frozen.blocks[0].attn.qkv.weight)


@pytest.mark.parametrize("bits", [8, 6, 4])
@pytest.mark.parametrize("method", METHODS)
def test_verify_simulation_passes(vit, task, method, bits):
    images, labels = task
    qmodel = quantize(vit, spec(method, bits, bits, steps=2, batch_size=16, lr=1e-3), images, labels=labels)
    report = verify_simulation(qmodel, images)
    assert report.ok, report.summary()
    assert len(report) == 2 * N_LINEARS
    assert max(c.distinct for c in report if c.kind == "weight") <= 2**bits - 1  # restricted signed grid


@pytest.mark.parametrize("method", ["qat", "qat_lora"])
def test_head_fp32_keeps_the_classifier_float(vit, task, method):
    images, labels = task
    initial = quantize(vit, spec(method, 4, 4, steps=0, head="fp32"), images, labels=labels)
    assert type(initial.head) is nn.Linear
    ptq = quantize(vit, spec("minmax", 4, 4, head="fp32"), images)
    assert torch.equal(logits(initial, images), logits(ptq, images))
    trained = quantize(vit, spec(method, 4, 4, **FAST, lr=1e-2, head="fp32"), images, labels=labels)
    assert type(trained.head) is nn.Linear and not trained.head.weight.requires_grad
    assert torch.equal(trained.head.weight, vit.head.weight) == (method == "qat_lora")  # qat fine-tunes it
    report = verify_simulation(trained, images, allow_float_linears=True)
    assert report.ok and len(report) == 2 * (N_LINEARS - 1)


def test_weight_only_qat(vit, task):
    images, labels = task
    qmodel = quantize(vit, spec("qat_lsq", 4, None, **FAST), images, labels=labels)
    assert all(m.input_quantizer is None for m in qmodel.modules() if isinstance(m, FakeQuantLinear))
    report = verify_simulation(qmodel, images)
    assert report.ok and len(report) == N_LINEARS


# ------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, key, value", [
    ("qat", "stpes", 5),
    ("qat_lsq", "lora_r", 4),
    ("qat", "steps", -1),
    ("qat", "steps", True),
    ("qat_lsq", "batch_size", 0),
    ("qat", "lr", 0),
    ("qat", "lr", "fast"),
    ("qat", "weight_decay", -0.1),
    ("qat", "seed", -3),
    ("qat_lsq", "head", "float"),
    ("qat_lsq", "step_lr", float("nan")),
    ("qat_lsq_per_channel", "step_init", "mse"),
    ("qat_distill", "temperature", 0),
    ("qat_distill", "distill_weight", 1.5),
    ("qat_distill", "per_channel", "yes"),
    ("qat_lora", "lora_r", 0),
    ("qat_lora", "lora_alpha", -16),
    ("qat_lora", "train_steps", 1),
])
def test_bad_option_names_it(method, key, value):
    with pytest.raises(QuantOptionError) as err:
        spec(method, 8, 8, **{key: value})
    assert err.value.option == key


def test_unknown_option_suggests_the_right_one():
    with pytest.raises(QuantOptionError, match="did you mean 'steps'"):
        spec("qat", 8, 8, stpes=5)


def test_options_are_typed_numbers(vit, task):
    """The suite loader reads 1e-3 as a float (yamlsrc); a quoted string is not a number."""
    with pytest.raises(QuantOptionError, match="a positive number, got '1e-3'"):
        spec("qat", 6, 6, lr="1e-3")
    config = spec("qat_lora", 6, 6, lr=1, lora_alpha=16)
    assert config.options.lr == 1.0 and isinstance(config.options.lr, float)
    assert isinstance(config.options.lora_alpha, float)


@pytest.mark.parametrize("method", CE_METHODS)
def test_labels_are_required_for_cross_entropy(vit, task, method):
    images, _ = task
    with pytest.raises(QuantOptionError, match="class labels") as err:
        quantize(vit, spec(method, 8, 8, **FAST), images)
    assert err.value.option == "method"
    assert "qat_distill" in str(err.value)


def test_distill_with_cross_entropy_needs_labels(vit, task):
    images, _ = task
    with pytest.raises(QuantOptionError, match="have neither") as err:
        quantize(vit, spec("qat_distill", 8, 8, **FAST, distill_weight=0.5), images)
    assert err.value.option == "distill_weight"


def test_labels_outside_the_model_classes(vit, task):
    images, labels = task
    with pytest.raises(QuantOptionError, match="not a class of the model"):
        quantize(vit, spec("qat", 8, 8, **FAST), images, labels=labels + N_CLASSES)


def test_no_calibration_images(vit, task):
    _, labels = task
    with pytest.raises(QuantOptionError, match="no calibration images") as err:
        quantize(vit, spec("qat", 8, 8), torch.empty(0, 1, 16, 16), labels=labels[:0])
    assert err.value.option == "calibration"


def test_diverging_training_names_the_learning_rate(vit, task):
    images, labels = task
    with pytest.raises(QuantOptionError, match="training loss became") as err:
        quantize(vit, spec("qat", 8, 8, steps=5, batch_size=16, lr=1e30), images, labels=labels)
    assert err.value.option == "lr"


# ------------------------------------------------------------------------------------------------
# LSQ's integer range (weight_range: full) and the merged QAT-LoRA adapter
# ------------------------------------------------------------------------------------------------


def _lsq_paper_weight(w: torch.Tensor, s: float, bits: int, *, full: bool) -> torch.Tensor:
    """LSQ (Esser et al.) forward written out: v_hat = round(clip(v / s, -Qn, Qp)) * s, Qp = 2^(b-1) - 1,
    Qn = 2^(b-1) (the paper) or Qp (the restricted range)."""
    qp = 2 ** (bits - 1) - 1
    qn = qp + 1 if full else qp
    out = [round(min(max(v / s, -qn), qp)) * s for v in w.flatten().tolist()]
    return torch.tensor(out).reshape(w.shape)


@pytest.mark.parametrize("full", [True, False])
def test_lsq_weight_range_forward_and_step_gradient(full):
    bits = 2
    torch.manual_seed(0)
    lin = nn.Linear(10, 6)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(6, 10) * 0.5)
    layer = QATLinear(lin, weight_bits=bits, act_bits=None, weight_scheme="lsq_tensor", act_scheme="lsq",
                      step_init="lsq", weight_range="full" if full else "restricted")
    layer.freeze()  # LSQ's init 2 mean|w| / sqrt(Qp): weights beyond -1.5 s exist
    s = float(layer.weight_step.detach())
    w_hat = layer.quantized_weight()
    torch.testing.assert_close(w_hat.detach(), _lsq_paper_weight(lin.weight.detach(), s, bits, full=full))
    codes = torch.unique(torch.round(w_hat.detach() / s)).tolist()
    assert min(codes) == (-2 if full else -1) and len(codes) <= (4 if full else 3)
    upstream = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    (w_hat * upstream).sum().backward()
    g = 1.0 / math.sqrt(lin.weight.numel() * 1)  # g = 1 / sqrt(N Qp), Qp = 1 at 2 bits
    lo = -2 if full else -1
    expected = _lsq_step_grad_reference(lin.weight.detach().flatten(), s, lo, 1, upstream.flatten(), g)
    assert layer.weight_step.grad.item() == pytest.approx(expected, rel=1e-5)


def test_weight_range_full_through_the_method(vit, task):
    images, labels = task
    full = quantize(vit, spec("qat_lsq", 2, 8, steps=0, step_init="lsq", weight_range="full"), images, labels=labels)
    narrow = quantize(vit, spec("qat_lsq", 2, 8, steps=0, step_init="lsq"), images, labels=labels)
    assert full.qat_options.weight_range == "full"
    report = verify_simulation(full, images)
    assert report.ok, report.summary()
    assert max(c.distinct for c in report if c.kind == "weight") == 4  # 2^2 codes: {-2, -1, 0, 1}
    assert max(c.distinct for c in verify_simulation(narrow, images) if c.kind == "weight") == 3
    assert not torch.equal(full.blocks[0].mlp.fc1.weight, narrow.blocks[0].mlp.fc1.weight)


def test_weight_range_is_validated():
    with pytest.raises(QuantOptionError, match="'restricted' or 'full'"):
        spec("qat_lsq", 4, 4, weight_range="paper")
    with pytest.raises(QuantOptionError, match="unknown qat option 'weight_range'"):
        spec("qat", 4, 4, weight_range="full")  # basic QAT has no LSQ steps


def test_lora_adapter_is_merged_into_the_quantized_weight(vit, task):
    images, labels = task
    s = spec("qat_lora", 4, 4, steps=4, batch_size=16, lr=1e-2, lora_r=4, lora_alpha=8.0)
    recipe = qat_mod.RECIPES["qat_lora"](s.options)
    model = qat_mod.prepare(vit, s, images, recipe, seed=0)
    qat_mod.train(model, images, lambda out, idx: F.cross_entropy(out, labels[idx]), s.options, seed=0)
    layer = model.blocks[0].mlp.fc1
    w, a, b = layer.weight.detach().clone(), layer.lora_A.detach().clone(), layer.lora_B.detach().clone()
    steps = layer.weight_step.detach().clone()
    assert float(b.abs().sum()) > 0  # the adapter did train
    qat_mod.export(model)  # merge_lora=True, export()'s own default (the method's is lora_merge: false)
    merged = model.blocks[0].mlp.fc1
    assert type(merged) is FakeQuantLinear
    q = 2 ** 3 - 1
    w_merged = w + (8.0 / 4) * (b @ a)  # W + (alpha / r) B A, then each row on its own step's grid
    expected = torch.stack([torch.clamp(torch.round(row * (1.0 / st)), -q, q) * st for row, st in zip(w_merged, steps)])
    torch.testing.assert_close(merged.weight, expected, rtol=0, atol=1e-7)
    assert not torch.allclose(merged.weight, layer.quantized_weight().detach())  # not the base weight alone


def test_merged_lora_has_no_float_adapter_path(vit, task):
    images, labels = task
    merged = quantize(vit, spec("qat_lora", 4, 4, **FAST, lr=1e-2, lora_merge=True), images, labels=labels)
    apart = quantize(vit, spec("qat_lora", 4, 4, **FAST, lr=1e-2), images, labels=labels)  # the default
    assert not any(isinstance(m, LoRAFakeQuantLinear) for m in merged.modules())
    on_linears = lambda report: {p.module for p in report.float_paths if p.op == "linear"}  # noqa: E731
    assert on_linears(verify_simulation(merged, images)) == set()
    assert on_linears(verify_simulation(apart, images)) == {"blocks.0.attn.qkv", "blocks.0.attn.proj",
                                                           "blocks.0.mlp.fc1", "blocks.0.mlp.fc2", "head"}


# ------------------------------------------------------------------------------------------------
# the CLIP paper's losses: feature MSE for LoRA-Distill, contrastive on captions (image-text data)
# ------------------------------------------------------------------------------------------------


def test_lora_is_unmerged_by_default_and_registered_with_the_paper_losses():
    opts = spec("qat_lora").options
    assert opts.lora_merge is False and opts.distill == "none" and opts.distill_weight == 0.5
    assert {"distill", "distill_weight", "lora_merge"} <= set(QUANTIZERS.meta("qat_lora")["options"])
    with pytest.raises(QuantOptionError, match="'none' or 'feature_mse'"):
        spec("qat_lora", distill="kl")
    assert all(QUANTIZERS.meta(m).get("accepts_targets") for m in METHODS)


def test_feature_and_contrastive_losses_against_their_formulas():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    sn, tn = s / s.norm(dim=1, keepdim=True), t / t.norm(dim=1, keepdim=True)
    assert qat_mod.feature_distillation_loss(s, t).item() == pytest.approx(((sn - tn) ** 2).mean().item(), rel=1e-6)
    scale = 7.0
    sim = scale * sn @ tn.T
    expected = 0.5 * (-(sim.log_softmax(1).diag()).mean() - (sim.T.log_softmax(1).diag()).mean())
    assert qat_mod.contrastive_loss(s, t, scale).item() == pytest.approx(expected.item(), rel=1e-5)
    # a batch that repeats a pair: the repeats are positives of each other, with equal weight
    ids = torch.tensor([0, 1, 0, 2, 3, 4])
    same = (ids[:, None] == ids[None, :]).float()
    target = same / same.sum(1, keepdim=True)
    soft = 0.5 * (-(target * sim.log_softmax(1)).sum(1).mean() - (target * sim.T.log_softmax(1)).sum(1).mean())
    assert qat_mod.contrastive_loss(s, t, scale, pair_ids=ids).item() == pytest.approx(soft.item(), rel=1e-5)


def _feature_mse(model, teacher, images) -> float:
    _, fs = qat_mod.logits_and_features(model, images)
    _, ft = qat_mod.logits_and_features(teacher, images)
    return float(qat_mod.feature_distillation_loss(fs, ft))


def test_lora_feature_distillation(vit, task):
    """distill: feature_mse trains the adapters towards the FP32 model's normalised features: with
    weight 1 it needs no labels and lowers the feature MSE; its loss is the formula's."""
    images, labels = task
    with torch.no_grad():
        logits_, feats = qat_mod.logits_and_features(vit, images[:4])
        assert torch.equal(logits_, vit(images[:4]))  # timm: the head of the same features
        assert feats.shape == (4, vit.embed_dim)
    initial = quantize(vit, spec("qat_lora", 4, 4, steps=0, distill="feature_mse"), images, labels=labels)
    only = quantize(vit, spec("qat_lora", 4, 4, steps=8, batch_size=32, lr=1e-3, distill="feature_mse",
                              distill_weight=1.0), images)
    assert only.qat_task == "none" and only.qat_options.distill_weight == 1.0
    with torch.no_grad():
        assert _feature_mse(only, vit, images) < 0.7 * _feature_mse(initial, vit, images)
    with pytest.raises(QuantOptionError, match="have neither") as err:  # 0.5 mixes in cross-entropy
        quantize(vit, spec("qat_lora", 4, 4, **FAST, distill="feature_mse"), images)
    assert err.value.option == "distill_weight"
    # the first step's loss is 0.5 * feature MSE + 0.5 * CE of the initial (adapter B = 0) model
    one = quantize(vit, spec("qat_lora", 4, 4, steps=1, batch_size=32, distill="feature_mse"), images, labels=labels)
    with torch.no_grad():
        expected = 0.5 * _feature_mse(initial, vit, images) + 0.5 * ce(initial, images, labels)
    assert one.qat_losses[0] == pytest.approx(expected, rel=1e-4)


@pytest.fixture(scope="module")
def clip():
    from pytest_qrel.models import load_model

    return load_model("open_clip:digits_clip")


def test_qat_on_captions_trains_contrastively(clip):
    """Image-text calibration data: the QAT methods take caption embeddings (TextTargets) and train on
    CLIP's contrastive loss with the model's logit scale; no class labels needed."""
    from pytest_qrel.data import load_dataset

    train = load_dataset("embedded:digits", split="train")
    index = torch.arange(24)
    images = torch.stack([clip.preprocess(train[int(i)][0]) for i in index])
    # a caption per image: here its class prompt's text embedding plus a little noise (the dataset
    # side encodes real captions with the model's text tower)
    text = clip.module.class_text_features[torch.as_tensor(train.labels[:24].copy())]
    text = text + 0.05 * torch.randn(text.shape, generator=torch.Generator().manual_seed(0))
    targets = qat_mod.TextTargets(text)
    q0 = quantize(clip.module, spec("qat_lsq", 4, 4, steps=0), images, targets=targets)
    q = quantize(clip.module, spec("qat_lsq", 4, 4, steps=6, batch_size=24, lr=1e-3), images, targets=targets)
    assert q.qat_task == "contrastive" and len(q.qat_losses) == 6

    def contrastive(model):
        with torch.no_grad():
            return float(qat_mod.contrastive_loss(model.image_features(images), text, clip.module.logit_scale))

    assert q.qat_losses[0] == pytest.approx(contrastive(q0), rel=1e-4)  # the first loss is the formula's
    assert contrastive(q) < contrastive(q0)
    # LoRA with feature distillation on captions, the paper's QAT-LoRA-Distill on CC3M
    lora = quantize(clip.module, spec("qat_lora", 4, 4, steps=2, batch_size=12, distill="feature_mse"), images,
                    targets=targets)
    assert lora.qat_task == "contrastive" and any(isinstance(m, LoRAFakeQuantLinear) for m in lora.modules())
    with pytest.raises(QuantOptionError, match="does not train"):
        quantize(clip.module, spec("minmax", 8, 8), images, targets=targets)
    with pytest.raises(ValueError, match=r"shape \(24, D\)"):
        quantize(clip.module, spec("qat", 8, 8, steps=1), images, targets=qat_mod.TextTargets(text[:5]))


def test_captions_need_a_clip_model(vit, task):
    images, _ = task
    with pytest.raises(QuantOptionError, match="needs a CLIP model"):
        quantize(vit, spec("qat", 8, 8, **FAST), images, targets=qat_mod.TextTargets(torch.randn(32, 16)))
