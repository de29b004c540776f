"""Shipped tiny models: their weights (safetensors), configs (json) and the scripts that trained them.

Each model ``<name>`` is two files in this directory, ``<name>.safetensors`` and ``<name>.json``
(architecture config, preprocessing and training metadata, including the SHA-256 of the weights),
and the script ``train_<name>.py`` that re-creates them::

    python -m pytest_qrel.zoo.train_digits_vit            # rewrites the files shipped here
    python -m pytest_qrel.zoo.train_digits_vit --out DIR  # or writes them somewhere else

Importing this package is cheap: torch and timm are imported inside the functions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

ZOO_DIR = Path(__file__).resolve().parent
"""Where the shipped weights and configs live."""


def build_vit(arch: dict[str, Any], *, init: bool = True) -> Any:
    """A timm ``VisionTransformer`` from the ``"architecture"`` entry of a zoo json.

    Only keyword arguments of ``VisionTransformer`` may appear in ``arch``; it is passed as is.
    ``init=True`` gives timm's random initialisation (for training, drawn from torch's global RNG);
    ``init=False`` is for loading weights right after: it skips timm's slow truncated-normal init
    and leaves torch's global RNG state untouched.
    """
    import torch
    from timm.models.vision_transformer import VisionTransformer

    if init:
        return VisionTransformer(**arch)
    with torch.random.fork_rng(devices=[]):
        return VisionTransformer(**{**arch, "weight_init": "skip"})
