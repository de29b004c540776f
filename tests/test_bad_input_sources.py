"""The bad-input corpus, part 2: data and model sources, called as a library user calls them
(:func:`pytest_qrel.data.load_dataset`, :func:`pytest_qrel.models.load_model`). Each case builds
its files in ``tmp_path`` and asserts the error type and the *exact* message, with ``{t}`` standing
for ``tmp_path``. Also: 16-bit PNGs are scaled (not clipped) to 8 bits, and a folder set records the
class order it used.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pytest_qrel.data import load_dataset
from pytest_qrel.errors import DataError, DataMissingError, ModelError, UnknownNameError
from pytest_qrel.models import load_model

IMAGEFOLDER_OPTIONS = (
    "class_index, class_names, classes, content_hash, extensions, labels, limit, logit_mask, mode, seed, split_dirs, test, train, unknown_classes, val"
)


def png(path: Path, value: int = 128, size: int = 8) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size), value, dtype=np.uint8), mode="L").save(path)


def classes_tree(t: Path, names: tuple[str, ...] = ("cat", "dog"), per_class: int = 2) -> Path:
    for name in names:
        for i in range(per_class):
            png(t / "data" / name / f"{i}.png", 40 * i + 10)
    return t / "data"


def flat(t: Path, n: int = 3) -> Path:
    for i in range(n):
        png(t / "flat" / f"{i}.png", 20 * i)
    return t / "flat"


def write(t: Path, name: str, text: str | bytes) -> Path:
    path = t / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


# Each case: (id, setup(t) -> None, call(t) -> object, error type, exact message with {t} = tmp_path)
Case = tuple[str, Callable[[Path], object], Callable[[Path], object], type[Exception], str]


def ds(source: str, split: str = "test", **options: object) -> Callable[[Path], object]:
    return lambda t: load_dataset(source.format(t=t), split=split, options=options, base_dir=t)


def nothing(t: Path) -> None:
    return None


DATA_CASES: list[Case] = [
    ("unknown scheme", nothing, ds("embeded:digits"), UnknownNameError,
     "unknown dataset source 'embeded'; did you mean 'embedded'? (known: embedded, filelist, imagefolder, imagetext, shift, torchvision)"),
    ("no scheme", nothing, ds("digits"), DataError, "source 'digits' is not of the form '<scheme>:<arg>' (e.g. 'embedded:digits')"),
    ("embedded set misspelled", nothing, ds("embedded:digts"), UnknownNameError,
     "unknown embedded dataset 'digts'; did you mean 'digits'? (known: digits, digits89, noise, photos, textures)"),
    ("embedded OOD set as train data", nothing, ds("embedded:noise", split="train"), DataError,
     "dataset 'embedded:noise' is out-of-distribution and has only the split 'test', not 'train'; calibration and training data "
     "must come from an in-distribution set such as 'embedded:digits'"),
    ("embedded set with options", nothing, ds("embedded:noise", limit=3), DataError,
     "dataset 'embedded:noise': unknown option 'limit' (known: none)"),
    ("imagefolder root missing", nothing, ds("imagefolder:nowhere"), DataError, "dataset root {t}/nowhere does not exist (from 'nowhere')"),
    ("imagefolder unset variable", nothing, ds("imagefolder:${{QREL_CORPUS_UNSET}}/val"), DataMissingError,
     "dataset root '${QREL_CORPUS_UNSET}/val' uses the environment variable QREL_CORPUS_UNSET, which is not set "
     "(set it to the data's location, e.g. `export QREL_CORPUS_UNSET=/path/to/data`)"),
    ("imagefolder root is a file", lambda t: write(t, "list.txt", "a.png\n"), ds("imagefolder:list.txt"), DataError,
     "dataset root {t}/list.txt is a file, not a folder (for a list of files use 'filelist:{t}/list.txt')"),
    ("imagefolder without images", lambda t: (t / "empty").mkdir(), ds("imagefolder:empty"), DataError,
     "dataset 'imagefolder:empty': no images found under {t}/empty (extensions: .bmp, .jpeg, .jpg, .pgm, .png, .ppm, .tif, .tiff, .webp) "
     "(fix: put the images in its class folders, or give the folder that holds them, relative to the suite file's folder)"),
    ("imagefolder loose images and classes", lambda t: (classes_tree(t), png(t / "data" / "stray.png")), ds("imagefolder:data"), DataError,
     "dataset 'imagefolder:data': {t}/data holds both class subfolders and loose images (stray.png, ...); move the loose images "
     "into a class folder, or use 'labels: none' to label everything -1 (OOD)"),
    ("imagefolder folders not in the class list", classes_tree, ds("imagefolder:data", classes=["cat", "cow"]), DataError,
     "dataset 'imagefolder:data': 1 folder(s) of {t}/data are not in the class list: dog (fix the class list, or set "
     "'unknown_classes: ignore' to skip them or 'unknown_classes: ood' to label them -1)"),
    ("imagefolder folders not ImageNet synsets", lambda t: classes_tree(t, ("zero", "one")), ds("imagefolder:data", classes="imagenet1k"), DataError,
     "dataset 'imagefolder:data': 2 folder(s) of {t}/data are not in the class list: one, zero (fix the class list, or set "
     "'unknown_classes: ignore' to skip them or 'unknown_classes: ood' to label them -1)"),
    ("imagefolder misspelled built-in class list", classes_tree, ds("imagefolder:data", classes="imagenet1kk"), DataError,
     "dataset 'imagefolder:data': option 'classes': no file 'imagenet1kk', and unknown built-in class list 'imagenet1kk'; "
     "did you mean 'imagenet1k'? (known: imagenet1k, imagenet1k_names, imagenet_a, imagenet_r)"),
    ("imagefolder class list file missing", classes_tree, ds("imagefolder:data", classes="lists/classes.txt"), DataError,
     "class list {t}/lists/classes.txt does not exist (from 'lists/classes.txt')"),
    ("imagefolder class listed twice", classes_tree, ds("imagefolder:data", classes=["cat", "dog", "cat"]), DataError,
     "dataset 'imagefolder:data': option 'classes': class 'cat' is listed twice (each class needs one index)"),
    ("imagefolder option misspelled", classes_tree, ds("imagefolder:data", limt=1), DataError,
     f"dataset 'imagefolder:data': unknown option 'limt'; did you mean 'limit'? (known: {IMAGEFOLDER_OPTIONS})"),
    ("imagefolder bad mode", classes_tree, ds("imagefolder:data", mode="BGR"), DataError,
     "dataset 'imagefolder:data': option 'mode' must be one of 'RGB', 'L', 'RGBA', 'I', 'F', 'CMYK', 'YCbCr', 'LAB', 'HSV', '1', 'P', got 'BGR'"),
    ("imagefolder train split not configured", classes_tree, ds("imagefolder:data", split="train"), DataError,
     "dataset 'imagefolder:data' has no 'train' split configured (the root is the test split); add the option 'train: <folder>' "
     "or 'split_dirs: {train: <subdir>, test: <subdir>}' to the dataset"),
    ("imagefolder unknown split", classes_tree, ds("imagefolder:data", split="holdout"), DataError,
     "dataset 'imagefolder:data': unknown split 'holdout' (known: train, val, test)"),
    ("imagefolder labels: folders on a flat folder", flat, ds("imagefolder:flat", labels="folders"), DataError,
     "dataset 'imagefolder:flat': {t}/flat has no class subfolders with images (labels: folders); for an OOD folder use 'labels: none'"),
    ("filelist missing image", lambda t: (flat(t), write(t, "flat/list.txt", "0.png 0\n9.png 1\n")), ds("filelist:flat/list.txt"), DataError,
     "dataset 'filelist:flat/list.txt': file list {t}/flat/list.txt line 2: image '9.png' does not exist ({t}/flat/9.png)"),
    ("filelist labels on some lines", lambda t: (flat(t), write(t, "flat/list.txt", "0.png 0\n1.png\n")), ds("filelist:flat/list.txt"), DataError,
     "dataset 'filelist:flat/list.txt': file list {t}/flat/list.txt line 2 has no label but line 1 has one "
     "(label every line, or none for an OOD set; 'labels: none' ignores the labels)"),
    ("filelist negative label", lambda t: (flat(t), write(t, "flat/list.txt", "0.png -2\n")), ds("filelist:flat/list.txt"), DataError,
     "dataset 'filelist:flat/list.txt': file list {t}/flat/list.txt line 1: label -2 must be >= 0 (or -1 for OOD)"),
    ("filelist label beyond the classes", lambda t: (flat(t), write(t, "flat/list.txt", "0.png 0\n1.png 2\n")),
     ds("filelist:flat/list.txt", classes=["a", "b"]), DataError,
     "dataset 'filelist:flat/list.txt': file list {t}/flat/list.txt line 2: label 2 is out of range for 2 classes"),
    ("filelist empty", lambda t: write(t, "list.txt", "# only a comment\n\n"), ds("filelist:list.txt"), DataError,
     "dataset 'filelist:list.txt': file list {t}/list.txt has no entries"),
    ("filelist not UTF-8", lambda t: write(t, "list.txt", b"caf\xe9.png\n"), ds("filelist:list.txt"), DataError,
     "dataset 'filelist:list.txt': file list {t}/list.txt is not UTF-8 text"),
    ("filelist is a folder", flat, ds("filelist:flat"), DataError,
     "dataset 'filelist:flat': {t}/flat is a folder, not a file list (for a folder of images use 'imagefolder:flat')"),
    ("shift corruption misspelled", nothing, ds("shift:gausian_noise/3", of="embedded:digits"), UnknownNameError,
     "unknown corruption 'gausian_noise'; did you mean 'gaussian_noise'? (known: {corruptions})"),
    ("shift without a severity", nothing, ds("shift:gaussian_noise", of="embedded:digits"), DataError,
     "dataset 'shift:gaussian_noise': write 'shift:<corruption>/<severity>', e.g. 'shift:gaussian_noise/3' (corruptions: {corruptions})"),
    ("shift of a missing folder", nothing, ds("shift:gaussian_noise/3", of="imagefolder:nowhere"), DataError,
     "dataset 'shift:gaussian_noise/3': base set 'imagefolder:nowhere': dataset root {t}/nowhere does not exist (from 'nowhere')"),
    ("shift of a misspelled set", nothing, ds("shift:gaussian_noise/3", of="embedded:digts"), UnknownNameError,
     "dataset 'shift:gaussian_noise/3': base set 'embedded:digts': unknown embedded dataset 'digts'; did you mean 'digits'? "
     "(known: digits, digits89, noise, photos, textures)"),
]


def factory_file(t: Path, body: str) -> Path:
    return write(t, "models/build.py", "import torch\n" + body)


def md(source: str, **options: object) -> Callable[[Path], object]:
    return lambda t: load_model(source, options=options, base_dir=t)


PY_RETURNS = "(torch.nn.Module, preprocess), (torch.nn.Module, preprocess, description: str) or a pytest_qrel.models.LoadedModel"

MODEL_CASES: list[Case] = [
    ("unknown scheme", nothing, md("timmm:deit_tiny_patch16_224"), UnknownNameError,
     "unknown model source 'timmm'; did you mean 'timm'? (known: embedded, open_clip, python, timm)"),
    ("no scheme", nothing, md("digits_vit"), ModelError, "source 'digits_vit' is not of the form '<scheme>:<arg>' (e.g. 'embedded:digits')"),
    ("embedded model misspelled", nothing, md("embedded:digit_vit"), UnknownNameError,
     "unknown embedded model 'digit_vit'; did you mean 'digits_vit'? (known: digits_vit)"),
    ("the shipped CLIP under embedded", nothing, md("embedded:digits_clip"), ModelError,
     "'digits_clip' is the shipped CLIP model, which the open_clip source loads: write 'open_clip:digits_clip'"),
    ("embedded model with options", nothing, md("embedded:digits_vit", pretrained=False), ModelError,
     "model 'embedded:digits_vit': unknown option 'pretrained' (known: none)"),
    ("python source without factory", nothing, md("python:models/build.py"), ModelError,
     "model 'python:models/build.py': expected 'python:<module>:<factory>' (e.g. 'python:mypkg.models:build' or 'python:models/build.py:make_model')"),
    ("python file missing", nothing, md("python:models/nope.py:build"), ModelError,
     "model 'python:models/nope.py:build': module file {t}/models/nope.py does not exist (the path is relative to the suite file's directory {t})"),
    ("python factory misspelled", lambda t: factory_file(t, "def build():\n    return None\n"), md("python:models/build.py:biuld"), ModelError,
     f"model 'python:models/build.py:biuld': module 'models/build.py': unknown factory 'biuld'; did you mean 'build'? "
     f"(known: build); define `def biuld(**options)` returning {PY_RETURNS}"),
    ("python factory returns a module only", lambda t: factory_file(t, "def build():\n    return torch.nn.Linear(2, 2)\n"), md("python:models/build.py:build"), ModelError,
     f"model 'python:models/build.py:build': build in module 'models/build.py' returned Linear; it must return {PY_RETURNS}"),
    ("python factory returns a bad pair", lambda t: factory_file(t, "def build():\n    return torch.nn.Linear(2, 2), 'resize'\n"), md("python:models/build.py:build"), ModelError,
     f"model 'python:models/build.py:build': build in module 'models/build.py' returned tuple of length 2; it must return {PY_RETURNS} "
     "(its second item, the preprocess, is a str, not callable)"),
    ("python factory raises", lambda t: factory_file(t, "def build():\n    raise RuntimeError('no GPU here')\n"), md("python:models/build.py:build"), ModelError,
     "model 'python:models/build.py:build': build(**options) with options {} raised RuntimeError: no GPU here at {t}/models/build.py:3"),
    ("python module does not import", lambda t: write(t, "models/build.py", "import not_a_module_qrel\n"), md("python:models/build.py:build"), ModelError,
     "model 'python:models/build.py:build': importing {t}/models/build.py failed: ModuleNotFoundError: No module named 'not_a_module_qrel' at {t}/models/build.py:1"),
    ("timm option misspelled", nothing, md("timm:deit_tiny_patch16_224", pretrainde=False), ModelError,
     "timm model 'deit_tiny_patch16_224': unknown option 'pretrainde'; did you mean 'pretrained'? "
     "(known: cache_dir, checkpoint, data_config, model_kwargs, num_classes, pretrained, seed)"),
    ("timm num_classes 0", nothing, md("timm:deit_tiny_patch16_224", num_classes=0), ModelError,
     "timm model 'deit_tiny_patch16_224': option 'num_classes' must be an integer >= 1, got 0"),
    ("timm reserved model_kwargs", nothing, md("timm:deit_tiny_patch16_224", model_kwargs={"pretrained": True}), ModelError,
     "timm model 'deit_tiny_patch16_224': option 'model_kwargs' may not set 'pretrained'; use options.pretrained"),
    ("open_clip option misspelled", nothing, md("open_clip:digits_clip", templtes=["a {}"]), ModelError,
     "model 'open_clip:digits_clip': unknown option 'templtes'; did you mean 'templates'? (known: {open_clip_options})"),
]


def _fill(template: str, t: Path) -> str:
    from pytest_qrel.data.shifts import CORRUPTIONS
    from pytest_qrel.models.open_clip_source import OPTIONS

    return (template.replace("{t}", str(t)).replace("{corruptions}", ", ".join(CORRUPTIONS.names()))
            .replace("{open_clip_options}", ", ".join(sorted(OPTIONS))))


@pytest.mark.parametrize(("case", "setup", "call", "error", "message"), DATA_CASES + MODEL_CASES,
                         ids=[f"data: {c[0]}" for c in DATA_CASES] + [f"model: {c[0]}" for c in MODEL_CASES])
def test_bad_source_gives_one_exact_line(tmp_path, monkeypatch, case, setup, call, error, message) -> None:
    monkeypatch.delenv("QREL_CORPUS_UNSET", raising=False)
    setup(tmp_path)
    with pytest.raises(error) as info:
        call(tmp_path)
    assert type(info.value) is error
    assert str(info.value) == _fill(message, tmp_path)


def test_unreadable_image_names_the_file(tmp_path) -> None:
    classes_tree(tmp_path)
    write(tmp_path, "data/cat/broken.png", b"not a png at all")
    ds_ = load_dataset("imagefolder:data", split="test", base_dir=tmp_path)
    index = ds_.relpaths.index("cat/broken.png")
    with pytest.raises(DataError) as info:
        ds_[index]
    assert str(info.value) == f"cannot read image {tmp_path}/data/cat/broken.png: cannot identify image file '{tmp_path}/data/cat/broken.png'"


# ------------------------------------------------------------------------------- 16-bit images


def _digit_images() -> np.ndarray:
    """40 grey digits as uint8 (40, 16, 16), with the spread of real scans (mean about 90)."""
    from sklearn.datasets import load_digits

    raw = load_digits().images[:40]  # values 0..16
    return np.kron(np.rint(raw * 255 / 16).astype(np.uint8), np.ones((2, 2), dtype=np.uint8))


def test_16_bit_pngs_are_scaled_to_8_bits_not_clipped(tmp_path) -> None:
    eight = _digit_images()
    for i, im in enumerate(eight):
        png16 = Image.fromarray(im.astype(np.uint16) * 257)  # the same picture, 16-bit (I;16)
        assert png16.mode == "I;16"
        (tmp_path / "d16" / "x").mkdir(parents=True, exist_ok=True)
        png16.save(tmp_path / "d16" / "x" / f"{i:02d}.png")
        (tmp_path / "d8" / "x").mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(tmp_path / "d8" / "x" / f"{i:02d}.png")
    assert Image.open(tmp_path / "d16" / "x" / "00.png").mode == "I;16"
    for mode in ("L", "RGB"):
        d16 = load_dataset("imagefolder:d16", split="test", options={"mode": mode}, base_dir=tmp_path)
        d8 = load_dataset("imagefolder:d8", split="test", options={"mode": mode}, base_dir=tmp_path)
        got = np.stack([np.asarray(d16[i][0]) for i in range(len(d16))])
        want = np.stack([np.asarray(d8[i][0]) for i in range(len(d8))])
        assert np.array_equal(got, want), mode  # exactly the 8-bit picture
    # what PIL's own convert gives: values above 255 clip to white
    clipped = np.asarray(Image.open(tmp_path / "d16" / "x" / "00.png").convert("L"))
    assert (clipped >= eight[0]).all() and clipped.mean() > 1.5 * eight[0].mean()


def test_16_bit_values_that_are_not_multiples_of_257_round_to_nearest(tmp_path) -> None:
    from pytest_qrel.data.folders import convert_image

    values = np.array([[0, 128, 129, 65535, 32767, 32768, 257 * 100 + 128]], dtype=np.uint16)
    got = np.asarray(convert_image(Image.fromarray(values), "L"))[0]
    assert got.tolist() == [round(v * 255 / 65535) for v in values[0].tolist()]
    wide = Image.fromarray(np.array([[0, 70000]], dtype=np.int32), mode="I")
    with pytest.raises(DataError) as info:
        convert_image(wide, "L", what="image x.tif")
    assert str(info.value) == (
        "image x.tif: 32-bit integer image (PIL mode I) with values from 0 to 70000; only 16-bit values 0..65535 can be "
        "scaled to 8 bits (save it as an 8- or 16-bit PNG)"
    )


# ------------------------------------------------------------------------------- class order


def test_a_folder_set_records_the_class_order_it_used(tmp_path) -> None:
    classes_tree(tmp_path, ("zero", "one", "two", "three", "four"), per_class=1)
    inferred = load_dataset("imagefolder:data", split="test", base_dir=tmp_path)
    assert inferred.class_order == ["four", "one", "three", "two", "zero"]  # sorted, as torchvision does
    assert inferred.class_order_from == "sorted folder names"
    explicit = load_dataset("imagefolder:data", split="test", options={"classes": ["zero", "one", "two", "three", "four"]}, base_dir=tmp_path)
    assert explicit.class_order == ["zero", "one", "two", "three", "four"] and explicit.class_order_from == "option 'classes'"
    assert [explicit.labels[explicit.relpaths.index(f"{n}/0.png")] for n in ("zero", "one", "four")] == [0, 1, 4]
    by_index = load_dataset("imagefolder:data", split="test", options={"class_index": {"zero": 0, "one": 1, "two": 2, "three": 3, "four": 4}}, base_dir=tmp_path)
    assert by_index.class_order == ["zero", "one", "two", "three", "four"] and by_index.class_order_from == "option 'class_index'"
    ood = load_dataset("imagefolder:flat", split="test", base_dir=flat(tmp_path).parent)
    assert ood.class_order is None and ood.class_order_from is None


# ------------------------------------------------------------------------------- decode errors name the file

def _grey_png(path, side: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.zeros((side, side), dtype=np.uint8), mode="L").save(path)


@pytest.mark.parametrize(("side", "pil_says"), [
    (40, "Image size (1600 pixels) exceeds limit of 1000 pixels, could be decompression bomb DOS attack."),  # PIL warns
    (50, "Image size (2500 pixels) exceeds limit of 2000 pixels, could be decompression bomb DOS attack."),  # PIL refuses
], ids=["over the limit", "over twice the limit"])
def test_a_decompression_bomb_names_the_file(tmp_path, monkeypatch, side, pil_says) -> None:
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # the guard, scaled down: a real bomb is 90 million pixels
    _grey_png(tmp_path / "data" / "a" / "ok.png", 20)
    _grey_png(tmp_path / "data" / "a" / "bomb.png", side)
    ds_ = load_dataset("imagefolder:data", split="test", base_dir=tmp_path)
    assert np.asarray(ds_[ds_.relpaths.index("a/ok.png")][0]).shape == (20, 20, 3)
    with pytest.raises(DataError) as info:
        ds_[ds_.relpaths.index("a/bomb.png")]
    assert str(info.value) == (
        f"cannot read image {tmp_path}/data/a/bomb.png: {pil_says} (fix: downscale the image or remove it from the set; "
        "images over 1,000 pixels are refused)"
    )


def test_any_decoder_failure_names_the_file(tmp_path, monkeypatch) -> None:
    import struct

    classes_tree(tmp_path)
    ds_ = load_dataset("imagefolder:data", split="test", base_dir=tmp_path)

    def broken_decoder(*args, **kwargs):
        raise struct.error("unpack requires a buffer of 4 bytes")  # what some PIL plugins raise on a truncated header

    monkeypatch.setattr(Image, "open", broken_decoder)
    with pytest.raises(DataError) as info:
        ds_[0]
    assert str(info.value) == f"cannot read image {tmp_path}/data/cat/0.png: unpack requires a buffer of 4 bytes"


def test_a_run_names_the_suites_dataset_and_its_source_once(tmp_path) -> None:
    # "s.yaml:6: dataset 'photos' (imagefolder:d3): ...", not "dataset 'photos': dataset 'imagefolder:d3': ..."
    from pytest_qrel import Engine, load_suite, run

    (tmp_path / "d3" / "test" / "a").mkdir(parents=True)
    path = tmp_path / "s.yaml"
    path.write_text("""\
version: 1
name: pfx
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: photos, source: "imagefolder:d3/test", options: {classes: [a, b]}}
  ood: [{name: noise, source: "embedded:noise"}]
quantizers:
  W8A8: {method: minmax}
checks: ["W8A8 top1 delta <= 2pp"]
""")
    [verdict] = run(load_suite(path), engine=Engine(baseline_dir=tmp_path / "baselines", update_baselines=True))
    assert verdict.outcome == "error"
    assert verdict.message.startswith(f"{path}:6: dataset 'photos' (imagefolder:d3/test): no images found under "), verdict.message
    assert verdict.message.count("dataset '") == 1
