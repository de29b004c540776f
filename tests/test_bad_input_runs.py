"""The bad-input corpus, part 4: what goes wrong while a unit runs. A forward of the wrong shape, a
preprocessing that does not resize or that raises (in a DataLoader worker too), a device this
machine does not have, a cache that cannot be written, metric messages that must name the model.
Each is one line with the exact message, naming the model and the file where there is one.

Parts 1-3: tests/test_bad_input.py (suite files), tests/test_bad_input_sources.py (data and model
sources, decode errors), tests/test_bad_input_numbers.py (NaN / Inf, labels, OOD sizes).
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision import transforms as T
from torchvision.transforms import functional as F

from pytest_qrel.data import load_dataset
from pytest_qrel.engine.imagestore import ImageStore
from pytest_qrel.engine.runner import Runner, Want
from pytest_qrel.errors import DeviceError, ModelError, NumericsError, UserCodeError

WHAT = "model 'net' FP32 on flat"
KEY = ("s", "net", "FP32", "flat")


def folder(t: Path, sizes: list[tuple[int, int]], name: str = "flat") -> Path:
    """Grey PNGs ``0.png, 1.png, ...`` of the given (height, width) under ``t/name``."""
    rng = np.random.default_rng(0)
    root = t / name
    root.mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w), dtype=np.uint8), mode="L").save(root / f"{i}.png")
    return root


def flat_set(t: Path, sizes: list[tuple[int, int]]):
    folder(t, sizes)
    return load_dataset("imagefolder:flat", split="test", options={"mode": "L"}, base_dir=t)


class ToTensor:
    """PIL image -> grey float tensor (1, H, W); a module-level class, so DataLoader workers pickle it."""

    def __call__(self, image):
        return F.to_tensor(image.convert("L"))


class Linear16(nn.Module):
    """A classifier of 16x16 grey images into 3 classes; ``mode`` breaks its output on purpose."""

    def __init__(self, mode: str = "ok") -> None:
        super().__init__()
        torch.manual_seed(0)
        self.mode, self.fc = mode, nn.Linear(256, 3)

    def forward(self, x):
        out = self.fc(x[:, :1, :16, :16].flatten(1))
        if self.mode == "one row per batch":
            return out.mean(0, keepdim=True)
        if self.mode == "a tuple":
            return out, out
        if self.mode == "batch-wide classes":
            return out[:, :1].expand(len(x), len(x))  # (B, B): the width changes with the batch
        return out


RESIZED = T.Compose([ToTensor(), T.Resize((16, 16)), T.Normalize([0.5], [0.5])])


def run(ds, module=None, preprocess=RESIZED, workers: int = 0, store=None):
    runner = Runner(workers=workers, store=store)
    return runner.run(module or Linear16(), ds, preprocess, batch_size=4, want=Want(labelled=False), what=WHAT, key=KEY,
                      preprocessing="test")


# ------------------------------------------------------------------------- the forward's shape

FORWARD_CASES = [
    ("one row per batch", "model 'net' FP32 on flat: the forward pass returned logits of shape (1, 3) for a batch of 4 images; "
     "expected (4, 3), one row of class scores per image (fix: make the model's forward return (batch, classes) logits)"),
    ("a tuple", "model 'net' FP32 on flat: the forward pass returned tuple, not a logits tensor of shape (4, C) "
     "(fix: make the model's forward return one row of class scores per image)"),
    ("batch-wide classes", "model 'net' FP32 on flat: the forward pass returned logits of shape (2, 2) for a batch of 2 images; "
     "expected (2, 4), one row of class scores per image (fix: make the model's forward return (batch, classes) logits)"),
]


@pytest.mark.parametrize(("mode", "message"), FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_a_forward_of_the_wrong_shape_is_one_line(tmp_path, mode, message):
    ds = flat_set(tmp_path, [(16, 16)] * 6)  # batches of 4 and 2
    with pytest.raises(ModelError) as info:
        run(ds, Linear16(mode))
    assert str(info.value) == message


def test_a_forward_of_the_wrong_shape_through_the_engine(tmp_path):
    # The case found by the corpus: post-hoc fitting (+temperature) read the (1, C) logits of the
    # held-out pass and crashed with a traceback; the first batch now stops the pass.
    from pytest_qrel import Engine, load_suite

    (tmp_path / "build.py").write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(256, 8)\n"
        "    def forward(self, x):\n        return self.fc(x[:, :1, :16, :16].flatten(1)).mean(0, keepdim=True)\n\n"
        "def build():\n    return Net(), (lambda image: image if torch.is_tensor(image) else torch.full((1, 16, 16), 0.5))\n"
    )
    (tmp_path / "s.yaml").write_text(
        'name: s\nbatch_size: 32\nmodels:\n  net: {source: "python:build.py:build", options: {}}\n'
        'datasets:\n  id: {name: digits, source: "embedded:digits"}\nchecks: ["FP32+temperature ece <= 1"]\n'
    )
    suite = load_suite(tmp_path / "s.yaml")
    with pytest.raises(ModelError) as info:
        Engine(baseline_dir=tmp_path / "baselines").write_baseline(suite, "net")
    assert str(info.value) == (
        "model 'net' FP32 on the held-out split: the forward pass returned logits of shape (1, 8) for a batch of 32 images; "
        "expected (32, 8), one row of class scores per image (fix: make the model's forward return (batch, classes) logits)"
    )


def test_a_forward_of_the_right_shape_passes(tmp_path):
    result = run(flat_set(tmp_path, [(16, 16)] * 6))
    assert result.arrays["pred"].shape == (6,)


# ------------------------------------------------------------------------- the model's preprocessing

NOT_RESIZED = T.Compose([ToTensor(), T.Normalize([0.5], [0.5])])  # splits into stages: decoded through the image store path


def _no_resize(image):
    return F.to_tensor(image.convert("L"))  # one function: no stages


def _raises(image):
    raise ValueError("cannot handle files")


class _Unpicklable(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.handle = lambda: None  # a lambda: this exception cannot cross from a worker process


def _raises_unpicklable(image):
    raise _Unpicklable("holds a lambda")


def _returns_pil(image):
    return image


SIZES = "(fix: make the model's preprocessing resize and crop every image to the model's input size, e.g. Resize then CenterCrop)"


@pytest.mark.parametrize("workers", [0, 1])
@pytest.mark.parametrize("preprocess", [NOT_RESIZED, _no_resize], ids=["stages", "function"])
def test_a_preprocessing_that_does_not_resize_is_blamed_with_the_image_sizes(tmp_path, preprocess, workers):
    ds = flat_set(tmp_path, [(16, 16), (16, 16), (24, 20), (16, 16)])
    with pytest.raises(ModelError) as info:
        run(ds, preprocess=preprocess, workers=workers)
    assert str(info.value) == (
        f"{WHAT}: the model's preprocessing gives images of different sizes: (1, 16, 16) for image {tmp_path}/flat/0.png "
        f"but (1, 24, 20) for image {tmp_path}/flat/2.png {SIZES}"
    )
    assert "Traceback" not in str(info.value) and "forward pass" not in str(info.value)


@pytest.mark.parametrize("workers", [0, 1])
def test_a_preprocessing_that_raises_is_blamed_naming_the_image(tmp_path, workers):
    ds = flat_set(tmp_path, [(16, 16)] * 3)
    with pytest.raises(UserCodeError) as info:
        run(ds, preprocess=_raises, workers=workers)
    assert str(info.value) == f"{WHAT}: the model's preprocessing raised ValueError: cannot handle files on image {tmp_path}/flat/0.png"
    assert info.value.stage == "preprocessing"
    with pytest.raises(UserCodeError) as info:
        run(ds, preprocess=_raises_unpicklable, workers=workers)
    assert str(info.value) == f"{WHAT}: the model's preprocessing raised _Unpicklable: holds a lambda on image {tmp_path}/flat/0.png"


def test_a_preprocessing_that_returns_no_tensor(tmp_path):
    ds = flat_set(tmp_path, [(16, 16)] * 3)
    with pytest.raises(ModelError) as info:
        run(ds, preprocess=_returns_pil, workers=1)
    assert str(info.value) == (
        f"{WHAT}: the model's preprocessing returned Image for image {tmp_path}/flat/0.png, not a tensor (C, H, W) "
        "(fix: end the model's preprocessing with ToTensor, or return a torch tensor)"
    )


def test_a_preprocessing_error_reaches_the_user_through_the_engine(tmp_path):
    # The engine wraps the pass in "the forward pass": the preprocessing's own error must come through as is.
    from pytest_qrel import Engine, load_suite

    folder(tmp_path, [(16, 16)] * 6 + [(24, 20)] * 6, name="extra")
    (tmp_path / "build.py").write_text(
        "import torch\nfrom torch import nn\nfrom torchvision.transforms import functional as F\n\n"
        "class Net(nn.Module):\n    def __init__(self):\n        super().__init__()\n        self.fc = nn.Linear(256, 8)\n"
        "    def forward(self, x):\n        return self.fc(x[:, :1, :16, :16].flatten(1))\n\n"
        "def to_tensor(image):\n    return image if torch.is_tensor(image) else F.to_tensor(image.convert('L'))\n\n"
        "def build():\n    return Net(), to_tensor\n"
    )
    (tmp_path / "s.yaml").write_text(
        'name: s\nmodels:\n  net: {source: "python:build.py:build"}\ndatasets:\n  id: {name: digits, source: "embedded:digits"}\n'
        '  ood: [{name: extra, source: "imagefolder:extra"}]\nchecks: ["FP32 top1 >= 0"]\n'
    )
    suite = load_suite(tmp_path / "s.yaml")
    with pytest.raises(ModelError) as info:
        Engine(baseline_dir=tmp_path / "baselines").write_baseline(suite, "net")
    assert str(info.value) == (
        f"model 'net' FP32 on extra: the model's preprocessing gives images of different sizes: (1, 16, 16) for image {tmp_path}/extra/0.png "
        f"but (1, 24, 20) for image {tmp_path}/extra/10.png {SIZES}"
    )  # the files in name order: 0, 1, 10, ..., so 10.png is the first 24x20 one


# ------------------------------------------------------------------------- a store that cannot be written

def test_a_full_disk_under_the_image_store_is_one_warning_and_the_pass_goes_on(tmp_path, monkeypatch):
    ds = flat_set(tmp_path, [(16, 16)] * 6)
    clean = run(ds)
    warnings: list[str] = []
    store = ImageStore(tmp_path / "cache" / "images", warn=warnings.append)

    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    first, second = run(ds, store=store), run(ds, store=store)
    monkeypatch.undo()
    for result in (first, second):
        assert all(np.array_equal(result.arrays[k], clean.arrays[k]) for k in clean.arrays)
    assert len(warnings) == 1 and store.write_failures == 2
    assert warnings[0].startswith(f"pytest-qrel: cannot write the decoded-image store {tmp_path}/cache/images/")
    assert warnings[0].endswith(
        f".u8: No space left on device; the run goes on without caching (fix: free space on the disk that holds {tmp_path}/cache/images, "
        "or pass --qrel-no-cache)"
    )
    assert not [p for p in (tmp_path / "cache" / "images").iterdir() if not p.name.endswith(".lock")]  # no data, temp or header
    run(ds, store=store)  # space again: the store is written and read
    assert len(list((tmp_path / "cache" / "images").glob("*.json"))) == 1


def test_a_read_only_pytest_cache_is_one_warning_through_pytest(pytester):
    # A file named .pytest_cache: pytest cannot create its cache folders (as on a read-only checkout).
    (pytester.path / ".pytest_cache").write_text("")
    (pytester.path / "s.yaml").write_text(
        'name: s\nmodels:\n  vit: {source: "embedded:digits_vit"}\ndatasets:\n  id: {name: digits, source: "embedded:digits"}\n'
        'checks: ["FP32 top1 >= 0.5"]\n'
    )
    result = pytester.runpytest("--qrel-suite", "s.yaml", "--qrel-update-baselines", "-p", "no:randomly")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == 0, out
    lines = [line for line in out.splitlines() if line.startswith("pytest-qrel: cannot create the outputs cache folder")]
    assert lines == [
        f"pytest-qrel: cannot create the outputs cache folder {pytester.path}/.pytest_cache: {pytester.path}/.pytest_cache is a file, "
        f"not a folder; the run goes on without caching (fix: give another path, or move {pytester.path}/.pytest_cache away, "
        "or pass --qrel-no-cache)"
    ], out
    assert "Traceback" not in out and "INTERNALERROR" not in out


# ------------------------------------------------------------------------- the device

@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def test_a_device_that_is_not_there_is_one_line(no_gpu, monkeypatch):
    from pytest_qrel.engine.loading import Loader, device_problem

    build = f"torch {torch.__version__}, CPU build"
    assert device_problem("cuda") == (
        f"--qrel-device cuda: no CUDA device is available ({build}) (fix: pass --qrel-device auto or cpu, or install a CUDA build of torch)"
    )
    assert device_problem("mps") == f"--qrel-device mps: no Apple MPS device is available ({build}) (fix: pass --qrel-device auto or cpu)"
    assert device_problem("cpu") is None and device_problem("auto") is None
    with pytest.raises(DeviceError) as info:
        Loader("cuda:0")
    assert str(info.value) == f"device cuda:0: no CUDA device is available ({build}) (fix: use 'auto' or 'cpu', or install a CUDA build of torch)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    assert device_problem("cuda:1") is None
    assert device_problem("cuda:2") == "--qrel-device cuda:2: this machine has 2 CUDA devices (cuda:0..cuda:1) (fix: pass --qrel-device auto or cpu, or cuda:0)"


def test_qrel_device_cuda_without_a_gpu_through_pytest(pytester, no_gpu):
    (pytester.path / "s.yaml").write_text(
        'name: s\nmodels:\n  vit: {source: "embedded:digits_vit"}\ndatasets:\n  id: {name: digits, source: "embedded:digits"}\n'
        'checks: ["FP32 top1 >= 0.5"]\n'
    )
    result = pytester.runpytest("--qrel-suite", "s.yaml", "--qrel-device", "cuda")
    out = result.stdout.str() + result.stderr.str()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert f"ERROR: --qrel-device cuda: no CUDA device is available (torch {torch.__version__}, CPU build)" in out
    assert "calibration" not in out and "Traceback" not in out


# ------------------------------------------------------------------------- the model's name in every message

def test_fp32_baseline_messages_name_the_model(tmp_path):
    # The shipped ViT's predictions as one-hot logits: accurate, but the same confidence for every
    # image, so every OOD score ties. The message used to read "model '' on 'noise'".
    from pytest_qrel import Engine, load_suite

    (tmp_path / "onehot.py").write_text(
        "import torch\nfrom pytest_qrel.models import load_model\n\n"
        "class OneHot(torch.nn.Module):\n    def __init__(self, inner):\n        super().__init__()\n        self.inner = inner\n"
        "    def forward(self, x):\n        logits = self.inner(x)\n"
        "        return 10.0 * torch.nn.functional.one_hot(logits.argmax(1), logits.shape[1]).float()\n\n"
        "def build():\n    loaded = load_model('embedded:digits_vit')\n    return OneHot(loaded.module), loaded.preprocess\n"
    )
    (tmp_path / "s.yaml").write_text(
        'name: s\nmodels:\n  vit: {source: "python:onehot.py:build"}\ndatasets:\n  id: {name: digits, source: "embedded:digits"}\n'
        '  ood: [{name: noise, source: "embedded:noise"}]\nchecks: ["FP32 top1 >= 0.5"]\n'
    )
    suite = load_suite(tmp_path / "s.yaml")
    with pytest.raises(NumericsError) as info:
        Engine(baseline_dir=tmp_path / "baselines").write_baseline(suite, "vit")
    assert str(info.value) == (  # softmax of 10 * one-hot over 8 classes: e^10 / (e^10 + 7) = 0.999682
        "model 'vit' FP32 on 'noise', score 'msp': all 385 ID and 300 OOD scores equal 0.999682, so the OOD metrics are degenerate "
        "(AUROC 0.5 and FPR@95 1.0 by construction): the outputs do not depend on the input "
        "(fix: for a quantizer, more bits or another method; for FP32, check the model)"
    )
