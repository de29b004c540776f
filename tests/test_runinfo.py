"""Run metadata: plain inputs in, a JSON-ready dict out."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import textwrap
from pathlib import Path

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
