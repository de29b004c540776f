"""Evidence beyond checksums (issue 18, items 4 and 5): the FP32 model must still reproduce its
baseline on a few images each run; a baseline of a model whose outputs do not depend on its input,
or that does not reproduce itself, is never stored."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from pytest_qrel import Engine, load_suite, run
from pytest_qrel.engine.units import Needs
from pytest_qrel.errors import BaselineError, NumericsError
from pytest_qrel.reproduction import (
    CROSS_DEVICE_FACTOR,
    REPRODUCE_IMAGES,
    FirstImages,
    Tolerance,
    reproduction_differences,
    tolerance_for,
)
from pytest_qrel.validation import refuse_input_independent

# Fast models (a linear layer; no timm). QREL_TEST_NOISE_<FACTORY> adds unseeded Gaussian noise of
# that scale to the logits of that factory's model; `constant` ignores its input: the same logits
# row for every image, one float step apart between batches (the reproduction).
MODELS = '''
import os
import torch


class Tiny(torch.nn.Module):
    num_classes = 8

    def __init__(self, seed, noise_var):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc = torch.nn.Linear(256, 8)
        self.noise_var = noise_var
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(8, 256, generator=g) * 0.3)
            self.fc.bias.zero_()

    def forward(self, x):
        out = self.fc(x.flatten(1))
        noise = float(os.environ.get(self.noise_var, "0"))
        return out + noise * torch.randn_like(out) if noise else out


class Constant(torch.nn.Module):
    num_classes = 8

    def __init__(self):
        super().__init__()
        self.row = torch.nn.Parameter(torch.linspace(0.0, 0.7, 8), requires_grad=False)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        row = self.row if self.calls % 2 else torch.nextafter(self.row, torch.full_like(self.row, 10.0))
        return row.expand(x.shape[0], 8).clone()


def preprocess(image):
    return torch.as_tensor(image, dtype=torch.float32).reshape(1, 16, 16)


def build_m():
    return Tiny(0, "QREL_TEST_NOISE_M"), preprocess, "a fixed random linear layer"


def build_k():
    return Tiny(1, "QREL_TEST_NOISE_K"), preprocess, "another fixed random linear layer"


def build_constant():
    return Constant(), preprocess, "logits that ignore the input"
'''

SUITE = """\
version: 1
name: evidence
models:
{models}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
  ood: [{{name: noise, source: "embedded:noise"}}]
quantizers:
  W8A8: {{method: minmax}}
scores: [msp, energy]
checks:
  - "FP32 top1 >= 0"
  - "FP32 ece <= 1"
  - "FP32 auroc(energy) on noise >= 0"
"""


def write_suite(root: Path, models: str = '  m: {source: "python:models.py:build_m"}\n  k: {source: "python:models.py:build_k"}') -> Path:
    (root / "models.py").write_text(MODELS)
    path = root / "suite.yaml"
    path.write_text(SUITE.format(models=models))
    return path


@pytest.fixture
def suite_path(tmp_path, monkeypatch) -> Path:
    monkeypatch.delenv("QREL_TEST_NOISE_M", raising=False)
    monkeypatch.delenv("QREL_TEST_NOISE_K", raising=False)
    path = write_suite(tmp_path)
    run(load_suite(path), engine=Engine(baseline_dir=tmp_path / "baselines", update_baselines=True))
    return path


# ------------------------------------------------------------------ the reproduction check, per run


def test_an_unchanged_model_reproduces_with_one_small_pass_per_model(suite_path, tmp_path, monkeypatch):
    engine = Engine(baseline_dir=tmp_path / "baselines")
    # with diagnostics (counted, not run: attention rollout needs a ViT) to see where they run
    suite = replace(load_suite(suite_path), diagnostics=("attention_rollout",))
    calls = {"forward": 0, "diagnostics": 0}
    engine.model(suite, "m").module.register_forward_hook(lambda *_: calls.__setitem__("forward", calls["forward"] + 1))

    def counted_diagnostics(suite, model, module):
        calls["diagnostics"] += 1
        return {"attention_rollout": {"error": "counted"}}

    monkeypatch.setattr(engine.units, "diagnostics", counted_diagnostics)
    assert engine.baseline(suite, "m").metrics["id"]["top1"] >= 0
    # reading a baseline parses the file and runs nothing (issue 19); the FP32 record is a later, explicit step
    assert calls == {"forward": 0, "diagnostics": 0} and not engine.reproduction_passes and engine.report_units() == []
    verdicts = run(suite, engine=engine)
    assert [v.outcome for v in verdicts] == ["passed"] * 6, [v.message for v in verdicts]
    assert calls["forward"] >= 1 and calls["diagnostics"] == 2  # the probe; the FP32 diagnostics once per model
    assert [u.quantizer for u in engine.report_units() if u.model == "m"][0] == "FP32"
    # one pass of REPRODUCE_IMAGES images per model, whatever the number of checks; no unit pass
    assert dict(engine.reproduction_passes) == {("evidence", "m", "FP32", "digits"): 1, ("evidence", "k", "FP32", "digits"): 1}
    assert sum(engine.forward_passes.values()) == 0
    probe = engine.reproduction.probe(suite, "m")  # the probe of the run, not a second pass
    assert engine.reproduction_passes[("evidence", "m", "FP32", "digits")] == 1
    assert len(probe.arrays["pred"]) == REPRODUCE_IMAGES == 32


def test_a_noisy_fp32_model_fails_every_check_of_that_model_with_one_line(suite_path, tmp_path, monkeypatch):
    monkeypatch.setenv("QREL_TEST_NOISE_M", "0.05")  # unseeded noise in m's forward; k is unchanged
    engine = Engine(baseline_dir=tmp_path / "baselines")
    verdicts = run(load_suite(suite_path), engine=engine)
    by_model = {m: [v for v in verdicts if v.model == m] for m in ("m", "k")}
    assert [v.outcome for v in by_model["k"]] == ["passed"] * 3
    assert [v.outcome for v in by_model["m"]] == ["error"] * 3
    messages = {v.message for v in by_model["m"]}
    assert len(messages) == 1  # the same line for each check: computed once per model
    (message,) = messages
    assert message.startswith(
        f"model 'm': the FP32 model no longer reproduces its baseline {tmp_path / 'baselines/evidence/m.json'}: "
        "on the first 32 'digits' test images "
    ), message
    assert "confidence differs by up to" in message and "score.energy differs by up to" in message
    assert "(tolerance: confidence within 0.0001, NLL and scores within 0.0001 x max(1, |value|); baseline computed on cpu, this run on cpu)" in message
    assert message.endswith(
        "a nondeterministic forward (unseeded randomness, dropout in train mode) or a changed model, code or environment "
        f"(fix: make the forward deterministic; if the change is intended, re-create the baseline with: "
        f"pytest --qrel-suite {suite_path} --qrel-update-baselines)"
    )
    assert engine.reproduction_passes[("evidence", "m", "FP32", "digits")] == 1  # not one per check


@pytest.mark.slow
def test_the_plugin_fails_the_noisy_models_items(pytester, monkeypatch):
    monkeypatch.delenv("QREL_TEST_NOISE_K", raising=False)
    monkeypatch.delenv("QREL_TEST_NOISE_M", raising=False)
    write_suite(pytester.path, models='  m: {source: "python:models.py:build_m"}')
    args = ("--qrel-suite", "suite.yaml", "-p", "no:randomly", "--qrel-no-cache")
    pytester.runpytest(*args, "--qrel-update-baselines").assert_outcomes(passed=3)
    monkeypatch.setenv("QREL_TEST_NOISE_M", "0.05")
    result = pytester.runpytest(*args)
    result.assert_outcomes(failed=3)
    result.stdout.fnmatch_lines(["*model 'm': the FP32 model no longer reproduces its baseline baselines/evidence/m.json: on the first 32*"])
    assert "Traceback" not in result.stdout.str()
    monkeypatch.delenv("QREL_TEST_NOISE_M")
    pytester.runpytest(*args).assert_outcomes(passed=3)  # the same model without the noise reproduces again


@pytest.mark.slow
def test_under_xdist_the_probe_runs_once_per_model_and_a_failure_fails_every_worker(pytester, monkeypatch, tmp_path):
    pytest.importorskip("xdist")
    from pytest_qrel.engine.trace import read_trace

    monkeypatch.delenv("QREL_TEST_NOISE_M", raising=False)
    path = write_suite(pytester.path, models='  m: {source: "python:models.py:build_m"}')
    # two units of m (FP32, W8A8): the scheduler gives one to each worker, and both check m's baseline
    path.write_text(path.read_text() + '  - "W8A8 top1 delta <= 100pp"\n  - "W8A8 ece <= 1"\n')
    run(load_suite(path), engine=Engine(baseline_dir=pytester.path / "baselines", update_baselines=True))
    trace = tmp_path / "trace.tsv"
    monkeypatch.setenv("PYTEST_QREL_TRACE", str(trace))
    # unseeded noise in m's forward: the one probe of the run fails (a passing run's one probe is
    # counted in test_plugin.py's xdist test), and every check of m fails on both workers
    monkeypatch.setenv("QREL_TEST_NOISE_M", "0.05")
    result = pytester.runpytest("--qrel-suite", "suite.yaml", "-p", "no:randomly", "-n", "2", "-v")
    result.assert_outcomes(failed=5)
    assert {w for w in ("gw0", "gw1") if any(line.startswith(f"[{w}]") and "FAILED" in line for line in result.stdout.lines)} == {"gw0", "gw1"}
    # the same line on each worker (its first failure prints it, the others say "the same error as"),
    # counted in the failures section: the short summary repeats it in full where the CI variable is set
    text = result.stdout.str()
    failures = text[text.index("= FAILURES =") : text.index("short test summary info")]
    assert failures.count("model 'm': the FP32 model no longer reproduces its baseline baselines/evidence/m.json") == 2
    assert [e[1:] for e in read_trace(trace) if e[1] == "reproduce"] == [("reproduce", "evidence", "m", "FP32", "digits")]


# ------------------------------------------------------------------ refused at baseline time


def test_a_noisy_model_is_refused_at_baseline_time(tmp_path, monkeypatch):
    monkeypatch.setenv("QREL_TEST_NOISE_M", "0.05")
    suite = load_suite(write_suite(tmp_path, models='  m: {source: "python:models.py:build_m"}'))
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    with pytest.raises(BaselineError) as info:
        engine.baseline(suite, "m")
    assert str(info.value).startswith(
        "refusing to store the FP32 baseline of model 'm': the FP32 model does not reproduce its own outputs: on the first 32 "
        "'digits' test images a second pass gives "
    )
    assert str(info.value).endswith("(fix: make the forward deterministic: no unseeded randomness, no dropout in train mode)")
    assert not (tmp_path / "baselines/evidence").exists() or not list((tmp_path / "baselines/evidence").iterdir())


def test_a_model_that_ignores_its_input_is_refused_at_baseline_time(tmp_path):
    suite = load_suite(write_suite(tmp_path, models='  c: {source: "python:models.py:build_constant"}'))
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    verdicts = run(suite, engine=engine)
    assert {v.outcome for v in verdicts} == {"error"}
    message = verdicts[0].message
    assert message.startswith(
        "refusing to store the FP32 baseline of model 'c': its outputs do not depend on its input "
        "(the logits of 32 different 'digits' images agree to within 0, float noise; all 685 images of 'digits', 'noise' get "
        "confidence 0.1728) (fix: check that the model's forward computes from its input"
    ), message
    assert not (tmp_path / "baselines/evidence/c.json").exists()
    # what it would have stored: top-1 at chance and OOD scores that differ only by a float step
    arrays = engine.units.compute_seed(suite, "c", "FP32", "FP32", None, Needs({"digits", "noise"})).arrays[""]
    assert 0.05 < arrays["digits"]["correct"].mean() < 0.2
    assert 0 < np.ptp(np.concatenate([arrays["digits"]["score.energy"], arrays["noise"]["score.energy"]])) < 1e-6


def test_refuse_input_independent_units():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(32, 10))
    per_set = {"a": {"confidence": rng.random(50).astype(np.float32), "score.msp": rng.random(50)}}
    refuse_input_independent(real, per_set, model="m", dataset="a")  # input-dependent: fine
    row = np.linspace(0, 1, 10)
    constant = np.tile(row, (32, 1))
    constant[1::2] = np.nextafter(constant[1::2], 10)
    flat = {"a": {"confidence": np.full(50, 0.2, np.float32), "score.msp": np.full(50, 0.2) + 1e-12 * rng.random(50)}}
    with pytest.raises(NumericsError, match=r"its outputs do not depend on its input \(the logits of 32 different 'a' images agree to within 2\.2e-16"):
        refuse_input_independent(constant, flat, model="m", dataset="a")
    # the same first images but outputs that vary over the whole set (duplicate first images): not refused
    refuse_input_independent(constant, per_set, model="m", dataset="a")
    # saturated confidences (a confident model) with logits that vary: not refused
    refuse_input_independent(real, {"a": {"confidence": np.ones(50, np.float32)}}, model="m", dataset="a")


# ------------------------------------------------------------------ comparison and tolerances


def _arrays(logits: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    from pytest_qrel.engine.samples import batch_arrays

    out = batch_arrays(logits, labels, labelled=True)
    out["score.energy"] = np.log(np.exp(logits).sum(1))
    return out


def test_reproduction_differences():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (32, 5))
    labels = rng.integers(0, 5, 32)
    stored = _arrays(logits, labels)
    assert reproduction_differences(stored, _arrays(logits, labels), logits, Tolerance()) == []
    same_bits_other_rounding = logits * (1 + 1e-7)
    assert reproduction_differences(stored, _arrays(same_bits_other_rounding, labels), same_bits_other_rounding, Tolerance()) == []
    noisy = logits + rng.normal(0, 0.05, logits.shape)
    found = reproduction_differences(stored, _arrays(noisy, labels), noisy, Tolerance())
    assert any(f.startswith("confidence differs by up to") for f in found) and any(f.startswith("score.energy") for f in found)
    # a near tie may flip the prediction within the tolerance; a clear one may not
    tie = np.zeros((2, 3))
    tie[:, 0] = [1.0, 1.0]
    tie[:, 1] = [1.0 - 1e-6, 0.0]
    lab = np.array([0, 0])
    flipped = tie.copy()
    flipped[0, 1] = 1.0 + 1e-6
    assert not any("predictions differ" in f for f in reproduction_differences(_arrays(tie, lab), _arrays(flipped, lab), flipped, Tolerance()))
    swapped = tie.copy()
    swapped[1] = [0.0, 1.0, 0.0]
    assert "1 of 2 predictions differ" in reproduction_differences(_arrays(tie, lab), _arrays(swapped, lab), swapped, Tolerance())
    assert reproduction_differences(stored, _arrays(logits, (labels + 1) % 5), logits, Tolerance())[0] == "the labels differ (other data)"


def test_another_device_type_gets_a_looser_stated_tolerance():
    assert tolerance_for("cpu", "cpu") == Tolerance() == tolerance_for("cuda", "cuda:1")
    loose = tolerance_for("cpu", "cuda:0")
    assert loose == tolerance_for("cuda", "cpu") == Tolerance(1e-4 * CROSS_DEVICE_FACTOR, 1e-4 * CROSS_DEVICE_FACTOR)
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (32, 5))
    labels = rng.integers(0, 5, 32)
    tf32 = logits + rng.normal(0, 1e-3, logits.shape)  # TF32-sized differences: fine across devices only
    assert reproduction_differences(_arrays(logits, labels), _arrays(tf32, labels), tf32, loose) == []
    assert reproduction_differences(_arrays(logits, labels), _arrays(tf32, labels), tf32, Tolerance()) != []


def test_first_images_is_a_prefix_with_its_own_fingerprint():
    from pytest_qrel.data import load_dataset

    ds = load_dataset("embedded:digits", split="test")
    first = FirstImages(ds, 5)
    assert len(first) == 5 and list(first.labels) == list(ds.labels[:5]) and first.fingerprint != ds.fingerprint
    assert np.array_equal(np.asarray(first[4][0]), np.asarray(ds[4][0]))
    with pytest.raises(IndexError):
        first[5]
