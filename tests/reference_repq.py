"""An independent restatement of RepQ-ViT's reference quantization (github.com/zkkli/RepQ-ViT,
``classification/``), used by ``tests/test_repq_vit.py`` as the oracle of ``repq_vit``'s defaults.

Written from the method's description (Li et al., ICCV 2023, and the reference's documented
behaviour), not from the library's code and without importing anything from ``pytest_qrel.quantize``:
every rule is spelled out here a second time, in the most literal form (loops over channels,
quantizers that calibrate lazily on their first call, the two calibration passes), so that a slip in
the library's vectorised version shows up as a difference.

The rules, as the reference applies them:

- **clipping search** (weights row by row, activations per tensor or per channel): for ``p`` in
  0.999, 0.9999, 0.99999 take ``hi = quantile(x, p)``, ``lo = quantile(x, 1 - p)`` (``torch.quantile``;
  ``np.percentile`` on torch releases that refuse large tensors), ``delta = (hi - lo) / (2^b - 1)``,
  ``zp = round(-lo / delta)``; keep the first ``p`` whose quantized tensor has the smallest mean
  squared error;
- **uniform fake quantization**: ``(clamp(round(x / delta) + zp, 0, 2^b - 1) - zp) * delta``
  (a division; ``zp`` may be fractional);
- **log-sqrt(2)** for the softmax output: ``c = round(-2 log2(x / delta))``; values with ``c >= 2^b``
  become 0, the others ``2^-ceil(c'/2) * (1 + (c' mod 2)(sqrt 2 - 1)) * delta`` with
  ``c' = clamp(c, 0, 2^b - 1)``; ``delta`` is the candidate quantile ``quantile(x, p)`` with the
  least mean squared error (starting from the maximum);
- **what is quantized**: every Linear (weight per row at ``w_bits``, input per tensor at ``a_bits``;
  ``qkv`` / ``fc1`` inputs per channel before reparameterization), the patch-embedding conv (weight
  per output filter at ``w_bits``, input per tensor at 8 bits), and both attention matmuls
  (``q``, ``k``, ``v`` uniform, the softmax output log-sqrt(2)), all calibrated on the first call;
- **reparameterization** of ``norm1 -> qkv`` and ``norm2 -> fc1`` after the first pass: with the
  per-channel ``delta_c``, ``zp_c``: ``delta~ = mean(delta)``, ``zp~ = mean(zp)`` (NOT rounded),
  ``r = delta / delta~``, ``b = -zp delta / r + zp~ delta~``; LayerNorm ``gamma / r``,
  ``beta / r - b``; next weight ``W * r`` (columns), bias ``+ (W * r) @ b``; the input quantizer becomes
  per tensor ``(delta~, zp~)`` and the weight quantizer recalibrates on the new weight in a second
  pass over the same images.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

CLIPS = (0.999, 0.9999, 0.99999)


def ref_quantile(x: Tensor, q: float) -> Tensor:
    """``torch.quantile(x, q)`` of all of ``x``; ``np.percentile`` where torch refuses the size."""
    flat = x.reshape(-1)
    try:
        return torch.quantile(flat, q)
    except RuntimeError:
        return torch.tensor(np.percentile(flat.cpu().numpy(), q * 100), dtype=torch.float32)


def ref_uniform(x: Tensor, delta: Tensor, zp: Tensor, bits: int) -> Tensor:
    codes = torch.clamp(torch.round(x / delta) + zp, 0, 2**bits - 1)
    return (codes - zp) * delta


def ref_uniform_params(x: Tensor, bits: int) -> tuple[Tensor, Tensor]:
    """``(delta, zp)`` of one tensor (or one channel) by the clipping search."""
    chosen = None
    for p in CLIPS:
        hi, lo = ref_quantile(x, p), ref_quantile(x, 1 - p)
        delta = (hi - lo) / (2**bits - 1)
        zp = torch.round(-lo / delta)
        mse = (x - ref_uniform(x, delta, zp, bits)).abs().pow(2).mean()
        if chosen is None or mse < chosen[0]:
            chosen = (mse, delta, zp)
    assert chosen is not None
    return chosen[1], chosen[2]


def ref_log_sqrt2(x: Tensor, delta: Tensor, bits: int) -> Tensor:
    codes = torch.round(-(x / delta).log2() * 2)
    kept = torch.clamp(codes, 0, 2**bits - 1)
    odd = (kept % 2) * (math.sqrt(2) - 1) + 1
    out = 2 ** (-torch.ceil(kept / 2)) * odd * delta
    return out.masked_fill(codes >= 2**bits, 0.0)


def ref_log_sqrt2_delta(x: Tensor, bits: int) -> Tensor:
    chosen = (None, x.max())
    for p in CLIPS:
        cand = ref_quantile(x, p)
        mse = (x - ref_log_sqrt2(x, cand, bits)).abs().pow(2).mean()
        if chosen[0] is None or mse < chosen[0]:
            chosen = (mse, cand)
    return chosen[1]


class LazyUniform(nn.Module):
    """Calibrates on its first call: per tensor, per row of a weight (dim 0), or per last-dim
    channel of a (B, N, C) activation."""

    def __init__(self, bits: int, per_channel: bool = False) -> None:
        super().__init__()
        self.bits, self.per_channel = bits, per_channel
        self.delta: Tensor | None = None
        self.zp: Tensor | None = None

    def calibrate(self, x: Tensor) -> None:
        if not self.per_channel:
            self.delta, self.zp = ref_uniform_params(x, self.bits)
            return
        if x.dim() == 3:  # activation (B, N, C): one search per channel
            params = [ref_uniform_params(x[:, :, c], self.bits) for c in range(x.shape[2])]
            shape = (1, 1, -1)
        else:  # weight: one search per output row / filter
            params = [ref_uniform_params(x[c], self.bits) for c in range(x.shape[0])]
            shape = (-1,) + (1,) * (x.dim() - 1)
        self.delta = torch.stack([d for d, _ in params]).reshape(shape)
        self.zp = torch.stack([z for _, z in params]).reshape(shape)

    def forward(self, x: Tensor) -> Tensor:
        if self.delta is None:
            self.calibrate(x)
        return ref_uniform(x, self.delta, self.zp, self.bits)


class LazyLogSqrt2(nn.Module):
    def __init__(self, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.delta: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        if self.delta is None:
            self.delta = ref_log_sqrt2_delta(x, self.bits)
        return ref_log_sqrt2(x, self.delta, self.bits)


class RefLinear(nn.Module):
    def __init__(self, lin: nn.Linear, w_bits: int, a_bits: int, per_channel_input: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(lin.weight.detach().clone(), requires_grad=False)
        self.bias = nn.Parameter(lin.bias.detach().clone(), requires_grad=False) if lin.bias is not None else None
        self.wq = LazyUniform(w_bits, per_channel=True)
        self.xq = LazyUniform(a_bits, per_channel=per_channel_input)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(self.xq(x), self.wq(self.weight), self.bias)


class RefConv(nn.Module):
    def __init__(self, conv: nn.Conv2d, w_bits: int) -> None:
        super().__init__()
        self.conv = conv
        self.wq = LazyUniform(w_bits, per_channel=True)
        self.xq = LazyUniform(8)  # the patch embedding's input is always 8-bit

    def forward(self, x: Tensor) -> Tensor:
        c = self.conv
        return F.conv2d(self.xq(x), self.wq(c.weight), c.bias, c.stride, c.padding, c.dilation, c.groups)


class RefAttention(nn.Module):
    """timm's attention with the two matmuls explicit and their operands quantized."""

    def __init__(self, attn: nn.Module, a_bits: int) -> None:
        super().__init__()
        self.qkv, self.proj = attn.qkv, attn.proj
        self.heads, self.scale = attn.num_heads, attn.scale
        self.q_in, self.k_in = LazyUniform(a_bits), LazyUniform(a_bits)
        self.p_in, self.v_in = LazyLogSqrt2(a_bits), LazyUniform(a_bits)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        assert attn_mask is None and not is_causal  # a ViT classifier attends everywhere
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        scores = (self.q_in(q) @ self.k_in(k.transpose(-2, -1))) * self.scale
        probs = scores.softmax(dim=-1)
        return self.proj((self.p_in(probs) @ self.v_in(v)).transpose(1, 2).reshape(b, n, c))


def reference_repq_vit(model: nn.Module, images: Tensor, w_bits: int, a_bits: int) -> nn.Module:
    """The reference pipeline on a copy of a timm ``VisionTransformer`` (plain blocks, LayerNorm,
    ``Mlp``): swap the modules, one calibration pass, reparameterize, second pass."""
    from timm.models.vision_transformer import Attention

    q = copy.deepcopy(model).eval()
    for block in q.blocks:
        assert type(block.attn) is Attention
        block.attn = RefAttention(block.attn, a_bits)
    for parent in list(q.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, RefLinear(child, w_bits, a_bits, per_channel_input=name in ("qkv", "fc1")))
            elif isinstance(child, nn.Conv2d):
                setattr(parent, name, RefConv(child, w_bits))
    with torch.no_grad():
        q(images)
        for block in q.blocks:
            for norm, nxt in ((block.norm1, block.attn.qkv), (block.norm2, block.mlp.fc1)):
                delta, zp = nxt.xq.delta.reshape(-1), nxt.xq.zp.reshape(-1)
                delta_t, zp_t = delta.mean(), zp.mean()
                r = delta / delta_t
                b = (-zp * delta) / r - (-zp_t * delta_t)
                norm.weight.data = norm.weight.data / r
                norm.bias.data = norm.bias.data / r - b
                nxt.weight.data = nxt.weight.data * r
                nxt.bias.data = nxt.bias.data + torch.mm(nxt.weight.data, b.reshape(-1, 1)).reshape(-1)
                nxt.xq.per_channel, nxt.xq.delta, nxt.xq.zp = False, delta_t, zp_t
                nxt.wq.delta = None  # recalibrated on the new weight by the second pass
        q(images)
    return q
