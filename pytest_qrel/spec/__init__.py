"""The suite spec: schema v1 dataclasses, YAML loading and the check language."""

from .checks import parse_check, parse_shorthand
from .loader import load_suite
from .plan import PlannedCheck, plan
from .schema import FP32, MEAN_OOD, Bound, CheckSpec, DatasetSpec, ModelSpec, QuantizerSpec, Suite

__all__ = [
    "FP32", "MEAN_OOD", "Bound", "CheckSpec", "DatasetSpec", "ModelSpec", "PlannedCheck", "QuantizerSpec", "Suite",
    "load_suite", "parse_check", "parse_shorthand", "plan",
]
