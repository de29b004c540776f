"""Tests of pytest_qrel.quantize.observers: the range rules, the value sample and the
``percentile`` / ``mse`` methods.

Oracles are independent of the implementation: numpy's float64 percentiles, brute-force error
scans written here, and the ``minmax`` method (a percentile of 100 and an MSE grid of 1 are min/max).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from pytest_qrel.errors import QuantOptionError
from pytest_qrel.quantize import (
    QUANTIZERS,
    ActQuantizer,
    FakeQuantLinear,
    asymmetric_qparams,
    fake_quantize_reference,
    quantize,
    verify_simulation,
)
from pytest_qrel.quantize.observers import (
    MinMaxObserver,
    MSEObserver,
    ObservedActQuantizer,
    PercentileObserver,
    PercentileSearchObserver,
    ValueSample,
    calibrate_one_shot,
    quantiles,
    search_percentile_qparams,
)
from pytest_qrel.quantize import QuantConfig
from pytest_qrel.quantize.fakequant import FakeQuantConv2d
from tinyvit import make_vit, logits, quant_config, random_images

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

timm = pytest.importorskip("timm")


def spec(method, wb=4, ab=4, *, options=None) -> QuantConfig:
    return quant_config(method, wb, ab, options=options)



@pytest.fixture(scope="module")
def calib() -> torch.Tensor:
    return random_images(32, 1)


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return random_images(64, 2)



def heavy_tailed(n=20000, seed=0) -> torch.Tensor:
    """Student-t with 3 degrees of freedom: a bulk near 0 and rare values far out."""
    rng = np.random.default_rng(seed)
    return torch.from_numpy(rng.standard_t(3.0, size=n).astype(np.float32))


def sq_error(x, scale, zp, bits) -> float:
    return float((fake_quantize_reference(x, scale, zp, 0, 2**bits - 1) - x).double().square().sum())


# ------------------------------------------------------------------------------------------------
# quantiles and the value sample
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 30001])
def test_quantiles_match_numpy_float64(n):
    x = torch.randn(n, generator=torch.Generator().manual_seed(n))
    qs = [0.0, 1e-5, 0.001, 0.3, 0.5, 0.7, 0.999, 0.99999, 1.0]
    expected = np.percentile(x.double().numpy(), [q * 100 for q in qs])  # linear interpolation, float64
    np.testing.assert_allclose(quantiles(x, qs).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_quantiles_per_column_and_errors():
    m = torch.randn(500, 6, generator=torch.Generator().manual_seed(3)) * torch.arange(1, 7)
    out = quantiles(m, [0.01, 0.99], dim=0)
    assert out.shape == (2, 6)
    expected = np.percentile(m.double().numpy(), [1, 99], axis=0)
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError):
        quantiles(torch.empty(0), [0.5])
    with pytest.raises(ValueError):
        quantiles(m, [1.5])


def test_value_sample_exact_below_bound_and_bounded_above():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(0))
    s = ValueSample(max_values=5000)
    for b in x.split(300):
        s.update(b)
    assert torch.equal(s.values().reshape(-1).sort().values, x.sort().values)  # nothing dropped
    s = ValueSample(max_values=100)
    for b in x.split(300):
        s.update(b)
    kept = s.values().reshape(-1)
    assert kept.numel() == 100 and s.seen == 1000
    assert torch.isin(kept, x).all() and kept.unique().numel() == 100  # a subset, without replacement


def test_value_sample_independent_of_batching_and_deterministic():
    x = torch.randn(4000, generator=torch.Generator().manual_seed(1))
    samples = []
    for sizes in ([4000], [1000, 3000], [7, 993, 2000, 1000]):
        s = ValueSample(max_values=256, seed=5)
        for b in x.split(sizes):
            s.update(b)
        samples.append(s.values().reshape(-1).sort().values)
    assert all(torch.equal(samples[0], other) for other in samples[1:])
    other_seed = ValueSample(max_values=256, seed=6)
    other_seed.update(x)
    assert not torch.equal(samples[0], other_seed.values().reshape(-1).sort().values)


def test_value_sample_rows_keep_channels_together():
    x = torch.arange(60.0).reshape(2, 10, 3)  # 20 tokens x 3 channels
    s = ValueSample(max_values=12, channels=3)  # 4 rows
    s.update(x)
    rows = s.values()
    assert rows.shape == (4, 3)
    assert torch.equal(rows[:, 1] - rows[:, 0], torch.ones(4)) and torch.equal(rows[:, 2] - rows[:, 1], torch.ones(4))


# ------------------------------------------------------------------------------------------------
# observers
# ------------------------------------------------------------------------------------------------


def test_percentile_observer_range_is_numpy_percentile_and_clips_outliers():
    x = torch.randn(50000, generator=torch.Generator().manual_seed(2))
    x[::5000] = 80.0  # 10 huge outliers (0.02%)
    obs = PercentileObserver(99.9)
    for b in x.split(7000):
        obs.update(b)
    lo, hi = obs.range()
    np.testing.assert_allclose([float(lo), float(hi)], np.percentile(x.double().numpy(), [0.1, 99.9]), rtol=1e-5)
    assert float(hi) < 5.0 < 80.0 == float(x.max())  # the outliers are clipped away
    scale, zp = obs.qparams(8)
    ref_scale, ref_zp = asymmetric_qparams(lo, hi, 8)
    assert torch.equal(scale, ref_scale) and torch.equal(zp, ref_zp)
    mm = MinMaxObserver()
    mm.update(x)
    assert float(scale) < float(mm.qparams(8)[0]) / 10  # a much finer grid than min/max


def test_percentile_100_is_minmax():
    x = heavy_tailed()
    p, m = PercentileObserver(100.0), MinMaxObserver()
    p.update(x)
    m.update(x)
    assert all(torch.equal(a, b) for a, b in zip(p.qparams(4), m.qparams(4)))


@pytest.mark.parametrize("bits", [4, 6])
def test_mse_observer_beats_minmax_and_is_best_of_its_grid(bits):
    x = heavy_tailed(seed=bits)
    obs, mm = MSEObserver(grid=50), MinMaxObserver()
    obs.update(x)
    mm.update(x)
    scale, zp = obs.qparams(bits)
    err = sq_error(x, scale, zp, bits)
    assert err < 0.8 * sq_error(x, *mm.qparams(bits), bits)  # heavy tails: clipping pays
    # brute force over the same 50 shrink factors, computed independently here
    errors = []
    for i in range(50):
        alpha = 1 - i / 50
        errors.append(sq_error(x, *asymmetric_qparams(x.min() * alpha, x.max() * alpha, bits), bits))
    assert err <= min(errors) * (1 + 1e-6)
    assert float(scale) < float(mm.qparams(bits)[0])


def test_mse_grid_of_one_is_minmax():
    x = heavy_tailed()
    o, m = MSEObserver(grid=1), MinMaxObserver()
    o.update(x)
    m.update(x)
    assert all(torch.equal(a, b) for a, b in zip(o.qparams(4), m.qparams(4)))


def test_percentile_search_observer_follows_the_reference_rule():
    """RepQ-ViT: candidates [Q(1-p), Q(p)], p in {0.999, 0.9999, 0.99999}; least mean squared error."""
    x = heavy_tailed(30000, seed=4) + 3.0  # mostly positive: the range need not contain 0
    obs = PercentileSearchObserver()
    obs.update(x[:10000])
    obs.update(x[10000:])
    scale, zp = obs.qparams(4)
    best = None
    for p in (0.999, 0.9999, 0.99999):
        lo, hi = np.percentile(x.double().numpy(), [(1 - p) * 100, p * 100])
        s = (hi - lo) / 15
        z = np.round(-lo / s)
        xq = (np.clip(np.round(x.double().numpy() / s) + z, 0, 15) - z) * s
        e = np.mean((xq - x.double().numpy()) ** 2)
        if best is None or e < best[0]:
            best = (e, s, z)
    assert float(scale) == pytest.approx(best[1], rel=1e-5)
    assert int(zp) == int(best[2])


def test_observer_reset_and_empty():
    for obs in (MinMaxObserver(), PercentileObserver(), MSEObserver(), PercentileSearchObserver()):
        assert obs.empty
        with pytest.raises(RuntimeError, match="nothing was observed"):
            obs.qparams(8)
        obs.update(torch.randn(100))
        assert not obs.empty
        obs.reset()
        assert obs.empty


def test_observer_constructor_validation():
    with pytest.raises(ValueError):
        PercentileObserver(50.0)
    with pytest.raises(ValueError):
        PercentileObserver(100.5)
    with pytest.raises(ValueError):
        MSEObserver(grid=0)
    with pytest.raises(ValueError):
        PercentileSearchObserver(percentiles=(0.4,))


# ------------------------------------------------------------------------------------------------
# ObservedActQuantizer and one-shot calibration
# ------------------------------------------------------------------------------------------------


def test_observed_quantizer_with_minmax_observer_equals_act_quantizer():
    batches = [torch.randn(10, 5, generator=torch.Generator().manual_seed(k)) + k for k in range(3)]
    a, b = ActQuantizer(4), ObservedActQuantizer(4, MinMaxObserver())
    for x in batches:
        assert a(x) is x and b(x) is x
    a.freeze()
    b.freeze()
    assert torch.equal(a.scale, b.scale) and torch.equal(a.zero_point, b.zero_point)
    x = torch.cat(batches) * 1.3
    assert torch.equal(a(x), b(x))
    b.freeze()  # idempotent although the observer's values were released
    assert torch.equal(a(x), b(x))
    with pytest.raises(RuntimeError, match="no input was observed"):
        ObservedActQuantizer(4, MinMaxObserver()).freeze()


def test_per_channel_and_out_of_range_zero_point():
    x = torch.randn(8, 6, 3, generator=torch.Generator().manual_seed(0)) * torch.tensor([1.0, 10.0, 0.1]) + 5.0
    q = ObservedActQuantizer(4, PercentileSearchObserver(per_channel=True))
    q.calibrate_once()
    y = q(x)
    assert q.mode == "quantize" and q.scale.shape == (3,) and q.zero_point.shape == (3,)
    assert int(q.zero_point.min()) < 0  # all-positive channels: zero is below the range
    scale, zp = search_percentile_qparams(x.reshape(-1, 3), 4)
    expected = (torch.clamp(torch.round(x * (1 / scale)) + zp, 0, 15) - zp) * scale  # the plain formula, by channel
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-6)
    for c in range(3):
        assert y[..., c].unique().numel() <= 16


def test_calibrate_one_shot_calibrates_on_quantized_upstream():
    first = ObservedActQuantizer(2, MinMaxObserver())
    second = ObservedActQuantizer(8, MinMaxObserver())

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.w = first, second, nn.Parameter(torch.ones(()))

        def forward(self, x):
            return self.b(self.a(x) * self.w)

    x = torch.linspace(-1.0, 3.0, 101).reshape(1, -1)
    calibrate_one_shot(Net(), x)
    assert first.mode == second.mode == "quantize"
    levels = fake_quantize_reference(x, first.scale, first.zero_point, 0, 3)
    # the second quantizer saw the 2-bit output of the first, not the float input
    assert float(second.min_val) == float(levels.min()) and float(second.max_val) == float(levels.max())
    assert levels.unique().numel() <= 4

    class Bypass(nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = ObservedActQuantizer(4, MinMaxObserver())

        def forward(self, x):
            return x

    with pytest.raises(RuntimeError, match="never called.*unused"):
        calibrate_one_shot(Bypass(), torch.randn(2, 3))


# ------------------------------------------------------------------------------------------------
# the registered methods
# ------------------------------------------------------------------------------------------------


def test_methods_are_registered():
    assert {"percentile", "mse"} <= set(QUANTIZERS)
    linear_keys = {"weight_granularity", "weight_symmetric", "head", "patch_embed", "batch_size"}  # minmax's
    assert set(QUANTIZERS.meta("percentile")["options"]) == {"percentile", "max_values", *linear_keys}
    assert set(QUANTIZERS.meta("mse")["options"]) == {"grid", "max_values", *linear_keys}


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_module_selection_options_are_honoured(vit, calib, images, method):
    """percentile / mse select modules as minmax does (they used to ignore these options)."""
    fast = {"grid": 10} if method == "mse" else {}

    def spec(method, options=None):  # noqa: F811  (a cheaper mse search; the selection is what is tested)
        return quant_config(method, 4, 4, options={**(fast if method == "mse" else {}), **(options or {})})

    head = quantize(vit, spec(method, options={"head": "fp32"}), calib)
    assert type(head.head) is nn.Linear and torch.equal(head.head.weight, vit.head.weight)
    patch = quantize(vit, spec(method, options={"patch_embed": "quantized"}), calib)
    conv = patch.patch_embed.proj
    assert isinstance(conv, FakeQuantConv2d) and isinstance(conv.input_quantizer, ObservedActQuantizer)
    assert verify_simulation(patch, images).ok
    per_tensor = quantize(vit, spec(method, options={"weight_granularity": "per_tensor"}), calib)
    w = per_tensor.blocks[0].mlp.fc1.weight
    assert torch.unique(w).numel() <= 15  # one 4-bit symmetric grid for the whole weight
    default = quantize(vit, spec(method), calib)
    assert torch.unique(default.blocks[0].mlp.fc1.weight).numel() > 15  # one grid per row
    asym = quantize(vit, spec(method, options={"weight_symmetric": False}), calib)
    minmax_asym = quantize(vit, spec("minmax", options={"weight_symmetric": False}), calib)
    assert not torch.equal(asym.blocks[0].mlp.fc1.weight, default.blocks[0].mlp.fc1.weight)
    for (name, m), ref in zip(asym.named_modules(), minmax_asym.modules()):  # minmax's weights, layer by layer
        if isinstance(m, FakeQuantLinear):
            assert torch.equal(m.weight, ref.weight), name


@pytest.mark.parametrize("method,options", [("percentile", {"percentile": 100}), ("mse", {"grid": 1})])
def test_degenerate_settings_equal_minmax(vit, calib, images, method, options):
    ours = quantize(vit, spec(method, options=options), calib)
    ref = quantize(vit, spec("minmax"), calib)
    torch.testing.assert_close(logits(ours, images), logits(ref, images), rtol=0, atol=1e-6)


def test_percentile_method_clips_and_stays_on_grid(vit, calib, images):
    q = quantize(vit, spec("percentile", 4, 4, options={"percentile": 99.0}), calib)
    ref = quantize(vit, spec("minmax", 4, 4), calib)
    ranges = {}
    for (name, m), r in zip(q.named_modules(), ref.modules()):
        if isinstance(m, FakeQuantLinear):
            assert isinstance(m.input_quantizer, ObservedActQuantizer)
            assert isinstance(m.input_quantizer.observer, PercentileObserver)
            width = float(m.input_quantizer.scale) * 15
            ref_width = float(r.input_quantizer.scale) * 15
            assert width <= ref_width * (1 + 1e-6), name
            ranges[name] = width / ref_width
    assert len(ranges) == 9 and min(ranges.values()) < 0.9  # it really clips somewhere
    report = verify_simulation(q, images)
    assert report.ok, report.summary()
    assert len(report) == 18


def test_mse_method_lowers_input_error(vit, calib):
    q = quantize(vit, spec("mse", 4, 4), calib)
    ref = quantize(vit, spec("minmax", 4, 4), calib)
    inputs = {}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs.setdefault(n, args[0]))
             for n, m in vit.named_modules() if isinstance(m, nn.Linear)]
    logits(vit, calib)
    for h in hooks:
        h.remove()
    better = 0
    qmods, rmods = dict(q.named_modules()), dict(ref.named_modules())
    for name, x in inputs.items():
        ours, theirs = qmods[name].input_quantizer, rmods[name].input_quantizer
        e_ours = sq_error(x, ours.scale, ours.zero_point, 4)
        e_ref = sq_error(x, theirs.scale, theirs.zero_point, 4)
        assert e_ours <= e_ref * (1 + 1e-6), name  # alpha = 1 (min/max) is one of the candidates
        better += e_ours < 0.99 * e_ref
    assert better >= 5


@pytest.mark.parametrize("method", ["percentile", "mse"])
def test_input_model_untouched_and_deterministic(calib, images, method):
    model = make_vit().train()
    before = copy.deepcopy(model.state_dict())
    a = quantize(model, spec(method), calib)
    b = quantize(model, spec(method), calib.clone())
    assert model.training and not a.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(logits(a, images), logits(b, images))


@pytest.mark.parametrize(
    "method,options,field,needle",
    [
        ("percentile", {"percentil": 99.0}, "percentil", "did you mean 'percentile'"),
        ("percentile", {"percentile": 101}, "percentile", "(50, 100]"),
        ("percentile", {"percentile": 50}, "percentile", "(50, 100]"),
        ("percentile", {"percentile": "99.9"}, "percentile", "(50, 100]"),
        ("percentile", {"percentile": True}, "percentile", "(50, 100]"),
        ("percentile", {"max_values": 0}, "max_values", "positive integer"),
        ("mse", {"grid": 0}, "grid", "positive integer"),
        ("mse", {"grid": 2.5}, "grid", "positive integer"),
        ("mse", {"percentile": 99.0}, "percentile", "known: batch_size, grid, head, max_values"),
        ("mse", {"act_symmetric": True}, "act_symmetric", "unknown mse option 'act_symmetric'"),
    ],
)
def test_bad_options_name_the_option(method, options, field, needle):
    with pytest.raises(QuantOptionError) as info:
        spec(method, options=options)
    assert info.value.option == field
    assert needle in str(info.value)
