"""Shared helpers of the quantizer tests: a tiny random timm ViT, a quantizer config builder, logits
without autograd and the relative error. The fixtures built on them (``vit``, ``one_thread``) live in
tests/conftest.py; this module stays a plain import so that helpers are not pulled in as fixtures."""

from __future__ import annotations

import torch
from torch import nn


def make_vit(seed: int = 0, *, width: int = 64, depth: int = 2, heads: int = 4, num_classes: int = 8) -> nn.Module:
    """A seeded, random-weight timm VisionTransformer on 16x16 one-channel images, in eval mode."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=num_classes, embed_dim=width, depth=depth, num_heads=heads
    ).eval()


def quant_config(method: str, weight_bits: int | None, act_bits: int | None, *, seed: int = 0,
                 options: dict | None = None):
    """The plain :class:`~pytest_qrel.quantize.QuantConfig` of a quantizer (validated: raises
    QuantOptionError / UnknownNameError as the suite loader would)."""
    from pytest_qrel.quantize import validate_quantizer

    return validate_quantizer(method, weight_bits, act_bits, options or {}, seed=seed)


def logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x)


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """``||out - ref|| / ||ref||`` (Frobenius)."""
    return float((out - ref).norm() / ref.norm())


def random_images(n: int, seed: int) -> torch.Tensor:
    """``n`` seeded standard-normal one-channel 16x16 images (N, 1, 16, 16)."""
    return torch.randn(n, 1, 16, 16, generator=torch.Generator().manual_seed(seed))
