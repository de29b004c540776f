"""Covariate-shift corruptions, ShiftedImageSet, the ``shift:`` source, and one suite end to end."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import pytest_qrel
from pytest_qrel.data import OOD_LABEL, load_dataset
from pytest_qrel.data.shifts import CORRUPTIONS, SEVERITIES, ShiftedImageSet, corrupt
from pytest_qrel.errors import DataError, DataMissingError, UnknownNameError

REQUIRED = ("gaussian_noise", "shot_noise", "gaussian_blur", "contrast", "jpeg")
NAMES = CORRUPTIONS.names()


@pytest.fixture(scope="module")
def photo() -> torch.Tensor:
    """A 3 x 64 x 64 natural image in [0, 1] (astronaut, area-downsampled)."""
    import skimage.data

    img = skimage.data.astronaut()[:448, :448].astype(np.float64) / 255.0
    small = img.reshape(64, 7, 64, 7, 3).mean(axis=(1, 3))
    return torch.from_numpy(np.moveaxis(small, -1, 0).astype(np.float32).copy())


@pytest.fixture(scope="module")
def grey(photo) -> torch.Tensor:
    return photo.mean(dim=0, keepdim=True)


def mean_abs_change(x, name, severity, seed=0, **kw):
    return float((corrupt(x, name, severity, seed, **kw) - x).abs().mean())


def test_registry_has_the_required_corruptions():
    for name in REQUIRED:
        assert name in CORRUPTIONS
    assert CORRUPTIONS.get("jpeg") is CORRUPTIONS.get("jpeg_compression")


def test_imagenet_c_constants():
    # spot checks against the published per-severity tables (imagenet_c / make_cifar_c.py)
    assert CORRUPTIONS.get("gaussian_noise").params["imagenet"] == (0.08, 0.12, 0.18, 0.26, 0.38)
    assert CORRUPTIONS.get("shot_noise").params["imagenet"] == (60, 25, 12, 5, 3)
    assert CORRUPTIONS.get("gaussian_blur").params["imagenet"] == (1, 2, 3, 4, 6)
    assert CORRUPTIONS.get("contrast").params["imagenet"] == (0.4, 0.3, 0.2, 0.1, 0.05)
    assert CORRUPTIONS.get("jpeg").params["imagenet"] == (25, 18, 15, 10, 7)
    assert CORRUPTIONS.get("gaussian_noise").params["cifar"] == (0.04, 0.06, 0.08, 0.09, 0.10)
    for name in NAMES:
        for table in ("imagenet", "cifar"):
            assert len(CORRUPTIONS.get(name).params[table]) == 5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("channels", [3, 1])
def test_changes_the_image_and_stays_in_range(name, channels, photo, grey):
    x = photo if channels == 3 else grey
    for severity in SEVERITIES:
        out = corrupt(x, name, severity, seed=0)
        assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and out.shape == x.shape
        assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
        assert float((out - x).abs().mean()) > 1e-3


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("table", ["imagenet", "cifar"])
def test_severity_is_monotone(name, table, photo, grey):
    for x in (photo, grey):
        changes = [mean_abs_change(x, name, s, table=table) for s in SEVERITIES]
        assert all(a < b for a, b in zip(changes, changes[1:])), (name, table, changes)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_the_seed(name, photo):
    a, b = corrupt(photo, name, 3, seed=7), corrupt(photo, name, 3, seed=7)
    assert torch.equal(a, b)
    assert torch.equal(corrupt(photo, name, 3, seed=(7, 1)), corrupt(photo, name, 3, seed=[7, 1]))
    if CORRUPTIONS.get(name).random:
        assert not torch.equal(a, corrupt(photo, name, 3, seed=8))
        assert not torch.equal(corrupt(photo, name, 3, seed=(7, 1)), corrupt(photo, name, 3, seed=(7, 2)))


def test_numpy_in_numpy_out(photo):
    out = corrupt(photo.numpy(), "gaussian_noise", 2, seed=0)
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, corrupt(photo, "gaussian_noise", 2, seed=0).numpy())


def test_reference_formulas(photo):
    """Independent re-derivations of two operations (not just 'something changed')."""
    c = 0.2  # contrast severity 3
    x = photo.double().numpy()
    means = x.mean(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(corrupt(photo, "contrast", 3).numpy(), np.clip((x - means) * c + means, 0, 1), atol=1e-6)
    rng = np.random.default_rng(5)
    expected = np.clip(x + rng.normal(0.0, 0.18, size=x.shape), 0, 1)
    np.testing.assert_allclose(corrupt(photo, "gaussian_noise", 3, seed=5).numpy(), expected, atol=1e-6)


def test_errors(photo):
    with pytest.raises(UnknownNameError, match=r"did you mean 'gaussian_noise'.*known: .*contrast.*jpeg"):
        corrupt(photo, "gausian_noise", 1)
    for bad in (0, 6, 2.5, True):
        with pytest.raises(DataError, match="severity must be an integer from 1 to 5"):
            corrupt(photo, "contrast", bad)
    with pytest.raises(DataError, match="unknown corruption table"):
        corrupt(photo, "contrast", 1, table="svhn")
    with pytest.raises(DataError, match=r"shape \(1 or 3, H, W\)"):
        corrupt(photo[:2], "contrast", 1)
    with pytest.raises(DataError, match=r"values in \[0, 1\]"):
        corrupt(photo * 255, "contrast", 1)
    with pytest.raises(DataError, match="float image"):
        corrupt((photo * 255).to(torch.uint8), "contrast", 1)


# -------------------------------------------------------------------------------- ShiftedImageSet


def test_shifted_set_keeps_labels_and_is_deterministic():
    base = load_dataset("embedded:digits", split="test")
    ds = ShiftedImageSet(base, "gaussian_noise", 3, seed=0)
    assert len(ds) == len(base) and ds.labels.tolist() == base.labels.tolist() and ds.class_names == base.class_names
    x, y = ds[10]
    assert y == int(base.labels[10]) and x.shape == (1, 16, 16)
    assert torch.equal(x, corrupt(base[10][0], "gaussian_noise", 3, seed=(0, 10)))  # seed (base seed, index)
    assert torch.equal(ds[10][0], x)  # independent of access order
    assert not torch.equal(ds[11][0], corrupt(base[11][0], "gaussian_noise", 3, seed=(0, 10)))
    ood = ShiftedImageSet(base, "gaussian_noise", 3, seed=0, as_ood=True)
    assert set(ood.labels.tolist()) == {OOD_LABEL} and ood.class_names is None
    assert torch.equal(ood[10][0], x)


def test_shifted_fingerprint_derives_from_base_and_corruption():
    base = load_dataset("embedded:digits", split="test")
    fp = ShiftedImageSet(base, "gaussian_noise", 3).fingerprint
    assert fp == ShiftedImageSet(base, "gaussian_noise", 3).fingerprint
    assert fp != base.fingerprint
    others = {
        ShiftedImageSet(base, "gaussian_noise", 4).fingerprint,
        ShiftedImageSet(base, "shot_noise", 3).fingerprint,
        ShiftedImageSet(base, "gaussian_noise", 3, seed=1).fingerprint,
        ShiftedImageSet(base, "gaussian_noise", 3, as_ood=True).fingerprint,
        ShiftedImageSet(base, "gaussian_noise", 3, table="cifar").fingerprint,
        ShiftedImageSet(load_dataset("embedded:digits", split="train"), "gaussian_noise", 3).fingerprint,
    }
    assert fp not in others and len(others) == 6
    assert ShiftedImageSet(base, "jpeg", 2).fingerprint == ShiftedImageSet(base, "jpeg_compression", 2).fingerprint


def test_shifted_pil_set_returns_pil_images(tmp_path):
    for cls in ("a", "b"):
        for i in range(2):
            arr = np.random.default_rng(i).integers(0, 256, size=(40, 30, 3), dtype=np.uint8)
            (tmp_path / "d" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(tmp_path / "d" / cls / f"{i}.png")
    base = load_dataset(f"imagefolder:{tmp_path / 'd'}", split="test")
    ds = ShiftedImageSet(base, "contrast", 5)
    image, label = ds[2]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (30, 40) and label == 1
    clean = np.asarray(base[2][0], dtype=np.float64)
    assert np.asarray(image, dtype=np.float64).std() < 0.2 * clean.std()  # contrast 0.05 flattens it
    cropped = ShiftedImageSet(base, "contrast", 1, resize=20, crop=16)
    assert cropped[0][0].size == (16, 16)
    tensor_crop = ShiftedImageSet(load_dataset("embedded:digits", split="test"), "contrast", 1, resize=32, crop=24)
    assert tuple(tensor_crop[0][0].shape) == (1, 24, 24)


# ---------------------------------------------------------------------------------- shift: source


def test_shift_source_end_to_end():
    ds = load_dataset("shift:gaussian_noise/3", split="test", options={"of": "embedded:digits", "seed": 2})
    base = load_dataset("embedded:digits", split="test")
    assert isinstance(ds, ShiftedImageSet) and ds.corruption == "gaussian_noise" and ds.severity == 3 and ds.seed == 2
    assert ds.labels.tolist() == base.labels.tolist()
    assert torch.equal(ds[0][0], corrupt(base[0][0], "gaussian_noise", 3, seed=(2, 0)))
    train = load_dataset("shift:contrast/1", split="train", options={"of": "embedded:digits"})
    assert len(train) == len(load_dataset("embedded:digits", split="train"))
    ood = load_dataset("shift:jpeg/5", split="test", options={"of": "embedded:digits", "as_ood": True, "table": "cifar"})
    assert set(ood.labels.tolist()) == {OOD_LABEL} and ood.parameter == 40


def test_shift_source_with_options_of_the_base(tmp_path):
    for i in range(3):
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(np.full((16, 16), 40 * i + 30, np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    ds = load_dataset("shift:gaussian_noise/1", split="test", options={"of": "imagefolder:flat", "of_options": {"limit": 2}}, base_dir=tmp_path)
    assert len(ds) == 2 and set(ds.labels.tolist()) == {OOD_LABEL}


def test_shift_source_errors(tmp_path):
    of = {"of": "embedded:digits"}
    with pytest.raises(DataError, match=r"shift:<corruption>/<severity>"):
        load_dataset("shift:gaussian_noise", split="test", options=of)
    with pytest.raises(UnknownNameError, match="unknown corruption 'fog'"):
        load_dataset("shift:fog/3", split="test", options=of)
    with pytest.raises(DataError, match="severity must be an integer from 1 to 5, got '9'"):
        load_dataset("shift:contrast/9", split="test", options=of)
    with pytest.raises(DataError, match="option 'of' is required"):
        load_dataset("shift:contrast/1", split="test")
    with pytest.raises(DataError, match=r"'sed' \(did you mean 'seed'\?\)"):
        load_dataset("shift:contrast/1", split="test", options={**of, "sed": 1})
    # a missing literal base is an error naming the path; only an unset variable skips (stays a DataMissingError)
    with pytest.raises(DataError, match=str(tmp_path / "gone")) as info:
        load_dataset("shift:contrast/1", split="test", options={"of": "imagefolder:gone"}, base_dir=tmp_path)
    assert not isinstance(info.value, DataMissingError)
    with pytest.raises(DataMissingError, match="QREL_SHIFT_UNSET"):
        load_dataset("shift:contrast/1", split="test", options={"of": "imagefolder:${QREL_SHIFT_UNSET}/gone"}, base_dir=tmp_path)


# ------------------------------------------------------------- where the corruption runs: stages


def _preprocessors():
    """One of each preprocessing kind the sources return, at a small resolution."""
    from torchvision import transforms as T

    from pytest_qrel.models import load_model
    from pytest_qrel.models.embedded import GreyNormalize
    from pytest_qrel.models.open_clip_source import GreyToRGBNormalize, OpenClipTransform

    timm_model = load_model(
        "timm:vit_tiny_patch16_224",
        options={"pretrained": False, "model_kwargs": {"img_size": 16, "patch_size": 8, "depth": 1, "embed_dim": 16, "num_heads": 2, "num_classes": 3}},
    )
    clip_cfg = {"size": 16, "mode": "RGB", "mean": (0.48, 0.46, 0.41), "std": (0.27, 0.26, 0.28), "interpolation": "bicubic", "resize_mode": "shortest", "fill_color": 0}
    compose = T.Compose([T.Resize(16), T.CenterCrop(16), T.ToTensor(), T.Normalize((0.5,) * 3, (0.25,) * 3)])
    return {
        "timm": timm_model.preprocess,
        "open_clip": OpenClipTransform(clip_cfg),
        "grey": GreyNormalize(0.3, 0.2, 16),
        "grey_rgb": GreyToRGBNormalize(0.3, 0.2, 16),
        "compose": compose,
    }


def _pil(h=48, w=64, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("kind", ["timm", "open_clip", "grey", "grey_rgb", "compose"])
def test_preprocess_splits_into_unit_image_and_normalisation(kind):
    from pytest_qrel.models.base import preprocess_stages

    prep = _preprocessors()[kind]
    to_unit, normalize = preprocess_stages(prep)
    inputs = [_pil()] + ([] if kind == "compose" else [torch.rand(1 if kind.startswith("grey") else 3, 16, 16)])
    for image in inputs:
        unit = to_unit(image)
        assert unit.ndim == 3 and unit.shape[-2:] == (16, 16) and unit.is_floating_point()
        assert float(unit.min()) >= 0.0 and float(unit.max()) <= 1.0
        torch.testing.assert_close(normalize(unit), prep(image), atol=1e-5, rtol=0)


def test_preprocess_that_cannot_split_is_none():
    from torchvision import transforms as T

    from pytest_qrel.models.base import preprocess_stages

    assert preprocess_stages(lambda image: image) is None
    assert preprocess_stages(T.Compose([T.Resize(16), T.ToTensor()])) is None


def model_input(ds, preprocess, index: int = 0) -> torch.Tensor:
    """Sample ``index`` of ``ds`` as the engine's runner feeds it to the model."""
    from pytest_qrel.engine.runner import Runner

    for start, batch in Runner().batches(ds, preprocess, batch_size=1, preprocessing="test"):
        if start == index:
            return batch[0]
    raise IndexError(index)


def test_engine_corrupts_between_the_model_crop_and_normalisation(tmp_path):
    """Noise added after the model's 4x downsampling keeps its full strength; added to the raw image
    (then downsampled, the pre-hook order) most of it is averaged away."""
    for i in range(3):
        (tmp_path / "flat").mkdir(exist_ok=True)
        Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    base = load_dataset(f"imagefolder:{tmp_path / 'flat'}", split="test")
    shifted = ShiftedImageSet(base, "gaussian_noise", 1, seed=0)  # sigma 0.08
    prep = _preprocessors()["compose"]  # Resize(16): a 4x downsampling of the 64 x 64 images
    clean = model_input(base, prep) * 0.25 + 0.5
    in_pipeline = model_input(shifted, prep) * 0.25 + 0.5
    on_raw = prep(shifted[0][0]) * 0.25 + 0.5
    assert float((in_pipeline - clean).std()) == pytest.approx(0.08, rel=0.15)
    assert float((on_raw - clean).std()) < 0.5 * 0.08
    # the same seed as indexing: corrupting the model-resolution image directly gives the same pixels
    expected = corrupt(clean, "gaussian_noise", 1, (0, 0))
    torch.testing.assert_close(in_pipeline, expected, atol=1e-5, rtol=0)


def test_a_model_transform_without_tensor_before_normalize_is_a_clear_error(tmp_path):
    class Odd:  # splits, but its first stage returns a PIL image
        def stages(self):
            return (lambda im: im), (lambda x: x)

        def __call__(self, image):
            return image

    (tmp_path / "flat").mkdir()
    Image.fromarray(np.full((8, 8, 3), 128, dtype=np.uint8)).save(tmp_path / "flat" / "0.png")
    shifted = ShiftedImageSet(load_dataset(f"imagefolder:{tmp_path / 'flat'}", split="test"), "contrast", 1)
    with pytest.raises(DataError, match="put ToTensor before Normalize"):
        model_input(shifted, Odd())


# --------------------------------------------------------------------------- through the engine

SUITE = """\
version: 1
name: shifted
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  ood:
    - {name: folder_ood, source: "imagefolder:ood_pngs"}
    - {name: digits_noise3, source: "shift:gaussian_noise/3", options: {of: "embedded:digits", as_ood: true}}
scores: [msp]
batch_size: 1024
checks:
  - "all auroc >= 0"
"""


def test_suite_with_folder_and_shifted_ood_sets_runs_through_the_engine(tmp_path):
    rng = np.random.default_rng(0)
    (tmp_path / "ood_pngs").mkdir()
    for i in range(12):  # 16x16 grey PNGs (the embedded model's preprocessing takes PIL images)
        Image.fromarray(rng.integers(0, 256, size=(16, 16), dtype=np.uint8), mode="L").save(tmp_path / "ood_pngs" / f"{i:02d}.png")
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(SUITE))
    engine = pytest_qrel.Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    verdicts = pytest_qrel.run(pytest_qrel.load_suite(path), engine=engine)
    got = {(v.quantizer, v.dataset): v for v in verdicts}
    assert set(got) == {(q, d) for q in ("FP32",) for d in ("folder_ood", "digits_noise3")}, [v.message for v in verdicts]
    for v in verdicts:
        assert v.outcome == "passed", v.message
        assert v.metric == "auroc" and 0.0 <= v.value <= 1.0
    # noise images are far from digits; the noisy digits are much nearer (but still separable)
    assert got[("FP32", "folder_ood")].value > 0.9
    assert got[("FP32", "digits_noise3")].value > 0.5
    assert any(p.name == "vit.json" for p in (tmp_path / "b").rglob("*.json"))


# ------------------------------------------------------------------ protocol: imagenet_c (released)
# Reference behaviour, written here from Hendrycks & Dietterich's generator (make_imagenet_c.py): the
# image is loaded as RGB, Resize(256) + CenterCrop(224) (torchvision), each corruption works on
# np.array(img) / 255 and returns np.clip(x, 0, 1) * 255 (JPEG / pixelate work on the PIL image),
# the result is stored with Image.fromarray(np.uint8(img)).save(path, quality=85, optimize=True).

import io  # noqa: E402

from pytest_qrel.data.shifts import ImageNetCSet, corrupt_released, imagenet_c_geometry  # noqa: E402

SEVERITY = 3


def ref_corruption(name: str, img: Image.Image, rng: np.random.Generator):
    """One reference corruption: a float array in [0, 255] (or a PIL image for JPEG / pixelate)."""
    import skimage.color
    import skimage.filters
    import skimage.util

    x = np.array(img) / 255.0
    if name == "gaussian_noise":
        return np.clip(x + rng.normal(size=x.shape, scale=0.18), 0, 1) * 255
    if name == "shot_noise":
        return np.clip(rng.poisson(x * 12) / 12, 0, 1) * 255
    if name == "impulse_noise":
        return np.clip(skimage.util.random_noise(x, mode="s&p", amount=0.09, rng=int(rng.integers(2**31))), 0, 1) * 255
    if name == "speckle_noise":
        return np.clip(x + x * rng.normal(size=x.shape, scale=0.35), 0, 1) * 255
    if name == "gaussian_blur":
        return np.clip(skimage.filters.gaussian(x, sigma=3, channel_axis=-1), 0, 1) * 255
    if name == "contrast":
        means = np.mean(x, axis=(0, 1), keepdims=True)
        return np.clip((x - means) * 0.2 + means, 0, 1) * 255
    if name == "brightness":
        hsv = skimage.color.rgb2hsv(x)
        hsv[:, :, 2] = np.clip(hsv[:, :, 2] + 0.3, 0, 1)
        return np.clip(skimage.color.hsv2rgb(hsv), 0, 1) * 255
    if name == "jpeg_compression":
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=15)
        return Image.open(buf)
    if name == "pixelate":
        return img.resize((int(224 * 0.4), int(224 * 0.4)), Image.BOX).resize((224, 224), Image.BOX)
    raise KeyError(name)


def ref_released(name: str, img: Image.Image, rng: np.random.Generator) -> np.ndarray:
    import torchvision.transforms as T

    crop = T.Compose([T.Resize(256), T.CenterCrop(224)])(img.convert("RGB"))
    buf = io.BytesIO()
    Image.fromarray(np.uint8(ref_corruption(name, crop, rng))).save(buf, format="JPEG", quality=85, optimize=True)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"))


@pytest.fixture(scope="module")
def natural_images() -> list[Image.Image]:
    import skimage.data

    return [Image.fromarray(skimage.data.astronaut()), Image.fromarray(skimage.data.chelsea()),
            Image.fromarray(skimage.data.coffee())]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)))


def test_imagenet_c_geometry_is_torchvisions_resize_and_center_crop(natural_images):
    import torchvision.transforms as T

    for img in natural_images:  # square, landscape (300 x 451) and (400 x 600)
        ours = imagenet_c_geometry(img)
        assert ours.size == (224, 224)
        assert np.array_equal(np.asarray(ours), np.asarray(T.Compose([T.Resize(256), T.CenterCrop(224)])(img)))


DETERMINISTIC = ("gaussian_blur", "contrast", "brightness", "jpeg_compression", "pixelate")
RANDOM = ("gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise")


@pytest.mark.parametrize("name", DETERMINISTIC)
def test_released_deterministic_corruptions_match_the_reference(natural_images, name):
    for img in natural_images:
        ours = np.asarray(corrupt_released(imagenet_c_geometry(img), name, SEVERITY))
        ref = ref_released(name, img, np.random.default_rng(0))
        diff = np.abs(ours.astype(int) - ref)
        assert diff.max() <= 1 and diff.mean() < 0.01, (name, diff.max(), diff.mean())


@pytest.mark.parametrize("name", RANDOM)
def test_released_noise_matches_the_reference_statistics(natural_images, name):
    """Other random draws, so compare statistics: PSNR against the clean crop and the mean and
    spread of the change, per image (224 x 224 x 3 values each)."""
    for k, img in enumerate(natural_images):
        clean = np.asarray(imagenet_c_geometry(img)).astype(np.float64)
        ours = np.asarray(corrupt_released(imagenet_c_geometry(img), name, SEVERITY, seed=(0, k))).astype(np.float64)
        ref = ref_released(name, img, np.random.default_rng(1000 + k)).astype(np.float64)
        assert psnr(ours, clean) == pytest.approx(psnr(ref, clean), abs=0.15), name
        for stat in (np.mean, np.std):
            assert stat(np.abs(ours - clean)) == pytest.approx(stat(np.abs(ref - clean)), rel=0.03), (name, stat)


@pytest.mark.parametrize("name", ("gaussian_noise", "shot_noise", "speckle_noise"))
def test_released_noise_is_weaker_than_the_float_model_protocol(natural_images, name):
    img = natural_images[0]
    crop = imagenet_c_geometry(img)
    clean = np.asarray(crop).astype(np.float64)
    released = np.asarray(corrupt_released(crop, name, SEVERITY)).astype(np.float64)
    in_float = np.moveaxis(corrupt(np.moveaxis(clean / 255.0, -1, 0), name, SEVERITY, 0), 0, -1) * 255.0
    gap = psnr(released, clean) - psnr(in_float, clean)
    assert 1.5 < gap < 4.0, gap  # the issue measured 2.2 - 2.9 dB on ImageNet images


class PILSet:
    """A tiny in-memory set of PIL images (an ImageSet)."""

    def __init__(self, images):
        self.images, self.name, self.fingerprint = images, "pil", "f" * 64
        self.labels = np.arange(len(images), dtype=np.int64)
        self.class_names = None

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i], int(self.labels[i])


def test_imagenet_c_set_yields_released_pil_images(natural_images):
    base = PILSet(natural_images)
    ds = ImageNetCSet(base, "gaussian_noise", SEVERITY, seed=4)
    image, label = ds[1]
    assert isinstance(image, Image.Image) and image.mode == "RGB" and image.size == (224, 224) and label == 1
    assert not hasattr(ds, "corrupt_unit")  # so the engine runs the model's full preprocessing on it
    expected = corrupt_released(imagenet_c_geometry(natural_images[1]), "gaussian_noise", SEVERITY, (4, 1))
    assert np.array_equal(np.asarray(image), np.asarray(expected))
    assert np.array_equal(np.asarray(ds[1][0]), np.asarray(image))  # deterministic per sample
    grey = ImageNetCSet(PILSet([natural_images[0].convert("L")]), "contrast", 1)
    assert grey[0][0].mode == "RGB"  # ImageNet-C's loader converts every image to RGB
    model_fp = ShiftedImageSet(base, "gaussian_noise", SEVERITY, seed=4).fingerprint
    assert ds.fingerprint != model_fp and ImageNetCSet(base, "gaussian_noise", SEVERITY, seed=5).fingerprint != ds.fingerprint


def test_engine_gives_released_images_the_full_model_preprocessing(natural_images):
    import torchvision.transforms as T

    ds = ImageNetCSet(PILSet(natural_images), "contrast", 2)
    prep = T.Compose([T.Resize(32), T.CenterCrop(32), T.ToTensor(), T.Normalize([0.5] * 3, [0.25] * 3)])
    torch.testing.assert_close(model_input(ds, prep, 2), prep(ds[2][0]))


def test_shift_source_protocol_option(tmp_path):
    (tmp_path / "flat").mkdir()
    for i in range(2):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(tmp_path / "flat" / f"{i}.png")
    opts = {"of": "imagefolder:flat", "protocol": "imagenet_c"}
    ds = load_dataset("shift:gaussian_blur/2", split="test", options=opts, base_dir=tmp_path)
    assert isinstance(ds, ImageNetCSet) and ds[0][0].size == (224, 224)
    small = load_dataset("shift:gaussian_blur/2", split="test", options={**opts, "resize": 160, "crop": 128}, base_dir=tmp_path)
    assert small[0][0].size == (128, 128)
    default = load_dataset("shift:gaussian_blur/2", split="test", options={"of": "imagefolder:flat"}, base_dir=tmp_path)
    assert isinstance(default, ShiftedImageSet)
    with pytest.raises(DataError, match="protocol"):
        load_dataset("shift:gaussian_blur/2", split="test", options={**opts, "protocol": "released"}, base_dir=tmp_path)
    with pytest.raises(DataError, match="table: cifar"):
        load_dataset("shift:gaussian_blur/2", split="test", options={**opts, "table": "cifar"}, base_dir=tmp_path)
