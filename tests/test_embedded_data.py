"""The ``embedded`` dataset source: shapes, ranges, labels, split, determinism, errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_qrel.data import DATASET_SOURCES, OOD_LABEL, load_dataset
from pytest_qrel.data import embedded as E
from pytest_qrel.errors import DataError, UnknownNameError

ALL = [("digits", "train"), ("digits", "val"), ("digits", "test"), ("digits89", "test"), ("textures", "test"), ("photos", "test"), ("noise", "test")]
OOD = ["digits89", "textures", "photos", "noise"]

# Golden fingerprints: the sets are meant to be bit-identical on every machine. A change here means
# every stored FP32 baseline built on these sets goes stale; update only on purpose.
GOLDEN = {
    ("digits", "train"): "446181978bda",
    ("digits", "val"): "0905a42b0033",
    ("digits", "test"): "af03af09f986",
    ("digits89", "test"): "429615c89a4f",
    ("textures", "test"): "03c95ca8ea5e",
    ("photos", "test"): "115a5b892a4e",
    ("noise", "test"): "9908c9c4a65b",
}


def get(name: str, split: str = "test"):
    return load_dataset(f"embedded:{name}", split=split)


def test_registered_as_source_and_every_set_listed():
    assert "embedded" in DATASET_SOURCES
    assert E.EMBEDDED_SETS.names() == sorted({name for name, _ in ALL})


@pytest.mark.parametrize(("name", "split"), ALL)
def test_shape_dtype_range_and_labels(name, split):
    ds = get(name, split)
    n = len(ds)
    assert ds.images.dtype == torch.float32
    assert tuple(ds.images.shape) == (n, 1, 16, 16)
    assert ds.labels.shape == (n,) and ds.labels.dtype == np.int64
    assert float(ds.images.min()) >= 0.0 and float(ds.images.max()) <= 1.0
    assert torch.isfinite(ds.images).all()
    # not degenerate: the images use the range and differ from one another
    assert float(ds.images.max()) == 1.0 and float(ds.images.std()) > 0.15
    assert len(torch.unique(ds.images.reshape(n, -1), dim=0)) > 0.95 * n
    image, label = ds[n - 1]
    assert tuple(image.shape) == (1, 16, 16) and isinstance(label, int)
    assert ds.name == name
    if name == "digits":
        assert set(ds.labels.tolist()) == set(range(8))
        assert ds.class_names == [str(d) for d in range(8)]
    else:
        assert set(ds.labels.tolist()) == {OOD_LABEL}
        assert ds.class_names is None


def test_sizes_match_the_source_data():
    from sklearn.datasets import load_digits

    target = load_digits().target
    assert sum(len(get("digits", s)) for s in ("train", "val", "test")) == int(np.isin(target, range(8)).sum())
    assert len(get("digits89")) == int(np.isin(target, (8, 9)).sum())
    for name in ("textures", "photos", "noise"):
        assert len(get(name)) == 300


def test_digits_are_the_sklearn_digits_upsampled():
    # an independent implementation of the same bilinear (half-pixel, edge-clamped) upsampling
    from skimage.transform import resize
    from sklearn.datasets import load_digits

    bunch = load_digits()
    idx = E._digits_split_indices()["test"]
    ds = get("digits", "test")
    np.testing.assert_array_equal(ds.labels, bunch.target[idx])
    expected = np.stack([resize(im / 16.0, (16, 16), order=1, mode="edge", anti_aliasing=False) for im in bunch.images[idx]])
    np.testing.assert_allclose(ds.images.numpy()[:, 0], expected, rtol=0, atol=1e-6)


def test_train_val_test_disjoint_complete_and_stratified():
    split = E._digits_split_indices()
    train, val, test = split["train"], split["val"], split["test"]
    assert np.intersect1d(train, test).size == 0 and np.intersect1d(train, val).size == 0 and np.intersect1d(val, test).size == 0
    _, labels = E._digits_raw()
    assert np.array_equal(np.union1d(np.union1d(train, val), test), np.flatnonzero(labels < 8))
    for cls in range(8):
        n_train, n_val, n_test = (int((labels[ix] == cls).sum()) for ix in (train, val, test))
        n = n_train + n_val + n_test
        assert abs(n_train / n - 0.6) <= 1 / n
        assert abs(n_val / (n_val + n_test) - 1 / 3) <= 1 / (n_val + n_test)
    # no val or test image is also a training image (the model never saw them)
    tr = {row.tobytes() for row in get("digits", "train").images.numpy()}
    for split_name in ("val", "test"):
        assert sum(row.tobytes() in tr for row in get("digits", split_name).images.numpy()) == 0


def test_fingerprints_are_deterministic_and_distinct():
    first = {key: get(*key).fingerprint for key in ALL}
    images = get("textures").images.clone()
    E.clear_cache()
    second = {key: get(*key).fingerprint for key in ALL}
    assert first == second
    assert torch.equal(images, get("textures").images)
    assert len(set(first.values())) == len(ALL)
    assert all(len(fp) == 64 and int(fp, 16) >= 0 for fp in first.values())


def test_fingerprints_match_golden_values():
    got = {key: get(*key).fingerprint[:12] for key in ALL}
    assert got == GOLDEN


def test_fingerprint_sees_one_changed_pixel_and_label():
    ds = get("digits", "test")
    images, labels = ds.images.numpy().copy(), ds.labels.copy()
    base = E.fingerprint("digits", "test", images, labels)
    assert base == ds.fingerprint
    images[3, 0, 5, 5] += 1e-6
    assert E.fingerprint("digits", "test", images, labels) != base
    labels2 = ds.labels.copy()
    labels2[0] = (labels2[0] + 1) % 8
    assert E.fingerprint("digits", "test", ds.images.numpy(), labels2) != base


def test_sets_are_memoised():
    assert get("photos") is get("photos")


def test_unknown_name_lists_known_sets():
    with pytest.raises(UnknownNameError) as info:
        get("digit")
    msg = str(info.value)
    assert "'digit'" in msg and "did you mean 'digits'" in msg
    for name in ("digits", "digits89", "noise", "photos", "textures"):
        assert name in msg


@pytest.mark.parametrize("split", ["valid", "", "TEST"])
def test_unknown_split_is_a_clear_error(split):
    with pytest.raises(DataError, match=rf"unknown split '{split}' \(known: train, val, test\)"):
        get("digits", split)


@pytest.mark.parametrize("name", OOD)
def test_ood_sets_have_no_train_split(name):
    with pytest.raises(DataError, match=rf"'embedded:{name}' is out-of-distribution and has only the split 'test'"):
        get(name, "train")


def test_unknown_option_is_named():
    with pytest.raises(DataError, match=r"unknown option 'sizee' \(known: none\)"):
        load_dataset("embedded:digits", split="test", options={"sizee": 32})
    assert len(load_dataset("embedded:digits", split="test", options={})) > 0


def test_import_does_not_import_torch():
    code = "import sys, pytest_qrel.data.embedded; print('torch' in sys.modules)"
    root = str(Path(E.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", E.TEXTURE_IMAGES + E.PHOTO_IMAGES)
def test_sample_images_are_scikit_image_s_own(name):
    """The crops' sources, read straight from scikit-image's data folder, are the arrays its
    loaders return (the fast path must not change a pixel, nor the OOD sets' fingerprints)."""
    import skimage.data

    want = skimage.data.stereo_motorcycle()[0] if name == "motorcycle" else getattr(skimage.data, name)()
    got = E._load_skimage(name)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
