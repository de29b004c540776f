"""Shared helpers of the quantizer tests: a tiny random timm ViT and a one-thread fixture."""

from __future__ import annotations

import pytest
import torch
from torch import nn


def make_vit(seed: int = 0, *, width: int = 64, depth: int = 2, heads: int = 4, num_classes: int = 8) -> nn.Module:
    """A seeded, random-weight timm VisionTransformer on 16x16 one-channel images, in eval mode."""
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(seed)
    return VisionTransformer(
        img_size=16, patch_size=4, in_chans=1, num_classes=num_classes, embed_dim=width, depth=depth, num_heads=heads
    ).eval()


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads, and thread spinning is slow on a shared 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
