"""Schema v1 of a reliability suite, as typed dataclasses.

Units: every metric value is a fraction or a natural unit inside the library (top1 = 0.97, not 97).
``delta`` is signed so that *positive means worse* (see :mod:`pytest_qrel.evaluate`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

SCHEMA_VERSION = 1
FP32 = "FP32"
"""The reserved quantizer name of the unquantized reference model."""

HELDOUT = "heldout"
"""The reserved dataset name of the held-out part of the ID train split (post-hoc fitting)."""

MEAN_OOD = "mean(ood)"
"""The pseudo-dataset of a check that averages an OOD metric over every OOD set."""

REPORT_ONLY = "report-only"
"""The item name (and the check's pseudo-metric) of a report-only unit: a (model, quantizer) the
suite's ``report:`` asks to compute and show without a bound."""


def mean_members(dataset: str, ood_names: list[str]) -> list[str] | None:
    """The OOD sets a ``mean(...)`` pseudo-dataset averages over (``mean(ood)``: all of them;
    ``mean(textures,sun)``: those); ``None`` for a plain dataset name."""
    if not (dataset.startswith("mean(") and dataset.endswith(")")):
        return None
    inner = dataset[len("mean(") : -1]
    return list(ood_names) if inner == "ood" else [n.strip() for n in inner.split(",") if n.strip()]


@dataclass(frozen=True)
class Location:
    """Where something was written: used in every error message about it."""

    file: str
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.file}:{self.line}" if self.line else self.file


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "<scheme>:<arg>", e.g. "embedded:digits_vit", "timm:deit_small_patch16_224"
    options: dict[str, Any] = field(default_factory=dict)
    where: Location | None = None


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    source: str  # "<scheme>:<arg>", e.g. "embedded:textures"
    options: dict[str, Any] = field(default_factory=dict)
    where: Location | None = None


@dataclass(frozen=True)
class CalibrationSpec:
    """``samples`` ID train images drawn with ``seed``. ``seeds`` (two or more) repeats the whole
    quantization once per seed and reports metrics averaged over the seeds, as the ViT paper does
    with seeds 0, 13 and 37. ``draw`` names how the images are drawn
    (:data:`pytest_qrel.calibration_draw.CALIBRATION_DRAWS`: ``numpy`` or ``repq_vit``)."""

    samples: int = 256
    seed: int = 0
    seeds: tuple[int, ...] = ()
    draw: str = "numpy"
    data: str | None = None
    """A dataset source the images come from instead of the ID train split, e.g. an image-text
    folder (``imagetext:${QREL_CC3M}``, :mod:`pytest_qrel.data.imagetext`); its captions become the
    QAT methods' training targets. ``None``: the ID set's train split and its labels."""


@dataclass(frozen=True)
class QuantizerSpec:
    """One named quantization configuration, e.g. ``W4A4: {method: minmax, weight_bits: 4, act_bits: 4}``.

    ``options`` holds method-specific settings (validated by the method itself).
    """

    name: str
    method: str
    weight_bits: int
    act_bits: int | None  # None: activations stay in floating point (weight-only methods)
    calibration: CalibrationSpec = field(default_factory=CalibrationSpec)
    options: dict[str, Any] = field(default_factory=dict)
    where: Location | None = None
    verify: bool = False  # run verify_simulation after quantizing (distinct values <= 2^bits, no float path)
    allow_float_paths: bool = False  # verify: true passes although some matmul / linear / conv computes in float

    def config_dict(self) -> dict[str, Any]:
        """Everything that determines the quantized model (for fingerprints)."""
        return {
            "method": self.method,
            "weight_bits": self.weight_bits,
            "act_bits": self.act_bits,
            "calibration": {"samples": self.calibration.samples, "seed": self.calibration.seed, "seeds": list(self.calibration.seeds),
                            # only when not the default, so that existing fingerprints stay valid
                            **({"draw": self.calibration.draw} if self.calibration.draw != "numpy" else {}),
                            **({"data": self.calibration.data} if self.calibration.data is not None else {})},
            "options": self.options,
        }


Op = Literal["<=", "<", ">=", ">"]
Unit = Literal["%", "pp", "abs"]


@dataclass(frozen=True)
class Bound:
    """``delta <= 12%`` or ``value >= 0.9``.

    ``kind='delta'`` compares the signed worsening against FP32 (positive = worse);
    ``kind='value'`` compares the quantized model's metric itself. ``amount`` is in the unit
    given: ``%`` relative to FP32 (12 means 12%), ``pp`` percentage points, ``abs`` the metric's own unit.
    With ``ref``, the bound is the same quantity of another quantizer (``delta <= delta(W4A4)``:
    no worse than minmax W4A4); ``amount`` is then unused.
    """

    kind: Literal["delta", "value"]
    op: Op
    amount: float
    unit: Unit = "abs"
    ref: str | None = None  # "delta <= delta(W4A4)": compare with another quantizer's delta

    def __str__(self) -> str:
        if self.ref is not None:
            return f"{self.kind}{self.op}{self.kind}({self.ref})"
        amount = f"{self.amount:g}"
        suffix = {"%": "%", "pp": "pp", "abs": ""}[self.unit]
        return f"{self.kind}{self.op}{amount}{suffix}"


@dataclass(frozen=True)
class NoBound(Bound):
    """The "bound" of a report-only unit: none (it passes unless the unit errors)."""

    kind: Literal["delta", "value"] = "value"
    op: Op = ">="
    amount: float = 0.0

    def __str__(self) -> str:
        return "no bound"


@dataclass(frozen=True)
class CheckSpec:
    """One check, from either the shorthand string or the structured mapping.

    ``quantizers``: names, or ``("all",)``. ``datasets``: ``None`` = the metric's natural sets (the ID
    test set for classification/calibration metrics, each OOD set for OOD metrics); or a tuple of
    dataset names; or ``(MEAN_OOD,)``.
    """

    metric: str
    bound: Bound
    quantizers: tuple[str, ...] = ("all",)
    score: str | None = None
    datasets: tuple[str, ...] | None = None
    expect: Literal["pass", "fail"] = "pass"
    reason: str | None = None
    text: str = ""  # the shorthand as written, or a generated equivalent
    where: Location | None = None
    confidence: float | None = None
    """Demanded confidence (a fraction, 0.95), the check's own or the suite's default: the check
    then passes only when its whole interval lies within the bound (see :mod:`pytest_qrel.stats`).
    ``None``: the point estimate decides and the interval is only shown."""

    @property
    def label(self) -> str:
        """The item name: ``aupr_out(msp) delta<=12%``."""
        metric = f"{self.metric}({self.score})" if self.score else self.metric
        return f"{metric} {self.bound}"


INCONCLUSIVE_POLICIES = ("fail", "warn", "pass")
"""What an inconclusive check does to the run: fail it (default), warn, or pass."""


@dataclass(frozen=True)
class BootstrapSpec:
    """``bootstrap: {resamples: 1000, seed: 0}``: the paired resamples behind every interval."""

    resamples: int = 1000
    seed: int = 0


@dataclass(frozen=True)
class ReportSpec:
    """Top-level ``report:``: what the report computes and shows beyond what the checks read.

    ``units``: quantizer names computed for every model over every dataset and shown in the
    report's tables and figures without a bound (``report: all`` or ``report: [W4A8, W8A4]``);
    each (model, quantizer) is one report-only item. ``ood_mean``: the OOD sets the report's
    "mean over the OOD sets" (tables, figures, ``UnitMetrics.ood_mean``) averages over, in suite
    order; ``None``: all of them. OOD sets outside it get figures of their own (the ViT paper's
    Fig. 1a averages five sets and Fig. 1b shows ImageNet-O alone)."""

    units: tuple[str, ...] = ()
    ood_mean: tuple[str, ...] | None = None
    checks: tuple["CheckSpec", ...] = ()
    """The report-only units as checks without a bound (metric :data:`REPORT_ONLY`), one per quantizer."""


@dataclass(frozen=True)
class Suite:
    name: str
    path: Path
    models: dict[str, ModelSpec]
    id_dataset: DatasetSpec
    ood_datasets: dict[str, DatasetSpec]
    quantizers: dict[str, QuantizerSpec]
    scores: tuple[str, ...]
    checks: tuple[CheckSpec, ...]
    conventions: str = "hendrycks"
    batch_size: int = 128
    version: int = SCHEMA_VERSION
    shifted_datasets: dict[str, DatasetSpec] = field(default_factory=dict)
    """Labelled sets in the ID label space (covariate shift, counter backgrounds): ID metrics run on them."""
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)
    """Spurious-correlation pairs ``name -> (common, counter)`` of labelled set names (ID or shifted)."""
    diagnostics: tuple[str, ...] = ()
    """Opt-in diagnostics shown in the report (``("attention_rollout",)``); names of
    :data:`pytest_qrel.diagnostics.DIAGNOSTICS`."""
    confidence: float | None = None
    """The suite's default demanded confidence (top-level ``confidence:``); already applied to
    every check that does not set its own."""
    inconclusive: Literal["fail", "warn", "pass"] = "fail"
    """What an inconclusive verdict does to the run (top-level ``inconclusive:``)."""
    bootstrap: BootstrapSpec = field(default_factory=BootstrapSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    """Top-level ``report:`` (report-only units, the OOD sets of the report's means)."""
    references: tuple[str, ...] = ()
    """Top-level ``references:``: shipped reference sets or files (:mod:`pytest_qrel.references`)
    whose published values the report shows beside the measured ones."""

    @property
    def mean_sets(self) -> list[str]:
        """The OOD sets the report's means average over (``report: {ood_mean: ...}``, else all)."""
        return list(self.report.ood_mean) if self.report.ood_mean is not None else list(self.ood_datasets)
    scenarios: dict[str, "Suite"] = field(default_factory=dict)
    """``scenario -> Suite`` when the suite has ``scenarios:`` (:mod:`pytest_qrel.spec.scenarios`):
    each an ordinary suite of models ``<model>@<scenario>``; this suite is then the first of them
    holding every scenario's models, and the planner plans each scenario's suite."""

    @property
    def all_datasets(self) -> dict[str, DatasetSpec]:
        return {self.id_dataset.name: self.id_dataset, **self.ood_datasets, **self.shifted_datasets}

    @property
    def labelled_datasets(self) -> list[str]:
        """Sets whose labels are ID classes: the ID test set and the shifted sets."""
        return [self.id_dataset.name, *self.shifted_datasets]
