"""OOD scores: one number per sample, **higher = more in-distribution**.

Each score is registered in :data:`SCORES` under its YAML name with metadata ``needs``: what it
is computed from. The scores here need ``"logits"`` and have the signature
``fn(logits: (N, C) array) -> (N,) float64 array``; scores that need other inputs (CLIP image
and text features) will declare so and are not computed by :func:`compute_scores`' logits path.

No torch: inputs are numpy arrays (or anything ``np.asarray`` accepts). Inputs are validated
like :mod:`pytest_qrel.metrics` does (``ValueError`` on empty, non-2-D or non-finite logits).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .metrics import check_logits, logsumexp, softmax
from .score_registry import SCORES

__all__ = ["SCORES", "compute_scores", "energy", "maxlogit", "msp"]

# SCORES (every OOD score under its YAML name) lives in the leaf .score_registry, so that
# clip_scores can register into it without importing this module back.


@SCORES.register("msp", needs="logits")
def msp(logits: Any) -> np.ndarray:
    """Maximum softmax probability (Hendrycks & Gimpel 2017), in [1/C, 1].

    Invariant to adding a constant to all logits of a sample.

    >>> msp([[0.0, 0.0], [0.0, np.log(3.0)]]).tolist()
    [0.5, 0.75]
    """
    return softmax(logits).max(axis=1)


@SCORES.register("energy", needs="logits")
def energy(logits: Any) -> np.ndarray:
    """Negative free energy at temperature 1 (Liu et al. 2020): ``logsumexp(logits)``, in nats.

    The energy is ``E(x) = -logsumexp(logits)``; this returns ``-E(x)`` so that higher means
    more in-distribution. Adding ``c`` to all logits of a sample adds ``c`` to the score.

    >>> energy([[0.0, 0.0]]).tolist() == [float(np.log(2.0))]
    True
    """
    return logsumexp(logits)


@SCORES.register("maxlogit", needs="logits")
def maxlogit(logits: Any) -> np.ndarray:
    """Maximum logit (Hendrycks et al. 2022, "MaxLogit").

    >>> maxlogit([[1.0, -2.0, 3.0]]).tolist()
    [3.0]
    """
    return check_logits(logits).max(axis=1)


def compute_scores(logits: Any, names: Iterable[str] | str) -> dict[str, np.ndarray]:
    """Compute each named score from ``logits``: ``{name: (N,) float64 array}``.

    Raises:
        UnknownNameError: a name is not registered (the message lists the known names).
        ValueError: a named score needs something other than logits, or bad logits.
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    fns = {name: SCORES.get(name) for name in names}  # unknown names fail before any work
    for name in names:
        needs = SCORES.meta(name).get("needs")
        if needs != "logits":
            raise ValueError(f"score '{name}' needs {needs!r}, not logits; it cannot be computed from logits")
    x = check_logits(logits)
    return {name: np.asarray(fn(x), dtype=np.float64) for name, fn in fns.items()}

# CLIP scores (mcm, neglabel, genneg) need image features and text embeddings: needs="clip".
from . import clip_scores  # noqa: E402,F401
