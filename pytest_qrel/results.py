"""Plain result records: what checks decide and what the report shows.

Everything here converts to plain Python types (``to_dict``), because results cross process
boundaries under pytest-xdist, where numpy scalars make xdist drop reports silently.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Outcome = Literal["passed", "failed", "xfailed", "xpassed", "skipped", "error"]


@dataclass
class Verdict:
    """The decision of one check on one (model, quantizer, dataset).

    ``fp32`` and ``value`` are in the metric's own unit (fractions for accuracy/AUROC/AUPR/ECE/FPR,
    nats for NLL). ``delta`` is signed so that positive means *worse* than FP32, in the metric's unit;
    ``delta_display`` is the delta in the bound's unit for humans ("+22.1%", "+1.3pp", "+0.012").
    ``passed`` is the raw comparison; ``outcome`` folds in ``expect: fail`` (xfailed / xpassed).
    """

    suite: str
    model: str
    quantizer: str
    dataset: str
    metric: str
    score: str | None
    check: str
    bound: str
    fp32: float | None
    value: float | None
    delta: float | None
    delta_display: str
    passed: bool
    expect_fail: bool
    outcome: Outcome
    message: str
    nodeid: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class UnitMetrics:
    """Every metric of one (suite, model, quantizer) unit, for the report's tables.

    ``id``: ``{"top1": 0.97, "nll": 0.11, "ece": 0.02}``;
    ``ood``: ``{score: {dataset: {"auroc": .., "aupr_in": .., "aupr_out": .., "fpr_at_95_tpr": ..}}}``;
    ``spectral``: the spectral metrics on the ID test split (only for suites with spectral checks).
    """

    suite: str
    model: str
    quantizer: str
    id: dict[str, float] = field(default_factory=dict)
    ood: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)  # e.g. {"temperature": 1.3}
    conventions: str = "hendrycks"  # which metric conventions the OOD numbers follow
    method: str = ""  # the registered quantization method ("" for FP32)
    shifted: dict[str, dict[str, float]] = field(default_factory=dict)  # {labelled shifted set: ID metrics}
    pairs: dict[str, dict[str, float]] = field(default_factory=dict)  # {pair: {"vulnerability": ..}}
    spectral: dict[str, float] = field(default_factory=dict)  # {"spectral_error": .., "spectral_error_high": ..}
    spectral_map: list[list[float]] = field(default_factory=list)  # the RSE map (h x w) vs FP32, if recorded

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnitMetrics":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _plain(value: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples into plain Python types."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value
