"""Parity of a runtime to the simulation of the same recipe, judged against the simulation's noise floor.

A deployed int8 model never equals a fake-quant simulation bit for bit: it sums in another order,
rounds at other places, and a value that lands near a quantization boundary moves a whole step.
So the distance between the two is compared with the simulation's own sensitivity to float
rounding, its *noise floor*: the mean |logit difference| between ``sim(x)`` and ``sim(x + eps)``,
with ``eps`` Gaussian noise of ``FLOOR_EPS`` times the images' standard deviation (a few float32
rounding steps of a normalised image). On the digits ViT, ONNX Runtime's ``ops: linear`` recipe is
about 0.02 floors from the minmax W8A8 simulation, its default op set about 50 floors; a simulated
W8A8 random-init DeiT-tiny is chaotic (its floor is 76 % of its distance to FP32), which is why
the floor is measured, never assumed.

All values are on the same fixed images (the first ``parity_images`` of the ID test split):

``logit_diff``     mean |runtime - simulation| over images and classes (logit units)
``agreement``      fraction of images on which both predict the same class (0 to 1)
``floor``          mean |sim(x + eps) - sim(x)|
``parity``         ``logit_diff / floor``: how many noise floors apart (lower is closer)
``sim_error``      mean |simulation - FP32|, the size of the quantization error itself
``runtime_error``  mean |runtime - FP32|
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

FLOOR_EPS = 1e-6
"""Standard deviation of the floor's input noise, relative to the images' standard deviation."""
FLOOR_SEED = 0


def logits(module: Any, images: Any, batch_size: int = 64) -> np.ndarray:
    """``module``'s logits (N, K) of ``images`` (N, C, H, W), in batches, without gradients."""
    import torch

    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            out.append(module(images[i : i + batch_size]).float().cpu().numpy())
    return np.concatenate(out)


def noisy(images: Any) -> Any:
    """``images`` plus Gaussian noise of ``FLOOR_EPS`` x their standard deviation (seeded)."""
    import torch

    gen = torch.Generator().manual_seed(FLOOR_SEED)
    noise = torch.randn(images.shape, generator=gen).to(images.device, images.dtype)
    return images + FLOOR_EPS * float(images.float().std()) * noise


def compare(runtime: np.ndarray, sim: np.ndarray, sim_noisy: np.ndarray, fp32: np.ndarray) -> dict[str, float]:
    """The parity numbers (module docstring) from four logit matrices of the same images."""
    diff = float(np.mean(np.abs(runtime - sim)))
    floor = float(np.mean(np.abs(sim_noisy - sim)))
    if floor > 0:
        ratio = diff / floor
    else:
        ratio = 0.0 if diff == 0 else math.inf
    return {
        "logit_diff": diff,
        "agreement": float(np.mean(runtime.argmax(1) == sim.argmax(1))),
        "floor": floor,
        "parity": ratio,
        "sim_error": float(np.mean(np.abs(sim - fp32))),
        "runtime_error": float(np.mean(np.abs(runtime - fp32))),
        "images": len(sim),
    }
