"""The delta convention, in one leaf module (it imports nothing of the package).

``delta`` is how much *worse* a value is than its reference (FP32), in the metric's own unit, so
positive means worse for every metric:

- higher-is-better metrics (top1, auroc, aupr_in, aupr_out): ``delta = reference - value``;
- lower-is-better metrics (nll, ece, fpr_at_95_tpr): ``delta = value - reference``.

A relative delta is ``delta / |reference|`` (a fraction: 0.12 = 12%); when the reference is 0 it is
0 for equal values and +/-infinity otherwise. The checks (:mod:`pytest_qrel.evaluate`), the
report's numbers (:mod:`pytest_qrel.summary`) and ``qrel merge`` all use these two functions.
"""

from __future__ import annotations

import math

__all__ = ["relative", "signed_delta"]


def signed_delta(fp32: float, value: float, *, higher_is_better: bool) -> float:
    """Worsening of ``value`` relative to ``fp32`` in the metric's unit; positive = worse."""
    return fp32 - value if higher_is_better else value - fp32


def relative(delta: float, fp32: float) -> float:
    """``delta / |fp32|`` as a fraction (0.12 = 12%), with the FP32 = 0 convention of the module doc."""
    if fp32 == 0:
        return 0.0 if delta == 0 else math.copysign(math.inf, delta)
    return delta / abs(fp32)
