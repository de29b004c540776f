"""The thin evaluation: a planned check, the metrics tables it reads and its interval -> a verdict.

No model runs here: the engine has already verified the baseline and computed the units; this
reads the check's value for the quantizer under test, FP32 and the reference quantizer of a
``delta(ref)`` bound from their tables (:class:`~pytest_qrel.metric_table.MetricsTable`) and lets
:func:`pytest_qrel.evaluate.decide` apply the bound.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import BaselineMissingError
from ..evaluate import decide
from ..metric_table import MetricQuery, MetricsTable
from ..results import Verdict
from ..spec.plan import PlannedCheck
from ..spec.quantizer_ref import QuantizerRef

TableOf = Callable[[QuantizerRef], tuple[MetricsTable, str]]
"""``table_of(quantizer) -> (its metrics table, where it comes from: for messages)``."""


def verdict_of(p: PlannedCheck, table_of: TableOf, interval: Callable[[], Any], update_command: Callable[[], str]) -> Verdict:
    """Decide ``p`` from the tables of the quantizers it reads and its bootstrap interval
    (``interval()``, asked for after the values: computing them may compute the units it resamples).
    Runtime checks have no FP32 value: they compare with a simulation or are ratios to FP32."""
    from ..metrics import METRICS

    meta = METRICS.meta(p.check.metric)
    query = MetricQuery.of(p)

    def value(quantizer: str) -> float:
        table, where = table_of(QuantizerRef.parse(quantizer))
        try:
            return table.value(query)
        except KeyError as exc:  # a table without it is a baseline (or outputs) to re-create
            raise BaselineMissingError(f"{where} has no {query.metric} for {exc}; re-create it with: {update_command()}") from None

    fp32 = value("FP32") if query.kind != "runtime" else None
    measured = value(p.quantizer)
    ref = p.check.bound.ref
    return decide(
        p, measured, fp32, higher_is_better=meta["higher_is_better"], fraction=meta["fraction"],
        ref_value=value(ref) if ref is not None else None, interval=interval(),
    )
