"""Ways the gate could go green when it must not (an adversarial review of caches and bounds).

- A data file edited in place to the same size, its modification time set back with ``os.utime``,
  keeps the dataset's fingerprint (paths and sizes; bytes only with ``content_hash``): the outputs
  cache and the decoded-image store must still recompute, not serve the old file's numbers.
- Another release of a package that changes what a model computes (timm, PIL, a runtime) must be
  a cache miss.
- A compared quantity on its bound within float error is *on* the bound (``0.30 - 0.29`` is below
  0.01 in floating point: it must not pass ``delta < 1pp``), and a NaN estimate holds no bound
  whatever its interval says.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_qrel import Engine, fingerprint, load_suite, plan
from pytest_qrel.engine.imagestore import store_key
from pytest_qrel.evaluate import compare
from pytest_qrel.spec.schema import Bound
from pytest_qrel.stats import IntervalRequest
from pytest_qrel.stats.decision import judge

sys.path.insert(0, str(Path(__file__).parent))
from test_decode_once import SUITE  # noqa: E402  (the tiny timm image-folder suite)

pytestmark = pytest.mark.usefixtures("one_thread")


def _bmp_images(folder: Path, n: int, seed: int) -> None:
    """``n`` random 20x20 BMP files: uncompressed, so new pixels keep the file's size."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, size=(20, 20, 3), dtype=np.uint8)).save(folder / f"img{i}.bmp")


def _rewrite_same_size_same_mtime(path: Path) -> None:
    """Invert the image's pixels in place; same size, and the modification time set back."""
    before = path.stat()
    Image.fromarray(255 - np.asarray(Image.open(path))).save(path)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)


def test_files_stamp_sees_an_edit_that_keeps_size_and_mtime(tmp_path):
    _bmp_images(tmp_path, 2, seed=0)
    files = sorted(tmp_path.glob("*.bmp"))
    stamp = fingerprint.files_stamp(files)
    assert fingerprint.files_stamp(files) == stamp  # stable while nothing changes
    _rewrite_same_size_same_mtime(files[1])
    assert fingerprint.files_stamp(files) != stamp


def test_image_store_key_names_the_decoder_versions(monkeypatch):
    key = store_key("f" * 64, "resize 16")
    monkeypatch.setattr(fingerprint, "versions_exact", lambda: {"pillow": "0.0.1", "torchvision": "0.0", "torch": "0.0"})
    assert store_key("f" * 64, "resize 16") != key


def test_cached_outputs_are_recomputed_after_a_same_size_edit_and_a_package_upgrade(tmp_path, monkeypatch):
    """A green run, then an OOD image rewritten in place (same size, mtime set back): the next run
    decodes and forwards that set again and its scores change; the calibration images rewritten so:
    the quantizer is calibrated again; a new timm version misses the cache."""
    for split, seed in (("val", 1), ("train", 2)):
        for k, cls in enumerate("ab"):
            _bmp_images(tmp_path / "data" / split / cls, 3, seed=10 * seed + k)
    _bmp_images(tmp_path / "data" / "ood", 10, seed=99)
    path = tmp_path / "s.yaml"
    path.write_text(SUITE % "  W8A8: {method: minmax, weight_bits: 8, act_bits: 8, calibration: {samples: 4, seed: 0}}")
    cache = tmp_path / "cache"

    def run(update: bool = False):
        suite = load_suite(path)
        engine = Engine(baseline_dir=tmp_path / "b", cache_dir=cache, update_baselines=update, workers=0)
        planned = plan(suite)
        engine.expect(planned)
        verdicts = [engine.evaluate(p) for p in planned]
        assert all(v.outcome in ("passed", "failed") for v in verdicts), [v.message for v in verdicts]
        return engine, suite

    first, suite = run(update=True)
    before = first.samples(suite, "tiny", "W8A8", "flat")["score.msp"]
    again, _ = run()
    assert sum(again.forward_passes.values()) == 0  # the cache works: nothing changed, nothing computed

    _rewrite_same_size_same_mtime(tmp_path / "data" / "ood" / "img3.bmp")
    edited, suite = run()
    assert edited.forward_passes[("dec", "tiny", "W8A8", "flat")] == 1
    assert edited.images.decodes == 10  # the OOD set's store is rebuilt, not read
    after = edited.samples(suite, "tiny", "W8A8", "flat")["score.msp"]
    assert not np.array_equal(before, after)

    # A calibration image (the train split: 6 images, 4 drawn) rewritten the same way: W8A8 calibrates again.
    passes = edited.forward_passes.copy()
    for image in sorted((tmp_path / "data" / "train").rglob("*.bmp")):
        _rewrite_same_size_same_mtime(image)
    recalibrated, _ = run()
    assert recalibrated.forward_passes[("dec", "tiny", "W8A8", "pics")] == 1, (passes, recalibrated.forward_passes)

    # The model's code (its classes and their source files) changed, its weights not: computed again.
    from pytest_qrel.engine import loading

    monkeypatch.setattr(loading, "module_code_digest", lambda module: "another model file")
    recoded, _ = run()
    assert recoded.forward_passes[("dec", "tiny", "W8A8", "pics")] == 1
    monkeypatch.undo()

    real = fingerprint.versions_exact()
    monkeypatch.setattr(fingerprint, "versions_exact", lambda: {**real, "timm": real["timm"] + ".post1"})
    upgraded, _ = run()
    assert upgraded.forward_passes[("dec", "tiny", "W8A8", "pics")] == 1


@pytest.mark.parametrize(
    ("op", "fp32", "value", "passes"),
    [
        ("<", 0.30, 0.29, False),  # exactly 1pp worse: 0.30 - 0.29 < 0.01 in floating point
        ("<=", 0.97, 0.96, True),  # exactly 1pp worse: 0.97 - 0.96 > 0.01 in floating point
        ("<=", 0.97, 0.9599, False),
        ("<", 0.30, 0.2901, True),
    ],
)
def test_a_delta_on_its_bound_within_float_error_is_on_the_bound(op, fp32, value, passes):
    bound = Bound("delta", op, 1, "pp")
    assert compare(bound, fp32, value, higher_is_better=True)[0] is passes
    assert (judge(bound, 100 * (fp32 - value), None, None).outcome == "passed") is passes


def test_a_nan_estimate_fails_whatever_its_interval():
    for bound in (Bound("value", ">=", 0.5, ""), Bound("delta", "<=", 1, "pp")):
        assert compare(bound, 0.9, math.nan, higher_is_better=True)[0] is False
        for ci in (None, (0.1, 0.2), (0.6, 0.7)):
            assert judge(bound, math.nan, ci, 0.95 if ci else None).outcome == "failed"


# ------------------------------------------------------------------ top-1 intervals from few disagreements


def _top1_sides(n: int, flips: int, fp32_right: int | None = None):
    """FP32 right on ``fp32_right`` of ``n`` images (all by default); the quantized model right on
    the same images but ``flips`` of them."""
    fp32_right = n if fp32_right is None else fp32_right
    f = np.arange(n) < fp32_right
    q = f.copy()
    q[:flips] = False
    return {"id": {"correct": f, "confidence": np.full(n, 0.9)}}, {"id": {"correct": q, "confidence": np.full(n, 0.9)}}


def test_no_disagreement_on_100_images_does_not_show_a_1pp_bound():
    """The models agree on all 100 images: every resample gives delta 0, so the bootstrap's interval
    is [0, 0]; 100 images only show a disagreement rate below about 3.7% (the score interval), so
    ``top1 delta <= 1pp with 95% confidence`` is inconclusive, and with 10,000 images it passes."""
    from pytest_qrel.stats import paired_interval

    bound = Bound("delta", "<=", 1, "pp")
    fp32, quant = _top1_sides(100, 0)
    r = paired_interval(IntervalRequest("top1", ("id",), (quant,), fp32, bound=bound), resamples=200)
    assert np.ptp(r.compared_draws) == 0  # what the bootstrap sees
    assert r.compared == 0 and r.compared_ci[0] <= 0 <= r.compared_ci[1]  # contains the point estimate
    assert r.compared_ci[1] > 3 and r.method == "percentile+score" and "score interval" in r.note
    assert judge(bound, r.compared, r.compared_ci, 0.95).outcome == "inconclusive"
    assert r.at_level(0.99).compared_ci[1] > r.compared_ci[1]  # at_level keeps the score interval
    fp32, quant = _top1_sides(10_000, 0)
    big = paired_interval(IntervalRequest("top1", ("id",), (quant,), fp32, bound=bound), resamples=200)
    assert judge(bound, big.compared, big.compared_ci, 0.95).outcome == "passed"


def test_an_accuracy_of_100_percent_on_50_images_does_not_show_99_percent():
    from pytest_qrel.stats import paired_interval

    bound = Bound("value", ">=", 99, "%")
    fp32, quant = _top1_sides(50, 0)
    r = paired_interval(IntervalRequest("top1", ("id",), (quant,), fp32, bound=bound), resamples=200)
    assert r.compared == 100 and r.compared_ci[1] == 100 and r.compared_ci[0] < 95
    assert judge(bound, r.compared, r.compared_ci, 0.95).outcome == "inconclusive"


def test_ten_samples_give_a_wide_interval_that_says_so():
    from pytest_qrel.stats import paired_interval

    fp32, quant = _top1_sides(10, 1, fp32_right=8)
    r = paired_interval(IntervalRequest("top1", ("id",), (quant,), fp32, bound=Bound("delta", "<=", 5, "pp")), resamples=200)
    assert r.compared_ci[0] <= r.compared <= r.compared_ci[1]
    assert r.compared_ci[1] - r.compared_ci[0] > 30  # pp: ten images say little
    assert "only 10 samples" in r.note


def test_tango_interval_matches_the_rule_of_three_and_wald_with_many_disagreements():
    from pytest_qrel.stats.counts import tango_paired

    lo, hi = tango_paired(100, 0, 0, 0, 0.95)
    assert lo == pytest.approx(-hi) and 3.0 / 100 < hi < 4.0 / 100  # z^2 / (n + z^2) = 3.7%
    n, b, c = 10_000, 400, 100
    delta = (b - c) / n
    se = math.sqrt((b + c) / n - delta**2) / math.sqrt(n)
    lo, hi = tango_paired(n - b - c - 1000, b, c, 1000, 0.95)
    assert lo == pytest.approx(delta - 1.96 * se, abs=5e-4) and hi == pytest.approx(delta + 1.96 * se, abs=5e-4)


def test_a_small_set_auroc_delta_interval_includes_delong_at_every_level():
    """On 15 + 15 samples the percentile interval alone is too lenient (benchmarks/coverage_edges.py):
    the AUROC delta's interval is its union with DeLong's, also when re-summarised at another level."""
    from pytest_qrel.stats import paired_interval, percentile_interval

    rng = np.random.default_rng(5)
    s_id, s_ood = rng.normal(1.2, 1, 15), rng.normal(0, 1, 15)
    fp32 = {"id": {"score.s": s_id}, "ood": {"score.s": s_ood}}
    quant = {"id": {"score.s": s_id + rng.normal(0, 0.5, 15)}, "ood": {"score.s": s_ood + rng.normal(0, 0.5, 15)}}
    r = paired_interval(IntervalRequest("auroc", ("ood",), (quant,), fp32, score="s", id_dataset="id",
                                        bound=Bound("delta", "<=", 1, "pp")), resamples=200)
    for res, level in ((r, 0.95), (r.at_level(0.99), 0.99)):
        boot = percentile_interval(res.delta_draws, level)
        lo, hi = res.delta_ci
        assert lo <= min(boot[0], res.delong_ci[0]) and hi >= max(boot[1], res.delong_ci[1])
        assert res.compared_ci == pytest.approx((100 * lo, 100 * hi))
        assert lo <= res.delta <= hi


def test_module_code_digest_sees_a_layer_class_and_its_source_file(tmp_path, monkeypatch):
    """Same state dict, another class (a custom linear layer that became an ``nn.Linear``, which
    the quantizers then quantize): another digest; the class's source file edited: another digest."""
    import importlib

    import torch
    from torch import nn

    layers = tmp_path / "qrel_fg_layers.py"
    layers.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Dense(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.weight = nn.Parameter(torch.zeros(2, 3))\n"
        "        self.bias = nn.Parameter(torch.zeros(2))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("qrel_fg_layers")
    custom, linear = nn.Sequential(module.Dense()), nn.Sequential(nn.Linear(3, 2))
    with torch.no_grad():
        linear[0].weight.zero_()
        linear[0].bias.zero_()
    assert custom.state_dict().keys() == linear.state_dict().keys()
    digest = fingerprint.module_code_digest(custom)
    assert fingerprint.module_code_digest(custom) == digest
    assert fingerprint.module_code_digest(linear) != digest
    layers.write_text(layers.read_text() + "\n# a comment: the file changed\n")
    assert fingerprint.module_code_digest(custom) != digest
