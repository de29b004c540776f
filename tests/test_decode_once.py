"""Decode once, worker-count independence and released units (issue 13, points 1 and 2).

A suite of image files (a few tiny JPEG / PNG files written here) is read by FP32, two quantizers
and a covariate-shifted variant of the ID set. Each image file must be decoded once per run (the
``to_unit`` images are stored under the cache directory and every later pass reads them), a second
run with the same cache directory decodes nothing, a store file that was tampered with is found out
by its digests and rebuilt (one warning), the per-sample arrays do not depend on the number of
DataLoader workers, and a unit's module and arrays are gone once its last announced check is done.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pytest_qrel import Engine, load_suite, plan
from pytest_qrel.engine.imagestore import store_key
from pytest_qrel.engine.runner import _clean_source

SUITE = """\
version: 1
name: dec
batch_size: 4
models:
  tiny:
    source: "timm:deit_tiny_patch16_224"
    options: {pretrained: false, num_classes: 2, model_kwargs: {img_size: 16, patch_size: 8, embed_dim: 16, depth: 1, num_heads: 2}}
datasets:
  id: {name: pics, source: "imagefolder:data/val", options: {classes: [a, b], train: data/train}}
  ood:
    - {name: flat, source: "imagefolder:data/ood"}
  shifted:
    - {name: pics_noise, source: "shift:gaussian_noise/3", options: {of: "imagefolder:data/val", of_options: {classes: [a, b]}}}
quantizers:
%s
scores: [msp]
checks:
  - "all top1 delta <= 100pp"
  - "all top1 on pics_noise delta <= 100pp"
  - "all auroc(msp) on flat delta <= 1"
"""
QUANTIZERS = {
    "W8A8": "  W8A8: {method: minmax, weight_bits: 8, act_bits: 8, calibration: {samples: 4, seed: 0}}",
    "W4A4": "  W4A4: {method: minmax, weight_bits: 4, act_bits: 4, calibration: {samples: 4, seed: 0}}",
}
ID_IMAGES, OOD_IMAGES = 6, 10  # OOD metrics need at least 10 OOD samples


def _write_images(folder: Path, n: int, seed: int) -> None:
    """``n`` seeded random RGB images of assorted sizes, JPEG and PNG alternately."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = int(rng.integers(18, 30)), int(rng.integers(18, 30))
        img = Image.fromarray(rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8))
        if i % 2:
            img.save(folder / f"img{i}.png")
        else:
            img.save(folder / f"img{i}.jpg", quality=90)


@pytest.fixture(scope="module")
def suite_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("decode_once")
    for split, seed in (("val", 1), ("train", 2)):
        for k, cls in enumerate("ab"):
            _write_images(root / "data" / split / cls, ID_IMAGES // 2, seed=10 * seed + k)
    _write_images(root / "data" / "ood", OOD_IMAGES, seed=99)
    return root


def _suite(root: Path, quantizers: tuple[str, ...] = ("W8A8", "W4A4"), name: str = "s.yaml"):
    path = root / name
    path.write_text(SUITE % "\n".join(QUANTIZERS[q] for q in quantizers))
    return load_suite(path)


def _run(engine: Engine, suite) -> list:
    planned = plan(suite)
    engine.expect(planned)
    verdicts = [engine.evaluate(p) for p in planned]
    assert all(v.outcome in ("passed", "failed") for v in verdicts), [v.message for v in verdicts]
    return verdicts


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one torch thread (tests/conftest.py)


def test_each_image_is_decoded_once_per_run_and_never_again_with_the_same_cache(suite_dir, tmp_path):
    suite = _suite(suite_dir)
    cache = tmp_path / "cache"
    first = Engine(baseline_dir=tmp_path / "b", cache_dir=cache, update_baselines=True, workers=0)
    _run(first, suite)
    # FP32 (baseline), W8A8 and W4A4 each stream the ID set, the OOD set and the shifted ID set ...
    passes = {k[2:] for k in first.forward_passes}
    assert {(q, d) for q in ("FP32", "W8A8", "W4A4") for d in ("pics", "flat", "pics_noise")} <= passes, passes
    assert all(n == 1 for n in first.forward_passes.values()), dict(first.forward_passes)
    # ... yet each image file was decoded once: the shifted set reads its clean set's stored images.
    assert first.images.decodes == ID_IMAGES + OOD_IMAGES
    assert first.runner.decoded == ID_IMAGES + OOD_IMAGES
    stores = sorted((cache / "images").glob("*.u8"))
    assert len(stores) == 2  # one per (dataset content, preprocessing)

    # A later run with another quantizer (nothing of it in the outputs cache) decodes nothing.
    again = _suite(suite_dir, ("W8A8", "W4A4"), name="s2.yaml")
    shutil.rmtree(cache / "outputs")
    second = Engine(baseline_dir=tmp_path / "b", cache_dir=cache, workers=0)
    _run(second, again)
    assert sum(second.forward_passes.values()) == 6  # two quantizers x three sets, all computed again
    assert second.images.decodes == 0 and second.runner.decoded == 0
    for q in ("W8A8", "W4A4"):
        for d in ("pics", "flat", "pics_noise"):
            a, b = first.samples(suite, "tiny", q, d), second.samples(again, "tiny", q, d)
            for field in a:
                np.testing.assert_array_equal(a[field], b[field], err_msg=f"{q} {d} {field}")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_a_damaged_store_is_detected_and_rebuilt_with_one_warning(suite_dir, tmp_path, damage):
    suite = _suite(suite_dir, ("W8A8",))
    cache = tmp_path / "cache"
    first = Engine(baseline_dir=tmp_path / "b", cache_dir=cache, update_baselines=True, workers=0)
    _run(first, suite)
    reference = {d: first.samples(suite, "tiny", "W8A8", d) for d in ("pics", "flat", "pics_noise")}
    [id_store] = [p for p in (cache / "images").glob("*.u8") if p.stat().st_size == min(q.stat().st_size for q in (cache / "images").glob("*.u8"))]
    raw = bytearray(id_store.read_bytes())
    if damage == "flip":
        raw[len(raw) // 2] ^= 0xFF  # same size, one byte changed: only the digests can tell
    else:
        raw = raw[: len(raw) // 2]
    id_store.write_bytes(bytes(raw))

    shutil.rmtree(cache / "outputs")
    warnings: list[str] = []
    second = Engine(baseline_dir=tmp_path / "b", cache_dir=cache, workers=0, warn=warnings.append)
    _run(second, suite)
    assert len(warnings) == 1 and "decoded-image store" in warnings[0] and "rebuilt" in warnings[0], warnings
    assert second.images.decodes == ID_IMAGES  # the ID set decoded again, once (not per pass)
    for d, ref in reference.items():  # the damaged bytes never reached the model
        got = second.samples(suite, "tiny", "W8A8", d)
        for field in ref:
            np.testing.assert_array_equal(got[field], ref[field], err_msg=f"{d} {field}")
    third = Engine(baseline_dir=tmp_path / "b", cache_dir=cache, workers=0, warn=warnings.append)
    shutil.rmtree(cache / "outputs")
    _run(third, suite)
    assert third.images.decodes == 0 and len(warnings) == 1  # the rebuilt store is trusted again


def test_per_sample_arrays_do_not_depend_on_the_number_of_workers(suite_dir, tmp_path, monkeypatch):
    import torch.utils.data

    made: list[int] = []
    real = torch.utils.data.DataLoader

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, *args, **kwargs):
            made.append(kwargs.get("num_workers", 0))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch.utils.data, "DataLoader", Recording)
    suite = _suite(suite_dir, ("W4A4",))
    arrays = {}
    for workers in (0, 2):
        made.clear()
        engine = Engine(baseline_dir=tmp_path / f"b{workers}", update_baselines=True, workers=workers)  # no store
        _run(engine, suite)
        assert made and set(made) == {workers}, made  # the file sets really went through `workers` processes
        arrays[workers] = {
            (q, d): engine.samples(suite, "tiny", q, d) for q in ("FP32", "W4A4") for d in ("pics", "flat", "pics_noise")
        }
    for key, a in arrays[0].items():
        b = arrays[2][key]
        assert a.keys() == b.keys()
        for field in a:
            assert a[field].dtype == b[field].dtype
            np.testing.assert_array_equal(a[field], b[field], err_msg=f"{key} {field}")


def test_units_and_modules_are_released_after_their_last_announced_check(suite_dir, tmp_path):
    suite = _suite(suite_dir)
    engine = Engine(baseline_dir=tmp_path / "b", update_baselines=True, workers=0)
    planned = plan(suite)
    engine.expect(planned)
    started: set[tuple[str, str]] = set()
    peak = 0
    for i, p in enumerate(planned):
        engine.evaluate(p)
        started |= set(p.units)
        pending = {u for q in planned[i + 1 :] for u in q.units}
        assert engine.live_modules() == 0  # a quantized module lives only through its unit's passes
        assert engine.live_units() == len(started & pending), (i, p.name)
        peak = max(peak, engine.live_units())
    assert engine.live_units() == 0 and engine.live_modules() == 0 and engine.loader.live_models() == 0
    assert peak >= 1  # the arrays were held while checks read them


def test_batch_normalisation_gives_the_bits_of_normalising_image_by_image():
    from torchvision.transforms import Compose, Normalize

    from pytest_qrel.engine.runner import _batched

    units = torch.rand(5, 3, 7, 9, generator=torch.Generator().manual_seed(0))
    original = units.clone()
    for normalize in (Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
                      Compose([Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), Normalize([0.1, 0.2, 0.3], [2.0, 3.0, 4.0])]),
                      Compose([lambda x: x * 2.0 - 1.0])):  # not a Normalize: image by image
        expected = torch.stack([normalize(u.clone()) for u in units])
        assert torch.equal(_batched(normalize)(units), expected)
        assert torch.equal(units, original)  # the batch it was given is left as it was
    # An elementwise normalize (the embedded models') takes the batch in one call: the same bits.
    from pytest_qrel.models.embedded import GreyNormalize

    grey, calls = GreyNormalize(mean=0.3, std=0.2), []
    units = torch.rand(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    expected = torch.stack([grey.normalize(u) for u in units])

    class Counted:
        elementwise = True

        def __call__(self, x):
            calls.append(x.shape)
            return grey.normalize(x)

    assert torch.equal(_batched(grey.normalize)(units), expected) and torch.equal(_batched(Counted())(units), expected)
    assert calls == [units.shape]


HOLD_LOCK = """
import sys, time
from filelock import FileLock
lock = FileLock(sys.argv[1], timeout=0)
lock.acquire()
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_store_another_process_is_building_is_not_waited_for(suite_dir, tmp_path):
    # Two xdist workers reaching a set's first pass together: the one that does not build the
    # store decodes for itself at once (and writes nothing) instead of waiting for the other's pass.
    import subprocess
    import sys

    suite = _suite(suite_dir, ("W8A8",))
    cache = tmp_path / "cache"
    Engine(baseline_dir=tmp_path / "b", cache_dir=cache, update_baselines=True, workers=0).baseline(suite, "tiny")
    shutil.rmtree(cache)
    engine = Engine(baseline_dir=tmp_path / "b", cache_dir=cache, workers=0)
    ds = engine.loader.dataset(suite, "pics")
    loaded = engine.loader.model(suite, "tiny")
    fingerprint, geometry, _ = _clean_source(ds)
    key = store_key(fingerprint, loaded.preprocessing, geometry)
    (cache / "images").mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(cache / "images" / f"{key}.u8.lock"), "120"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        got = [b for _, b in engine.runner.batches(ds, loaded.preprocess, 4, loaded.preprocessing)]
        assert holder.poll() is None  # the holder still holds the lock: we did not wait for it
        assert sum(len(b) for b in got) == ID_IMAGES
        assert engine.runner.decoded == ID_IMAGES and engine.images.decodes == 0  # decoded here, nothing stored
        assert not list((cache / "images").glob("*.u8"))
    finally:
        holder.kill()
        holder.wait()
    again = [b for _, b in engine.runner.batches(ds, loaded.preprocess, 4, loaded.preprocessing)]
    assert engine.images.decodes == ID_IMAGES  # the lock is free: this pass builds the store
    for a, b in zip(got, again):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
