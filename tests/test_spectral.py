"""The Fourier relative spectral error (RSE): pure functions, the last-block hook, the engine, the plugin."""

from __future__ import annotations

import hashlib
import json
import math
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_qrel import Engine, load_suite, plan, run
from pytest_qrel.errors import BaselineMissingError, ModelError, SpecError
from pytest_qrel.metrics import METRICS, compute_spectral_metrics
from pytest_qrel.models.features import FEATURE_MAPS, FeatureMapSite, last_block_feature_map
from pytest_qrel.report import build_page, render_html
from pytest_qrel.baselines import _canonical
from pytest_qrel.results import UnitMetrics, Verdict
from pytest_qrel.spectral import (
    EPS,
    SpectrumAccumulator,
    high_frequency_mask,
    magnitude_spectrum,
    normalised_radius,
    record_spectrum,
    relative_spectral_error_map,
    spectral_error,
    spectral_error_high,
)
from tinyvit import make_vit

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)

# ------------------------------------------------------------------------------ hand-computed spectra


def test_constant_map_puts_all_energy_at_the_centre() -> None:
    s = magnitude_spectrum(np.full((1, 4, 4, 1), 2.5))
    expected = np.zeros((4, 4))
    expected[2, 2] = 2.5 * 16  # zero frequency at (h // 2, w // 2), unnormalised FFT
    np.testing.assert_allclose(s, expected, atol=1e-12)
    assert s.dtype == np.float64


def test_checkerboard_puts_energy_at_the_highest_frequency() -> None:
    board = (-1.0) ** np.add.outer(np.arange(4), np.arange(4))
    s = magnitude_spectrum(board)
    expected = np.zeros((4, 4))
    expected[0, 0] = 16.0  # Nyquist on both axes: index 2 unshifted -> 0 after fftshift
    np.testing.assert_allclose(s, expected, atol=1e-12)
    assert high_frequency_mask((4, 4))[0, 0] and not high_frequency_mask((4, 4))[2, 2]


def test_2x2_known_values() -> None:
    # fft2([[1, 2], [3, 4]]) = [[10, -2], [-4, 0]]; fftshift swaps both axes of a 2x2 grid
    s = magnitude_spectrum([[1.0, 2.0], [3.0, 4.0]])
    np.testing.assert_allclose(s, [[0.0, 4.0], [2.0, 10.0]], atol=1e-12)


def test_spectrum_is_the_mean_over_images_and_channels() -> None:
    x = np.zeros((2, 4, 4, 3))
    x[0, :, :, 0] = 1.0  # constants 1 and 3 on one channel each, the other channels zero
    x[1, :, :, 2] = 3.0
    s = magnitude_spectrum(x)
    assert s[2, 2] == pytest.approx((16 + 48) / 6)
    assert np.count_nonzero(s) == 1


def test_rse_map_is_zero_for_equal_spectra_and_known_otherwise() -> None:
    ref = np.arange(1.0, 17.0).reshape(4, 4)
    np.testing.assert_array_equal(relative_spectral_error_map(ref, ref), np.zeros((4, 4)))
    assert spectral_error(ref, ref) == 0.0 and spectral_error_high(ref, ref) == 0.0

    q = np.array([[1.0, 2.0], [3.0, 4.0]])
    r = np.ones((2, 2))
    np.testing.assert_allclose(relative_spectral_error_map(q, r), np.array([[0.0, 1.0], [2.0, 3.0]]) / (1 + EPS))
    assert spectral_error(q, r) == pytest.approx(1.5)
    # 2x2: every frequency but the centre (1, 1) is in the high band -> mean of 0, 1, 2
    assert spectral_error_high(q, r) == pytest.approx(1.0)


def test_eps_keeps_a_zero_reference_finite() -> None:
    rse = relative_spectral_error_map([[2e-8, 0.0]], [[0.0, 0.0]])
    np.testing.assert_allclose(rse, [[2.0, 0.0]])


def test_high_band_of_a_4x4_grid() -> None:
    mask = high_frequency_mask((4, 4))
    # u in {-1, -0.5, 0, 0.5} per axis; r^2 > 2 / 4 keeps the 7 frequencies with |u| = 1 on an axis
    expected = np.zeros((4, 4), bool)
    expected[0, :] = expected[:, 0] = True
    np.testing.assert_array_equal(mask, expected)
    rse_ref = np.ones((4, 4))
    q = rse_ref + expected * 0.5  # RSE 0.5 on the band, 0 elsewhere
    assert spectral_error_high(q, rse_ref) == pytest.approx(0.5)
    assert spectral_error(q, rse_ref) == pytest.approx(0.5 * 7 / 16)


def test_radius_is_in_nyquist_units_so_non_square_grids_work() -> None:
    r = normalised_radius((2, 4))
    assert r[1, 2] == 0.0 and r[0, 0] == pytest.approx(math.sqrt(2)) and r[1, 0] == pytest.approx(1.0)
    mask = high_frequency_mask((2, 4))
    assert mask.sum() == 5 and mask[0].all() and mask[1].tolist() == [True, False, False, False]
    odd = high_frequency_mask((7, 7))
    np.testing.assert_array_equal(odd, odd[::-1, ::-1])  # symmetric around the centre
    # k = -3..3 per axis: kept when ky^2 + kx^2 > 18 / 4; the 13 with |k|^2 <= 4 (disc of radius 2) are not
    assert not odd[3, 3] and odd[0, 0] and not odd[1, 3] and odd[1, 2] and odd.sum() == 49 - 13


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((np.ones((4, 4)), np.ones((4, 5))), "differ in shape"),
        ((np.ones((0, 4)), np.ones((0, 4))), "empty"),
        ((np.full((2, 2), np.nan), np.ones((2, 2))), "NaN or infinite"),
        ((np.ones((2, 2)), np.full((2, 2), np.inf)), "NaN or infinite"),
        ((np.ones(4), np.ones(4)), "must have 2 dimensions"),
        ((np.ones((1, 1)), np.ones((1, 1))), "no high-frequency band"),
    ],
)
def test_bad_spectra_raise_value_error(args, match) -> None:
    fn = spectral_error_high if match == "no high-frequency band" else spectral_error
    with pytest.raises(ValueError, match=match):
        fn(*args)


@pytest.mark.parametrize("bad", [np.ones((2, 3, 4)), np.ones((0, 4, 4, 2)), [[1.0, float("nan")]], "abc"])
def test_magnitude_spectrum_rejects_bad_feature_maps(bad) -> None:
    with pytest.raises(ValueError):
        magnitude_spectrum(bad)


def test_registered_metrics_and_compute() -> None:
    for name in ("spectral_error", "spectral_error_high"):
        meta = METRICS.meta(name)
        assert (meta["kind"], meta["higher_is_better"], meta["fraction"], meta["delta_bounds"]) == ("spectral", False, False, False)
    q, r = np.array([[1.0, 2.0], [3.0, 4.0]]), np.ones((2, 2))
    assert compute_spectral_metrics(q, r) == {"spectral_error": pytest.approx(1.5), "spectral_error_high": pytest.approx(1.0)}


def test_accumulator_over_batches_equals_the_numpy_spectrum() -> None:
    x = np.random.default_rng(0).normal(size=(7, 4, 6, 5))
    acc = SpectrumAccumulator()
    for part in (x[:3], x[3:]):
        acc.add(torch.from_numpy(part).float())
    np.testing.assert_allclose(acc.spectrum(), magnitude_spectrum(x.astype(np.float32)), rtol=1e-6)
    with pytest.raises(ValueError, match="no feature maps"):
        SpectrumAccumulator().spectrum()
    with pytest.raises(ValueError, match="changed from"):
        acc.add(torch.zeros(1, 2, 2, 5))


# ------------------------------------------------------------------------------ the last-block hook


def _captured(block: torch.nn.Module, run) -> torch.Tensor:
    out = []
    handle = block.register_forward_hook(lambda _m, _i, o: out.append(o.detach().clone()))
    try:
        run()
    finally:
        handle.remove()
    return torch.cat(out)


@pytest.mark.parametrize(("kwargs", "grid", "prefix"), [({}, (4, 4), 1), ({"reg_tokens": 2}, (4, 4), 3), ({"img_size": (16, 8)}, (4, 2), 1)])
def test_timm_vit_hook_drops_prefix_tokens_and_lays_out_the_grid(kwargs, grid, prefix) -> None:
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = make_vit() if not kwargs else VisionTransformer(
        **{"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 8, "embed_dim": 32, "depth": 2, "num_heads": 2, **kwargs}
    ).eval()
    site = last_block_feature_map(model)
    assert site.block is model.blocks[-1] and site.grid == grid and site.prefix_tokens == prefix and site.layout == "BTD"
    x = torch.randn(5, 1, *model.patch_embed.img_size)
    with torch.inference_mode(), record_spectrum(site) as acc:
        model(x[:3])
        model(x[3:])
    raw = _captured(model.blocks[-1], lambda: model(x)).numpy()  # (B, T, D)
    assert raw.shape[1] == prefix + grid[0] * grid[1]
    expected = magnitude_spectrum(raw[:, prefix:, :].reshape(5, *grid, -1))
    assert acc.spectrum().shape == grid
    np.testing.assert_allclose(acc.spectrum(), expected, rtol=1e-5)
    assert not model.blocks[-1]._forward_hooks  # the hook is removed on exit


def test_grid_features_of_a_sequence_first_layout() -> None:
    tokens = torch.arange(2 * 5 * 3, dtype=torch.float32).reshape(2, 5, 3)  # (B, T, D)
    site_btd = FeatureMapSite(torch.nn.Identity(), (2, 2), 1, "BTD")
    site_tbd = FeatureMapSite(torch.nn.Identity(), (2, 2), 1, "TBD")
    expected = tokens[:, 1:, :].reshape(2, 2, 2, 3)
    torch.testing.assert_close(site_btd.grid_features(tokens), expected)
    torch.testing.assert_close(site_tbd.grid_features((tokens.transpose(0, 1), None)), expected)
    with pytest.raises(ModelError, match=r"returned 4 tokens, expected 1 prefix tokens \+ a 2x2 patch grid"):
        site_btd.grid_features(tokens[:, :4])


def test_shipped_tiny_clip_hook_reads_the_last_resblock_before_ln_post() -> None:
    from pytest_qrel.models import load_model

    loaded = load_model("open_clip:digits_clip", options={"class_names": [str(i) for i in range(8)]})
    module = loaded.module
    site = last_block_feature_map(module, "tiny clip")
    visual = module.visual
    assert site.block is visual.transformer.resblocks[-1]
    assert site.grid == tuple(visual.grid_size) == (4, 4) and site.prefix_tokens == 1
    assert site.layout == ("BTD" if visual.transformer.batch_first else "TBD")
    x = torch.stack([loaded.preprocess(torch.rand(1, 16, 16)) for _ in range(4)])
    with torch.inference_mode(), record_spectrum(site) as acc:
        module(x)
    raw = _captured(site.block, lambda: module(x))
    if site.layout == "TBD":
        raw = raw.transpose(0, 1)
    expected = magnitude_spectrum(raw[:, 1:, :].reshape(4, 4, 4, -1).numpy())
    np.testing.assert_allclose(acc.spectrum(), expected, rtol=1e-5)


def test_a_model_without_a_last_block_is_a_model_error_naming_it() -> None:
    assert FEATURE_MAPS.names() == ["open_clip_vit", "timm_vit"]
    with pytest.raises(ModelError, match=r"model 'mlp' \(Sequential\) has no recognisable last transformer block"):
        last_block_feature_map(torch.nn.Sequential(torch.nn.Linear(2, 2)), "model 'mlp'")


# ------------------------------------------------------------------------------ spec


SUITE = """\
version: 1
name: spec
models:
  vit: {{source: "embedded:digits_vit"}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
  ood: [{{name: noise, source: "embedded:noise"}}]
quantizers:
  W8A8: {{method: minmax, calibration: {{samples: 64, seed: 0}}}}
  W4A4: {{method: minmax, calibration: {{samples: 64, seed: 0}}}}
checks:
{checks}
"""


def write(tmp_path: Path, checks: str, name: str = "spec") -> Path:
    (tmp_path / "suites").mkdir(exist_ok=True)
    path = tmp_path / "suites" / f"{name}.yaml"
    path.write_text(SUITE.format(checks=textwrap.indent(textwrap.dedent(checks), "  ")).replace("name: spec", f"name: {name}"))
    return path


def test_spec_value_bounds_expand_to_the_id_test_split(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, '- "all spectral_error <= 0.25"\n- "W8A8 spectral_error_high on digits <= value(W4A4)"\n'))
    assert [(p.quantizer, p.dataset, p.name) for p in plan(suite)] == [
        ("FP32", "digits", "spectral_error on digits value<=0.25"),
        ("W8A8", "digits", "spectral_error on digits value<=0.25"),
        ("W4A4", "digits", "spectral_error on digits value<=0.25"),
        ("W8A8", "digits", "spectral_error_high on digits value<=value(W4A4)"),
    ]


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ('"W8A8 spectral_error delta <= 10%"', "already measures the distance from FP32 (0 for FP32 itself), so it takes a value bound"),
        ("{metric: spectral_error, quantizers: [W4A4], delta: {max: 0.1}}", "fix: write e.g. 'W4A4 spectral_error <= 0.25'"),
        ('"W8A8 spectral_error on noise <= 0.1"', "spectral_error is measured on the ID test split ('digits'), not 'noise'"),
        ('"W8A8 spectral_error(msp) <= 0.1"', "not an OOD metric and takes no score"),
        ('"W8A8 spectral_error <= 10%"', "'%' on a value bound means percent of a fraction metric"),
    ],
)
def test_spec_rejects_delta_bounds_and_other_sets(tmp_path: Path, check: str, message: str) -> None:
    with pytest.raises(SpecError) as err:
        load_suite(write(tmp_path, f"- {check}\n"))
    assert message in str(err.value)


# ------------------------------------------------------------------------------ engine, end to end

CHECKS = """\
- "all spectral_error <= 0.1"
- "W4A4 spectral_error_high <= 0.2"
- "W8A8 spectral_error <= value(W4A4)"
- "W8A8 top1 delta <= 2pp"
"""


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory):
    """A spectral suite with its baseline written by one engine (update mode)."""
    root = tmp_path_factory.mktemp("spectral")
    suite = load_suite(write(root, CHECKS))
    engine = Engine(baseline_dir=root / "baselines", update_baselines=True)
    verdicts = run(suite, engine=engine)
    return root, suite, engine, verdicts


def test_update_writes_the_fp32_spectrum_and_checks_pass(written) -> None:
    root, suite, engine, verdicts = written
    assert [v.outcome for v in verdicts] == ["passed"] * 6, [v.message for v in verdicts]
    by = {(v.quantizer, v.metric, v.check): v for v in verdicts}
    fp32 = by[("FP32", "spectral_error", "all spectral_error <= 0.1")]
    assert (fp32.fp32, fp32.value) == (0.0, 0.0)
    w8 = by[("W8A8", "spectral_error", "all spectral_error <= 0.1")].value
    w4 = by[("W4A4", "spectral_error", "all spectral_error <= 0.1")].value
    assert 0 < w8 < w4 < 0.1  # error grows as bits shrink
    assert w4 > 5 * w8
    ref = by[("W8A8", "spectral_error", "W8A8 spectral_error <= value(W4A4)")]
    assert ref.message.startswith(f"vit W8A8 spectral_error on digits: FP32 0, W8A8 {w8:.4g}, W4A4 {w4:.4g}")

    record = json.loads((root / "baselines/spec/vit.json").read_text())
    assert record["metrics"]["spectral"] == {"spectral_error": 0.0, "spectral_error_high": 0.0}
    assert record["variants"]["FP32+temperature"]["metrics"]["spectral"] == {"spectral_error": 0.0, "spectral_error_high": 0.0}
    with np.load(root / "baselines/spec" / record["npz"]) as z:
        spectra = [k for k in z.files if k.endswith("|spectrum")]
        assert spectra == ["FP32|digits|spectrum"]  # the ID test split only
        stored = z["FP32|digits|spectrum"]
    assert stored.shape == (4, 4) and stored.dtype == np.float64
    np.testing.assert_array_equal(stored, engine.baseline(suite, "vit").spectrum("digits"))
    assert stored[2, 2] == stored.max()  # the ViT's features are smooth over the grid: DC dominates

    # one pass per (quantizer, dataset): the spectrum came from the pass that computed the logits
    assert dict(engine.forward_passes) == {
        ("spec", "vit", "FP32", "digits"): 1, ("spec", "vit", "FP32", "noise"): 1, ("spec", "vit", "FP32", "heldout"): 1,
        ("spec", "vit", "W8A8", "digits"): 1, ("spec", "vit", "W4A4", "digits"): 1,
    }


def test_a_second_run_reads_fp32_from_the_baseline(written) -> None:
    root, suite, first, _ = written
    engine = Engine(baseline_dir=root / "baselines")
    verdicts = run(suite, engine=engine)
    assert [v.outcome for v in verdicts] == ["passed"] * 6
    assert dict(engine.forward_passes) == {("spec", "vit", "W8A8", "digits"): 1, ("spec", "vit", "W4A4", "digits"): 1}
    assert engine.spectral_metrics(suite, "vit", "W4A4") == first.spectral_metrics(suite, "vit", "W4A4")
    units = {u.quantizer: u for u in engine.report_units()}
    rse = np.asarray(units["W4A4"].spectral_map)
    assert rse.shape == (4, 4) and rse.mean() == pytest.approx(engine.spectral_metrics(suite, "vit", "W4A4")["spectral_error"])
    assert units["FP32"].spectral == {"spectral_error": 0.0, "spectral_error_high": 0.0} and units["FP32"].spectral_map == []
    assert units["W4A4"].spectral["spectral_error"] > units["W8A8"].spectral["spectral_error"] > 0
    assert np.asarray(units["W4A4"].spectral_map).shape == (4, 4)


def test_baseline_without_a_spectrum_says_how_to_recreate_it(tmp_path: Path) -> None:
    plain = load_suite(write(tmp_path, '- "W8A8 top1 delta <= 2pp"\n'))
    writer = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    run(plain, engine=writer)
    record = json.loads((tmp_path / "baselines/spec/vit.json").read_text())
    with np.load(tmp_path / "baselines/spec" / record["npz"]) as z:
        assert not any(k.endswith("|spectrum") for k in z.files)  # non-spectral suites store none
    assert "spectral" not in record["metrics"]

    spectral = load_suite(write(tmp_path, '- "W8A8 spectral_error <= 0.1"\n'))
    engine = Engine(baseline_dir=tmp_path / "baselines", update_command="pytest --qrel-suite {suite} --qrel-update-baselines")
    (v,) = run(spectral, engine=engine)
    assert v.outcome == "error"
    assert "has no spectral_error" in v.message
    assert v.message.endswith(f"re-create it with: pytest --qrel-suite {spectral.path} --qrel-update-baselines")
    with pytest.raises(BaselineMissingError, match=r"has no feature spectrum \(spectrum\.digits\) for spectral metrics; re-create it with"):
        engine.spectral_metrics(spectral, "vit", "W8A8")
    # the baseline cannot answer, so the check fails before its unit is computed: no wasted pass
    assert sum(engine.forward_passes.values()) == 0


def test_missing_and_stale_baselines(tmp_path: Path) -> None:
    suite = load_suite(write(tmp_path, '- "W4A4 spectral_error <= 0.1"\n'))
    (v,) = run(suite, engine=Engine(baseline_dir=tmp_path / "baselines"))
    assert v.outcome == "error" and "no FP32 baseline at" in v.message and "--qrel-update-baselines" in v.message
    run(suite, engine=Engine(baseline_dir=tmp_path / "baselines", update_baselines=True))
    path = tmp_path / "baselines/spec/vit.json"
    record = json.loads(path.read_text())
    record["fingerprint"]["model"]["weights_sha256"] = "0" * 64
    record["content_sha256"] = hashlib.sha256(_canonical(record)).hexdigest()  # as an older writer made it
    path.write_text(json.dumps(record))
    (v,) = run(suite, engine=Engine(baseline_dir=tmp_path / "baselines"))
    assert v.outcome == "error" and "is stale: model.weights_sha256: 000000000000 ->" in v.message


def test_memo_and_disk_cache_entries_without_a_spectrum_are_recomputed(tmp_path: Path) -> None:
    plain = load_suite(write(tmp_path, '- "W8A8 top1 delta <= 2pp"\n', name="spec"))
    spectral = load_suite(write(tmp_path, '- "W8A8 spectral_error <= 0.1"\n', name="spec2"))
    engine = Engine(baseline_dir=tmp_path / "baselines", cache_dir=tmp_path / "cache")
    assert "nll" in engine.samples(plain, "vit", "W8A8", "digits")
    s = engine.spectrum(spectral, "vit", "W8A8")  # the cached entry has no spectrum: computed again
    assert s.shape == (4, 4)
    assert engine.forward_passes[("spec2", "vit", "W8A8", "digits")] == 1
    fresh = Engine(baseline_dir=tmp_path / "baselines", cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(fresh.spectrum(spectral, "vit", "W8A8"), s)  # from the disk cache
    assert sum(fresh.forward_passes.values()) == 0 and fresh.cache_hits[("spec2", "vit", "W8A8", "digits")] == 1
    assert len(fresh.samples(plain, "vit", "W8A8", "digits")["label"]) == 385  # a superset serves both
    assert sum(fresh.forward_passes.values()) == 0


# ------------------------------------------------------------------------------ report


def test_report_spectral_table_and_maps() -> None:
    from pytest_qrel.display import metric_infos
    from pytest_qrel.results import RunResults

    units = [
        UnitMetrics("s", "vit", "FP32", id={"top1": 0.9}, spectral={"spectral_error": 0.0, "spectral_error_high": 0.0}),
        UnitMetrics("s", "vit", "W8<A8>", id={"top1": 0.9}, spectral={"spectral_error": 0.00041206, "spectral_error_high": 0.0003},
                    spectral_map=[[0.0, 1e-4], [2e-4, 4e-4]], method="minmax", bits_label="W8A8"),
        UnitMetrics("s", "vit", "W4A4", id={"top1": 0.9}, spectral={"spectral_error": 0.015, "spectral_error_high": 0.0165},
                    spectral_map=[[0.0, 1e-3], [2e-3, 4e-3]], method="minmax", bits_label="W4A4"),
    ]
    verdict = Verdict("s", "vit", "W4A4", "digits", "spectral_error", None, "W4A4 spectral_error <= 0.01", "value<=0.01",
                      0.0, 0.015, None, "", False, False, "failed", "too far")
    results = RunResults(verdicts=[verdict], units=units, metrics=metric_infos())
    page = build_page(results)
    (section,) = page.suites[0].models
    (block,) = [b for b in section.blocks if b.title == "Feature spectrum"]
    rows = block.tables[0].rows
    assert [r.label for r in rows] == ["Spectral error (RSE)", "Spectral error, high band"]
    assert [c.text for c in rows[0].cells] == ["0", "0.0004121", "0.015"]  # four significant digits
    assert "cell-fail" in rows[0].cells[2].css and rows[0].cells[2].checks[0].outcome == "failed"
    (maps,) = [f for f in section.figures if f.kind == "spectral"]
    assert [m["label"] for m in maps.data["maps"]] == ["W8<A8>", "W4A4"] and maps.data["vmax"] == 4e-3  # one scale
    html = render_html(results)
    assert "Feature spectrum" in html and "W8&lt;A8&gt;" in html and "W8<A8>" not in html
    plain = render_html(RunResults(units=[UnitMetrics("s", "vit", "FP32", id={"top1": 0.9})], metrics=metric_infos()), figures=False)
    assert "Feature spectrum" not in plain


# ------------------------------------------------------------------------------ the plugin


def test_plugin_runs_a_spectral_suite_with_one_pass_per_unit(pytester, write_suite) -> None:
    from pytest_qrel.plugin import STATE

    write_suite(CHECKS)
    args = ("--qrel-suite", "suites/mini.yaml", "-p", "no:cacheprovider")
    reprec = pytester.inline_run(*args, "--qrel-update-baselines")
    reprec.assertoutcome(passed=6)
    engine = reprec.getcalls("pytest_sessionfinish")[0].session.config.stash[STATE].engine
    fp32 = {("mini", "vit", "FP32", d): 1 for d in ("digits", "digits89", "noise", "heldout")}
    assert dict(engine.forward_passes) == {**fp32, ("mini", "vit", "W8A8", "digits"): 1, ("mini", "vit", "W4A4", "digits"): 1}
    record = json.loads((pytester.path / "baselines/mini/vit.json").read_text())
    with np.load(pytester.path / "baselines/mini" / record["npz"]) as z:
        assert z["FP32|digits|spectrum"].shape == (4, 4)

    result = pytester.runpytest(*args, "--qrel-report", "reports/mini.html", "-rA")
    result.assert_outcomes(passed=6)
    result.stdout.fnmatch_lines(["*mini.yaml::vit::W4A4::spectral_error_high on digits value<=0.2*"])
    assert "Feature spectrum" in (pytester.path / "reports/mini.html").read_text()

    pytester.path.joinpath("suites/mini.yaml").write_text(
        pytester.path.joinpath("suites/mini.yaml").read_text().replace('"W4A4 spectral_error_high <= 0.2"', '"W4A4 spectral_error_high <= 0.0001"')
    )
    result = pytester.runpytest(*args)
    result.assert_outcomes(passed=5, failed=1)
    result.stdout.re_match_lines([r".*vit W4A4 spectral_error_high on digits: FP32 0, W4A4 0\.0\d{3,} violates value <= 0\.0001"])
