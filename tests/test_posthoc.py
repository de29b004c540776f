"""Post-hoc temperature scaling: fitted on the held-out ID split, applied to any quantizer."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch

from pytest_qrel import Engine, load_suite, plan, run
from pytest_qrel.errors import SpecError
from pytest_qrel.metrics import nll, softmax
from pytest_qrel.posthoc import POSTHOC, fit_temperature
from pytest_qrel.spec.quantizer_ref import QuantizerRef


def test_fit_temperature_recovers_the_scale_of_overconfident_logits():
    rng = np.random.default_rng(0)
    true_logits = rng.normal(size=(4000, 5)) * 2
    probs = np.exp(true_logits) / np.exp(true_logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(5, p=p) for p in probs])
    overconfident = true_logits * 3.0  # a model three times too sharp
    t = fit_temperature(overconfident, labels)["temperature"]
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(overconfident / t, labels) < nll(overconfident, labels)


def test_fit_temperature_in_chunks_matches_the_fit_in_one_piece():
    # Chunking bounds memory at ImageNet scale; it must not change the fitted temperature beyond
    # summation-order rounding (LBFGS tolerance is far coarser).
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 997)
    logits = (rng.normal(size=(997, 10)) + 4 * np.eye(10)[labels]) * 3
    whole = fit_temperature(logits, labels)["temperature"]
    chunked = fit_temperature(logits, labels, chunk_elements=10 * 64)["temperature"]
    assert whole != 1.0
    assert chunked == pytest.approx(whole, rel=1e-6)


def test_posthoc_names_are_read_by_the_one_parser():
    ref = QuantizerRef.parse("W8A8-qat-lsq+temperature")
    assert (ref.base, ref.steps) == ("W8A8-qat-lsq", ("temperature",))
    assert QuantizerRef.parse("FP32").steps == ()
    assert all(step in POSTHOC for step in ref.steps)


SUITE = """\
name: posthoc
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood: [{name: noise, source: "embedded:noise"}]
quantizers:
  W4A4: {method: minmax, calibration: {samples: 64}}
scores: [msp]
checks:
%s
"""


def write(tmp_path, checks: str):
    path = tmp_path / "s.yaml"
    path.write_text(SUITE % textwrap.indent(textwrap.dedent(checks), "  "))
    return path


def test_temperature_lowers_nll_on_the_heldout_split_and_is_reported(tmp_path):
    suite = load_suite(write(tmp_path, '- "W4A4+temperature nll delta <= 100%"\n- "FP32+temperature nll <= 10"\n'))
    engine = Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    verdicts = [engine.evaluate(p) for p in plan(suite)]
    assert all(v.passed for v in verdicts)
    # refit on a fresh copy of the same quantizer: the fitted T lowers the held-out NLL
    module = engine.quantized_module(suite, "vit", "W4A4")
    held_set = engine.dataset(suite, "digits", "val")
    preprocess = engine.model(suite, "vit").preprocess
    with torch.inference_mode():
        logits = module(torch.stack([preprocess(held_set[i][0]) for i in range(len(held_set))])).numpy()
    t = engine.posthoc_params(suite, "vit", "W4A4+temperature")["temperature"]
    assert nll(logits / t, held_set.labels) < nll(logits, held_set.labels)
    # the variant's arrays are the base logits divided by T: same predictions, rescaled confidences
    base, scaled = (engine.samples(suite, "vit", q, "digits") for q in ("W4A4", "W4A4+temperature"))
    assert (base["pred"] == scaled["pred"]).all() and not np.allclose(base["confidence"], scaled["confidence"])
    test_set = engine.dataset(suite, "digits")
    with torch.inference_mode():
        test_logits = module(torch.stack([preprocess(test_set[i][0]) for i in range(len(test_set))])).numpy()
    np.testing.assert_allclose(scaled["confidence"], softmax(test_logits / t).max(1), rtol=1e-5)
    # held out = the ID 'val' split: disjoint from the calibration (train) and test splits
    val = engine.dataset(suite, "digits", "val").fingerprint
    assert val not in {engine.dataset(suite, "digits", s).fingerprint for s in ("train", "test")}
    units = {u.quantizer: u for u in engine.report_units()}
    assert units["W4A4+temperature"].info["temperature"] == pytest.approx(t)
    assert units["FP32+temperature"].info["temperature"] > 0  # stored with the FP32 baseline
    # the temperature-scaled forward reuses the base outputs: no extra forward on the test split
    assert engine.forward_passes[("posthoc", "vit", "W4A4", "digits")] == 1


def test_unknown_posthoc_step_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError, match=r"unknown post-hoc step 'temprature'; did you mean 'temperature'\?"):
        load_suite(write(tmp_path, '- "W4A4+temprature ece delta <= 0"\n'))
    with pytest.raises(SpecError, match="unknown quantizer 'W9A9'"):
        load_suite(write(tmp_path, '- "W9A9+temperature ece delta <= 0"\n'))
    # a check covers every calibration seed: a seeded name (or a malformed one) is no quantizer of the suite
    for name, shown in (("W4A4@13+temperature", "W4A4@13"), ("W4A4@x", "W4A4@x")):
        with pytest.raises(SpecError, match=f"unknown quantizer '{shown}'"):
            load_suite(write(tmp_path, f'- "{name} ece delta <= 0"\n'))
    with pytest.raises(SpecError, match="unknown quantizer 'W4A4@13'"):
        load_suite(write(tmp_path, '- "W4A4+temperature ece delta <= delta(W4A4@13)"\n'))


def test_quantizer_names_cannot_contain_plus(tmp_path):
    path = write(tmp_path, "[]\n")
    path.write_text(path.read_text().replace("W4A4: {", "W4A4+x: {"))
    with pytest.raises(SpecError, match="invalid name 'W4A4\\+x'"):
        load_suite(path)


def test_bound_against_another_quantizer_reads_both_units(tmp_path):
    suite = load_suite(write(tmp_path, '- "W4A4+temperature nll delta <= delta(W4A4)"\n'))
    engine = Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    (p,) = plan(suite)
    verdict = engine.evaluate(p)
    plain = engine.id_metrics(suite, "vit", "W4A4")["nll"]
    scaled = engine.id_metrics(suite, "vit", "W4A4+temperature")["nll"]
    assert verdict.value == pytest.approx(scaled)
    assert verdict.passed == (scaled <= plain)
    assert f"W4A4 {plain:.4f}" in verdict.message


def test_multi_seed_quantizer_averages_per_seed_metrics(tmp_path):
    path = write(tmp_path, '- "W4A4 top1 delta <= 100pp"\n- "W4A4+temperature nll delta <= 100%"\n')
    path.write_text(path.read_text().replace("calibration: {samples: 64}", "calibration: {samples: 16, seeds: [0, 13, 37]}"))
    suite = load_suite(path)
    assert suite.quantizers["W4A4"].calibration.seeds == (0, 13, 37)
    engine = Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    verdicts = run(suite, engine=engine)  # announces every check, so each unit computes once
    per_seed = [engine.id_metrics(suite, "vit", f"W4A4@{s}")["top1"] for s in (0, 13, 37)]
    assert verdicts[0].value == pytest.approx(np.mean(per_seed))
    for s in (0, 13, 37):  # each seed's unit ran once on the test split, however many checks read it
        assert engine.forward_passes[("posthoc", "vit", f"W4A4@{s}", "digits")] == 1
    assert engine.live_units() == 0  # released after its last check; asking for arrays recomputes them
    assert len({engine.samples(suite, "vit", f"W4A4@{s}", "digits")["confidence"].tobytes() for s in (0, 13, 37)}) == 3
    unit = {u.quantizer: u for u in engine.report_units()}["W4A4"]
    assert unit.seeds == [0, 13, 37] and unit.per_seed["top1"] == pytest.approx(per_seed)


def test_seed_and_seeds_are_exclusive(tmp_path):
    path = write(tmp_path, "[]\n")
    path.write_text(path.read_text().replace("calibration: {samples: 64}", "calibration: {seed: 1, seeds: [0, 13]}"))
    with pytest.raises(SpecError, match="give either 'seed' or 'seeds'"):
        load_suite(path)
