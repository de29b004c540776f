"""The ``open_clip`` model source: zero-shot visual-only modules, text caches, offline weights, digits_clip."""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import socket

import numpy as np
import open_clip
import pytest
import torch
from torch import nn

from pytest_qrel.data import load_dataset
from pytest_qrel.errors import ModelError
from pytest_qrel.models import MODEL_SOURCES, LoadedModel
from pytest_qrel.models import open_clip_source as S
from pytest_qrel.models.clip_zoo import TEXT_STATS, LinearSelfAttention, ZeroShotCLIP
from pytest_qrel.zoo import ZOO_DIR

TINY = "qrel-test-tiny-ViT"
TINY_CFG = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
LOGIT_SCALE = 42.0
CLASSES = ["cat", "dog", "car"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]
NEG_WORDS = ["tree", "river", "cloud", "chair", "spoon", "mountain", "guitar", "bridge", "lamp", "cat", "Dog", "tree"]


@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection is recorded and refused."""
    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise OSError("network access is disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    return attempts


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random open_clip architecture registered with open_clip, and a checkpoint of it."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("tiny_clip")
    (root / f"{TINY}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / f"{TINY}.json")
    torch.manual_seed(0)
    model = open_clip.create_model(TINY)
    with torch.no_grad():
        model.logit_scale.fill_(np.log(LOGIT_SCALE))
    ckpt = root / "tiny.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt))
    return {"model": model.eval(), "checkpoint": ckpt, "root": root}


def load_tiny(tiny, tmp_path, **options):
    opts = {
        "checkpoint": str(tiny["checkpoint"]),
        "class_names": CLASSES,
        "templates": TEMPLATES,
        "neg_labels": NEG_WORDS,
        "n_neg": 6,
        "neglabel_groups": 2,
        "cache_dir": str(tmp_path / "text-cache"),
        **options,
    }
    return S.open_clip_model_source(TINY, options=opts, base_dir=tmp_path)


# ------------------------------------------------------------------------------------ tiny config


def test_tiny_random_config_builds_a_visual_only_zero_shot_classifier(tiny, tmp_path):
    loaded = load_tiny(tiny, tmp_path)
    assert "open_clip" in MODEL_SOURCES and isinstance(loaded, LoadedModel)
    module = loaded.module
    assert isinstance(module, ZeroShotCLIP) and not module.training
    assert loaded.num_classes == 3 and loaded.class_names == CLASSES

    names = [n for n, _ in module.named_parameters()]
    text_markers = ("token_embedding", "text_projection", "ln_final", "text.")
    assert names and all(n.startswith(("visual.", "proj.")) for n in names), names
    assert not any(m in n for n in names for m in text_markers)
    # exactly the visual tower's parameters: same count as the full model's visual tower
    full_visual = sum(p.numel() for p in tiny["model"].visual.parameters())
    assert sum(p.numel() for p in module.parameters()) == full_visual
    # the head is fixed buffers, not parameters (no quantizer touches it)
    assert {n for n, _ in module.named_buffers()} >= {"class_text_features", "logit_scale"}
    assert not any(isinstance(m, nn.MultiheadAttention) for m in module.modules())
    linears = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    assert sum(n.endswith("attn.qkv") for n in linears) == 2 and "proj" in linears


def test_logits_match_open_clip_and_use_the_models_own_logit_scale(tiny, tmp_path):
    loaded = load_tiny(tiny, tmp_path)
    model = tiny["model"]
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        logits, feats = loaded.module.forward_with_features(x)
        plain = loaded.module(x)
        tokenizer = open_clip.get_tokenizer(TINY)
        ref_text = open_clip.build_zero_shot_classifier(model, tokenizer, CLASSES, TEMPLATES, num_classes_per_batch=None)
        ref = model.logit_scale.exp() * model.encode_image(x, normalize=True) @ ref_text
    assert logits.shape == (5, 3) and feats.shape == (5, 16)
    assert torch.allclose(plain, logits)
    assert float(loaded.module.logit_scale) == pytest.approx(LOGIT_SCALE, rel=1e-5)
    assert loaded.info["clip"]["logit_scale"] == pytest.approx(LOGIT_SCALE, rel=1e-5)
    assert torch.allclose(feats.norm(dim=1), torch.ones(5), atol=1e-5)
    assert torch.allclose(logits, LOGIT_SCALE * feats @ loaded.info["clip"]["class_text_features"].T, atol=1e-4)
    assert torch.allclose(logits, ref, atol=1e-4), (logits - ref).abs().max()


def test_linear_attention_is_exact_and_can_be_turned_off(tiny, tmp_path):
    on = load_tiny(tiny, tmp_path)
    off = load_tiny(tiny, tmp_path, linear_attention=False)
    assert any(isinstance(m, LinearSelfAttention) for m in on.module.modules())
    assert any(isinstance(m, nn.MultiheadAttention) for m in off.module.modules())
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(on.module(x), off.module(x), atol=1e-4)


def test_text_embeddings_are_cached_in_process_and_on_disk(tiny, tmp_path):
    S.clear_cache()
    before = TEXT_STATS["texts_encoded"]
    first = load_tiny(tiny, tmp_path)
    encoded = TEXT_STATS["texts_encoded"] - before
    # classes x templates + the distinct negative candidates (ID names dropped) + generic prompts
    assert encoded == 3 * 2 + 9 + len(first.info["clip"]["generic_prompts"])

    before = TEXT_STATS["texts_encoded"]
    second = load_tiny(tiny, tmp_path)
    assert TEXT_STATS["texts_encoded"] == before  # in-process cache
    S.clear_cache()
    third = load_tiny(tiny, tmp_path)
    assert TEXT_STATS["texts_encoded"] == before  # disk cache
    assert len(list((tmp_path / "text-cache").glob("*.safetensors"))) == 3
    for other in (second, third):
        for key in ("class_text_features", "negative_text_features", "generic_text_features"):
            assert torch.equal(first.info["clip"][key], other.info["clip"][key])
        assert other.weights_sha256 == first.weights_sha256

    load_tiny(tiny, tmp_path, templates=["a blurry photo of a {}."])  # a new prompt set is encoded
    assert TEXT_STATS["texts_encoded"] - before == 3


def test_in_process_cache_alone_avoids_re_encoding(tiny, tmp_path):
    S.clear_cache()
    load_tiny(tiny, tmp_path, cache_dir=False)
    before = TEXT_STATS["texts_encoded"]
    load_tiny(tiny, tmp_path, cache_dir=False)
    assert TEXT_STATS["texts_encoded"] == before
    assert not (tmp_path / "text-cache").exists()


def test_a_pretrained_tag_is_found_offline_with_its_quick_gelu_and_preprocessing(tiny, tmp_path, monkeypatch, no_network):
    """A tag (registered here for the tiny arch) whose weights sit in open_clip's URL download folder."""
    import open_clip.pretrained as P
    from open_clip.transformer import QuickGELU

    cfg = {"url": "https://example.invalid/qrel-tiny.pt", "hf_hub": "", "quick_gelu": True,
           "mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "resize_mode": "squash"}  # fmt: skip
    monkeypatch.setitem(P._PRETRAINED, TINY, {"qrel": cfg})
    opts = {"weights_cache_dir": str(tmp_path), "class_names": CLASSES, "templates": TEMPLATES,
            "neg_labels": NEG_WORDS, "n_neg": 3, "cache_dir": False}  # fmt: skip
    with pytest.raises(ModelError, match="qrel-tiny.pt"):
        S.open_clip_model_source(f"{TINY}/qrel", options=opts, base_dir=tmp_path)
    torch.save(dict(tiny["model"].state_dict()), tmp_path / "qrel-tiny.pt")  # what open_clip would download
    loaded = S.open_clip_model_source(f"{TINY}/qrel", options=opts, base_dir=tmp_path)
    assert loaded.info["checkpoint"] == str(tmp_path / "qrel-tiny.pt") and loaded.info["quick_gelu"] is True
    assert any(isinstance(mod, QuickGELU) for mod in loaded.module.modules())
    assert loaded.preprocess.cfg["mean"] == (0.5, 0.5, 0.5) and loaded.preprocess.cfg["resize_mode"] == "squash"
    grey = torch.full((1, 32, 32), 0.75)
    assert torch.allclose(loaded.preprocess(grey), torch.ones(3, 32, 32))  # (0.75 - 0.5) / 0.25
    plain = load_tiny(tiny, tmp_path, cache_dir=False)  # the same weights with GELU give other logits
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.allclose(loaded.module(x), plain.module(x), atol=1e-4)
    assert no_network == []


def test_disk_cache_is_keyed_by_text_weights(tiny, tmp_path):
    from safetensors.torch import save_file

    S.clear_cache()
    load_tiny(tiny, tmp_path)
    state = {k: v.clone() for k, v in tiny["model"].state_dict().items()}
    state["text_projection"] += 0.5  # a different text tower, same visual tower
    other = tmp_path / "other.safetensors"
    save_file(state, str(other))
    S.clear_cache()
    before = TEXT_STATS["texts_encoded"]
    loaded = load_tiny(tiny, tmp_path, checkpoint=str(other))
    assert TEXT_STATS["texts_encoded"] > before
    assert len(list((tmp_path / "text-cache").glob("*.safetensors"))) == 6
    assert loaded.weights_sha256 != load_tiny(tiny, tmp_path).weights_sha256  # the head changed


def test_clip_info_contract_and_negative_mining(tiny, tmp_path):
    loaded = load_tiny(tiny, tmp_path, n_neg=4)
    clip = loaded.info["clip"]
    cls, neg, gen = clip["class_text_features"], clip["negative_text_features"], clip["generic_text_features"]
    assert cls.shape == (3, 16) and neg.shape == (4, 16) and gen.shape == (len(clip["generic_prompts"]), 16)
    for t in (cls, neg, gen):
        assert torch.allclose(t.norm(dim=1), torch.ones(len(t)), atol=1e-5)
    assert clip["neg_scale"] == pytest.approx(LOGIT_SCALE, rel=1e-5) and clip["neglabel_groups"] == 2
    assert clip["mcm_tau"] == 1.0
    labels = clip["negative_labels"]
    assert len(labels) == 4 and not {w.lower() for w in labels} & {"cat", "dog"}

    # brute force: the 95th percentile of cosine to the classes, lowest first
    model, tok = tiny["model"], open_clip.get_tokenizer(TINY)
    words = ["tree", "river", "cloud", "chair", "spoon", "mountain", "guitar", "bridge", "lamp"]
    with torch.no_grad():
        feats = model.encode_text(tok([f"a photo of a {w}." for w in words]), normalize=True)
    q = np.quantile((feats @ cls.T).numpy().astype(np.float64), 0.95, axis=1)
    expected = [words[i] for i in np.argsort(q, kind="stable")[:4]]
    assert labels == expected
    assert torch.allclose(neg, feats[[words.index(w) for w in labels]], atol=1e-5)
    # n_neg larger than the vocabulary: every candidate once, the ID class names (any case) left out
    everything = load_tiny(tiny, tmp_path, n_neg=100).info["clip"]["negative_labels"]
    assert sorted(everything) == sorted(words)


def test_class_names_from_a_file_and_wordnet_ids(tiny, tmp_path):
    (tmp_path / "classes.txt").write_text("# my classes\nzebra\n\nkoala\n")
    loaded = load_tiny(tiny, tmp_path, class_names="classes.txt")
    assert loaded.class_names == ["zebra", "koala"] and loaded.num_classes == 2
    loaded = load_tiny(tiny, tmp_path, class_names=["n01440764", "n01443537"])
    assert loaded.class_names == ["tench", "goldfish"]
    # WordNet ids among other folder names are replaced one by one
    assert load_tiny(tiny, tmp_path, class_names=["n01440764", "zebra"]).class_names == ["tench", "zebra"]


def test_an_underscore_in_a_class_name_is_a_space_in_its_prompts(tiny, tmp_path):
    """Folder names cannot easily hold spaces: ``golden_retriever`` is prompted as "a photo of a
    golden retriever." (a new head, so a new digest), and the names shown keep the folder's spelling."""
    folders = load_tiny(tiny, tmp_path, class_names=["golden_retriever", "tabby_cat"])
    words = load_tiny(tiny, tmp_path, class_names=["golden retriever", "tabby cat"])
    assert folders.class_names == ["golden_retriever", "tabby_cat"]
    assert torch.equal(folders.module.class_text_features, words.module.class_text_features)
    assert folders.weights_sha256 != words.weights_sha256  # the class names differ, and so does the baseline


@pytest.mark.parametrize(("templates", "message"), [
    (["a photo of a {}, a type of {pet}."], "it has 2 placeholders"),
    (["a photo of a {]."], "is not a valid format string"),
    (["a {} photo }"], "Single '}'"),
    (["a photo of a {0}."], "has the placeholder '{0}'"),
    (["a photo of a {!r}."], "has the placeholder '{!r}'"),
    (["no placeholder"], "exactly once"),
    ("a photo of a {}.", "a list, even of one prompt: templates: [\"a photo of a {}.\"]"),
])
def test_a_prompt_template_typo_is_one_error_when_the_suite_loads(templates, message):
    """Checked with the suite's other model options (no model is loaded), naming the option and template."""
    from pytest_qrel.models.base import validate_model_source

    with pytest.raises(ModelError) as err:
        validate_model_source("open_clip:digits_clip", {"templates": templates})
    assert message in str(err.value) and "option 'templates'" in str(err.value)
    validate_model_source("open_clip:digits_clip", {"templates": ["a {{literal}} brace and a {}."]})
    validate_model_source("open_clip:digits_clip", {"templates": "simple"})


def test_the_shipped_clip_refuses_class_names_outside_its_vocabulary():
    """Words it never saw map to the padding id: three unknown names would give three identical
    prompts and a head that scores every image 1/3. One error says so and how to do a dry run."""
    with pytest.raises(ModelError) as err:
        S.open_clip_model_source("digits_clip", options={"class_names": ["golden_retriever", "n01440764", "zero"]})
    msg = str(err.value)
    assert "2 of 3 class names ('golden retriever', 'tench')" in msg
    assert "'class_names: [zero, one, two]'" in msg and "open_clip:<arch>/<tag>" in msg
    assert S.open_clip_model_source("digits_clip", options={"class_names": ["zero", "1", "two"]}).num_classes == 3


def test_preprocess_is_open_clips_eval_transform_and_accepts_grey_tensors(tiny, tmp_path):
    from PIL import Image

    loaded = load_tiny(tiny, tmp_path)
    _, _, reference = open_clip.create_model_and_transforms(TINY, pretrained=str(tiny["checkpoint"]))
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    assert torch.equal(loaded.preprocess(img), reference(img))
    grey = torch.rand(1, 32, 32)
    out = loaded.preprocess(grey)
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, reference(grey.repeat(3, 1, 1)))
    p = pickle.loads(pickle.dumps(loaded.preprocess))
    assert p == loaded.preprocess and repr(p) == repr(loaded.preprocess)
    assert torch.equal(p(img), reference(img))
    assert "normalize" in loaded.preprocessing and "32" in loaded.preprocessing
    with pytest.raises(ValueError, match="float tensor"):
        loaded.preprocess(torch.zeros(3, 32, 32, dtype=torch.uint8))


@pytest.mark.parametrize(
    ("arg", "options", "match"),
    [
        (TINY, {"chekpoint": "x"}, "did you mean 'checkpoint'"),
        ("ViT-B-33/openai", {}, "did you mean 'ViT-B-32'"),
        ("ViT-B-32/not_a_tag", {}, "laion400m_e32"),
        ("ViT-B-32", {}, "option 'checkpoint'"),
        (TINY, {"n_neg": 0}, "n_neg"),
        (TINY, {"templates": ["no placeholder"]}, "exactly once"),
        ("digits_clip", {"checkpoint": "x.pt"}, "takes no 'checkpoint'"),
        (TINY, {"text_device": "nonsense"}, "text_device"),
    ],
)
def test_bad_input_is_a_model_error(tiny, tmp_path, arg, options, match):
    with pytest.raises(ModelError, match=match):
        if arg == TINY:
            load_tiny(tiny, tmp_path, **options)
        else:
            S.open_clip_model_source(arg, options=options, base_dir=tmp_path)


# ----------------------------------------------------------------------------------- offline only


def test_missing_pretrained_weights_name_the_paths_and_the_fetch_command(tmp_path, no_network):
    with pytest.raises(ModelError) as info:
        S.open_clip_model_source("ViT-B-32/openai", options={"weights_cache_dir": str(tmp_path)}, base_dir=tmp_path)
    msg = str(info.value)
    assert "ViT-B-32/openai" in msg and "never downloads" in msg
    assert str(tmp_path / "models--timm--vit_base_patch32_clip_224.openai") in msg  # the HF cache looked at
    assert str(tmp_path / "ViT-B-32.pt") in msg  # open_clip's URL download folder
    assert "open_clip.create_model_and_transforms('ViT-B-32', pretrained='openai'" in msg
    assert no_network == []


def test_missing_checkpoint_file_is_a_model_error(tiny, tmp_path, no_network):
    """The option, the resolved path (relative to the suite's folder) and what to give instead."""
    with pytest.raises(ModelError) as err:
        load_tiny(tiny, tmp_path, checkpoint="weights/nope.safetensors")
    assert f"option 'checkpoint': {tmp_path.resolve() / 'weights' / 'nope.safetensors'} does not exist" in str(err.value)
    assert "fix: " in str(err.value)
    with pytest.raises(ModelError, match="is a folder, not a weights file"):
        load_tiny(tiny, tmp_path, checkpoint=".")
    assert no_network == []


def test_weights_are_found_in_the_local_caches_without_network(tmp_path, no_network):
    cfg = open_clip.get_pretrained_cfg("ViT-B-32", "openai")
    snap = tmp_path / "models--timm--vit_base_patch32_clip_224.openai" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    (snap.parent.parent / "refs").mkdir()
    (snap.parent.parent / "refs" / "main").write_text("abc123")
    found, looked = S.find_local_weights("ViT-B-32", "openai", cfg, tmp_path)
    assert found == snap / "open_clip_model.safetensors" and len(looked) == 1

    (snap / "open_clip_model.safetensors").unlink()
    (tmp_path / "ViT-B-32.pt").write_bytes(b"x")  # open_clip's URL download of the same tag
    found, looked = S.find_local_weights("ViT-B-32", "openai", cfg, tmp_path)
    assert found == tmp_path / "ViT-B-32.pt" and len(looked) == 3
    assert no_network == []


# ------------------------------------------------------------------------------- the shipped CLIP


@pytest.fixture(scope="module")
def digits_test():
    ds = load_dataset("embedded:digits", split="test")
    return ds


def zero_shot_accuracy(loaded: LoadedModel, ds) -> float:
    x = torch.stack([loaded.preprocess(ds[i][0]) for i in range(len(ds))])
    with torch.no_grad():
        logits = loaded.module(x)
    assert logits.shape == (len(ds), 8)
    return float((logits.argmax(1).numpy() == ds.labels).mean())


def test_shipped_digits_clip_is_small_and_consistent():
    weights, config = ZOO_DIR / "digits_clip.safetensors", ZOO_DIR / "digits_clip.json"
    assert weights.stat().st_size < 2_000_000
    meta = json.loads(config.read_text())
    assert meta["weights_file_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    for key in ("seed", "epochs", "lr", "seconds", "script"):
        assert key in meta["training"]
    assert meta["metrics"]["test"]["accuracy"] >= 0.95
    assert len(meta["class_names"]) == 8 and meta["n_neg"] <= len(meta["neg_labels"])


def test_shipped_digits_clip_loads_offline_and_classifies_zero_shot(no_network, digits_test):
    S.clear_cache()
    loaded = S.open_clip_model_source("digits_clip")
    assert no_network == []
    meta = json.loads((ZOO_DIR / "digits_clip.json").read_text())
    recorded = meta["metrics"]["test"]["accuracy"]
    assert loaded.info["recorded_test_accuracy"] == recorded
    assert loaded.class_names == meta["class_names"]
    acc = zero_shot_accuracy(loaded, digits_test)
    assert acc >= recorded - 0.01, f"digits_clip zero-shot accuracy {acc:.4f} < recorded {recorded:.4f} - 0.01"
    clip = loaded.info["clip"]
    assert clip["negative_text_features"].shape == (meta["n_neg"], 32)
    assert loaded.preprocess(torch.rand(1, 16, 16)).shape == (3, 16, 16)
    # the dataset's own class names ("0".."7") work too: both spellings were trained
    numerals = S.open_clip_model_source("digits_clip", options={"class_names": [str(d) for d in range(8)]})
    assert zero_shot_accuracy(numerals, digits_test) >= 0.95


def test_minmax_quantizes_the_visual_attention_of_the_shipped_clip(digits_test):
    from pytest_qrel.quantize import FakeQuantLinear, quantize, validate_quantizer

    loaded = S.open_clip_model_source("digits_clip")
    train = load_dataset("embedded:digits", split="train")
    calib = torch.stack([loaded.preprocess(train[i][0]) for i in range(64)])
    q = quantize(loaded.module, validate_quantizer("minmax", 8, 8), calib)
    fq = {n for n, m in q.named_modules() if isinstance(m, FakeQuantLinear)}
    assert "visual.transformer.resblocks.0.attn.qkv" in fq and "proj" in fq
    assert torch.equal(q.class_text_features, loaded.module.class_text_features)  # the head stays FP32
    x = torch.stack([loaded.preprocess(digits_test[i][0]) for i in range(len(digits_test))])
    with torch.no_grad():
        logits, feats = q.forward_with_features(x)
    assert feats.shape == (len(x), 32)
    assert float((logits.argmax(1).numpy() == digits_test.labels).mean()) >= 0.95


def test_corrupt_shipped_weights_are_a_model_error(tmp_path, monkeypatch):
    for suffix in ("safetensors", "json"):
        shutil.copy(ZOO_DIR / f"digits_clip.{suffix}", tmp_path / f"digits_clip.{suffix}")
    data = bytearray((tmp_path / "digits_clip.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (tmp_path / "digits_clip.safetensors").write_bytes(bytes(data))
    monkeypatch.setattr(S, "ZOO_DIR", tmp_path)
    S.clear_cache()
    with pytest.raises(ModelError, match="corrupt.*train_digits_clip"):
        S.open_clip_model_source("digits_clip")
    (tmp_path / "digits_clip.safetensors").unlink()
    with pytest.raises(ModelError, match="missing"):
        S.open_clip_model_source("digits_clip")


def test_retraining_the_digits_clip(tmp_path, monkeypatch, digits_test):
    """A short re-training run (10 of the 20 epochs) already classifies zero-shot and loads through the source."""
    from pytest_qrel.zoo import train_digits_clip as T

    threads = torch.get_num_threads()
    assert T.main(["--out", str(tmp_path), "--quiet", "--epochs", "10"]) == 0
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    meta = json.loads((tmp_path / "digits_clip.json").read_text())
    assert meta["training"]["epochs"] == 10 and (tmp_path / "digits_clip.safetensors").stat().st_size < 2_000_000
    monkeypatch.setattr(S, "ZOO_DIR", tmp_path)
    S.clear_cache()
    loaded = S.open_clip_model_source("digits_clip")
    acc = zero_shot_accuracy(loaded, digits_test)
    assert acc >= 0.85, f"10-epoch digits_clip reaches only {acc:.4f}"
    assert abs(acc - meta["metrics"]["test"]["accuracy"]) < 1e-5


def test_engine_builds_the_zero_shot_head_from_the_id_class_names(tmp_path, monkeypatch):
    from pathlib import Path

    import pytest_qrel.models.base as base
    from pytest_qrel import Engine, load_suite

    seen = {}
    real = base.load_model

    def spy(source, *, options=None, base_dir=None):
        seen[source] = dict(options or {})
        return real(source, options=options, base_dir=base_dir)

    monkeypatch.setattr(base, "load_model", spy)
    monkeypatch.setattr("pytest_qrel.models.load_model", spy)
    suite = load_suite(Path(__file__).resolve().parents[1] / "suites/demo_clip.yaml")
    Engine(baseline_dir=tmp_path).model(suite, "clip_digits")
    assert seen["open_clip:digits_clip"]["class_names"] == ["0", "1", "2", "3", "4", "5", "6", "7"]


def test_the_zero_shot_head_does_not_depend_on_import_order():
    """In a fresh interpreter that has imported nothing of the model sources, the engine must still
    pass the ID class names (the model-source registry fills lazily), else the fingerprint of the
    same suite differs between processes and stored baselines look stale."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "from pytest_qrel import Engine, load_suite\n"
        "import sys, tempfile\n"
        "suite = load_suite(sys.argv[1])\n"
        "print(Engine(baseline_dir=tempfile.mkdtemp()).model(suite, 'clip_digits').class_names)\n"
    )
    suite = Path(__file__).resolve().parents[1] / "suites/demo_clip.yaml"
    out = subprocess.run([sys.executable, "-c", code, str(suite)], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip() == "['0', '1', '2', '3', '4', '5', '6', '7']"


def test_display_names_of_the_id_set_build_the_head_and_keep_the_folder_order(tmp_path):
    """``class_names:`` of an image folder renames its classes for the prompts (here: folders of
    photos named for the shipped CLIP's words, a dry run). The head is built from those names in the
    folders' order, so the folders are the head's classes: not refused as 'not classes of the model'."""
    from PIL import Image

    from pytest_qrel import Engine, load_suite, run

    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for k, folder in enumerate(("astronaut", "cat", "coffee")):
            (tmp_path / "photos" / split / folder).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(60 * k, 60 * k + 80, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "photos" / split / folder / f"{i}.png")
    (tmp_path / "s.yaml").write_text(
        "version: 1\nname: s\nmodels:\n  clip: {source: \"open_clip:digits_clip\"}\n"
        "datasets:\n  id: {name: photos, source: \"imagefolder:photos\", options: {split_dirs: {train: train, test: test}, "
        "class_names: [zero, one, two]}}\n  ood: [{name: noise, source: \"embedded:noise\"}]\n"
        "quantizers:\n  W8A8: {method: minmax, calibration: {samples: 4}}\nscores: [mcm]\n"
        "checks: [\"W8A8 top1 delta <= 100pp\"]\n"
    )
    engine = Engine(baseline_dir=tmp_path / "baselines", cache_dir=tmp_path / "cache", update_baselines=True)
    verdicts = run(load_suite(tmp_path / "s.yaml"), engine=engine)
    assert [v.outcome for v in verdicts] == ["passed"], [v.message for v in verdicts]
    assert engine.model(load_suite(tmp_path / "s.yaml"), "clip").class_names == ["zero", "one", "two"]


def test_random_weights_from_a_config_file_of_your_own(tmp_path, no_network):
    """``pretrained: false`` (+ ``seed``) and ``model_config: <arch>.json``: a dry run of your own
    architecture, offline, reproducible, and another model (digest) for another seed or config."""
    cfg = tmp_path / "qrel-test-random.json"
    cfg.write_text(json.dumps(TINY_CFG))
    opts = {"model_config": cfg.name, "pretrained": False, "class_names": CLASSES, "templates": TEMPLATES,
            "neg_labels": NEG_WORDS, "n_neg": 6, "neglabel_groups": 2, "cache_dir": False}
    torch.manual_seed(123)  # whatever the global RNG holds, the seed decides the weights
    a = S.open_clip_model_source("qrel-test-random", options=opts, base_dir=tmp_path)
    b = S.open_clip_model_source("qrel-test-random", options=opts, base_dir=tmp_path)
    c = S.open_clip_model_source("qrel-test-random", options={**opts, "seed": 1}, base_dir=tmp_path)
    assert a.weights_sha256 == b.weights_sha256 != c.weights_sha256
    assert a.info["weights_from"] == "random init (seed 0)" and a.num_classes == 3 and no_network == []
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(a.module(x), b.module(x))
    cfg.write_text(json.dumps({**TINY_CFG, "quick_gelu": True}))  # the same weights' shapes, another model
    assert S.open_clip_model_source("qrel-test-random", options=opts, base_dir=tmp_path).weights_sha256 != a.weights_sha256
    for arg, options, message in [
        ("qrel-test-random/openai", opts, "has no pretrained tag"),
        ("other-name", opts, "write the model as 'open_clip:qrel-test-random'"),
        ("qrel-test-random", {**opts, "model_config": "nope.json"}, f"{tmp_path.resolve() / 'nope.json'} does not exist"),
        ("qrel-test-random", {**opts, "checkpoint": "w.safetensors"}, "'pretrained: false' (random weights) and option 'checkpoint' contradict"),
        ("ViT-B-32/openai", {"pretrained": False}, "and the pretrained tag 'openai' contradict"),
        ("digits_clip", {"pretrained": False}, "the shipped model takes no 'pretrained'"),
    ]:
        with pytest.raises(ModelError, match=re.escape(message)):
            S.open_clip_model_source(arg, options=options, base_dir=tmp_path)
