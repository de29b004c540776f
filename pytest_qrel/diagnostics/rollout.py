"""Attention rollout of a timm Vision Transformer, as the ViT quantization paper's Fig. 2 shows it.

Rollout (Abnar & Zuidema, 2020) follows the attention from the output back to the input patches
through every block, counting the residual path as much as the attention: with the attention
matrix ``A_l`` (N x N tokens) of block ``l`` after fusing its heads,

    Â_l = (A_l + I) / 2,   rows renormalised to sum to 1,
    R   = Â_L @ ... @ Â_2 @ Â_1.

The paper follows Gildenblat's visualisation choices: heads are fused by their **maximum**, and
in each block the **lowest 90 %** of the fused attention entries of an image are set to zero before
adding the identity (the class token's attention to itself is never discarded). The map of an
image is the class token's row of ``R`` over the patch tokens (for a model without a class token,
the mean of the patch tokens' rows), laid out on the patch grid and divided by its maximum, so
every map lies in [0, 1] with its peak at 1.

The attention probabilities are the ones the model multiplies with ``v``: for timm's
``Attention`` the softmax output (the fused SDPA kernel is switched off for the pass, so the
output is unchanged up to float rounding), for the project's
:class:`~pytest_qrel.quantize.attention.QuantAttention` the *quantized* softmax output
(``attn_operand``'s output). :func:`rollout` itself is pure numpy.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

__all__ = ["DISCARD_RATIO", "THUMBNAIL_PX", "attention_rollout", "record_attention", "rollout", "thumbnails"]

DISCARD_RATIO = 0.9
"""Share of the smallest fused attention entries set to zero in every block."""
THUMBNAIL_PX = 32
"""Largest side of the input thumbnails stored beside the maps."""
_ROUND = 4


def _fuse(attn: np.ndarray, head_fusion: str) -> np.ndarray:
    fusions: dict[str, Callable[..., np.ndarray]] = {"max": np.max, "mean": np.mean, "min": np.min}
    if head_fusion not in fusions:
        raise ValueError(f"head_fusion must be one of {', '.join(fusions)}, got {head_fusion!r}")
    return fusions[head_fusion](attn, axis=1)


def rollout(
    attentions: Sequence[Any],
    *,
    num_prefix_tokens: int = 1,
    discard_ratio: float = DISCARD_RATIO,
    head_fusion: str = "max",
) -> np.ndarray:
    """Rollout maps (B, N - num_prefix_tokens), each scaled to a maximum of 1.

    Args:
        attentions: one array (B, H, N, N) of attention probabilities per block, in forward order.
        num_prefix_tokens: class and register tokens in front of the patch tokens; with at least
            one, the map is the first (class) token's row, else the mean of all rows.
        discard_ratio: share in [0, 1) of the smallest fused entries zeroed per image and block.
        head_fusion: ``"max"`` (the paper), ``"mean"`` or ``"min"``.
    """
    if not attentions:
        raise ValueError("no attention matrices were given (the model has no attention blocks?)")
    if not 0.0 <= discard_ratio < 1.0:
        raise ValueError(f"discard_ratio must be in [0, 1), got {discard_ratio}")
    first = np.asarray(attentions[0])
    b, _, n, _ = first.shape
    eye = np.eye(n)
    result = np.broadcast_to(eye, (b, n, n)).copy()
    k = int(n * n * discard_ratio)
    for a in attentions:
        arr = np.asarray(a, dtype=np.float64)
        if arr.ndim != 4 or arr.shape[0] != b or arr.shape[2:] != (n, n):
            raise ValueError(f"attention matrices must all have shape (B, H, N, N) = ({b}, H, {n}, {n}); got {arr.shape}")
        fused = _fuse(arr, head_fusion)
        if k > 0:
            flat = fused.reshape(b, n * n)
            order: np.ndarray | list[np.ndarray] = np.argsort(flat, axis=1, kind="stable")[:, :k]
            if num_prefix_tokens > 0:  # keep the class token's attention to itself
                order = [row[row != 0] for row in order]
            for i, idx in enumerate(order):
                flat[i, idx] = 0.0
            fused = flat.reshape(b, n, n)
        step = (fused + eye) / 2.0
        step = step / step.sum(axis=-1, keepdims=True)
        result = step @ result
    p = int(num_prefix_tokens)
    maps = result[:, 0, p:] if p > 0 else result[:, p:, p:].mean(axis=1)
    peak = maps.max(axis=1, keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0)


def _attention_modules(module: Any) -> list[Any]:
    from ..quantize.attention import QuantAttention, timm_attention_class

    timm_cls = timm_attention_class()
    found = []
    for m in module.modules():
        if isinstance(m, QuantAttention) or (timm_cls is not None and isinstance(m, timm_cls)):
            found.append(m)
    return found


@contextlib.contextmanager
def record_attention(module: Any) -> Iterator[list[Any]]:
    """Collect the attention probabilities (B, H, N, N) of every attention block of ``module``
    during the forward passes run inside the ``with`` body, in forward order (CPU tensors).

    Raises:
        ValueError: ``module`` holds neither timm's ``Attention`` nor ``QuantAttention``.
    """
    from ..quantize.attention import QuantAttention

    blocks = _attention_modules(module)
    if not blocks:
        raise ValueError(
            "attention_rollout needs a timm Vision Transformer (timm Attention or pytest-qrel QuantAttention blocks); "
            f"{type(module).__name__} has none"
        )
    captured: list[Any] = []
    handles, fused_before = [], []

    def keep_output(_m: Any, _inputs: Any, output: Any) -> None:
        captured.append(output.detach().float().cpu())

    def keep_input(_m: Any, inputs: Any, _output: Any) -> None:
        captured.append(inputs[0].detach().float().cpu())

    try:
        for blk in blocks:
            if isinstance(blk, QuantAttention):
                handles.append(blk.attn_operand.register_forward_hook(keep_output))
            else:
                if hasattr(blk, "fused_attn"):
                    fused_before.append((blk, blk.fused_attn))
                    blk.fused_attn = False  # the explicit path computes the probabilities
                handles.append(blk.attn_drop.register_forward_hook(keep_input))
        yield captured
    finally:
        for h in handles:
            h.remove()
        for blk, fused in fused_before:
            blk.fused_attn = fused


def thumbnails(images: Any, size: int = THUMBNAIL_PX) -> list[Any]:
    """Small display copies of ``images`` (B, C, H, W): each scaled to [0, 1] by its own min and
    max, area-averaged so the longer side is at most ``size`` pixels; a grey image becomes
    ``[[v]]`` rows, a 3-channel one ``[[[r, g, b]]]``."""
    import torch
    import torch.nn.functional as F

    x = images.detach().float().cpu()
    h, w = x.shape[-2:]
    scale = min(1.0, size / max(h, w))
    if scale < 1.0:
        x = F.adaptive_avg_pool2d(x, (max(1, round(h * scale)), max(1, round(w * scale))))
    lo = x.amin(dim=(1, 2, 3), keepdim=True)
    hi = x.amax(dim=(1, 2, 3), keepdim=True)
    x = torch.where(hi > lo, (x - lo) / (hi - lo).clamp_min(1e-12), torch.zeros_like(x))
    out = []
    for img in x:
        if img.shape[0] == 1:
            out.append(np.round(img[0].numpy(), 3).tolist())
        else:
            out.append(np.round(img[:3].permute(1, 2, 0).numpy(), 3).tolist())
    return out


def attention_rollout(
    module: Any,
    images: Any,
    *,
    discard_ratio: float = DISCARD_RATIO,
    head_fusion: str = "max",
) -> dict[str, Any]:
    """Rollout maps of ``module`` (a timm ViT, FP32 or quantized) for ``images`` (B, C, H, W).

    One forward pass without gradients, in eval mode (the module's mode is restored).

    Returns (plain types): ``{"grid": [h, w], "maps": [h x w nested lists per image, in [0, 1]],
    "thumbnails": [per image, see :func:`thumbnails`], "pred": [class index per image],
    "confidence": [max softmax probability per image], "discard_ratio", "head_fusion"}``.
    """
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), record_attention(module) as captured:
            logits = module(images)
    finally:
        module.train(was_training)
    n_blocks = len(_attention_modules(module))
    if len(captured) != n_blocks:
        raise ValueError(f"attention_rollout recorded {len(captured)} attention maps for {n_blocks} attention blocks "
                         "(a block that computes attention without timm's attn_drop step?)")
    if isinstance(logits, (tuple, list)):
        logits = logits[0]
    probs = torch.softmax(logits.detach().float().cpu(), dim=-1)
    conf, pred = probs.max(dim=-1)
    n_prefix = int(getattr(module, "num_prefix_tokens", 1 if getattr(module, "cls_token", None) is not None else 0))
    maps = rollout([a.numpy() for a in captured], num_prefix_tokens=n_prefix, discard_ratio=discard_ratio, head_fusion=head_fusion)
    n_patches = maps.shape[1]
    grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
    if grid is None or int(grid[0]) * int(grid[1]) != n_patches:
        side = int(round(n_patches ** 0.5))
        if side * side != n_patches:
            raise ValueError(f"cannot lay {n_patches} patch tokens out on a grid (the model has no patch_embed.grid_size)")
        grid = (side, side)
    h, w = int(grid[0]), int(grid[1])
    return {
        "grid": [h, w],
        "maps": [np.round(m.reshape(h, w), _ROUND).tolist() for m in maps],
        "thumbnails": thumbnails(images),
        "pred": [int(p) for p in pred],
        "confidence": [round(float(c), _ROUND) for c in conf],
        "discard_ratio": float(discard_ratio),
        "head_fusion": head_fusion,
    }
