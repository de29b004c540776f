"""Logit masks (ImageNet-R / -A protocol): labels map to the masked positions and every per-sample
array is computed on the masked logits."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import pytest_qrel
from pytest_qrel.data import load_dataset
from pytest_qrel.data.classnames import CLASS_LISTS
from pytest_qrel.data.logit_masks import (
    LOGIT_MASKS,
    resolve_logit_mask,
    restrict_clip,
    restrict_logits,
)
from pytest_qrel.data.shifts import ShiftedImageSet
from pytest_qrel.errors import DataError, SpecError, UnknownNameError

MASKED = ("1", "3", "5", "6")  # four of the digits ViT's eight classes


def digit_folder(root, classes=MASKED, per_class=6):
    """``root/<digit>/<i>.png``: 16 x 16 grey test digits of ``classes`` (as the model's class names)."""
    digits = load_dataset("embedded:digits", split="test")
    for name in classes:
        (root / name).mkdir(parents=True)
        picks = np.flatnonzero(digits.labels == int(name))[:per_class]
        for i, k in enumerate(picks):
            arr = (digits[int(k)][0][0].numpy() * 255).round().astype(np.uint8)
            Image.fromarray(arr, mode="L").save(root / name / f"{i}.png")
    return root


def test_builtin_masks_are_200_imagenet_classes_in_index_order():
    imagenet = CLASS_LISTS.get("imagenet1k")()
    for name in ("imagenet_r", "imagenet_a"):
        assert name in LOGIT_MASKS
        ids = CLASS_LISTS.get(name)()
        assert len(ids) == 200 == len(set(ids))
        positions = [imagenet.index(w) for w in ids]
        assert positions == sorted(positions)
    assert len(set(CLASS_LISTS.get("imagenet_r")()) & set(CLASS_LISTS.get("imagenet_a")())) == 86
    # spot checks against the authors' lists: ImageNet-A's first classes are 1k indices 6, 11, 13 (stingray, goldfinch, junco)
    assert [imagenet.index(w) for w in CLASS_LISTS.get("imagenet_a")()[:3]] == [6, 11, 13]
    assert CLASS_LISTS.get("imagenet_r")()[:2] == ["n01443537", "n01484850"]  # goldfish, great white shark


def test_imagenet_r_folder_labels_are_positions_among_the_200(tmp_path):
    for wnid in ("n01443537", "n02106662", "n12267677"):  # the 1st, a middle and the last ImageNet-R class
        (tmp_path / "r" / wnid).mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "r" / wnid / "a.png")
    ds = load_dataset(f"imagefolder:{tmp_path / 'r'}", split="test", options={"logit_mask": "imagenet_r"})
    r = CLASS_LISTS.get("imagenet_r")()
    assert ds.labels.tolist() == [0, r.index("n02106662"), 199]
    assert len(ds.logit_mask) == 200 and ds.logit_mask.n_classes == 1000
    assert ds.class_names[0] == CLASS_LISTS.get("imagenet1k_names")()[1]  # goldfish: readable names of the masked classes
    assert ds.class_order_from == "option 'logit_mask'"
    plain = load_dataset(f"imagefolder:{tmp_path / 'r'}", split="test", options={"classes": "imagenet1k"})
    assert plain.fingerprint != ds.fingerprint and plain.logit_mask is None
    shifted = ShiftedImageSet(ds, "contrast", 1)
    assert shifted.logit_mask is ds.logit_mask  # a corrupted ImageNet-R keeps the mask


def test_mask_errors(tmp_path):
    root = digit_folder(tmp_path / "d", classes=("1",), per_class=1)
    with pytest.raises(UnknownNameError, match=r"unknown logit mask 'imagenet_rr'; did you mean 'imagenet_r'"):
        load_dataset(f"imagefolder:{root}", split="test", options={"logit_mask": "imagenet_rr"})
    with pytest.raises(DataError, match=r"2 class\(es\) not in the model's label space.*: 8, 9"):
        load_dataset(f"imagefolder:{root}", split="test", options={"classes": [str(d) for d in range(8)], "logit_mask": ["1", "8", "9"]})
    with pytest.raises(DataError, match="lists class '1' twice"):
        resolve_logit_mask(["1", "1"], classes=["0", "1"], base_dir=tmp_path, where="x")
    with pytest.raises(DataError, match="not 'class_index'"):
        load_dataset(f"imagefolder:{root}", split="test", options={"class_index": {"1": 1}, "logit_mask": ["1"]})
    (tmp_path / "mask.txt").write_text("# two digits\n3\n1\n")
    mask, names = resolve_logit_mask("./mask.txt", classes=[str(d) for d in range(8)], base_dir=tmp_path, where="x")
    assert mask.indices.tolist() == [1, 3] and names == ["1", "3"]  # model index order, whatever the file's


def test_restrict_logits_widths():
    mask, _ = resolve_logit_mask(["b", "d"], classes=list("abcde"), base_dir=None, where="x")
    logits = np.arange(10.0).reshape(2, 5)
    np.testing.assert_array_equal(restrict_logits(logits, mask), [[1, 3], [6, 8]])
    np.testing.assert_array_equal(restrict_logits(logits[:, :2], mask), logits[:, :2])  # a head of the masked classes already
    with pytest.raises(DataError, match="keeps 2 of 5 classes, but the model has 3 outputs"):
        restrict_logits(logits[:, :3], mask, "model 'm' on r")
    clip = {"class_text_features": np.eye(5), "neg_scale": 1.0}
    np.testing.assert_array_equal(restrict_clip(clip, mask)["class_text_features"], np.eye(5)[[1, 3]])


SUITE = """\
version: 1
name: masked
models:
  vit: {source: "embedded:digits_vit"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  shifted:
    - name: masked
      source: "imagefolder:digit_folder"
      options: {classes: ["0", "1", "2", "3", "4", "5", "6", "7"], logit_mask: %s}
scores: [msp, energy]
batch_size: 1024
checks:
  - "all top1 on masked >= 0"
"""


def test_per_sample_arrays_are_those_of_the_masked_logits(tmp_path):
    digit_folder(tmp_path / "digit_folder")
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(SUITE % '["1", "3", "5", "6"]'))
    suite = pytest_qrel.load_suite(path)
    engine = pytest_qrel.Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    verdicts = pytest_qrel.run(suite, engine=engine)
    assert all(v.outcome == "passed" for v in verdicts), [v.message for v in verdicts]
    got = engine.samples(suite, "vit", "FP32", "masked")

    # by hand: the model's 8 logits of every image, columns 1, 3, 5, 6 kept, label = position among them
    from pytest_qrel.models import load_model

    model = load_model("embedded:digits_vit")
    ds = load_dataset(f"imagefolder:{tmp_path / 'digit_folder'}", split="test", options={"mode": "L"})
    with torch.no_grad():
        full = torch.cat([model.module(model.preprocess(ds[i][0])[None]) for i in range(len(ds))]).double().numpy()
    logits = full[:, [1, 3, 5, 6]]
    labels = np.array([MASKED.index(ds.class_order[y]) for y in ds.labels])
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    np.testing.assert_array_equal(got["label"], labels)
    np.testing.assert_array_equal(got["pred"], logits.argmax(1))
    np.testing.assert_allclose(got["confidence"], p.max(1), rtol=1e-5)
    np.testing.assert_allclose(got["score.msp"], p.max(1), rtol=1e-5)
    np.testing.assert_allclose(got["nll"], -np.log(p[np.arange(len(p)), labels]), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["score.energy"], np.log(np.exp(logits).sum(1)), rtol=1e-5)
    # on all eight logits the MSP differs: the mask is what made these numbers
    p8 = np.exp(full - full.max(1, keepdims=True))
    p8 /= p8.sum(1, keepdims=True)
    assert not np.allclose(got["confidence"], p8.max(1), rtol=1e-3)


def test_unknown_mask_name_fails_when_the_suite_loads(tmp_path):
    digit_folder(tmp_path / "digit_folder", classes=("1",), per_class=1)
    path = tmp_path / "suite.yaml"
    path.write_text(textwrap.dedent(SUITE % "imagenet_aa"))
    with pytest.raises((SpecError, UnknownNameError), match=r"did you mean 'imagenet_a'"):
        pytest_qrel.load_suite(path)


CLIP_SUITE = """\
version: 1
name: masked_clip
models:
  clip: {source: "open_clip:digits_clip"}
datasets:
  id: {name: digits, source: "embedded:digits"}
  shifted:
    - name: masked
      source: "imagefolder:digit_folder"
      options: {classes: ["0", "1", "2", "3", "4", "5", "6", "7"], logit_mask: ["1", "3", "5", "6"]}
scores: [msp, mcm]
batch_size: 1024
checks:
  - "all top1 on masked >= 0"
"""


@pytest.mark.slow
def test_clip_scores_see_only_the_masked_classes_prompts(tmp_path):
    """MCM is computed from the image features and the class prompts' embeddings: with a mask, only
    the masked classes' prompts (the softmax over 4 cosines, not 8)."""
    from pytest_qrel import clip_scores
    from pytest_qrel.models.open_clip_source import open_clip_model_source

    digit_folder(tmp_path / "digit_folder", per_class=3)
    path = tmp_path / "suite.yaml"
    path.write_text(CLIP_SUITE)
    suite = pytest_qrel.load_suite(path)
    engine = pytest_qrel.Engine(baseline_dir=tmp_path / "b", update_baselines=True)
    verdicts = pytest_qrel.run(suite, engine=engine)
    assert all(v.outcome == "passed" for v in verdicts), [v.message for v in verdicts]
    got = engine.samples(suite, "clip", "FP32", "masked")

    loaded = open_clip_model_source("digits_clip", options={"class_names": [str(d) for d in range(8)]})  # the ID set's names
    ds = load_dataset(f"imagefolder:{tmp_path / 'digit_folder'}", split="test")
    x = torch.stack([loaded.preprocess(ds[i][0]) for i in range(len(ds))])
    with torch.no_grad():
        logits, feats = loaded.module.forward_with_features(x)
    clip = loaded.info["clip"]
    keep = [1, 3, 5, 6]
    masked_clip = {**clip, "class_text_features": np.asarray(clip["class_text_features"])[keep]}
    np.testing.assert_allclose(got["score.mcm"], clip_scores.mcm(None, feats.numpy(), masked_clip), rtol=1e-5)
    assert not np.allclose(got["score.mcm"], clip_scores.mcm(None, feats.numpy(), clip), rtol=1e-3)
    np.testing.assert_array_equal(got["pred"], logits.numpy()[:, keep].argmax(1))
