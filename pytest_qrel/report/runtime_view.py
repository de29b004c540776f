"""The report's section on deployed runtimes: census, parity to the simulation, latency and identity.

Built from :attr:`UnitMetrics.runtime` of the runtime units (records that already hold every number
shown, see :func:`pytest_qrel.runtimes.audit.audit_runtime`; the census shares in percent come from
:attr:`pytest_qrel.summary.ModelSummary.census_percent`); renders nothing for a model without
runtime units. Four tables in one block of the model's section:

- **Census**: the share of Linear / MatMul / Conv multiply-accumulates in int8 kernels, with
  integer weights only, and in float, and the kernels that ran on each side;
- **Parity to the simulation**: the runtime beside the simulated quantizer of the same recipe on
  the same images: mean |logit difference|, the simulation's noise floor, their ratio, top-1
  agreement, and each side's distance from FP32 (the runtime's and the simulation's own metrics
  are side by side in the tables above: both are columns);
- **Latency, memory and size**: medians at batch 1 and the suite's batch size, working memory
  and artifact size, each with its ratio to FP32 measured in the same process (noisy on a shared
  machine);
- **Identity**: runtime and version, provider, threads, graph optimisation, precision and the
  SHA-256 of every artifact file.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..results import UnitMetrics
from ..summary import ModelSummary
from .objects import Block, Cell, Column, Row, Table, fit

MB = 1024.0 * 1024.0


def _num(value: Any, spec: str, suffix: str = "") -> Cell:
    if value is None:
        return Cell()
    try:
        number = float(value)
    except (TypeError, ValueError):
        return Cell(text=str(value))
    return Cell(text=f"{number:{spec}}{suffix}", sort=number)


def _text(value: Any) -> Cell:
    return Cell(text=str(value) if value not in (None, "") else "\u2014")


def _marked(b: Any, cell: Cell, suite: str, model: str, quantizer: str, metric: str, ref: str | None = None) -> Cell:
    """Attach the verdicts of runtime checks that bound this number (their cell key's dataset is the ID set)."""
    for key, verdicts in b.by_cell.items():
        if key[:5] == (suite, model, quantizer, metric, ref):
            cell.checks += [b.mark(v) for v in verdicts]
    return cell


def _kernels(ops: dict[str, int], n: int = 6) -> str:
    items = list(ops.items())
    text = ", ".join(f"{op} \u00d7{count}" for op, count in items[:n])
    return (text + (", \u2026" if len(items) > n else "")) or "none"


def census_table(b: Any, ms: ModelSummary, units: Sequence[UnitMetrics]) -> Table:
    suite, model = ms.suite, ms.model
    columns = [Column(c) for c in ("Runtime", "Int8 MACs", "Weight-only", "Float MACs", "Integer kernels", "Float kernels", "Notes")]
    rows = []
    for u in units:
        c = u.runtime["census"]
        share = ms.census_percent.get(u.quantizer, {})
        rows.append(Row(u.quantizer, [
            _text(c["runtime"]),
            _marked(b, _num(share.get("int8"), ".1f", "%"), suite, model, u.quantizer, "int8_share"),
            _num(share.get("weight_only"), ".1f", "%"),
            _num(share.get("float"), ".1f", "%"),
            _text(_kernels(c["ops"].get("integer", {}))),
            _text(_kernels(c["ops"].get("float", {}))),
            _text(c.get("notes", "")),
        ], sub=u.bits_label))
    return fit(Table(b.new_id("t"), "Census: share of Linear / MatMul / Conv multiply-accumulates by how they compute, and the kernels that ran",
                     columns, rows, rowhead="Unit", css="runtime-census"))


def parity_table(b: Any, suite: str, model: str, units: Sequence[UnitMetrics]) -> Table | None:
    columns = [Column(c) for c in ("Simulation", "Mean |\u0394 logit|", "Noise floor", "Parity (floors)", "Top-1 agreement",
                                   "Simulation vs FP32", "Runtime vs FP32", "Images")]
    rows = []
    for u in units:
        for ref, p in u.runtime.get("parity", {}).items():
            rows.append(Row(u.quantizer, [
                _text(ref),
                _marked(b, _num(p["logit_diff"], ".3g"), suite, model, u.quantizer, "logit_diff", ref),
                _num(p["floor"], ".3g"),
                _marked(b, _num(p["parity"], ".3g"), suite, model, u.quantizer, "parity", ref),
                _marked(b, _num(100 * p["agreement"], ".1f", "%"), suite, model, u.quantizer, "agreement", ref),
                _num(p["sim_error"], ".3g"),
                _num(p["runtime_error"], ".3g"),
                _num(p["images"], ".0f"),
            ], sub=f"vs {ref}"))
    if not rows:
        return None
    return fit(Table(b.new_id("t"), "Parity to the simulation of the same recipe (mean |logit difference| on the same ID test images; "
                     "the floor is the simulation's own: sim(x) against sim(x + noise))", columns, rows, rowhead="Runtime",
                     css="runtime-parity"))


def latency_table(b: Any, suite: str, model: str, units: Sequence[UnitMetrics]) -> Table | None:
    measured = [u for u in units if u.runtime.get("latency")]
    if not measured:
        return None
    batch = measured[0].runtime["latency"]["batch"]
    columns = [Column(c) for c in ("Batch 1 (ms)", "\u00d7 FP32", f"Batch {batch} (ms)", "\u00d7 FP32", "Working memory (MiB)", "\u00d7 FP32",
                                   "Size (MiB)", "\u00d7 FP32")]
    rows = []
    for u in measured:
        lat, size = u.runtime["latency"], u.runtime.get("size", {})
        ratio = lat.get("ratio", {})
        for side, label in (("fp32", "FP32"), ("runtime", u.quantizer)):
            r = lat[side]
            mine = side == "runtime"
            nbytes = size.get("artifact_bytes" if mine else "fp32_bytes")
            rows.append(Row(label, [
                _num(r["b1_ms"], ".3g"),
                _marked(b, _num(ratio.get("latency_b1") if mine else 1.0, ".2f"), suite, model, u.quantizer, "latency_b1") if mine else _num(1.0, ".2f"),
                _num(r["batch_ms"], ".3g"),
                _marked(b, _num(ratio.get("latency"), ".2f"), suite, model, u.quantizer, "latency") if mine else _num(1.0, ".2f"),
                _num(r.get("peak_mb"), ".3g"),
                _marked(b, _num(ratio.get("memory"), ".2f"), suite, model, u.quantizer, "memory") if mine else _num(1.0 if r.get("peak_mb") else None, ".2f"),
                _num(None if nbytes is None else nbytes / MB, ".3g"),
                _marked(b, _num(size.get("ratio"), ".2f"), suite, model, u.quantizer, "size") if mine else _num(1.0, ".2f"),
            ], sub="measured beside " + u.quantizer if not mine else u.runtime["census"]["runtime"]))
    return fit(Table(b.new_id("t"), "Latency (median wall time), working memory and size against FP32, measured in the same process "
                     "(wall times are noisy on a shared machine)", columns, rows, rowhead="Model", css="runtime-latency"))


def identity_table(b: Any, units: Sequence[UnitMetrics]) -> Table:
    columns = [Column(c) for c in ("Runtime", "Versions", "Provider", "Threads", "Graph optimisation", "Precision", "Artifact files (SHA-256)")]
    rows = []
    for u in units:
        i = u.runtime["identity"]
        files = ", ".join(f"{name} {sha[:12]}" for name, sha in (i.get("files") or {}).items())
        rows.append(Row(u.quantizer, [
            _text(i.get("runtime")),
            _text(", ".join(f"{k} {v}" for k, v in (i.get("versions") or {}).items())),
            _text(i.get("provider")),
            _text(i.get("threads")),
            _text(i.get("graph_optimization")),
            _text(i.get("precision")),
            _text(files),
        ]))
    return fit(Table(b.new_id("t"), "Identity of each runtime unit (part of its cache key: a changed file is recomputed)", columns, rows,
                     rowhead="Unit", css="runtime-identity"))


def runtime_blocks(b: Any, ms: ModelSummary) -> list[Block]:
    """The "Deployed runtimes" block of a model's section (empty when it has no runtime unit)."""
    runtimes = [u for u in ms.units if u.runtime and u.runtime.get("census")]
    if not runtimes:
        return []
    tables = [census_table(b, ms, runtimes)]
    tables += [t for t in (parity_table(b, ms.suite, ms.model, runtimes), latency_table(b, ms.suite, ms.model, runtimes)) if t is not None]
    tables.append(identity_table(b, runtimes))
    legend = ("Runtime units run the artifact a team deploys (ONNX Runtime, OpenVINO, torchao, or a file of its own); their "
              "metrics are the columns of the tables above, beside the simulated quantizers. Ratios below 1 are faster / smaller "
              "than FP32. See docs/runtimes.md.")
    return [Block(b.new_id("b"), "Deployed runtimes: census, parity to the simulation, latency", tables, legend)]

