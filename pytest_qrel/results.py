"""Plain result records: what checks decide and what the report shows.

Everything here converts to plain Python types (``to_dict``), because results cross process
boundaries under pytest-xdist, where numpy scalars make xdist drop reports silently. What an
outcome means for the gate is :mod:`pytest_qrel.policy`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .policy import Outcome, RunVerdict, run_verdict


@dataclass
class Verdict:
    """The decision of one check on one (model, quantizer, dataset).

    ``fp32`` and ``value`` are in the metric's own unit (fractions for accuracy/AUROC/AUPR/ECE/FPR,
    nats for NLL). ``delta`` is signed so that positive means *worse* than FP32, in the metric's unit;
    ``delta_display`` is the delta in the bound's unit for humans ("+22.1%", "+1.3pp", "+0.012").
    ``passed`` is the raw comparison; ``outcome`` folds in ``expect: fail`` (xfailed / xpassed).

    Interval fields (filled when the check has per-sample arrays on both sides): ``delta_ci`` is the
    paired bootstrap interval ``[low, high]`` of ``delta`` in the metric's unit at level
    ``ci_level`` (0.95), from ``ci_resamples`` resamples drawn with ``ci_seed``; ``ci_display`` is it
    in the bound's unit (``"[95% CI +11.4, +14.9]"``). ``compared`` is the number the bound was
    applied to, in the bound's unit (the relative delta in percent for ``delta <= 12%``), and
    ``margin`` how far it is from the bound in that unit (positive: room left, negative: violated).
    ``value_display`` / ``fp32_display`` / ``bound_display`` are the values and the bound written in
    one unit by one display rule per metric (:mod:`pytest_qrel.display`).
    ``ci_note`` says why a check has no interval, or what to keep in mind about it (an FP32 value
    of 0 under a relative bound, a tiny set); empty if nothing.
    ``ref_value``: for a bound against another quantizer (``delta <= delta(W8A8)``), that
    quantizer's value in the metric's unit. ``compared_ci``: the interval of ``compared`` (bound's
    unit) that decided a check demanding ``confidence``. With ``fp32``, ``value`` and the suite's
    bound they are what ``qrel merge`` recomputes a verdict from.
    ``stage`` names where an error happened (``"model import"``, ``"calibration"``, ``"forward"``, ...).
    ``reason`` is the check's ``reason:`` as written in the suite (shown beside expected failures);
    ``bound_amount`` the bound's number in the bound's unit (``12`` for ``delta <= 12%``, ``0.05``
    for ``ece <= 0.05``; ``None`` for a bound against another quantizer): the report scales the
    colour of ``margin`` by it (``margin / |bound_amount|``).
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
    delta_ci: list[float] | None = None
    ci_level: float | None = None
    ci_resamples: int | None = None
    ci_seed: int | None = None
    ci_display: str = ""
    confidence: float | None = None  # the check demanded this confidence (non-inferiority test)
    compared: float | None = None
    margin: float | None = None
    value_display: str = ""
    fp32_display: str = ""
    bound_display: str = ""
    stage: str = ""
    reason: str = ""
    bound_amount: float | None = None
    ci_note: str = ""
    ref_value: float | None = None
    compared_ci: list[float] | None = None
    source: str = ""  # where the check is written, "suites/x.yaml:23": the line a reviewer changes
    margin_display: str = ""  # ``margin`` in the bound's display unit ("-2.26pp"; negative: violated)

    def to_dict(self) -> dict[str, Any]:
        return {k: _plain(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Verdict":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class UnitMetrics:
    """Every metric of one (suite, model, quantizer) unit, for the report's tables and figures.

    The report renders these as given and computes nothing: everything it shows is here.

    ``id``: ``{"top1": 0.97, "nll": 0.11, "ece": 0.02}`` (mean over seeds for multi-seed quantizers);
    ``ood``: ``{score: {dataset: {"auroc": .., "aupr_in": .., "aupr_out": .., "fpr_at_95_tpr": ..}}}``;
    ``spectral``: the spectral metrics on the ID test split (only for suites with spectral checks).

    Identity of the unit (so that nothing has to parse quantizer names): ``base`` is the quantizer
    without post-hoc steps (``"W8A8-qat-lsq"`` for ``"W8A8-qat-lsq+temperature"``), ``posthoc`` its
    steps (``["temperature"]``), ``method`` the registered method (``""`` for FP32), ``weight_bits``
    / ``act_bits`` the bit widths (``None``: float), ``bits_label`` the bit configuration for table
    columns (``"W8A8"``, ``"W4A16"``; ``""`` for FP32), ``seeds`` the calibration seeds (one or
    more), ``calibration_samples`` the number of calibration images, ``options`` the method
    options as written in the suite.

    ``per_seed``: ``{metric: [value per seed]}`` of the ID metrics for multi-seed quantizers (the
    report shows mean +/- std over seeds, as the ViT paper does).

    ``curves`` (small, precomputed from the per-sample arrays when the unit ran; plain lists):
    ``{"reliability": {"edges": [16 floats], "count": [15], "accuracy": [15], "confidence": [15]},
    "roc": {score: {dataset: {"fpr": [...], "tpr": [...]}}},
    "pr": {score: {dataset: {"recall": [...], "precision": [...]}}}}`` with at most a few hundred
    points per curve (ROC: OOD positive is *not* used; ID is the positive class and TPR the share of
    ID samples accepted; PR: OOD is the positive class, as ``aupr_out``).
    ``diagnostics``: ``{name: ...}`` of opt-in diagnostics (``attention_rollout``: see
    :mod:`pytest_qrel.diagnostics`).
    ``runtime``: the audit of a runtime unit (an int8 artifact run by ONNX Runtime, OpenVINO,
    torchao, or a user's file): ``{"identity", "census", "parity", "latency", "size"}`` as
    :func:`pytest_qrel.runtimes.audit.audit_runtime` records it; ``{}`` for simulated units.
    ``calibration``: the images each seed calibrated on (:meth:`pytest_qrel.calibration_draw.Drawn.record`:
    ``{"draw", "seed", "samples", "sha256"}``); ``[]`` for FP32.
    ``ood_mean``: ``{score: {metric: value}}``, each OOD metric averaged over the suite's OOD sets
    (what a ``mean(ood)`` check reads); :meth:`mean_ood` falls back to the plain mean over the sets
    in ``ood`` when the engine did not fill it.
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
    base: str = ""
    posthoc: list[str] = field(default_factory=list)
    weight_bits: int | None = None
    act_bits: int | None = None
    bits_label: str = ""
    seeds: list[int] = field(default_factory=list)
    calibration_samples: int | None = None
    options: dict[str, Any] = field(default_factory=dict)
    per_seed: dict[str, list[float]] = field(default_factory=dict)
    curves: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, Any] = field(default_factory=dict)
    ood_mean: dict[str, dict[str, float]] = field(default_factory=dict)
    baseline: dict[str, Any] = field(default_factory=dict)  # FP32 records: {"file", "created", "fingerprint"}
    runtime: dict[str, Any] = field(default_factory=dict)  # runtime units: {"identity", "census", "parity", "latency", "size"}
    calibration: list[dict[str, Any]] = field(default_factory=list)  # quantized units: per seed {"draw", "seed", "samples", "sha256"}

    @property
    def is_reference(self) -> bool:
        """True for the unquantized model without post-hoc steps (the FP32 column of every table)."""
        return not self.method and not self.posthoc and not self.bits_label

    def mean_ood(self, score: str) -> dict[str, float]:
        """``{metric: mean over the OOD sets}`` of ``score``: ``ood_mean[score]`` when recorded,
        else the arithmetic mean of each metric present in every set of ``ood[score]``."""
        if score in self.ood_mean:
            return dict(self.ood_mean[score])
        per_set = list(self.ood.get(score, {}).values())
        if len(per_set) < 2:
            return {}
        common = [m for m in per_set[0] if all(m in s and s[m] is not None for s in per_set)]
        return {m: sum(float(s[m]) for s in per_set) / len(per_set) for m in common}

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UnitMetrics":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class MetricInfo:
    """How a metric reads, for reports: ``label`` ("AUPR-out"), ``higher_is_better``, ``fraction``
    (a value in [0, 1], shown as a percentage), ``unit`` of a non-fraction metric ("nats", "").

    ``fmt``: the display rule of a value in its display unit, a Python format spec (``".2f"``: two
    decimals of the percentage for fractions; ``".4f"`` for NLL; ``".4g"``: four significant digits
    for the spectral errors); ``""`` means the default of :mod:`pytest_qrel.display`.
    """

    name: str
    label: str
    higher_is_better: bool
    fraction: bool
    unit: str = ""
    kind: str = "id"
    fmt: str = ""

    def to_dict(self) -> dict[str, Any]:
        return _plain(asdict(self))


@dataclass
class RunResults:
    """Everything one run (or the merge of several shards) hands to the report: plain data only.

    ``verdicts``: one per planned check that ran (plus ``not run`` verdicts for planned checks that
    produced none); ``units``: the units that ran, FP32 first per model; ``metrics``: display
    information per metric name; ``scores``: ``{suite: [score names in suite order]}``;
    ``run``: run metadata (timestamp, duration, host, device, versions, suite files and hashes,
    baseline fingerprints, quantizer configs, conventions; see :mod:`pytest_qrel.runinfo`);
    ``planned``: the number of planned checks per suite, so a report can say "N of M did not run".
    """

    verdicts: list[Verdict] = field(default_factory=list)
    units: list[UnitMetrics] = field(default_factory=list)
    metrics: dict[str, MetricInfo] = field(default_factory=dict)
    scores: dict[str, list[str]] = field(default_factory=dict)
    run: dict[str, Any] = field(default_factory=dict)
    planned: dict[str, int] = field(default_factory=dict)

    @property
    def planned_total(self) -> int | None:
        """Checks planned over all suites (``None``: not recorded)."""
        return sum(self.planned.values()) if self.planned else None

    def verdict(self) -> RunVerdict:
        """What the verdicts add up to under the one policy (:func:`pytest_qrel.policy.run_verdict`):
        the status every output shows and ``qrel merge``'s exit code."""
        return run_verdict(self.verdicts, self.planned_total)

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdicts": [v.to_dict() for v in self.verdicts],
            "units": [u.to_dict() for u in self.units],
            "metrics": {k: m.to_dict() for k, m in self.metrics.items()},
            "scores": _plain(self.scores),
            "run": _plain(self.run),
            "planned": dict(self.planned),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunResults":
        return cls(
            verdicts=[Verdict.from_dict(v) for v in data.get("verdicts", [])],
            units=[UnitMetrics.from_dict(u) for u in data.get("units", [])],
            metrics={k: MetricInfo(**m) for k, m in (data.get("metrics") or {}).items()},
            scores=dict(data.get("scores") or {}),
            run=dict(data.get("run") or {}),
            planned=dict(data.get("planned") or {}),
        )


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
