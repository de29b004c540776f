"""The ``embedded`` model source and the shipped ``digits_vit`` (plus re-training it)."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_qrel.data import load_dataset
from pytest_qrel.errors import ModelError, UnknownNameError
from pytest_qrel.models import MODEL_SOURCES, LoadedModel, load_model, state_dict_sha256
from pytest_qrel.models import embedded as M
from pytest_qrel.zoo import ZOO_DIR

WEIGHTS = ZOO_DIR / "digits_vit.safetensors"
CONFIG = ZOO_DIR / "digits_vit.json"


@pytest.fixture(scope="module")
def loaded() -> LoadedModel:
    return load_model("embedded:digits_vit")


def accuracy(model: LoadedModel, split: str = "test") -> float:
    """Top-1 accuracy from the model's own logits, going through the per-image preprocess."""
    ds = load_dataset("embedded:digits", split=split)
    x = torch.stack([model.preprocess(ds[i][0]) for i in range(len(ds))])
    with torch.no_grad():
        logits = model.module(x)
    assert logits.shape == (len(ds), 8)
    return float((logits.argmax(1).numpy() == ds.labels).mean())


def test_shipped_files_are_small_and_consistent():
    import hashlib

    assert WEIGHTS.stat().st_size < 1_000_000
    meta = json.loads(CONFIG.read_text())
    assert meta["weights_file_sha256"] == hashlib.sha256(WEIGHTS.read_bytes()).hexdigest()
    for key in ("seed", "epochs", "lr", "label_smoothing", "seconds"):
        assert key in meta["training"]
    assert meta["architecture"]["num_classes"] == 8 and meta["class_names"] == [str(d) for d in range(8)]


def test_loaded_model_contract(loaded):
    from timm.models.vision_transformer import VisionTransformer

    assert "embedded" in MODEL_SOURCES
    assert isinstance(loaded, LoadedModel)
    assert loaded.name == "digits_vit" and loaded.num_classes == 8
    assert loaded.class_names == [str(d) for d in range(8)]
    assert isinstance(loaded.module, VisionTransformer)
    assert not any(m.training for m in loaded.module.modules())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in loaded.module.parameters())
    x = torch.stack([loaded.preprocess(torch.rand(1, 16, 16)) for _ in range(5)])
    with torch.no_grad():
        out = loaded.module(x)
    assert out.shape == (5, 8) and out.dtype == torch.float32 and torch.isfinite(out).all()


def test_preprocess_is_stable_picklable_and_normalises(loaded):
    p = loaded.preprocess
    assert repr(p) == "GreyNormalize(size=16, mean=0.5, std=0.5)"
    assert loaded.preprocessing == "grey 1x16x16 in [0,1]; (x - 0.5) / 0.5"
    q = pickle.loads(pickle.dumps(p))
    assert q == p and repr(q) == repr(p)
    img = torch.rand(1, 16, 16)
    assert torch.allclose(p(img), img * 2 - 1)
    assert torch.equal(p(torch.zeros(1, 16, 16)), torch.full((1, 16, 16), -1.0))


def test_preprocess_accepts_pil_and_rejects_wrong_input(loaded):
    from PIL import Image

    arr = (np.arange(32 * 32, dtype=np.uint32).reshape(32, 32) % 256).astype(np.uint8)
    out = loaded.preprocess(Image.fromarray(arr).convert("RGB"))
    assert out.shape == (1, 16, 16) and out.min() >= -1 and out.max() <= 1
    with pytest.raises(ValueError, match=r"shape \(1, 16, 16\); got \(3, 16, 16\)"):
        loaded.preprocess(torch.rand(3, 16, 16))
    with pytest.raises(ValueError, match="float tensor"):
        loaded.preprocess(torch.zeros(1, 16, 16, dtype=torch.uint8))


def test_test_accuracy_from_logits(loaded):
    acc = accuracy(loaded)
    assert acc >= 0.95, f"digits_vit test accuracy {acc:.4f} < 0.95"


def test_weights_sha256_stable_and_each_call_gets_a_fresh_module(loaded):
    meta = json.loads(CONFIG.read_text())
    assert loaded.weights_sha256 == state_dict_sha256(loaded.module) == meta["state_dict_sha256"]
    other = load_model("embedded:digits_vit")
    assert other.module is not loaded.module
    with torch.no_grad():
        for p in other.module.parameters():
            p.zero_()
    assert state_dict_sha256(other.module) != loaded.weights_sha256
    again = load_model("embedded:digits_vit")
    assert again.weights_sha256 == loaded.weights_sha256 == state_dict_sha256(loaded.module)


def test_loading_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(4)
    torch.manual_seed(123)
    load_model("embedded:digits_vit")
    assert torch.equal(torch.rand(4), expected)


@pytest.fixture
def zoo(tmp_path, monkeypatch) -> Path:
    """An empty zoo directory the source reads instead of the shipped one."""
    monkeypatch.setattr(M, "ZOO_DIR", tmp_path)
    return tmp_path


def test_missing_weights_is_a_model_error_naming_the_file(zoo):
    shutil.copy(CONFIG, zoo / CONFIG.name)
    with pytest.raises(ModelError) as info:
        load_model("embedded:digits_vit")
    msg = str(info.value)
    assert str(zoo / "digits_vit.safetensors") in msg and "missing" in msg
    assert "python -m pytest_qrel.zoo.train_digits_vit" in msg


def test_missing_config_is_a_model_error_naming_the_file(zoo):
    shutil.copy(WEIGHTS, zoo / WEIGHTS.name)
    with pytest.raises(ModelError, match="missing") as info:
        load_model("embedded:digits_vit")
    assert str(zoo / "digits_vit.json") in str(info.value)


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage"])
def test_corrupt_weights_is_a_model_error(zoo, damage):
    shutil.copy(CONFIG, zoo / CONFIG.name)
    data = bytearray(WEIGHTS.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "flip":
        data[-100] ^= 0xFF  # a byte inside a tensor: only the checksum can tell
    else:
        data = bytearray(b"not a safetensors file")
    (zoo / WEIGHTS.name).write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt") as info:
        load_model("embedded:digits_vit")
    assert str(zoo / "digits_vit.safetensors") in str(info.value)
    assert "train_digits_vit" in str(info.value)


def test_unreadable_weights_with_matching_checksum_is_a_model_error(zoo):
    import hashlib

    bad = b"not a safetensors file"
    meta = json.loads(CONFIG.read_text())
    meta["weights_file_sha256"] = hashlib.sha256(bad).hexdigest()
    (zoo / CONFIG.name).write_text(json.dumps(meta))
    (zoo / WEIGHTS.name).write_bytes(bad)
    with pytest.raises(ModelError, match="cannot be read"):
        load_model("embedded:digits_vit")


def test_config_that_does_not_fit_the_weights_is_a_model_error(zoo):
    meta = json.loads(CONFIG.read_text())
    meta["architecture"]["depth"] = 5
    (zoo / CONFIG.name).write_text(json.dumps(meta))
    shutil.copy(WEIGHTS, zoo / WEIGHTS.name)
    with pytest.raises(ModelError, match="do not fit"):
        load_model("embedded:digits_vit")


def test_unknown_model_lists_known_models():
    with pytest.raises(UnknownNameError, match=r"unknown embedded model 'digit_vit'; did you mean 'digits_vit'\?.*known: digits_vit"):
        load_model("embedded:digit_vit")


def test_unknown_option_is_a_model_error():
    with pytest.raises(ModelError, match=r"unknown option 'pretrained' \(known: none\)"):
        load_model("embedded:digits_vit", options={"pretrained": True})


def test_import_does_not_import_torch_or_timm():
    code = "import sys, pytest_qrel.models.embedded; print('torch' in sys.modules, 'timm' in sys.modules)"
    root = str(Path(M.__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False False"


def test_retraining_reproduces_the_quality(tmp_path, monkeypatch):
    """Re-train with the default settings (~15 s) and load the result through the source."""
    from pytest_qrel.zoo import train_digits_vit as T

    threads = torch.get_num_threads()
    assert T.main(["--out", str(tmp_path), "--quiet"]) == 0
    assert torch.get_num_threads() == threads  # global torch state is restored
    meta = json.loads((tmp_path / "digits_vit.json").read_text())
    assert meta["training"]["seed"] == T.TrainSettings().seed
    assert (tmp_path / "digits_vit.safetensors").stat().st_size < 1_000_000

    monkeypatch.setattr(M, "ZOO_DIR", tmp_path)
    retrained = load_model("embedded:digits_vit")
    assert retrained.weights_sha256 == meta["state_dict_sha256"]
    acc = accuracy(retrained)
    assert acc >= 0.95, f"re-trained digits_vit reaches only {acc:.4f} test accuracy"
    assert abs(acc - meta["metrics"]["test"]["accuracy"]) < 1e-5  # the json rounds to 6 digits
