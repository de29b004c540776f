"""Run metadata: plain inputs in, a JSON-ready dict out."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import textwrap
from pathlib import Path

import pytest

from pytest_qrel.errors import SpecError
from pytest_qrel.runinfo import describe_device, quantizer_configs, run_info
from pytest_qrel.spec import load_suite

SUITE = """\
version: 1
name: meta
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood: [{name: noise, source: "embedded:noise"}]
quantizers:
  W8A8: {method: minmax, calibration: {samples: 64, seed: 3}}
  W4A4: {method: minmax, options: {weight_granularity: per_tensor}, calibration: {samples: 32, seeds: [0, 13, 37]}}
  W4A16: {method: raana, act_bits: null}
conventions: openood
diagnostics: [attention_rollout]
checks: ["W8A8 top1 delta <= 1pp"]
"""


def write_suite(tmp_path: Path) -> Path:
    path = tmp_path / "meta.yaml"
    path.write_text(textwrap.dedent(SUITE))
    return path


def test_run_info_holds_what_produced_the_run(tmp_path: Path) -> None:
    path = write_suite(tmp_path)
    suite = load_suite(path)
    start = dt.datetime(2025, 1, 31, 12, 0, 0, tzinfo=dt.timezone.utc)
    fingerprint = {"model": {"weights_sha256": "ab" * 32}, "datasets": {"digits": {"fingerprint": "cd" * 32, "samples": 385}}}
    info = run_info([suite], start=start, end=start + dt.timedelta(seconds=12.5), device="cpu",
                    baselines={"meta/vit": fingerprint}, command="pytest --qrel-suite meta.yaml", extra={"workers": 2})
    assert info["timestamp"] == "2025-01-31T12:00:00+00:00" and info["duration_s"] == 12.5
    assert info["device"] == "cpu" and info["host"] and info["python"] and info["command"].startswith("pytest")
    assert set(info["versions"]) == {"torch", "timm", "open_clip_torch", "pytest-qrel", "numpy", "scikit-learn", "matplotlib"}
    assert info["suites"] == [{"name": "meta", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]
    assert info["conventions"] == {"meta": "openood"}
    assert info["baselines"] == {"meta/vit": fingerprint}
    assert info["diagnostics"] == {"meta": ["attention_rollout"]}
    assert info["workers"] == 2
    q = info["quantizers"]["meta"]
    assert q["W8A8"] == {"method": "minmax", "weight_bits": 8, "act_bits": 8, "granularity": "method default",
                         "calibration_samples": 64, "seeds": [3], "options": {}}
    assert q["W4A4"]["granularity"] == "per_tensor" and q["W4A4"]["seeds"] == [0, 13, 37]
    assert q["W4A16"]["act_bits"] is None and q["W4A16"]["method"] == "raana"
    json.dumps(info)  # plain types only


def test_run_info_accepts_posix_times_and_no_end(tmp_path: Path) -> None:
    suite = load_suite(write_suite(tmp_path))
    info = run_info([suite], start=0.0)
    assert info["timestamp"] == "1970-01-01T00:00:00+00:00" and info["duration_s"] is None
    assert run_info([], start=None)["timestamp"] is None
    assert list(quantizer_configs(suite)) == ["W8A8", "W4A4", "W4A16"]


def test_a_suite_file_that_vanished_has_no_hash(tmp_path: Path) -> None:
    path = write_suite(tmp_path)
    suite = load_suite(path)
    path.unlink()
    assert run_info([suite])["suites"][0]["sha256"] is None


def test_describe_device_without_a_gpu() -> None:
    assert describe_device("cpu") == "cpu"
    assert describe_device("cuda:7").startswith("cuda:7")  # never raises, with or without a GPU


# ------------------------------------------------------------------ what the run calibrated on, and which CLIP file

CLIP_SUITE = """\
version: 1
name: drawn
models:
  clip: {source: "open_clip:digits_clip"}
datasets:
  id: {name: digits, source: "embedded:digits"}
quantizers:
  W8A8: {method: minmax, calibration: {samples: 16, seed: 0}}
  W4A8: {method: minmax, weight_bits: 4, calibration: {samples: 16, seeds: [1, 2]}}
scores: [msp]
checks: ["W8A8 top1 delta <= 100pp", "W4A8 top1 delta <= 100pp"]
"""


def _shipped_clip_copy(tmp_path: Path, monkeypatch) -> Path:
    """The shipped digits_clip, copied where a test may change it (the source reads ZOO_DIR at load)."""
    import shutil

    from pytest_qrel.models import open_clip_source as S
    from pytest_qrel.zoo import ZOO_DIR

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for suffix in ("safetensors", "json"):
        shutil.copy(ZOO_DIR / f"digits_clip.{suffix}", zoo / f"digits_clip.{suffix}")
    monkeypatch.setattr(S, "ZOO_DIR", zoo)
    S.clear_cache()
    return zoo / "digits_clip.safetensors"


def test_the_run_info_records_the_calibration_draws_and_the_clip_checkpoint(tmp_path: Path, monkeypatch) -> None:
    from pytest_qrel import Engine, run
    from pytest_qrel.calibration_draw import drawn_sha256, numpy_draw
    from pytest_qrel.shards import run_results, write_report, write_results

    weights = _shipped_clip_copy(tmp_path, monkeypatch)
    path = tmp_path / "drawn.yaml"
    path.write_text(CLIP_SUITE)
    suite = load_suite(path)
    engine = Engine(baseline_dir=tmp_path / "baselines", update_baselines=True)
    verdicts = run(suite, engine=engine)
    assert [v.outcome for v in verdicts] == ["passed", "passed"], [v.message for v in verdicts]
    results = run_results(verdicts, engine.report_units(), suites=[suite], planned={"drawn": 2}, started=0.0)
    info = results.run
    checkpoint = hashlib.sha256(weights.read_bytes()).hexdigest()
    assert info["baselines"]["drawn/clip"]["fingerprint"]["model"]["checkpoint_sha256"] == checkpoint
    train = engine.dataset(suite, "digits", "train")
    expected = {seed: drawn_sha256(train.fingerprint, numpy_draw(len(train), 16, seed)) for seed in (0, 1, 2)}
    assert info["quantizers"]["drawn"]["W8A8"]["drawn"] == {"0": expected[0]}
    assert info["quantizers"]["drawn"]["W4A8"]["drawn"] == {"1": expected[1], "2": expected[2]}
    assert len(set(expected.values())) == 3  # one digest per seed: other images, another digest
    # shown where the run info is shown: the results file and the HTML report
    doc = json.loads(write_results(results, tmp_path / "results.json").read_text())
    assert doc["results"]["run"]["quantizers"]["drawn"]["W4A8"]["drawn"]["2"] == expected[2]
    html = write_report(results, tmp_path / "r.html").read_text()
    assert expected[0] in html and expected[2] in html and checkpoint in html


def test_a_changed_clip_checkpoint_file_is_never_read_from_the_cache(tmp_path: Path, monkeypatch) -> None:
    """The same weights saved again with other metadata: other bytes, the same state dict. The file's
    hash is in the model's identity, so the outputs-cache key differs and the unit runs again."""
    from safetensors.torch import load_file, save_file

    from pytest_qrel import Engine
    from pytest_qrel.engine.units import Needs
    from pytest_qrel.models import open_clip_source as S

    weights = _shipped_clip_copy(tmp_path, monkeypatch)
    path = tmp_path / "drawn.yaml"
    path.write_text(CLIP_SUITE)
    suite = load_suite(path)

    def unit() -> tuple[int, dict]:
        engine = Engine(baseline_dir=tmp_path / "baselines", cache_dir=tmp_path / "cache")
        engine.unit(suite, "clip", "W8A8", Needs({"digits"}, set(), False))
        return sum(engine.forward_passes.values()), engine.loader.identity(suite, "clip")

    passes, before = unit()
    assert passes == 1 and before["checkpoint_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert unit()[0] == 0  # unchanged: from the cache
    save_file(load_file(str(weights)), str(weights), metadata={"note": "saved again"})
    config = weights.with_suffix(".json")
    meta = json.loads(config.read_text())
    meta["weights_file_sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    config.write_text(json.dumps(meta))
    S.clear_cache()
    passes, after = unit()
    assert after["weights_sha256"] == before["weights_sha256"]  # the loaded weights are the same ...
    assert after["checkpoint_sha256"] != before["checkpoint_sha256"] and passes == 1  # ... the file is not: run again


def test_the_draw_digest_follows_the_images_drawn(tmp_path: Path, monkeypatch) -> None:
    """Runs that calibrate on other images record other digests, and never share cached outputs:
    another seed, or the same seed over a train split whose files changed."""
    from pytest_qrel import Engine
    from pytest_qrel.calibration_draw import draw_from
    from pytest_qrel.data import load_dataset
    from pytest_qrel.engine.units import Needs

    path = write_suite(tmp_path)

    def unit(train_fingerprint: str | None = None) -> tuple[int, str]:
        suite = load_suite(path)
        engine = Engine(baseline_dir=tmp_path / "b", cache_dir=tmp_path / "cache")
        if train_fingerprint is not None:  # the train split as a folder whose files changed fingerprints
            monkeypatch.setattr(engine.dataset(suite, "digits", "train"), "fingerprint", train_fingerprint)
        state = engine.unit(suite, "vit", "W8A8", Needs({"digits"}, set(), False))
        return sum(engine.forward_passes.values()), state.info[0]["calibration"]["sha256"]

    passes, first = unit()
    assert passes == 1 and unit() == (0, first)  # the same images: the same digest, from the cache
    passes, changed_split = unit("another train split")
    assert passes == 1 and changed_split != first
    path.write_text(path.read_text().replace("samples: 64, seed: 3", "samples: 64, seed: 4"))
    passes, other_seed = unit()
    assert passes == 1 and other_seed not in (first, changed_split)
    # a folder: one more file changes the split's fingerprint, hence the digest of the same positions
    for i in range(6):
        _png(tmp_path / "pics" / "ab"[i % 2] / f"{i}.png", i)
    before = draw_from(load_dataset(f"imagefolder:{tmp_path / 'pics'}", split="test"), 3, 0)
    _png(tmp_path / "pics" / "a" / "9.png", 9)
    after = draw_from(load_dataset(f"imagefolder:{tmp_path / 'pics'}", split="test"), 3, 0)
    assert before.sha256 != after.sha256 and before.record() == {"draw": "numpy", "seed": 0, "samples": 3, "sha256": before.sha256}
    # no unseeded draw exists: `seed: null` is refused when the suite loads, so equal suites and data
    # always draw the same images (and record the same digest)
    path.write_text(path.read_text().replace("samples: 64, seed: 4", "samples: 64, seed: null"))
    with pytest.raises(SpecError, match=r"quantizers\.W8A8\.calibration\.seed'.* must be an integer >= 0, got None"):
        load_suite(path)


def _png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", (4, 4), color=value * 20).save(path)
