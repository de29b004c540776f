"""CLIP OOD scores from image and text embeddings: ``mcm``, ``neglabel``, ``genneg``. Higher = more ID.

Importing this module registers them in :data:`pytest_qrel.scores.SCORES` (defined in :mod:`.score_registry`) with metadata
``needs="clip"``. Each has the signature::

    fn(logits: (N, C) array, features: (N, D) array, clip: dict) -> (N,) float64 array

``features`` are the image embeddings of the (possibly quantized) visual tower
(``ZeroShotCLIP.image_features``); ``clip`` is ``LoadedModel.info["clip"]`` of the FP32 model
(:mod:`pytest_qrel.models.open_clip_source`): fixed text embeddings ``class_text_features`` (C, D),
``negative_text_features`` (M, D), ``generic_text_features`` (G, D) and the scalars ``mcm_tau``
(default 1), ``neg_scale`` (default 100, CLIP's logit scale) and ``neglabel_groups`` (default 100).
Image and text rows are L2-normalised here (a no-op for the source's outputs), so ``cos`` below is
a cosine similarity. ``logits`` are accepted for a uniform signature and checked for their row
count; the scores are computed from the embeddings. No torch: anything ``np.asarray`` accepts
(CPU tensors included) works.

These scores follow Bouguerra et al. (CLIP quantization beyond accuracy), which evaluates MSP,
Energy, MCM, NegLabel and a generic-negative score on zero-shot CLIP with a frozen FP32 text tower.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from .score_registry import SCORES

__all__ = ["compute_clip_scores", "genneg", "mcm", "neglabel"]

DEFAULT_NEG_SCALE = 100.0
DEFAULT_NEGLABEL_GROUPS = 100
DEFAULT_MCM_TAU = 1.0
NEGLABEL_SEED = 0
_CHUNK = 2048  # rows per block: keeps (rows x M) similarity blocks small for 10k negatives


def _unit_rows(x: Any, what: str, dim: int | None = None) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise ValueError(f"{what} must be a non-empty 2-D array, got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise ValueError(f"{what} has dimension {a.shape[1]}, the image features have {dim}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    norms = np.linalg.norm(a, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"{what} has an all-zero row (it cannot be normalised)")
    return a / norms


def _inputs(logits: Any, features: Any, clip: Mapping[str, Any], text_key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    feats = _unit_rows(features, "features")
    if logits is not None:
        lg = np.asarray(logits)
        if lg.ndim != 2 or lg.shape[0] != feats.shape[0]:
            raise ValueError(f"logits must be (N, C) with N = {feats.shape[0]} (the features' rows), got {lg.shape}")
    if "class_text_features" not in clip or clip.get(text_key) is None:
        raise ValueError(f"the clip dict needs 'class_text_features' and '{text_key}'")
    cls = _unit_rows(clip["class_text_features"], "class_text_features", feats.shape[1])
    other = _unit_rows(clip[text_key], text_key, feats.shape[1]) if text_key != "class_text_features" else cls
    return feats, cls, other


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    m = a.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.exp(a - m).sum(axis=axis))


def _sigmoid(z: np.ndarray) -> np.ndarray:
    out = np.empty_like(z)
    pos = z >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-z[pos]))
    ez = np.exp(z[~pos])
    out[~pos] = ez / (1.0 + ez)
    return out


def _positive(clip: Mapping[str, Any], key: str, default: float) -> float:
    value = float(clip.get(key, default))
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"clip['{key}'] must be a positive number, got {value}")
    return value


@SCORES.register("mcm", needs="clip")
def mcm(logits: Any, features: Any, clip: Mapping[str, Any]) -> np.ndarray:
    r"""Maximum Concept Matching (Ming et al. 2022), in [1/C, 1].

    .. math:: \mathrm{MCM}(x) = \max_{i \le C} \frac{e^{\cos(x, t_i)/\tau}}{\sum_{j \le C} e^{\cos(x, t_j)/\tau}}

    with image embedding ``x``, class text embeddings ``t_i`` (``clip["class_text_features"]``) and
    ``tau = clip.get("mcm_tau", 1.0)`` (the reference implementation's T = 1: the softmax is taken
    over raw cosines, not over the logit-scaled logits, so MCM differs from MSP).

    >>> clip = {"class_text_features": [[1.0, 0.0], [0.0, 1.0]]}
    >>> round(float(mcm(None, [[1.0, 0.0]], clip)[0]), 6) == round(float(np.e / (np.e + 1)), 6)
    True
    """
    feats, cls, _ = _inputs(logits, features, clip, "class_text_features")
    s = feats @ cls.T / _positive(clip, "mcm_tau", DEFAULT_MCM_TAU)
    return np.exp(s.max(axis=1) - _logsumexp(s, axis=1))


@SCORES.register("neglabel", needs="clip")
def neglabel(logits: Any, features: Any, clip: Mapping[str, Any]) -> np.ndarray:
    r"""NegLabel (Jiang et al. 2024): the softmax mass on the ID labels against mined negative labels, in (0, 1).

    With ``s = clip.get("neg_scale", 100)`` (the reference's ``100 * cos / t`` with t = 1; CLIP's
    logit scale), ID class embeddings ``t_1..t_C`` and negative-label embeddings ``n_1..n_M``
    (``clip["negative_text_features"]``, farthest from the ID classes first), the last ``M mod K``
    negatives are dropped, the rest shuffled with a fixed seed (0) and split into
    ``K = min(clip.get("neglabel_groups", 100), M)`` equal groups ``G_k`` (the reference's grouping
    strategy); then

    .. math:: \mathrm{NegLabel}(x) = \frac1K \sum_{k=1}^{K}
              \frac{\sum_{i \le C} e^{s \cos(x, t_i)}}{\sum_{i \le C} e^{s \cos(x, t_i)} + \sum_{j \in G_k} e^{s \cos(x, n_j)}}

    (K = 1 is the ungrouped score). Computed in log space:
    ``sigmoid(logsumexp_i(s cos_i) - logsumexp_{j in G_k}(s cos_j))``.

    >>> clip = {"class_text_features": [[1.0, 0.0]], "negative_text_features": [[0.0, 1.0]], "neg_scale": 1.0}
    >>> round(float(neglabel(None, [[1.0, 0.0]], clip)[0]), 6) == round(float(np.e / (np.e + 1)), 6)
    True
    """
    feats, cls, neg = _inputs(logits, features, clip, "negative_text_features")
    scale = _positive(clip, "neg_scale", DEFAULT_NEG_SCALE)
    groups = int(clip.get("neglabel_groups", DEFAULT_NEGLABEL_GROUPS))
    if groups < 1:
        raise ValueError(f"clip['neglabel_groups'] must be >= 1, got {groups}")
    m = neg.shape[0]
    k = min(groups, m)
    kept = m - m % k  # the reference drops the last M mod K negatives (the least far), then shuffles
    order = np.random.default_rng(NEGLABEL_SEED).permutation(kept) if k > 1 else np.arange(kept)
    neg = neg[order]
    per = kept // k
    out = np.empty(feats.shape[0], dtype=np.float64)
    for start in range(0, feats.shape[0], _CHUNK):
        f = feats[start : start + _CHUNK]
        pos = _logsumexp(scale * f @ cls.T, axis=1)  # (n,)
        negs = _logsumexp((scale * f @ neg.T).reshape(len(f), k, per), axis=2)  # (n, K)
        out[start : start + len(f)] = _sigmoid(pos[:, None] - negs).mean(axis=1)
    return out


@SCORES.register("genneg", needs="clip")
def genneg(logits: Any, features: Any, clip: Mapping[str, Any]) -> np.ndarray:
    r"""Generic-negative score: the softmax mass on the ID labels against generic prompts, in (0, 1).

    The negatives are generic prompts such as "a photo of something" (``clip["generic_text_features"]``,
    ``g_1..g_G``) instead of mined labels: an image that matches "something" at least as well as any
    ID class is likely OOD. Same form and scale ``s = clip.get("neg_scale", 100)`` as :func:`neglabel`,
    one group:

    .. math:: \mathrm{GenNeg}(x) = \frac{\sum_{i \le C} e^{s \cos(x, t_i)}}
              {\sum_{i \le C} e^{s \cos(x, t_i)} + \sum_{j \le G} e^{s \cos(x, g_j)}}

    >>> clip = {"class_text_features": [[1.0, 0.0]], "generic_text_features": [[0.0, 1.0]], "neg_scale": 1.0}
    >>> round(float(genneg(None, [[0.0, 1.0]], clip)[0]), 6) == round(float(1 / (1 + np.e)), 6)
    True
    """
    feats, cls, gen = _inputs(logits, features, clip, "generic_text_features")
    scale = _positive(clip, "neg_scale", DEFAULT_NEG_SCALE)
    pos = _logsumexp(scale * feats @ cls.T, axis=1)
    neg = _logsumexp(scale * feats @ gen.T, axis=1)
    return _sigmoid(pos - neg)


def compute_clip_scores(logits: Any, features: Any, clip: Mapping[str, Any], names: Iterable[str] | str) -> dict[str, np.ndarray]:
    """Compute each named ``needs="clip"`` score: ``{name: (N,) float64 array}``.

    Raises:
        UnknownNameError: a name is not registered.
        ValueError: a named score does not need clip inputs, or bad inputs.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    fns = {name: SCORES.get(name) for name in names}
    for name in names:
        needs = SCORES.meta(name).get("needs")
        if needs != "clip":
            raise ValueError(f"score '{name}' needs {needs!r}, not clip embeddings")
    return {name: np.asarray(fn(logits, features, clip), dtype=np.float64) for name, fn in fns.items()}
