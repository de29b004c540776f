"""The ``timm:`` and ``python:`` model sources: offline weights, preprocessing, errors, engine runs.

Nothing here touches the network: models are tiny random-init timm ViTs, and "pretrained" weights
come from checkpoints and fake Hugging Face caches written into ``tmp_path``.
"""

from __future__ import annotations

from pytest_qrel import load_suite

import pickle
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from pytest_qrel.errors import ModelError
from pytest_qrel.models import MODEL_SOURCES, LoadedModel, load_model, state_dict_sha256
from pytest_qrel.models import timm_source as TS

TINY = {"img_size": 32, "patch_size": 8, "depth": 1, "embed_dim": 32, "num_heads": 2, "num_classes": 10}
DIGITS = {"img_size": 16, "patch_size": 4, "in_chans": 1, "num_classes": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
HUB_NAME = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
HUB_REPO = f"timm/{HUB_NAME}"


def tiny(name: str = "vit_tiny_patch16_224", **options) -> LoadedModel:
    options.setdefault("model_kwargs", TINY)
    return load_model(f"timm:{name}", options=options)


def pil_image(h: int = 40, w: int = 56, mode: str = "RGB"):
    from PIL import Image

    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


class NetworkAttempt(Exception):
    """Raised by every patched download / socket entry point."""


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or call a hub / url download raises NetworkAttempt."""
    import huggingface_hub
    import huggingface_hub.file_download
    import timm.models._builder
    import timm.models._hub

    def refuse(*args, **kwargs):
        raise NetworkAttempt(f"network access attempted: {args[:2]}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", refuse)
    monkeypatch.setattr(huggingface_hub.file_download, "hf_hub_download", refuse)
    monkeypatch.setattr(timm.models._hub, "hf_hub_download", refuse)
    for name in ("load_state_dict_from_hf", "load_state_dict_from_url", "download_cached_file"):
        monkeypatch.setattr(timm.models._builder, name, refuse)
    monkeypatch.setattr(torch.hub, "download_url_to_file", refuse)
    return refuse


@pytest.fixture
def hf_cache(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face hub cache that the environment points at."""
    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    return cache


def fake_hub_repo(cache: Path, state: dict, *, filename: str = "model.safetensors", refs: bool = True, rev: str = "0123abcd") -> Path:
    """The hub cache layout of ``timm/<HUB_NAME>`` holding ``state``; returns the weights file."""
    repo = cache / f"models--timm--{HUB_NAME}"
    snap = repo / "snapshots" / rev
    snap.mkdir(parents=True)
    path = snap / filename
    if filename.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    if refs:
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(rev)
    return path


# ------------------------------------------------------------------------------------ timm, random init
def test_sources_are_registered():
    load_model("embedded:digits_vit")  # imports the built-in sources
    assert "timm" in MODEL_SOURCES and "python" in MODEL_SOURCES


def test_tiny_timm_model_loads_and_runs():
    import timm.data
    from timm.models.vision_transformer import VisionTransformer

    m = tiny(pretrained=False)
    assert isinstance(m, LoadedModel) and m.name == "vit_tiny_patch16_224"
    assert isinstance(m.module, VisionTransformer) and not any(x.training for x in m.module.modules())
    assert m.num_classes == 10 and m.class_names is None
    assert m.weights_sha256 == state_dict_sha256(m.module)
    # preprocessing comes from timm's own data config, with the input size of the tiny model
    cfg = timm.data.resolve_model_data_config(m.module, args={"input_size": (3, 32, 32)})
    assert (cfg["interpolation"], cfg["crop_pct"], tuple(cfg["mean"])) == ("bicubic", 0.9, (0.5, 0.5, 0.5))
    assert m.preprocessing.startswith(f"timm eval transform, data config of {HUB_NAME}: input_size=(3, 32, 32), ")
    for part in ("interpolation=bicubic", "crop_pct=0.9", "crop_mode=center", "mean=(0.5, 0.5, 0.5)", "std=(0.5, 0.5, 0.5)"):
        assert part in m.preprocessing
    assert m.preprocessing.endswith("; weights: random init (seed 0)")
    a = m.preprocess(pil_image(40, 56))
    b = m.preprocess(pil_image(20, 20, "L"))  # grey PIL -> RGB
    c = m.preprocess(torch.rand(3, 48, 64))
    d = m.preprocess(torch.rand(1, 20, 20))  # grey tensor -> 3 channels
    assert all(x.shape == (3, 32, 32) and x.dtype == torch.float32 for x in (a, b, c, d))
    with torch.no_grad():
        out = m.module(torch.stack([a, b, c, d]))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


def test_tensor_path_matches_the_pil_pipeline():
    from torchvision.transforms.functional import pil_to_tensor

    m = tiny(pretrained=False)
    img = pil_image(45, 61)
    via_pil = m.preprocess(img)
    via_tensor = m.preprocess(pil_to_tensor(img).float() / 255)
    assert via_pil.shape == via_tensor.shape == (3, 32, 32)
    # same resize / crop / normalise; only PIL's vs torch's antialiased bicubic kernels differ
    assert (via_pil - via_tensor).abs().mean() < 0.02
    # bicubic upsampling of a hard edge overshoots; like PIL's 8-bit output, the tensor is clamped to [0, 1]
    checker = (torch.arange(8).view(1, 8) + torch.arange(8).view(8, 1)) % 2
    out = m.preprocess(checker.float().expand(3, 8, 8))
    assert out.min() >= -1.0 and out.max() <= 1.0 and out.max() == 1.0
    # no resize needed (crop_pct 1): the tensor path is exact
    exact = tiny(pretrained=False, data_config={"crop_pct": 1.0})
    x = torch.rand(3, 32, 32)
    assert torch.allclose(exact.preprocess(x), (x - 0.5) / 0.5, atol=1e-6)
    assert "crop_pct=1" in exact.preprocessing


def test_one_channel_model_preprocess_and_pickle():
    m = tiny(pretrained=False, model_kwargs=DIGITS)
    assert "input_size=(1, 16, 16)" in m.preprocessing and "mean=(0.5)" in m.preprocessing
    grey = m.preprocess(torch.rand(1, 16, 16))
    rgb = m.preprocess(torch.rand(3, 30, 30))  # luma conversion, resize, crop
    pil = m.preprocess(pil_image(30, 30))
    assert grey.shape == rgb.shape == pil.shape == (1, 16, 16)
    x = torch.full((3, 16, 16), 0.25)
    x[0] = 1.0
    assert torch.allclose(TS.TimmPreprocess._channels(m.preprocess, x), torch.full((1, 16, 16), 0.299 + 0.701 * 0.25))
    q = pickle.loads(pickle.dumps(m.preprocess))
    assert repr(q) == repr(m.preprocess) == f"TimmPreprocess({m.preprocessing})"
    t = torch.rand(1, 16, 16)
    assert torch.equal(q(t), m.preprocess(t))
    with pytest.raises(ValueError, match="float tensor"):
        m.preprocess(torch.zeros(1, 16, 16, dtype=torch.uint8))
    with pytest.raises(ValueError, match="2-channel image"):
        m.preprocess(torch.rand(2, 16, 16))


def test_other_models_take_their_own_data_config():
    deit = tiny("deit_small_patch16_224", pretrained=False)
    assert "data config of deit_small_patch16_224.fb_in1k" in deit.preprocessing
    assert "mean=(0.485, 0.456, 0.406)" in deit.preprocessing and "std=(0.229, 0.224, 0.225)" in deit.preprocessing
    x = torch.full((3, 32, 32), 0.485)
    assert deit.preprocess(x)[0].abs().max() < 1e-5  # normalised with DeiT's ImageNet mean


def test_random_init_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    a = tiny(pretrained=False)
    assert torch.equal(torch.rand(3), expected)
    assert tiny(pretrained=False).weights_sha256 == a.weights_sha256
    other = tiny(pretrained=False, seed=1)
    assert other.weights_sha256 != a.weights_sha256 and "random init (seed 1)" in other.preprocessing


def test_imagenet_class_names_for_1000_classes():
    m = tiny(pretrained=False, model_kwargs={**TINY, "num_classes": 1000})
    assert m.num_classes == 1000 and len(m.class_names) == 1000
    assert m.class_names[0] == "tench" and m.class_names[1] == "goldfish"


# ------------------------------------------------------------------------------------ timm, checkpoints
def save_checkpoint(path: Path, module, fmt: str, wrap: bool = False) -> None:
    state = {k: v.clone().contiguous() for k, v in module.state_dict().items()}
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3} if wrap else state
        torch.save(obj, path)


@pytest.mark.parametrize("fmt, wrap", [("safetensors", False), ("pth", False), ("pth", True)])
def test_checkpoint_loads_the_saved_weights(tmp_path, fmt, wrap):
    source = tiny(pretrained=False, seed=5).module
    (tmp_path / "ckpt").mkdir()
    save_checkpoint(tmp_path / "ckpt" / f"w.{fmt}", source, fmt, wrap)
    m = load_model("timm:vit_tiny_patch16_224", options={"checkpoint": f"ckpt/w.{fmt}", "model_kwargs": TINY}, base_dir=tmp_path)
    assert m.weights_sha256 == state_dict_sha256(source)
    assert m.weights_sha256 != tiny(pretrained=False).weights_sha256  # not the seed-0 random init
    assert m.info["weights"] == str((tmp_path / "ckpt" / f"w.{fmt}").resolve())
    assert "random init" not in m.preprocessing and not m.module.training
    x = torch.stack([m.preprocess(torch.rand(3, 32, 32)) for _ in range(2)])
    with torch.no_grad():
        assert torch.equal(m.module(x), source.eval()(x))


def test_checkpoint_path_expands_environment_variables(tmp_path, monkeypatch):
    source = tiny(pretrained=False, seed=3).module
    save_checkpoint(tmp_path / "w.safetensors", source, "safetensors")
    monkeypatch.setenv("QREL_TEST_WEIGHTS", str(tmp_path))
    m = load_model("timm:vit_tiny_patch16_224", options={"checkpoint": "${QREL_TEST_WEIGHTS}/w.safetensors", "model_kwargs": TINY}, base_dir=Path("/nonexistent"))
    assert m.weights_sha256 == state_dict_sha256(source)
    monkeypatch.delenv("QREL_TEST_WEIGHTS")
    with pytest.raises(ModelError, match=r"environment variable that is not set"):
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": "${QREL_TEST_WEIGHTS}/w.safetensors", "model_kwargs": TINY})


def test_torch_checkpoints_are_read_with_weights_only(tmp_path, monkeypatch):
    source = tiny(pretrained=False).module
    save_checkpoint(tmp_path / "w.pth", source, "pth")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model("timm:vit_tiny_patch16_224", options={"checkpoint": str(tmp_path / "w.pth"), "model_kwargs": TINY})
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)


class NotATensor:
    """A pickled object that ``torch.load(weights_only=True)`` must refuse to build."""

    def __reduce__(self):
        return (print, ("code ran while loading a checkpoint",))


def test_pickled_code_in_a_checkpoint_is_refused(tmp_path, capsys):
    torch.save({"weight": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(ModelError, match="weights_only=True") as info:
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": str(tmp_path / "evil.pth"), "model_kwargs": TINY})
    assert str(tmp_path / "evil.pth") in str(info.value)
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("name, data", [("w.safetensors", b"garbage" * 10), ("w.pth", b"garbage" * 10), ("trunc.safetensors", None)])
def test_corrupt_checkpoint_is_a_model_error_naming_the_file(tmp_path, name, data):
    if data is None:
        save_checkpoint(tmp_path / name, tiny(pretrained=False).module, "safetensors")
        data = (tmp_path / name).read_bytes()[:-200]
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ModelError, match="corrupt") as info:
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": name, "model_kwargs": TINY}, base_dir=tmp_path)
    assert str((tmp_path / name).resolve()) in str(info.value)


def test_missing_or_mismatched_checkpoint(tmp_path):
    with pytest.raises(ModelError, match="does not exist") as info:
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": "nope.pth", "model_kwargs": TINY}, base_dir=tmp_path)
    assert str(tmp_path / "nope.pth") in str(info.value)
    deeper = tiny(pretrained=False, model_kwargs={**TINY, "depth": 2}).module
    save_checkpoint(tmp_path / "d2.safetensors", deeper, "safetensors")
    with pytest.raises(ModelError, match=r"does not fit the architecture.*unexpected keys blocks\.1\.") as info:
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": "d2.safetensors", "model_kwargs": TINY}, base_dir=tmp_path)
    assert "model_kwargs" in str(info.value)
    torch.save({"epoch": 1, "args": "x"}, tmp_path / "meta.pth")
    with pytest.raises(ModelError, match=r"not a state dict of tensors"):
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": "meta.pth", "model_kwargs": TINY}, base_dir=tmp_path)


# ------------------------------------------------------------------------------------ timm, JAX .npz
def save_jax_npz(path: Path, module, layout: str = "vit_jax", **drop_or_replace) -> None:
    """Write a timm ViT's weights as a JAX ``.npz`` in the naming timm's ``_load_weights`` reads:
    ``vit_jax`` (Google's AugReg / vit_jax releases, the ViT study's files: ``Transformer/
    encoderblock_<i>/MultiHeadDotProductAttention_1/...``, ``MlpBlock_3``, ``LayerNorm_0`` / ``_2``,
    ``Transformer/posembed_input/pos_embedding``) or ``big_vision`` (``params/`` prefix,
    ``MultiHeadDotProductAttention_0``, ``MlpBlock_0``, ``LayerNorm_0`` / ``_1``, ``pos_embedding``).
    Flax layouts: Dense kernels (in, out), conv kernels HWIO, attention kernels (D, heads, head_dim),
    the output projection (heads, head_dim, D). ``drop_or_replace``: arrays to drop (None) or replace."""
    sd = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    heads = module.blocks[0].attn.num_heads
    big = layout == "big_vision"
    pre = "params/" if big else ""
    mha, mlp, ln2 = ("MultiHeadDotProductAttention_0", "MlpBlock_0", "LayerNorm_1") if big else \
        ("MultiHeadDotProductAttention_1", "MlpBlock_3", "LayerNorm_2")
    out = {
        f"{pre}embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        f"{pre}embedding/bias": sd["patch_embed.proj.bias"],
        f"{pre}cls": sd["cls_token"],
        (f"{pre}pos_embedding" if big else "Transformer/posembed_input/pos_embedding"): sd["pos_embed"],
        f"{pre}Transformer/encoder_norm/scale": sd["norm.weight"],
        f"{pre}Transformer/encoder_norm/bias": sd["norm.bias"],
        f"{pre}head/kernel": sd["head.weight"].T,
        f"{pre}head/bias": sd["head.bias"],
    }
    for i in range(len(module.blocks)):
        b, bp = f"blocks.{i}.", f"{pre}Transformer/encoderblock_{i}/"
        dim = sd[b + "norm1.weight"].shape[0]
        out[bp + "LayerNorm_0/scale"], out[bp + "LayerNorm_0/bias"] = sd[b + "norm1.weight"], sd[b + "norm1.bias"]
        out[bp + f"{ln2}/scale"], out[bp + f"{ln2}/bias"] = sd[b + "norm2.weight"], sd[b + "norm2.bias"]
        qkv_w, qkv_b = np.split(sd[b + "attn.qkv.weight"], 3), np.split(sd[b + "attn.qkv.bias"], 3)
        for n, w_n, b_n in zip(("query", "key", "value"), qkv_w, qkv_b):
            out[bp + f"{mha}/{n}/kernel"] = w_n.T.reshape(dim, heads, -1)
            out[bp + f"{mha}/{n}/bias"] = b_n.reshape(heads, -1)
        out[bp + f"{mha}/out/kernel"] = sd[b + "attn.proj.weight"].reshape(dim, heads, -1).transpose(1, 2, 0)
        out[bp + f"{mha}/out/bias"] = sd[b + "attn.proj.bias"]
        for r in range(2):
            out[bp + f"{mlp}/Dense_{r}/kernel"] = sd[b + f"mlp.fc{r + 1}.weight"].T
            out[bp + f"{mlp}/Dense_{r}/bias"] = sd[b + f"mlp.fc{r + 1}.bias"]
    for key, value in drop_or_replace.items():
        key = key.replace("__", "/")
        if value is None:
            out.pop(key)
        else:
            out[key] = value
    np.savez(path, **{k: np.ascontiguousarray(v) for k, v in out.items()})


@pytest.mark.parametrize("layout", ["vit_jax", "big_vision"])
def test_jax_npz_checkpoint_gives_the_same_logits(tmp_path, layout):
    import hashlib

    source = tiny(pretrained=False, seed=7).module
    save_jax_npz(tmp_path / "S_16-tiny.npz", source, layout)
    m = load_model("timm:vit_tiny_patch16_224", options={"checkpoint": "S_16-tiny.npz", "model_kwargs": TINY}, base_dir=tmp_path)
    x = torch.stack([m.preprocess(torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(i))) for i in range(3)])
    with torch.no_grad():
        torch.testing.assert_close(m.module(x), source.eval()(x), rtol=1e-5, atol=1e-5)
    assert m.weights_sha256 == state_dict_sha256(source)  # every tensor equal, bit for bit
    assert m.info["checkpoint_sha256"] == hashlib.sha256((tmp_path / "S_16-tiny.npz").read_bytes()).hexdigest()


def test_jax_npz_is_read_without_pickles(tmp_path, monkeypatch):
    source = tiny(pretrained=False).module
    save_jax_npz(tmp_path / "w.npz", source)
    calls = []
    real_load = np.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(np, "load", spy)
    load_model("timm:vit_tiny_patch16_224", options={"checkpoint": str(tmp_path / "w.npz"), "model_kwargs": TINY})
    assert calls and all(c.get("allow_pickle") is False for c in calls)
    # an object array (which needs a pickle) is refused, naming the file
    np.savez(tmp_path / "obj.npz", **{"embedding/kernel": np.array([{"a": 1}], dtype=object)})
    with pytest.raises(ModelError, match=r"holds object arrays, which only a pickle could load") as info:
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": str(tmp_path / "obj.npz"), "model_kwargs": TINY})
    assert str(tmp_path / "obj.npz") in str(info.value)


def _npz_error(tmp_path, name: str, model_kwargs=None) -> str:
    with pytest.raises(ModelError) as info:
        load_model("timm:vit_tiny_patch16_224", options={"checkpoint": name, "model_kwargs": model_kwargs or TINY},
                   base_dir=tmp_path)
    msg = str(info.value)
    assert "\n" not in msg and str((tmp_path / name).resolve()) in msg, msg
    return msg


def test_wrong_jax_npz_is_one_line_naming_the_file_and_the_fix(tmp_path):
    source = tiny(pretrained=False).module
    # not an archive
    (tmp_path / "junk.npz").write_bytes(b"not a zip" * 20)
    assert "corrupt or not a numpy .npz" in _npz_error(tmp_path, "junk.npz")
    # missing file
    assert "does not exist" in _npz_error(tmp_path, "absent.npz")
    # another width: shapes do not fit
    wide = tiny(pretrained=False, model_kwargs={**TINY, "embed_dim": 64, "num_heads": 2}).module
    save_jax_npz(tmp_path / "wide.npz", wide)
    msg = _npz_error(tmp_path, "wide.npz")
    assert "does not fit the architecture" in msg and "vit_small_patch16_224" in msg
    # more blocks than the model: timm would load the first ones silently
    deep = tiny(pretrained=False, model_kwargs={**TINY, "depth": 2}).module
    save_jax_npz(tmp_path / "deep.npz", deep)
    assert "holds 2 encoder blocks but the model has 1" in _npz_error(tmp_path, "deep.npz")
    # a classifier of another size: timm skips it silently, leaving a random head
    other = tiny(pretrained=False, model_kwargs={**TINY, "num_classes": 7}).module
    save_jax_npz(tmp_path / "head7.npz", other)
    msg = _npz_error(tmp_path, "head7.npz")
    assert "does not set head.weight, head.bias" in msg and "num_classes" in msg
    # an array the loader needs is missing
    save_jax_npz(tmp_path / "nonorm.npz", source, Transformer__encoder_norm__scale=None)
    assert "lacks the array 'Transformer/encoder_norm/scale'" in _npz_error(tmp_path, "nonorm.npz")
    # a PyTorch state dict renamed .npz
    save_checkpoint(tmp_path / "torch.npz", source, "pth")
    assert "without a JAX ViT layout" in _npz_error(tmp_path, "torch.npz")


def test_checkpoint_file_hash_is_in_the_fingerprint(tmp_path):
    """Two checkpoint files with the same weights but different bytes: the loaded weights' digest is
    equal, the model identity (what every fingerprint hashes) is not."""
    from pytest_qrel import Engine

    source = tiny(pretrained=False, seed=2).module
    save_jax_npz(tmp_path / "w.npz", source)
    suite_text = (
        "name: npz\nmodels:\n  vit: {source: 'timm:vit_tiny_patch16_224', options: {checkpoint: w.npz, "
        "model_kwargs: {img_size: 32, patch_size: 8, depth: 1, embed_dim: 32, num_heads: 2, num_classes: 10}}}\n"
        "datasets:\n  id: {name: digits, source: 'embedded:digits'}\nquantizers:\n  W8A8: {method: minmax}\n"
        "checks: ['W8A8 top1 delta <= 5pp']\n"
    )
    (tmp_path / "s.yaml").write_text(suite_text)
    suite = load_suite(tmp_path / "s.yaml")
    first = Engine(baseline_dir=tmp_path).loader.identity(suite, "vit")
    save_jax_npz(tmp_path / "w.npz", source, extra__unused=np.zeros(3, np.float32))  # same weights, other bytes
    second = Engine(baseline_dir=tmp_path).loader.identity(suite, "vit")
    assert first["weights_sha256"] == second["weights_sha256"]
    assert first["checkpoint_sha256"] != second["checkpoint_sha256"]


# ------------------------------------------------------------------------------------ timm, HF cache
@pytest.mark.parametrize("env", ["HF_HUB_CACHE", "HF_HOME"])
def test_missing_pretrained_weights_never_download(tmp_path, monkeypatch, no_network, env):
    import timm

    cache = tmp_path / "hf" / "hub"
    cache.mkdir(parents=True)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv(env, str(cache if env == "HF_HUB_CACHE" else tmp_path / "hf"))
    # the guards work: timm's own loading of these weights would hit them
    with pytest.raises(NetworkAttempt):
        timm.create_model(HUB_NAME, **{"pretrained": True, **TINY, "num_classes": 1000})
    with pytest.raises(ModelError) as info:
        load_model(f"timm:{HUB_NAME}", options={"model_kwargs": TINY})
    msg = str(info.value)
    assert f"timm model '{HUB_NAME}'" in msg
    assert str(cache / f"models--timm--{HUB_NAME}") in msg
    assert ("$HF_HUB_CACHE" if env == "HF_HUB_CACHE" else "$HF_HOME/hub") in msg
    assert f"`hf download {HUB_REPO} model.safetensors`" in msg
    assert "never downloads" in msg and "pretrained: false" in msg and "checkpoint" in msg


def test_missing_weights_of_the_default_tag_name_the_resolved_repo(hf_cache, no_network):
    with pytest.raises(ModelError, match=r"timm/deit_small_patch16_224\.fb_in1k") as info:
        load_model("timm:deit_small_patch16_224")
    assert str(hf_cache) in str(info.value)


@pytest.mark.parametrize("filename, refs", [("model.safetensors", True), ("pytorch_model.bin", True), ("model.safetensors", False)])
def test_weights_in_a_local_hf_cache_are_found_offline(hf_cache, no_network, filename, refs):
    kwargs = {**TINY, "num_classes": 1000}  # the head size of the pretrained config: loaded as is
    source = tiny(pretrained=False, seed=9, model_kwargs=kwargs).module
    path = fake_hub_repo(hf_cache, source.state_dict(), filename=filename, refs=refs)
    m = load_model(f"timm:{HUB_NAME}", options={"model_kwargs": kwargs})
    assert m.weights_sha256 == state_dict_sha256(source)
    assert m.info["weights"] == str(path) and "random init" not in m.preprocessing
    assert "state_dict" not in m.module.pretrained_cfg  # no second copy of the weights kept alive
    assert m.class_names[0] == "tench"


def test_cache_dir_option_and_reinitialised_head(tmp_path, monkeypatch, no_network):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "elsewhere"))
    kwargs = {**TINY, "num_classes": 1000}
    source = tiny(pretrained=False, seed=9, model_kwargs=kwargs).module
    fake_hub_repo(tmp_path / "mycache", source.state_dict())
    m = load_model(f"timm:{HUB_NAME}", options={"cache_dir": "mycache", "model_kwargs": TINY}, base_dir=tmp_path)
    assert m.num_classes == 10 and "classifier re-initialised for 10 classes" in m.info["weights_from"]
    mine, theirs = m.module.state_dict(), source.state_dict()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine if not k.startswith("head."))
    again = load_model(f"timm:{HUB_NAME}", options={"cache_dir": "mycache", "model_kwargs": TINY}, base_dir=tmp_path)
    assert again.weights_sha256 == m.weights_sha256  # the new head is seeded
    with pytest.raises(ModelError, match=r"--cache-dir .*mycache2"):
        load_model(f"timm:{HUB_NAME}", options={"cache_dir": "mycache2", "model_kwargs": TINY}, base_dir=tmp_path)


def test_weights_that_do_not_fit_the_architecture(hf_cache, no_network):
    source = tiny(pretrained=False, model_kwargs={**TINY, "num_classes": 1000, "depth": 2}).module
    path = fake_hub_repo(hf_cache, source.state_dict())
    with pytest.raises(ModelError, match="failed") as info:
        load_model(f"timm:{HUB_NAME}", options={"model_kwargs": {**TINY, "num_classes": 1000}})
    assert str(path) in str(info.value) and "model_kwargs" in str(info.value)


# ------------------------------------------------------------------------------------ timm, options
@pytest.mark.parametrize(
    "name, options, match",
    [
        ("vit_tiny_patch16_224", {"pretrianed": False}, r"unknown option 'pretrianed'; did you mean 'pretrained'\? \(known: cache_dir, checkpoint"),
        ("vit_tiny_patch16_224", {"pretrained": "no"}, r"'pretrained' must be true or false"),
        ("vit_tiny_patch16_224", {"pretrained": False, "checkpoint": "w.pth"}, r"contradict"),
        ("vit_tiny_patch16_224", {"pretrained": False, "model_kwargs": [1]}, r"'model_kwargs' must be a mapping"),
        ("vit_tiny_patch16_224", {"pretrained": False, "model_kwargs": {"pretrained": True}}, r"may not set 'pretrained'; use options.pretrained"),
        ("vit_tiny_patch16_224", {"pretrained": False, "num_classes": 0}, r"'num_classes' must be an integer >= 1"),
        ("vit_tiny_patch16_224", {"pretrained": False, "num_classes": 5, "model_kwargs": {"num_classes": 6}}, r"contradicts"),
        ("vit_tiny_patch16_224", {"pretrained": False, "data_config": {"crop": 1}}, r"unknown data_config key 'crop'; did you mean 'crop_pct'\?"),
        ("vit_tiny_patch16_224", {"pretrained": False, "model_kwargs": {"bogus_arg": 1}}, r"timm.create_model\('vit_tiny_patch16_224'.*bogus_arg"),
        ("vit_tiny_patch1_224", {"pretrained": False}, r"unknown timm model 'vit_tiny_patch1_224'; did you mean 'vit_tiny_patch16_224'\?"),
        ("vit_tiny_patch16_224.augreg_in1k", {"pretrained": False}, r"unknown pretrained tag 'augreg_in1k'.*known: augreg_in21k, augreg_in21k_ft_in1k"),
        ("hf-hub:timm/vit_tiny_patch16_224", {"pretrained": False}, r"source prefix \('hf-hub:'\) are not supported"),
    ],
)
def test_option_and_name_errors(name, options, match):
    with pytest.raises(ModelError, match=match):
        load_model(f"timm:{name}", options=options)


def test_hf_cache_dir_resolution_order(tmp_path, monkeypatch):
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert TS.hf_hub_cache_dir() == (tmp_path / "home/.cache/huggingface/hub", "the default ~/.cache/huggingface/hub")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert TS.hf_hub_cache_dir()[0] == tmp_path / "xdg/huggingface/hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert TS.hf_hub_cache_dir()[0] == tmp_path / "hfhome/hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hubcache"))
    assert TS.hf_hub_cache_dir() == (tmp_path / "hubcache", "$HF_HUB_CACHE")
    assert TS.hf_hub_cache_dir(tmp_path / "x") == (tmp_path / "x", "options.cache_dir")


# ------------------------------------------------------------------------------------ python source
FACTORY = '''
import torch
from torch import nn


class Tiny(nn.Module):
    def __init__(self, classes):
        super().__init__()
        self.fc = nn.Linear(16, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Prep:
    def __call__(self, image):
        if not isinstance(image, torch.Tensor):
            raise TypeError("tensors only")
        return image[:1, :4, :4].float() * 2 - 1


def prep_fn(image):
    return Prep()(image)


def build(classes=3, seed=0, describe=None):
    torch.manual_seed(seed)
    if describe:
        return Tiny(classes), Prep(), describe
    return Tiny(classes), Prep()


def build_fn():
    return Tiny(4), prep_fn


def build_loaded():
    from pytest_qrel.models import LoadedModel
    m = Tiny(2).train()
    return LoadedModel(name="", module=m, preprocess=prep_fn, preprocessing="mine", weights_sha256="", num_classes=2)


def build_int():
    return 3


def build_pair_of_wrong_things():
    return "module", prep_fn


def build_raises():
    raise RuntimeError("boom in factory")
'''


@pytest.fixture
def factory_file(tmp_path) -> Path:
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "factory.py"
    path.write_text(FACTORY)
    return path


def test_python_factory_returning_module_and_preprocess(tmp_path, factory_file):
    m = load_model("python:models/factory.py:build", options={"classes": 5, "seed": 1}, base_dir=tmp_path)
    assert isinstance(m, LoadedModel) and m.name == "models/factory.py:build"
    assert m.num_classes == 5  # from a dummy forward: the module has no num_classes attribute
    assert not m.module.training and m.weights_sha256 == state_dict_sha256(m.module)
    assert m.preprocessing.startswith("<models/factory.py.Prep object>")  # address and internal module name removed
    x = m.preprocess(torch.rand(1, 16, 16))
    assert x.shape == (1, 4, 4) and m.module(x.unsqueeze(0)).shape == (1, 5)
    again = load_model("python:models/factory.py:build", options={"classes": 5, "seed": 1}, base_dir=tmp_path)
    assert again.preprocessing == m.preprocessing and again.weights_sha256 == m.weights_sha256
    desc = load_model("python:models/factory.py:build", options={"describe": "first 4x4 pixels"}, base_dir=tmp_path)
    assert desc.preprocessing == "first 4x4 pixels" and desc.num_classes == 3
    fn = load_model(f"python:{factory_file}:build_fn")  # an absolute path works from anywhere
    assert fn.preprocessing == f"{factory_file}.prep_fn" and fn.num_classes == 4


def test_python_factory_returning_a_loaded_model(tmp_path, factory_file):
    m = load_model("python:models/factory.py:build_loaded", base_dir=tmp_path)
    assert m.preprocessing == "mine" and m.name == "models/factory.py:build_loaded" and m.num_classes == 2
    assert not m.module.training and m.weights_sha256 == state_dict_sha256(m.module)


def test_python_dotted_module_next_to_the_suite(tmp_path):
    import sys

    (tmp_path / "qrel_test_dotted_models.py").write_text(FACTORY)
    m = load_model("python:qrel_test_dotted_models:build", base_dir=tmp_path)
    assert m.num_classes == 3 and m.preprocessing.startswith("<qrel_test_dotted_models.Prep object>")
    assert str(tmp_path) not in sys.path
    sys.modules.pop("qrel_test_dotted_models", None)


@pytest.mark.parametrize(
    "source, match",
    [
        ("python:models/missing.py:build", r"module file .*models/missing\.py does not exist"),
        ("python:qrel_no_such_module_xyz:build", r"cannot import module 'qrel_no_such_module_xyz'.*fix: make 'qrel_no_such_module_xyz' importable"),
        ("python:models/factory.py:buidl", r"module 'models/factory\.py': unknown factory 'buidl'; did you mean 'build'\?"),
        ("python:models/factory.py:build_int", r"build_int in module 'models/factory\.py' returned int; it must return \(torch\.nn\.Module, preprocess\)"),
        ("python:models/factory.py:build_pair_of_wrong_things", r"returned tuple of length 2.*first item is a str, not a torch\.nn\.Module"),
        ("python:models/factory.py:build_raises", r"build_raises\(\*\*options\) .* raised RuntimeError: boom in factory at .*factory\.py:\d+"),
        ("python:models/factory.py", r"expected 'python:<module>:<factory>'"),
    ],
)
def test_python_source_errors(tmp_path, factory_file, source, match):
    with pytest.raises(ModelError, match=match):
        load_model(source, base_dir=tmp_path)


def test_python_import_errors_inside_the_module(tmp_path):
    (tmp_path / "broken.py").write_text("import qrel_missing_dependency_xyz\n")
    with pytest.raises(ModelError, match=r"importing .*broken\.py failed: ModuleNotFoundError: .*qrel_missing_dependency_xyz"):
        load_model("python:broken.py:build", base_dir=tmp_path)
    (tmp_path / "qrel_broken_dotted.py").write_text("import qrel_missing_dependency_xyz\n")
    with pytest.raises(ModelError, match=r"a dependency of 'qrel_broken_dotted' is missing"):
        load_model("python:qrel_broken_dotted:build", base_dir=tmp_path)
    (tmp_path / "syntax.py").write_text("def build(:\n")
    with pytest.raises(ModelError, match=r"SyntaxError"):
        load_model("python:syntax.py:build", base_dir=tmp_path)
    (tmp_path / "ok.py").write_text("def build():\n    return 1\n")
    with pytest.raises(ModelError, match=r"build\(\*\*options\) with options \{'nope': 1\} raised TypeError: .*unexpected keyword argument 'nope'"):
        load_model("python:ok.py:build", options={"nope": 1}, base_dir=tmp_path)


# ------------------------------------------------------------------------------------ end to end
SUITE = """\
version: 1
name: {name}
models:
  m: {{source: "{source}", options: {options}}}
datasets:
  id: {{name: digits, source: "embedded:digits"}}
  ood:
    - {{name: noise, source: "embedded:noise"}}
quantizers:
  W8A8: {{method: minmax, weight_bits: 8, act_bits: 8, calibration: {{samples: 32, seed: 0}}}}
scores: [msp]
checks:
  - "all top1 >= 0"
  - "all auroc(msp) >= 0"
  - "W8A8 nll delta <= 1000%"
"""

DIGITS_FACTORY = '''
import torch
from timm.models.vision_transformer import VisionTransformer
from pytest_qrel.models.embedded import GreyNormalize


def build(seed=0):
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=16, patch_size=4, in_chans=1, num_classes=8, embed_dim=32, depth=1, num_heads=2)
    return model, GreyNormalize(mean=0.5, std=0.5, size=16)
'''


def run_suite(tmp_path: Path, name: str, source: str, options: str):
    from pytest_qrel import Engine, load_suite, run

    path = tmp_path / f"{name}.yaml"
    path.write_text(SUITE.format(name=name, source=source, options=options))
    engine = Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    verdicts = run(load_suite(path), engine=engine)
    assert (tmp_path / "b" / name / "m.json").is_file()
    return verdicts, engine


def check_verdicts(verdicts) -> None:
    assert len(verdicts) == 5  # top1 x {FP32, W8A8}, auroc x {FP32, W8A8}, one delta
    assert all(v.outcome == "passed" and v.value is not None for v in verdicts), [(v.check, v.outcome, v.message) for v in verdicts]
    top1 = [v for v in verdicts if v.metric == "top1"]
    assert {v.quantizer for v in top1} == {"FP32", "W8A8"} and all(0 <= v.value <= 1 for v in top1)


def test_engine_runs_a_python_model(tmp_path):
    (tmp_path / "digits_factory.py").write_text(DIGITS_FACTORY)
    verdicts, engine = run_suite(tmp_path, "py", "python:digits_factory.py:build", "{seed: 1}")
    check_verdicts(verdicts)
    loaded = engine.model(load_suite(tmp_path / "py.yaml"), "m")
    assert loaded.preprocessing == "grey 1x16x16 in [0,1]; (x - 0.5) / 0.5" and loaded.num_classes == 8


def test_engine_runs_a_random_init_timm_model(tmp_path):
    options = "{pretrained: false, model_kwargs: {img_size: 16, patch_size: 4, in_chans: 1, num_classes: 8, embed_dim: 32, depth: 1, num_heads: 2}}"
    verdicts, engine = run_suite(tmp_path, "tm", "timm:vit_tiny_patch16_224", options)
    check_verdicts(verdicts)
    loaded = engine.model(load_suite(tmp_path / "tm.yaml"), "m")
    assert "input_size=(1, 16, 16)" in loaded.preprocessing and "random init (seed 0)" in loaded.preprocessing
    stored = (tmp_path / "b" / "tm" / "m.json").read_text()
    assert "random init (seed 0)" in stored  # the baseline's fingerprint says what produced it


def test_module_import_is_cheap():
    import subprocess
    import sys

    code = (
        "import sys, pytest_qrel.models.timm_source, pytest_qrel.models.python_source; "
        "print(any(m in sys.modules for m in ('torch', 'timm', 'huggingface_hub')))"
    )
    root = str(Path(TS.__file__).resolve().parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "False"


def test_package_code_never_spells_the_pretrained_flag():
    for mod in ("timm_source.py", "python_source.py"):
        text = (Path(TS.__file__).parent / mod).read_text()
        assert "pretrained=" + "True" not in text
