"""Checks on runtime units: parity to the simulation, the int8 census, latency, memory and size.

Registered in :data:`pytest_qrel.metrics.METRICS` with ``kind="runtime"`` (value bounds only; they
already compare with something, the simulation or FP32)::

    ORT parity(W8A8) <= 3 floor       # within 3 noise floors of the W8A8 simulation (floor: the unit parity is in)
    ORT logit_diff(W8A8) <= 0.001     # mean |logit difference| to the simulation, in logits
    ORT agreement(W8A8) >= 99%        # top-1 agreement with the simulation
    ORT int8_share >= 90%             # share of Linear/MatMul/Conv multiply-accumulates in int8
    ORT latency <= 1.2                # median time at the suite's batch size / FP32's (noisy!)
    ORT latency_b1 <= 1.5             # the same at batch 1
    ORT memory <= 1.5                 # working memory / FP32's
    ORT size <= 0.3                   # artifact bytes / FP32 parameter bytes

The name in parentheses of ``parity`` / ``logit_diff`` / ``agreement`` is the simulated quantizer
compared with; the unit computes that parity on the first ``parity_images`` ID test images.
Checks name runtime quantizers explicitly (not ``all``, not FP32) and read the ID set only.

None of them has an FP32 value: a verdict's message says instead what the number is measured
against (:data:`COMPARED_WITH`, one phrase per metric: the simulation for parity and agreement,
FP32 measured in the same process for the ratios, the runtime's own graph for the census).
"""

from __future__ import annotations

from typing import Any

from ..metrics import METRICS, RUNTIME_METRICS  # the runtime metrics' table (registered there)
from ..spec.quantizer_ref import QuantizerRef


COMPARED_WITH: dict[str, str] = {
    "parity": "mean |logit difference| to the {ref} simulation on the same ID test images, in that simulation's noise floors",
    "logit_diff": "mean |logit difference| to the {ref} simulation on the same ID test images",
    "agreement": "top-1 agreement with the {ref} simulation on the same ID test images",
    "int8_share": "share of the Linear/MatMul/Conv multiply-accumulates of the runtime's own graph in int8 kernels",
    "latency": "median wall time at the suite's batch size over FP32's, measured in the same process",
    "latency_b1": "median wall time at batch 1 over FP32's, measured in the same process",
    "memory": "working memory over FP32's, measured in the same process",
    "size": "artifact bytes over FP32's parameter bytes",
}
"""What each runtime metric is measured against, for the verdict's message (it has no FP32 value);
``{ref}``: the simulated quantizer named in parentheses. One entry per metric of
:data:`~pytest_qrel.metrics.RUNTIME_METRICS` (a test holds the two tables to the same names)."""


def compared_with(metric: str, ref: str | None) -> str:
    """``("parity", "W8A8")`` -> ``"mean |logit difference| to the W8A8 simulation ..."``."""
    return COMPARED_WITH[metric].format(ref=ref if ref is not None else "named")


def is_runtime_method(method: str) -> bool:
    """Whether ``method`` builds or loads a deployed artifact (its options are runtime options)."""
    from ..quantize import QUANTIZERS
    from ..quantize.runtime_options import RuntimeOptions

    if method not in QUANTIZERS:
        return False
    kind = QUANTIZERS.meta(method).get("options_type")
    return isinstance(kind, type) and issubclass(kind, RuntimeOptions)


def validate_runtime_check(check: Any, suite: Any, fail: Any) -> list[Any]:
    """The spec loader's validation of a check on a runtime metric; ``fail(problem, fix)`` makes
    the located error. Returns ``[check]``."""
    meta = RUNTIME_METRICS[check.metric]
    example = f"ORT {check.metric}(W8A8) <= 3" if meta["ref"] else f"ORT {check.metric} <= 1.5"
    if "all" in check.quantizers:
        raise fail(f"{check.metric} is measured on runtime units only; name them instead of 'all'", fix=f"write e.g. '{example}'")
    for q in check.quantizers:
        ref = QuantizerRef.parse(q)  # a runtime unit is named alone: no seed, no post-hoc step
        spec = suite.quantizers.get(ref.base)
        if ref.steps or ref.seed is not None or spec is None or not is_runtime_method(spec.method):
            raise fail(f"{check.metric} is measured on runtime units (onnxruntime, openvino, torchao, artifact); '{q}' is not one",
                       fix="name a quantizer whose method is a runtime")
        if meta.get("timed") and spec.options.get("latency") is False:
            raise fail(f"'{q}' has 'latency: false', so it measures no {check.metric}", fix="remove 'latency: false' from its options")
    if meta["ref"]:
        ref = check.score
        if ref is None:
            raise fail(f"{check.metric} compares with a simulated quantizer: name it in parentheses", fix=f"write e.g. '{example}'")
        ref_spec = suite.quantizers.get(ref)
        if ref_spec is None or is_runtime_method(ref_spec.method):
            sims = [n for n, s in suite.quantizers.items() if not is_runtime_method(s.method)]
            raise fail(f"{check.metric}({ref}): '{ref}' is not a simulated quantizer of the suite",
                       fix=f"name one of {', '.join(sims) or 'the simulated quantizers (define one, e.g. method: minmax)'}")
    elif check.score is not None:
        raise fail(f"{check.metric} takes no name in parentheses", fix=f"write '{check.metric}' alone")
    for d in check.datasets or ():
        if d != suite.id_dataset.name:
            raise fail(f"{check.metric} is measured on the ID test split ('{suite.id_dataset.name}'), not '{d}'", fix="drop 'on ...'")
    return [check]


def runtime_value(metrics: dict[str, Any], metric: str, ref: str | None, where: str) -> float:
    """The value a runtime check reads from a unit's metrics (``metrics["runtime"]``).

    Raises:
        SimulationError: the unit recorded no such measure (a unit that is not a runtime).
    """
    from ..errors import SimulationError

    values = metrics.get("runtime") or {}
    try:
        return float(METRICS.get(metric)(values, ref if RUNTIME_METRICS[metric]["ref"] else None))
    except (KeyError, TypeError):
        what = f"{metric}({ref})" if RUNTIME_METRICS[metric]["ref"] else metric
        raise SimulationError(f"{where}: no {what} was measured for this unit (is it a runtime unit?)") from None
