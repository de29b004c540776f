"""Where a model's last-block feature map is: the one model-specific part of the spectral metrics.

:data:`FEATURE_MAPS` files one finder per architecture family; a finder takes a module and returns
a :class:`FeatureMapSite` (the block whose output is the feature map, the patch grid, the number of
prefix tokens before the patch tokens, and the token layout) or None when the module is not of its
family. :func:`last_block_feature_map` tries them in turn.

- ``timm_vit``: a timm ``VisionTransformer`` (and anything shaped like one): the output of
  ``model.blocks[-1]``, (B, T, D), before ``model.norm``; ``model.num_prefix_tokens`` prefix tokens
  (class and register tokens); grid ``model.patch_embed.grid_size``.
- ``open_clip_vit``: an open_clip ``VisionTransformer``, on its own or as ``.visual`` of a model
  such as :class:`~pytest_qrel.models.clip_zoo.ZeroShotCLIP`: the output of
  ``transformer.resblocks[-1]``, before ``ln_post``; one class token; grid ``visual.grid_size``.
  open_clip >= 2.24 runs its blocks batch-first (``transformer.batch_first``); older versions run
  them (T, B, D).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from ..errors import ModelError
from ..registry import Registry

Layout = Literal["BTD", "TBD"]


@dataclass(frozen=True)
class FeatureMapSite:
    """The block whose output is the feature map, and how to lay its tokens out on the patch grid."""

    block: Any  # torch.nn.Module
    grid: tuple[int, int]  # (h, w)
    prefix_tokens: int
    layout: Layout  # "BTD": (batch, tokens, dim); "TBD": (tokens, batch, dim)

    def grid_features(self, output: Any) -> Any:
        """The block output as patch-token feature maps (B, h, w, D), prefix tokens dropped."""
        x = output[0] if isinstance(output, (tuple, list)) else output
        if getattr(x, "ndim", 0) != 3:
            raise ModelError(f"the last transformer block returned shape {tuple(getattr(x, 'shape', ()))}, not a token sequence")
        if self.layout == "TBD":
            x = x.transpose(0, 1)
        h, w = self.grid
        tokens = int(x.shape[1]) - self.prefix_tokens
        if tokens != h * w:
            raise ModelError(
                f"the last transformer block returned {x.shape[1]} tokens, expected {self.prefix_tokens} prefix tokens "
                f"+ a {h}x{w} patch grid (does the input resolution match the model's?)"
            )
        return x[:, self.prefix_tokens :, :].reshape(x.shape[0], h, w, x.shape[2])


Finder = Callable[[Any], "FeatureMapSite | None"]
FEATURE_MAPS: Registry[Finder] = Registry("feature-map layout")


def _last(blocks: Any) -> Any:
    try:
        return blocks[-1] if len(blocks) else None
    except TypeError:
        return None


@FEATURE_MAPS.register("timm_vit")
def _timm_vit(module: Any) -> FeatureMapSite | None:
    grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
    prefix = getattr(module, "num_prefix_tokens", None)
    block = _last(getattr(module, "blocks", None))
    if block is None or grid is None or prefix is None:
        return None
    return FeatureMapSite(block, (int(grid[0]), int(grid[1])), int(prefix), "BTD")


@FEATURE_MAPS.register("open_clip_vit")
def _open_clip_vit(module: Any) -> FeatureMapSite | None:
    visual = getattr(module, "visual", module)
    transformer = getattr(visual, "transformer", None)
    grid = getattr(visual, "grid_size", None)
    block = _last(getattr(transformer, "resblocks", None))
    if block is None or grid is None:
        return None
    layout: Layout = "BTD" if getattr(transformer, "batch_first", False) else "TBD"
    prefix = 0 if getattr(visual, "class_embedding", None) is None else 1
    return FeatureMapSite(block, (int(grid[0]), int(grid[1])), prefix, layout)


def last_block_feature_map(module: Any, name: str = "the model") -> FeatureMapSite:
    """The :class:`FeatureMapSite` of ``module``; ModelError naming ``name`` when no finder knows it."""
    for family in FEATURE_MAPS:
        site = FEATURE_MAPS.get(family)(module)
        if site is not None:
            return site
    raise ModelError(
        f"{name} ({type(module).__name__}) has no recognisable last transformer block, which spectral metrics read "
        f"(known layouts: {', '.join(FEATURE_MAPS.names())}: a timm VisionTransformer with blocks and "
        "patch_embed.grid_size, or an open_clip VisionTransformer with transformer.resblocks and grid_size)"
    )
