"""What a runtime method returns: a ``torch.nn.Module`` whose forward runs the deployed model.

The engine streams datasets through a module (tensors in, logits out), so a runtime that runs on
NumPy arrays (an ONNX Runtime session, an OpenVINO compiled model) is wrapped in
:class:`RuntimeModule`. Every module a runtime method returns carries ``qrel_runtime``: a plain
dict with its ``identity`` (:mod:`.identity`), its ``census`` (:mod:`.census`) and
``artifact_bytes`` (the size of what it deploys). The engine audits modules that carry it
(:mod:`.audit`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

RUNTIME_ATTR = "qrel_runtime"


class RuntimeModule(nn.Module):
    """``forward(images) -> logits`` through ``run``, a function of a float32 NumPy batch (N, C, H, W)
    returning logits (N, num_classes). ``keep`` holds what ``run`` needs alive (a session, a
    temporary directory)."""

    def __init__(self, run: Callable[[np.ndarray], np.ndarray], info: dict[str, Any], *, keep: Any = None, num_classes: int | None = None) -> None:
        super().__init__()
        self.run = run
        self.keep = keep
        setattr(self, RUNTIME_ATTR, info)
        if num_classes is not None:
            self.num_classes = num_classes

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        batch = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        logits = np.asarray(self.run(batch), dtype=np.float32)
        return torch.from_numpy(logits).to(images.device)


def runtime_info(module: Any) -> dict[str, Any] | None:
    """The ``qrel_runtime`` dict of a module a runtime method returned (``None`` for the simulation)."""
    info = getattr(module, RUNTIME_ATTR, None)
    return info if isinstance(info, dict) else None


def attach(module: nn.Module, info: dict[str, Any]) -> nn.Module:
    """Mark a torch module (torchao, a loaded torch artifact) as a runtime unit's module."""
    setattr(module, RUNTIME_ATTR, info)
    return module
