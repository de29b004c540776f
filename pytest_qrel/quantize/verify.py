"""Check that a simulated-quantized model really computes on a ``b``-bit grid.

A fake-quantized tensor of ``b`` bits can hold at most ``2^b`` distinct values (per output channel
for per-channel weights, per tensor for per-tensor activations). :func:`verify_simulation` counts
them on the tensors the model really multiplies by:

- **weight**: ``module.dequantized_weight()`` (the tensor forward uses), distinct values counted per
  output row (dims 1.. flattened), the maximum over rows reported;
- **activation**: the *output* of ``module.input_quantizer``, caught with a forward hook while
  ``images`` run through the model, distinct values counted over the union of every call (a static
  per-tensor quantizer has one grid). A quantizer that never runs (a forward that bypasses it)
  fails with ``distinct=None``;
- **module**: an ``nn.Linear`` left unwrapped fails (unless ``allow_float_linears``).

A module takes part when it has the attributes ``weight_bits``, ``act_bits``, ``input_quantizer`` and
a method ``dequantized_weight()`` (see :class:`~pytest_qrel.quantize.fakequant.FakeQuantLinear`);
``None`` bits mean that side is not quantized and is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

Kind = Literal["weight", "activation", "module"]


@dataclass(frozen=True)
class TensorCheck:
    """The verdict on one quantized tensor: at most ``limit = 2^bits`` distinct values."""

    module: str
    kind: Kind
    bits: int | None
    distinct: int | None  # None: the tensor was never seen
    limit: int | None
    ok: bool
    note: str = ""

    def __str__(self) -> str:
        status = "ok" if self.ok else "FAIL"
        text = f"{status} {self.module} {self.kind}: {self.distinct} distinct values, limit {self.limit} ({self.bits} bits)"
        return text + (f": {self.note}" if self.note else "")


class SimulationReport(list[TensorCheck]):
    """The list of :class:`TensorCheck` of one model, with ``.ok`` and ``.failures``."""

    @property
    def failures(self) -> list[TensorCheck]:
        return [c for c in self if not c.ok]

    @property
    def ok(self) -> bool:
        return bool(self) and not self.failures

    def summary(self) -> str:
        if not self:
            return "no fake-quantized module found"
        bad = self.failures
        head = f"{len(self) - len(bad)}/{len(self)} quantized tensors on their grid"
        return head + "".join(f"\n  {c}" for c in bad)


def is_simulated_quant_module(module: nn.Module) -> bool:
    return (
        hasattr(module, "weight_bits")
        and hasattr(module, "act_bits")
        and hasattr(module, "input_quantizer")
        and callable(getattr(module, "dequantized_weight", None))
    )


def distinct_per_row(t: Tensor) -> int:
    """Max over rows (dim 0; other dims flattened) of the number of distinct values in the row."""
    rows = t.detach().reshape(t.shape[0], -1) if t.dim() > 0 else t.detach().reshape(1, 1)
    if rows.shape[1] == 0:
        return 0
    s = rows.sort(dim=1).values
    return int((1 + (s[:, 1:] != s[:, :-1]).sum(dim=1)).max())


def verify_simulation(
    qmodel: nn.Module,
    images: Tensor,
    *,
    batch_size: int | None = None,
    allow_float_linears: bool = False,
) -> SimulationReport:
    """Run ``images`` through ``qmodel`` once (``torch.no_grad``) and check every quantized tensor.

    ``batch_size=None`` runs one batch. Returns a :class:`SimulationReport` (a list of
    :class:`TensorCheck`, weights and activations per module in module order, then unwrapped linears);
    ``report.ok`` is true when at least one tensor was checked and all passed.
    """
    modules = [(name, m) for name, m in qmodel.named_modules() if is_simulated_quant_module(m)]
    seen: dict[str, Tensor] = {}
    handles = []
    for name, m in modules:
        if m.act_bits is not None and m.input_quantizer is not None:
            handles.append(m.input_quantizer.register_forward_hook(_collector(seen, name)))
    try:
        ref = next(iter(qmodel.parameters()), None)
        if ref is not None:
            images = images.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        with torch.no_grad():
            for batch in images.split(batch_size or max(1, images.shape[0])):
                qmodel(batch)
    finally:
        for h in handles:
            h.remove()

    report = SimulationReport()
    for name, m in modules:
        if m.weight_bits is not None:
            w = m.dequantized_weight()
            limit = 2 ** int(m.weight_bits)
            if w is None:
                report.append(TensorCheck(name, "weight", m.weight_bits, None, limit, False, "no weight returned"))
            else:
                n = distinct_per_row(w)
                report.append(TensorCheck(name, "weight", m.weight_bits, n, limit, n <= limit,
                                          "" if n <= limit else "more distinct values in a row than the bits allow"))
        if m.act_bits is not None:
            limit = 2 ** int(m.act_bits)
            if m.input_quantizer is None:
                report.append(TensorCheck(name, "activation", m.act_bits, None, limit, False, "no input_quantizer"))
            elif name not in seen:
                report.append(TensorCheck(name, "activation", m.act_bits, None, limit, False,
                                          "input quantizer never ran: the forward bypasses it"))
            else:
                n = int(seen[name].numel())
                report.append(TensorCheck(name, "activation", m.act_bits, n, limit, n <= limit,
                                          "" if n <= limit else "more distinct values than the bits allow"))
    if not allow_float_linears:
        for name, m in qmodel.named_modules():
            if isinstance(m, nn.Linear):
                report.append(TensorCheck(name, "module", None, None, None, False,
                                          "nn.Linear left in floating point"))
    return report


def _collector(seen: dict[str, Tensor], name: str) -> Any:
    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        values = torch.unique(output.detach())
        if name in seen:
            values = torch.unique(torch.cat([seen[name], values]))
        seen[name] = values

    return hook


def assert_simulation_ok(qmodel: nn.Module, images: Tensor, **kwargs: Any) -> SimulationReport:
    """:func:`verify_simulation`, raising ``AssertionError`` with the failing tensors listed."""
    __tracebackhide__ = True
    report = verify_simulation(qmodel, images, **kwargs)
    if not report.ok:
        raise AssertionError("fake quantization is not on its grid: " + report.summary())
    return report
