"""CLIP OOD scores (mcm, neglabel, genneg): registry, hand-computed values, direction, validation."""

from __future__ import annotations

import numpy as np
import pytest

from pytest_qrel import clip_scores as C
from pytest_qrel.scores import SCORES, compute_scores

E = np.e
I2 = np.eye(2)
I3 = np.eye(3)


def test_registered_with_needs_clip():
    for name in ("mcm", "neglabel", "genneg"):
        assert name in SCORES
        assert SCORES.meta(name)["needs"] == "clip"
    with pytest.raises(ValueError, match="needs 'clip'"):
        compute_scores(np.zeros((2, 3)), ["mcm"])
    with pytest.raises(ValueError, match="not clip"):
        C.compute_clip_scores(np.zeros((1, 2)), [[1.0, 0.0]], {"class_text_features": I2}, ["msp"])


def test_mcm_hand_computed():
    clip = {"class_text_features": I2}
    # cos = (1, 0): softmax over the raw cosines (tau = 1), not over logit-scaled logits
    assert C.mcm(None, [[1.0, 0.0]], clip)[0] == pytest.approx(E / (E + 1))
    assert C.mcm(None, [[5.0, 0.0]], clip)[0] == pytest.approx(E / (E + 1))  # features are normalised
    # cos = (0.6, 0.8)
    assert C.mcm(None, [[0.6, 0.8]], clip)[0] == pytest.approx(np.exp(0.8) / (np.exp(0.6) + np.exp(0.8)))
    assert C.mcm(None, [[1.0, 0.0]], {**clip, "mcm_tau": 0.5})[0] == pytest.approx(E**2 / (E**2 + 1))
    # the logits do not enter: MCM is not MSP of the (scaled) logits
    assert C.mcm(np.array([[100.0, -100.0]]), [[1.0, 0.0]], clip)[0] == pytest.approx(E / (E + 1))


def test_neglabel_hand_computed_without_groups():
    clip = {"class_text_features": I3[:2], "negative_text_features": I3[2:], "neg_scale": 1.0, "neglabel_groups": 1}
    # cos to ID (1, 0), to the negative 0: ID mass (e + 1) / (e + 1 + 1)
    assert C.neglabel(None, [[1.0, 0.0, 0.0]], clip)[0] == pytest.approx((E + 1) / (E + 2))
    # aligned with the negative: (1 + 1) / (1 + 1 + e)
    assert C.neglabel(None, [[0.0, 0.0, 1.0]], clip)[0] == pytest.approx(2 / (2 + E))
    # the scale multiplies the cosines (the reference's 100 * cos)
    two = C.neglabel(None, [[1.0, 0.0, 0.0]], {**clip, "neg_scale": 2.0})[0]
    assert two == pytest.approx((E**2 + 1) / (E**2 + 2))
    # default scale 100 (CLIP's): an image on a negative has almost no ID mass, on a class almost all
    default = {k: v for k, v in clip.items() if k != "neg_scale"}
    assert C.neglabel(None, [[0.0, 0.0, 1.0]], default)[0] == pytest.approx(2 * np.exp(-100), rel=1e-6)
    assert C.neglabel(None, [[1.0, 0.0, 0.0]], default)[0] == pytest.approx(1.0)


def test_neglabel_groups_average_the_id_mass_per_group():
    # one class, M identical negatives orthogonal to it; image on the class: cos 1 to the class, 0 to negatives
    def clip(m, groups):
        return {"class_text_features": [[1.0, 0.0]], "negative_text_features": [[0.0, 1.0]] * m,
                "neg_scale": 1.0, "neglabel_groups": groups}  # fmt: skip

    x = [[1.0, 0.0]]
    assert C.neglabel(None, x, clip(4, 1))[0] == pytest.approx(E / (E + 4))
    assert C.neglabel(None, x, clip(4, 2))[0] == pytest.approx(E / (E + 2))  # 2 groups of 2
    assert C.neglabel(None, x, clip(5, 2))[0] == pytest.approx(E / (E + 2))  # the 5th is dropped
    assert C.neglabel(None, x, clip(3, 100))[0] == pytest.approx(E / (E + 1))  # K = min(100, M)


def test_neglabel_groups_follow_the_seeded_shuffle():
    rng = np.random.default_rng(1)
    neg = rng.normal(size=(7, 4))
    cls = rng.normal(size=(2, 4))
    x = rng.normal(size=(3, 4))
    clip = {"class_text_features": cls, "negative_text_features": neg, "neg_scale": 3.0, "neglabel_groups": 3}
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)  # noqa: E731
    f, c, n = unit(x), unit(cls), unit(neg)
    order = np.random.default_rng(0).permutation(6)  # 7 mod 3 = 1 dropped (the last), then shuffled
    expected = np.zeros(3)
    for g in range(3):
        group = n[order[2 * g : 2 * g + 2]]
        pos = np.exp(3 * f @ c.T).sum(1)
        expected += pos / (pos + np.exp(3 * f @ group.T).sum(1)) / 3
    assert np.allclose(C.neglabel(None, x, clip), expected)


def test_genneg_hand_computed():
    clip = {"class_text_features": I3[:2], "generic_text_features": I3[2:], "neg_scale": 1.0}
    assert C.genneg(None, [[1.0, 0.0, 0.0]], clip)[0] == pytest.approx((E + 1) / (E + 2))
    assert C.genneg(None, [[0.0, 0.0, 1.0]], clip)[0] == pytest.approx(2 / (2 + E))
    two_generic = {**clip, "generic_text_features": [[0.0, 0.0, 1.0], [0.0, 0.6, 0.8]]}
    got = C.genneg(None, [[0.0, 0.0, 1.0]], two_generic)[0]
    assert got == pytest.approx(2 / (2 + E + np.exp(0.8)))


def test_higher_means_more_in_distribution_on_a_constructed_example():
    # classes along e0, e1; mined negatives and generic prompts along e2, e3
    d = np.eye(4)
    clip = {
        "class_text_features": d[:2],
        "negative_text_features": d[2:],
        "generic_text_features": d[2:],
        "neglabel_groups": 1,
    }
    id_x = np.array([[0.9, 0.1, 0.3, 0.0], [0.1, 0.95, 0.0, 0.2]])
    ood_x = np.array([[0.1, 0.1, 0.9, 0.3], [0.2, 0.0, 0.3, 0.9]])
    for name in ("mcm", "neglabel", "genneg"):
        fn = SCORES.get(name)
        s_id, s_ood = fn(None, id_x, clip), fn(None, ood_x, clip)
        assert s_id.shape == (2,) and s_id.dtype == np.float64
        assert s_id.min() > s_ood.max(), name
        assert np.all((s_id >= 0) & (s_id <= 1)) and np.all((s_ood >= 0) & (s_ood <= 1))


def test_large_scale_is_stable_and_chunking_is_exact():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(C._CHUNK + 37, 8))
    clip = {
        "class_text_features": rng.normal(size=(5, 8)),
        "negative_text_features": rng.normal(size=(40, 8)),
        "generic_text_features": rng.normal(size=(3, 8)),
        "neg_scale": 100.0,
        "neglabel_groups": 4,
    }
    out = C.compute_clip_scores(np.zeros((len(feats), 5)), feats, clip, ["mcm", "neglabel", "genneg"])
    for name, s in out.items():
        assert s.shape == (len(feats),) and np.isfinite(s).all() and (s >= 0).all() and (s <= 1).all(), name
    head = C.neglabel(None, feats[:10], clip)
    tail = C.neglabel(None, feats[-10:], clip)
    assert np.allclose(out["neglabel"][:10], head) and np.allclose(out["neglabel"][-10:], tail)


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    clip = {"class_text_features": torch.eye(2), "generic_text_features": torch.tensor([[0.6, 0.8]])}
    got = C.genneg(torch.zeros(1, 2), torch.tensor([[1.0, 0.0]]), clip)
    # default scale 100: (e^100 + e^0) / (e^100 + e^0 + e^60)
    assert got[0] == pytest.approx(1 / (1 + np.exp(60) / (np.exp(100) + 1)), rel=1e-12)


@pytest.mark.parametrize(
    ("features", "clip", "logits", "match"),
    [
        ([[1.0, 0.0]], {"class_text_features": I3}, None, "dimension 3"),
        ([[1.0, 0.0]], {"class_text_features": I2}, np.zeros((2, 2)), "N = 1"),
        ([[np.nan, 0.0]], {"class_text_features": I2}, None, "NaN"),
        ([1.0, 0.0], {"class_text_features": I2}, None, "2-D"),
        ([[0.0, 0.0]], {"class_text_features": I2}, None, "all-zero"),
        ([[1.0, 0.0]], {}, None, "class_text_features"),
        ([[1.0, 0.0]], {"class_text_features": I2, "mcm_tau": 0}, None, "mcm_tau"),
    ],
)
def test_mcm_validates_its_inputs(features, clip, logits, match):
    with pytest.raises(ValueError, match=match):
        C.mcm(logits, features, clip)


def test_negative_scores_need_their_text_features():
    with pytest.raises(ValueError, match="negative_text_features"):
        C.neglabel(None, [[1.0, 0.0]], {"class_text_features": I2})
    with pytest.raises(ValueError, match="generic_text_features"):
        C.genneg(None, [[1.0, 0.0]], {"class_text_features": I2})
    with pytest.raises(ValueError, match="neglabel_groups"):
        C.neglabel(None, [[1.0, 0.0]], {"class_text_features": I2, "negative_text_features": I2, "neglabel_groups": 0})


def test_scores_separate_id_from_noise_on_the_shipped_clip():
    """End to end: the shipped digit CLIP's embeddings, ID test digits vs Gaussian noise."""
    import torch

    from pytest_qrel.data import load_dataset
    from pytest_qrel.metrics import auroc
    from pytest_qrel.models import open_clip_source as S

    loaded = S.open_clip_model_source("digits_clip")

    def embed(name):
        ds = load_dataset(f"embedded:{name}", split="test")
        x = torch.stack([loaded.preprocess(ds[i][0]) for i in range(len(ds))])
        with torch.no_grad():
            logits, feats = loaded.module.forward_with_features(x)
        return logits.numpy(), feats.numpy()

    (id_l, id_f), (ood_l, ood_f) = embed("digits"), embed("noise")
    names = ["mcm", "neglabel", "genneg"]
    s_id = C.compute_clip_scores(id_l, id_f, loaded.info["clip"], names)
    s_ood = C.compute_clip_scores(ood_l, ood_f, loaded.info["clip"], names)
    for name in names:
        assert auroc(s_id[name], s_ood[name]) > 0.6, name
    assert auroc(s_id["mcm"], s_ood["mcm"]) > 0.9
