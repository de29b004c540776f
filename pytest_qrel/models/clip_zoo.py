"""Building blocks of the ``open_clip`` model source: the zero-shot module, text encoding, negatives.

The module a CLIP source returns is a :class:`ZeroShotCLIP`: the **visual tower only**, plus fixed
(non-parameter) buffers that hold the class text embeddings and the logit scale::

    image_features(x) = normalize(proj(visual(x)))                       (B, D), unit rows
    forward(x)        = logit_scale * image_features(x) @ class_text.T   (B, C) zero-shot logits

so a quantizer that walks the module (e.g. replaces every ``nn.Linear``) touches only the image
encoder; the text encoder is run once, in FP32, when the model is loaded, and is then dropped.

Two conversions make open_clip's ViT visual tower quantizable like a timm ViT (both are exact up
to float rounding, both are on by default and can be turned off with ``linear_attention: false``):

- every ``nn.MultiheadAttention`` of its residual blocks becomes a :class:`LinearSelfAttention`
  with explicit ``qkv`` and ``proj`` ``nn.Linear`` layers. ``nn.MultiheadAttention`` keeps its
  input projection as a bare parameter and reads ``out_proj.weight`` directly, so a quantizer that
  swaps ``nn.Linear`` modules would silently leave all attention projections in FP32;
- the visual output projection (a bare ``(width, D)`` parameter) becomes the ``nn.Linear``
  ``ZeroShotCLIP.proj`` (no bias).

Text embeddings follow open_clip's ``build_zero_shot_classifier``: each prompt is encoded and
L2-normalised, the prompts of a class are averaged and the mean is normalised again.

The tiny digit CLIP shipped in :mod:`pytest_qrel.zoo` uses open_clip's own ``SimpleTokenizer``
(``open_clip.tokenize``, offline) followed by :class:`RemappedTokenizer`, which maps the 49,408 BPE
ids onto the few hundred the model keeps (so its embedding table stays small).

Importing this module imports torch but not open_clip.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GENERIC_PROMPTS",
    "TEXT_STATS",
    "LinearSelfAttention",
    "RemappedTokenizer",
    "ZeroShotCLIP",
    "build_clip",
    "encode_texts",
    "linearize_attention",
    "mine_negative_labels",
    "text_tower_sha256",
    "zero_shot_weights",
]

GENERIC_PROMPTS: tuple[str, ...] = (
    "a photo of something.",
    "a photo of an object.",
    "a photo of a thing.",
    "a photo.",
    "an image of something.",
    "a picture of something.",
)
"""Default generic negative prompts of the ``genneg`` score ("a photo of something", ...)."""

TEXT_STATS: Counter[str] = Counter()
"""``texts_encoded``: prompts run through a text encoder in this process; ``encode_calls``: batches.
Tests read it to check that cached text embeddings are reused instead of recomputed."""


# --------------------------------------------------------------------------------------------------
# Attention with explicit nn.Linear projections
# --------------------------------------------------------------------------------------------------


class LinearSelfAttention(nn.Module):
    """Multi-head self-attention with ``qkv`` and ``proj`` as ``nn.Linear`` (timm's layout).

    A drop-in replacement for the ``nn.MultiheadAttention`` of open_clip's ``ResidualAttentionBlock``:
    it is called as ``attn(x, x, x, need_weights=False, attn_mask=mask)`` and returns ``(out, None)``.
    Only self-attention is supported (key and value must be the query tensor itself).
    """

    def __init__(self, dim: int, num_heads: int, *, bias: bool = True, batch_first: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    @classmethod
    def from_mha(cls, mha: nn.MultiheadAttention) -> LinearSelfAttention:
        """Copy the weights of a self-attention ``nn.MultiheadAttention`` (same outputs)."""
        dim = mha.embed_dim
        new = cls(dim, mha.num_heads, bias=mha.in_proj_bias is not None, batch_first=mha.batch_first)
        with torch.no_grad():
            new.qkv.weight.copy_(mha.in_proj_weight)
            new.proj.weight.copy_(mha.out_proj.weight)
            if mha.in_proj_bias is not None:
                new.qkv.bias.copy_(mha.in_proj_bias)
                new.proj.bias.copy_(mha.out_proj.bias)
        return new.to(mha.in_proj_weight.dtype)

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor | None = None,
        value: torch.Tensor | None = None,
        need_weights: bool = False,
        attn_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, None]:
        if (key is not None and key is not query) or (value is not None and value is not query):
            raise ValueError("LinearSelfAttention supports self-attention only (key and value must be the query)")
        if need_weights:
            raise ValueError("LinearSelfAttention does not return attention weights")
        x = query if self.batch_first else query.transpose(0, 1)
        n, length, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, length, 3, self.num_heads, dim // self.num_heads).permute(2, 0, 3, 1, 4)
        if attn_mask is not None and attn_mask.dtype != torch.bool:
            attn_mask = attn_mask.to(q.dtype)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        out = self.proj(out.transpose(1, 2).reshape(n, length, dim))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, batch_first={self.batch_first}"


def _convertible(mha: nn.MultiheadAttention) -> bool:
    return bool(
        mha._qkv_same_embed_dim
        and mha.in_proj_weight is not None
        and mha.bias_k is None
        and mha.bias_v is None
        and not mha.add_zero_attn
        and mha.dropout == 0.0
    )


def linearize_attention(module: nn.Module) -> list[str]:
    """Replace, in place, every self-attention ``nn.MultiheadAttention`` named ``attn`` of an open_clip
    ``ResidualAttentionBlock`` inside ``module`` by a :class:`LinearSelfAttention`.

    Returns the qualified names replaced. Cross-attention poolers (``AttentionalPooler``) and
    attention modules with extra key/value biases are left alone.
    """
    from open_clip.transformer import ResidualAttentionBlock

    replaced = []
    for name, block in module.named_modules():
        if isinstance(block, ResidualAttentionBlock) and isinstance(block.attn, nn.MultiheadAttention):
            if not hasattr(block, "ln_1_kv") and _convertible(block.attn):
                block.attn = LinearSelfAttention.from_mha(block.attn)
                replaced.append(f"{name}.attn" if name else "attn")
    return replaced


# --------------------------------------------------------------------------------------------------
# The zero-shot classifier module
# --------------------------------------------------------------------------------------------------


class ZeroShotCLIP(nn.Module):
    """A CLIP zero-shot classifier that holds only the visual tower (see the module docstring).

    Args:
        visual: open_clip's ``model.visual`` (taken over, modified in place when ``linear_attention``).
        class_text_features: (C, D) class text embeddings; normalised here and kept as a buffer.
        logit_scale: the model's own logit scale, ``exp(model.logit_scale)`` (a float, kept as a buffer).
        linear_attention: convert attention and the output projection to ``nn.Linear`` layers.
    """

    class_text_features: torch.Tensor  # buffers registered in __init__ (declared: nn.Module attributes
    logit_scale: torch.Tensor  # type as `Tensor | Module`)

    def __init__(
        self, visual: nn.Module, class_text_features: torch.Tensor, logit_scale: float, *, linear_attention: bool = True
    ) -> None:
        super().__init__()
        self.visual = visual
        self.proj: nn.Module = nn.Identity()
        if linear_attention:
            linearize_attention(self.visual)
            proj = getattr(visual, "proj", None)
            if isinstance(proj, nn.Parameter) and proj.ndim == 2:
                linear = nn.Linear(proj.shape[0], proj.shape[1], bias=False).to(proj.dtype)
                with torch.no_grad():
                    linear.weight.copy_(proj.detach().T)
                visual.register_parameter("proj", None)  # (visual.proj = None) the tower now returns the pooled token; self.proj projects it
                self.proj = linear
        text = F.normalize(class_text_features.detach().float(), dim=-1)
        self.register_buffer("class_text_features", text.clone())
        self.register_buffer("logit_scale", torch.tensor(float(logit_scale), dtype=torch.float32))

    @property
    def num_classes(self) -> int:
        return int(self.class_text_features.shape[0])

    def image_features(self, x: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings (B, D)."""
        return F.normalize(self.proj(self.visual(x)), dim=-1)

    def logits_from_features(self, features: torch.Tensor) -> torch.Tensor:
        """``logit_scale * features @ class_text.T`` (B, C)."""
        return self.logit_scale * features @ self.class_text_features.T

    def forward_with_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(logits (B, C), image_features (B, D))`` from one pass through the visual tower."""
        features = self.image_features(x)
        return self.logits_from_features(features), features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.image_features(x))

    def extra_repr(self) -> str:
        c, d = self.class_text_features.shape
        return f"classes={c}, embed_dim={d}, logit_scale={float(self.logit_scale):.4g}"


# --------------------------------------------------------------------------------------------------
# Text side
# --------------------------------------------------------------------------------------------------


class RemappedTokenizer:
    """open_clip's ``SimpleTokenizer`` (``open_clip.tokenize``) followed by an id map onto a small vocabulary.

    ``kept_ids`` are the BPE ids the model has embeddings for, in ascending order and *without* the
    start / end-of-text ids. New ids: 0 = padding and unknown tokens, 1..K = ``kept_ids``, K+1 =
    start of text, K+2 = end of text, so the end-of-text token keeps the largest id (open_clip's
    text tower pools at ``argmax`` of the ids). ``vocab_size`` is K+3.
    """

    def __init__(self, kept_ids: Sequence[int], context_length: int) -> None:
        from open_clip.tokenizer import SimpleTokenizer

        base = SimpleTokenizer()
        self.sot, self.eot = base.sot_token_id, base.eot_token_id
        kept = sorted({int(i) for i in kept_ids} - {self.sot, self.eot, 0})
        self.kept_ids = kept
        self.context_length = int(context_length)
        table = torch.zeros(len(base.encoder), dtype=torch.int64)
        table[torch.tensor(kept, dtype=torch.int64)] = torch.arange(1, len(kept) + 1)
        table[self.sot] = len(kept) + 1
        table[self.eot] = len(kept) + 2
        self._table = table

    @property
    def vocab_size(self) -> int:
        return len(self.kept_ids) + 3

    @staticmethod
    def ids_for(texts: Sequence[str], context_length: int) -> list[int]:
        """The BPE ids that ``texts`` use (what a model trained on them needs to keep)."""
        import open_clip

        tokens = open_clip.tokenize(list(texts), context_length=context_length)
        return sorted({int(t) for t in tokens.unique()})

    def unknown_words(self, texts: Sequence[str]) -> list[str]:
        """The texts with at least one token outside the kept vocabulary (they map to id 0)."""
        import open_clip

        tokens = open_clip.tokenize(list(texts), context_length=self.context_length)
        known = set(self.kept_ids) | {self.sot, self.eot, 0}
        return [t for t, row in zip(texts, tokens) if any(int(i) not in known for i in row)]

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        import open_clip

        if isinstance(texts, str):
            texts = [texts]
        return self._table[open_clip.tokenize(list(texts), context_length=self.context_length)]

    def describe(self) -> str:
        return f"open_clip SimpleTokenizer, context {self.context_length}, remapped to {self.vocab_size} ids"


def build_clip(architecture: dict[str, Any], *, init: bool = True) -> Any:
    """An open_clip ``CLIP`` from ``{"embed_dim", "vision_cfg", "text_cfg", "quick_gelu"}``.

    ``init=False`` (for loading weights right after) leaves torch's global RNG state untouched.
    """
    from open_clip.model import CLIP

    arch = dict(architecture)
    if init:
        return CLIP(**arch)
    with torch.random.fork_rng(devices=[]):
        return CLIP(**arch)


def text_tower_sha256(clip_model: nn.Module) -> str:
    """SHA-256 over every tensor of a full open_clip model except the visual tower and logit scale/bias."""
    h = hashlib.sha256()
    for name, tensor in sorted(clip_model.state_dict().items()):
        if name.startswith("visual.") or name in ("logit_scale", "logit_bias"):
            continue
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def _trimmable(clip_model: Any) -> bool:
    """True for open_clip's ``CLIP`` text tower with a causal mask and argmax (end-of-text) pooling."""
    from open_clip.model import CLIP

    if type(clip_model) is not CLIP or getattr(clip_model, "text_pool_type", None) != "argmax":
        return False
    mask = getattr(clip_model, "attn_mask", None)
    if mask is None or mask.ndim != 2:
        return False
    causal = torch.full(mask.shape, float("-inf"), dtype=mask.dtype, device=mask.device).triu(1)
    return bool(torch.equal(mask, causal))


def _encode_trimmed(clip_model: Any, tokens: torch.Tensor) -> torch.Tensor:
    """``clip_model.encode_text(tokens)`` computed on the first ``n`` positions only, ``n`` = last
    end-of-text position + 1. Exact for a causal text tower pooled at the end-of-text token: positions
    after it (padding) cannot influence it. CLIP's context is 77 tokens; prompts use ~10, so this is
    several times faster."""
    from open_clip.transformer import text_global_pool

    n = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :n]
    cast_dtype = clip_model.transformer.get_cast_dtype()
    x = clip_model.token_embedding(tokens).to(cast_dtype) + clip_model.positional_embedding[:n].to(cast_dtype)
    x = clip_model.transformer(x, attn_mask=clip_model.attn_mask[:n, :n])
    x = clip_model.ln_final(x)
    x = text_global_pool(x, tokens, "argmax")
    proj = clip_model.text_projection
    if isinstance(proj, nn.Linear):
        return proj(x)
    return x @ proj if proj is not None else x


def encode_texts(
    clip_model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    texts: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """L2-normalised text embeddings (len(texts), D), float32 on the CPU, without gradients.

    Texts are batched by token length and, for open_clip's causal ``CLIP`` text tower, encoded on
    their used positions only (:func:`_encode_trimmed`; same result as ``encode_text``). ``device``:
    where the tower runs (it must already be there; default: where its parameters are).
    """
    if not texts:
        raise ValueError("no texts to encode")
    if device is None:
        device = next(clip_model.parameters()).device
    trim = _trimmable(clip_model)
    tokens = tokenizer(list(texts))
    order = torch.argsort(tokens.argmax(dim=-1), stable=True)
    out: torch.Tensor | None = None
    with torch.inference_mode():
        for chunk in order.split(batch_size):
            batch = tokens[chunk].to(device)
            feats = _encode_trimmed(clip_model, batch) if trim else clip_model.encode_text(batch)
            feats = F.normalize(feats.float(), dim=-1).cpu()
            if out is None:
                out = torch.empty(len(texts), feats.shape[1], dtype=torch.float32)
            out[chunk] = feats
            TEXT_STATS["texts_encoded"] += len(chunk)
            TEXT_STATS["encode_calls"] += 1
    assert out is not None
    return out.clone()


def zero_shot_weights(
    clip_model: Any,
    tokenizer: Callable[[list[str]], torch.Tensor],
    class_names: Sequence[str],
    templates: Sequence[str],
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> torch.Tensor:
    """Class text embeddings (C, D): per class the mean of its normalised prompt embeddings, normalised
    (open_clip's ``build_zero_shot_classifier``, returned as rows rather than columns)."""
    texts = [t.format(c) for c in class_names for t in templates]
    feats = encode_texts(clip_model, tokenizer, texts, batch_size=batch_size, device=device)
    feats = feats.reshape(len(class_names), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


def mine_negative_labels(
    class_features: torch.Tensor, candidate_features: torch.Tensor, n: int, *, percentile: float = 0.95
) -> torch.Tensor:
    """Indices of the ``n`` candidates farthest from the ID classes (NegLabel's selection rule).

    For each candidate word, the ``percentile`` quantile (0.95 in NegLabel) of its cosine
    similarity to the C class embeddings measures how close it is to the ID label space; the ``n``
    candidates with the *lowest* value are kept, farthest first (ties keep the candidates' order).
    """
    if not 0.0 < percentile <= 1.0:
        raise ValueError(f"percentile must be in (0, 1], got {percentile}")
    cls = F.normalize(class_features.float(), dim=-1)
    cand = F.normalize(candidate_features.float(), dim=-1)
    scores = []
    for start in range(0, len(cand), 1000):  # torch.quantile has an input size limit
        sims = cand[start : start + 1000] @ cls.T
        scores.append(torch.quantile(sims, q=percentile, dim=1))
    order = torch.argsort(torch.cat(scores), stable=True)
    return order[: max(0, min(int(n), len(order)))]
