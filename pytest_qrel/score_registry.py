"""The registry of OOD scores: :data:`SCORES` (a leaf module).

Score modules register into it (:mod:`pytest_qrel.scores`: the logit scores; :mod:`pytest_qrel.clip_scores`:
the CLIP scores) and :mod:`pytest_qrel.scores` imports both, so ``from pytest_qrel.scores import SCORES``
sees every built-in score while neither score module imports the other back.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .registry import Registry

#: Every OOD score under its YAML name; metadata ``needs`` says what it is computed from
#: (``"logits"``, or ``"clip"``: image features and text embeddings). Higher = more in-distribution.
SCORES: Registry[Callable[..., np.ndarray]] = Registry("score")
