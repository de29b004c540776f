"""The CLIP paper's protocol pieces: scenarios (spec/scenarios.py), the image-text calibration source
(data/imagetext.py), the bin-wise reliability shift and the averages across scenarios. The whole
clip.yaml-shaped run is in test_paper_suites.py."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_qrel import load_suite, plan
from pytest_qrel.errors import DataError, SpecError
from pytest_qrel.spec.scenarios import scenario_model, split_scenario

SCENARIO_SUITE = """\
version: 1
name: sc
models:
  clip_digits: {source: "open_clip:digits_clip"}
datasets:
  ood: [{name: textures, source: "embedded:textures"}]
scenarios:
  digits:
    id: {name: digits, source: "embedded:digits"}
    checks: ["W8A8 auroc on textures delta <= 5pp"]
  noisy:
    id: {name: digits, source: "embedded:digits"}
    ood: [{name: noise, source: "embedded:noise"}, {name: photos, source: "embedded:photos"}]
quantizers:
  W8A8: {method: minmax, calibration: {samples: 8, data: "imagetext:pairs"}}
scores: [msp]
checks:
  - "W8A8 top1 delta <= 1pp"
  - "W8A8 auroc on mean(ood) delta <= 1pp"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "sc.yaml"
    path.write_text(text)
    return path


def test_scenarios_expand_into_one_ordinary_suite_per_scenario(tmp_path):
    suite = load_suite(_write(tmp_path, SCENARIO_SUITE))
    assert list(suite.scenarios) == ["digits", "noisy"]
    assert list(suite.models) == ["clip_digits@digits", "clip_digits@noisy"]
    digits, noisy = suite.scenarios["digits"], suite.scenarios["noisy"]
    assert list(digits.ood_datasets) == ["textures"]  # the top-level set, shared
    assert list(noisy.ood_datasets) == ["noise", "photos"]  # replaced by the scenario's
    assert digits.name == noisy.name == "sc"  # one baseline folder, one report section
    assert digits.quantizers["W8A8"].calibration.data == "imagetext:pairs"
    planned = plan(suite)
    ids = [f"{p.model}::{p.quantizer}::{p.name}" for p in planned]
    assert len(ids) == len(set(ids))
    # the scenario's own check runs in that scenario only; mean(ood) averages each scenario's own sets
    assert [p.model for p in planned if p.dataset == "textures"] == ["clip_digits@digits"]
    means = {p.model: p.datasets for p in planned if p.dataset == "mean(ood)"}
    assert means == {"clip_digits@digits": ("digits", "textures"), "clip_digits@noisy": ("digits", "noise", "photos")}
    assert all(p.suite is suite.scenarios[split_scenario(p.model)[1] or ""] for p in planned)
    assert split_scenario(scenario_model("vit_b32", "cifar10")) == ("vit_b32", "cifar10")
    assert split_scenario("vit_b32") == ("vit_b32", None)


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.replace("    id: {name: digits, source: \"embedded:digits\"}\n    checks", "    checks"),
     "field 'scenarios.digits.id': a scenario needs its in-distribution set 'id'"),
    (lambda t: t.replace("  noisy:\n", "  noisy:\n    idd: 1\n"), "field 'scenarios.noisy.idd'"),
    (lambda t: t.replace("  noisy:\n", "  no-isy:\n"), "invalid scenario name 'no-isy'"),
    # a top-level check must hold in every scenario: 'textures' is not an OOD set of 'noisy'
    (lambda t: t.replace('"W8A8 top1 delta <= 1pp"', '"W8A8 auroc on textures delta <= 2pp"'),
     "field 'checks[0]': in scenario 'noisy' (top-level checks apply to every scenario): unknown OOD dataset 'textures'"),
    # a scenario's own check is named in its own list, not by its place in the merged one
    (lambda t: t.replace('"W8A8 auroc on textures delta <= 5pp"', '"W8A8 top1 delta <= 1pp"'),
     "field 'scenarios.digits.checks[0]': repeats checks[0]"),
    (lambda t: t.replace('data: "imagetext:pairs"', 'data: "nosuch:pairs"'), "field 'quantizers.W8A8.calibration.data'"),
])
def test_scenario_errors_name_the_file_line_and_field(tmp_path, edit, message):
    with pytest.raises(SpecError) as err:
        load_suite(_write(tmp_path, edit(SCENARIO_SUITE)))
    assert message in str(err.value) and str(tmp_path / "sc.yaml") + ":" in str(err.value)


def _pairs(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / f"{i:09d}.jpg")
        (folder / f"{i:09d}.txt").write_text(f"a photo of thing {i}\n")


def test_imagetext_source_reads_caption_files_and_listings_and_fingerprints_the_captions(tmp_path):
    from pytest_qrel.data import load_dataset

    _pairs(tmp_path / "cc3m" / "00000", 5)
    ds = load_dataset("imagetext:cc3m", split="train", options={}, base_dir=tmp_path)
    assert len(ds) == 5 and ds.captions[2] == "a photo of thing 2" and set(ds.labels) == {-1}
    assert ds[0][0].size == (12, 12)
    before = ds.fingerprint
    (tmp_path / "cc3m" / "00000" / "000000002.txt").write_text("a photo of another thing")  # a caption is a target
    assert load_dataset("imagetext:cc3m", split="train", options={}, base_dir=tmp_path).fingerprint != before
    assert len(load_dataset("imagetext:cc3m", split="train", options={"limit": 3}, base_dir=tmp_path)) == 3
    # a listing wins over caption files, and lists only what it names
    (tmp_path / "cc3m" / "captions.tsv").write_text("# path\tcaption\n00000/000000004.jpg\ta dog\n00000/000000001.jpg\ta cat\n")
    listed = load_dataset("imagetext:cc3m", split="train", options={}, base_dir=tmp_path)
    assert listed.captions == ["a dog", "a cat"] and listed.relpaths == ["00000/000000004.jpg", "00000/000000001.jpg"]
    (tmp_path / "cc3m" / "captions.tsv").write_text("00000/missing.jpg\ta dog\n")
    with pytest.raises(DataError, match=r"captions.tsv:1: image .*missing.jpg does not exist"):
        load_dataset("imagetext:cc3m", split="train", options={}, base_dir=tmp_path)
    (tmp_path / "cc3m" / "captions.tsv").unlink()
    (tmp_path / "cc3m" / "00000" / "000000003.txt").unlink()
    with pytest.raises(DataError, match=r"000000003.jpg has no caption file 000000003.txt"):
        load_dataset("imagetext:cc3m", split="train", options={}, base_dir=tmp_path)
    (tmp_path / "cc3m" / "00000" / "000000003.txt").write_bytes("caf\u00e9 au lait".encode("latin-1"))
    with pytest.raises(DataError, match=r"caption file .*000000003.txt is not UTF-8 \(byte 0xe9 at offset 3\) \(fix: save it as UTF-8"):
        load_dataset("imagetext:cc3m", split="train", options={}, base_dir=tmp_path)


def test_reliability_shift_follows_the_same_samples():
    from pytest_qrel.reliability_shift import reliability_shift

    ref_conf = np.array([0.95, 0.97, 0.55, 0.52, 0.10])
    ref_correct = np.array([1, 1, 0, 1, 0])
    conf = np.array([0.80, 0.70, 0.60, 0.90, 0.20])  # the top bin's samples lose confidence
    correct = np.array([1, 0, 1, 1, 0])
    out = reliability_shift(ref_conf, ref_correct, conf, correct, n_bins=10)
    assert out["count"] == [0, 1, 0, 0, 0, 2, 0, 0, 0, 2]
    assert out["ref_confidence"][9] == pytest.approx(0.96) and out["confidence"][9] == pytest.approx(0.75)
    assert out["ref_accuracy"][9] == 1.0 and out["accuracy"][9] == 0.5
    assert out["ref_accuracy"][5] == 0.5 and out["accuracy"][5] == 1.0 and out["confidence"][0] is None
    with pytest.raises(ValueError):
        reliability_shift(ref_conf, ref_correct, conf[:3], correct[:3])


CAPTION_SUITE = """\
version: 1
name: cap
models:
  clip_digits: {source: "open_clip:digits_clip"}
scenarios:
  only:
    id: {name: digits, source: "embedded:digits"}
quantizers:
  W8A8: {method: qat_lsq, calibration: {samples: 8, data: "imagetext:pairs"}, options: {steps: 1, batch_size: 4}}
scores: [msp]
checks: ["W8A8 top1 delta <= 50pp"]
"""


@pytest.mark.slow
def test_a_changed_caption_is_never_green_from_the_outputs_cache(tmp_path):
    """The image-text data a quantizer adapts on is part of its unit's outputs key: the same run hits
    the cache, an edited caption (a QAT target) misses it."""
    from pytest_qrel import Engine, run

    _pairs(tmp_path / "pairs", 8)

    def quantized(text: str = CAPTION_SUITE) -> int:
        engine = Engine(baseline_dir=tmp_path / "baselines", cache_dir=tmp_path / "cache", update_baselines=True)
        assert [v.outcome for v in run(load_suite(_write(tmp_path, text)), engine=engine)] == ["passed"]
        return sum(engine.units.quantizations.values())

    assert quantized() == 1
    assert quantized() == 0  # every array from the cache
    (tmp_path / "pairs" / "000000005.txt").write_text("a photo of something else")
    assert quantized() == 1
    # other class names are another zero-shot head: quantized and evaluated again, never from the cache
    renamed = CAPTION_SUITE.replace('{source: "open_clip:digits_clip"}', '{source: "open_clip:digits_clip", options: '
                                    '{class_names: [one, zero, two, three, four, five, six, seven]}}')
    assert renamed != CAPTION_SUITE
    assert quantized(renamed) == 1
    assert quantized(renamed) == 0
