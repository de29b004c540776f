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
- **float linears**: an ``nn.Linear`` left unwrapped (a classifier head kept in float, e.g.
  ``head: fp32``) is a float path (below), listed even when the probe does not run it (unless
  ``allow_float_linears``); it is never a tensor check, since it claims no bits;
- **float paths** (:class:`FloatPath`, ``report.float_paths``): every matmul, linear and convolution
  the forward computes (``F.linear``, ``F.conv*``, ``@`` / ``torch.matmul`` / ``mm`` / ``bmm`` /
  ``addmm`` / ``baddbmm`` / ``einsum``, the fused ``F.scaled_dot_product_attention`` and
  ``F.multi_head_attention_forward``) whose operands are not all on an integer grid. A second
  forward pass over the first ``probe_images`` images watches every torch call
  (:class:`torch.overrides.TorchFunctionMode`): an operand is on a grid when it is (a view or copy
  of) the output of a quantizer of a simulated module or a simulated module's
  ``dequantized_weight()``. Weight operands (a layer's weight, or any model parameter or buffer)
  must always be on a grid; activation operands must be too unless the model is weight-only (no
  simulated module quantizes an input; ``weight_only`` overrides the inference). The fused
  attention kernels count as float paths whenever activations are quantized: their softmax output
  is never quantized. So "W4A4" is true of a model only when ``report.integer_only``.

Float paths do not make ``report.ok`` false (it says the quantized tensors are on their grids); the
suite's ``verify: true`` fails on them unless the quantizer sets ``allow_float_paths: true``
(:meth:`SimulationReport.passes`).

A module takes part when it has the attributes ``weight_bits``, ``act_bits``, ``input_quantizer`` and
a method ``dequantized_weight()`` (see :class:`~pytest_qrel.quantize.fakequant.FakeQuantLinear`);
``None`` bits mean that side is not quantized and is not checked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode, resolve_name

Kind = Literal["weight", "activation"]


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
        bits = f" ({self.bits} bits)" if self.bits is not None else ""
        if self.distinct is None or self.limit is None:  # never seen: say why, print no None
            text = f"{status} {self.module} {self.kind}{bits}"
        else:
            text = f"{status} {self.module} {self.kind}: {self.distinct} distinct values, limit {self.limit}{bits}"
        return text + (f": {self.note}" if self.note else "")


@dataclass(frozen=True)
class FloatPath:
    """A matmul / linear / convolution of the forward whose ``operands`` are not on an integer grid.

    ``module``: the innermost module that ran it (``""``: the model's own forward); ``op``: the torch
    function (``linear``, ``conv2d``, ``matmul``, ``scaled_dot_product_attention``, ...);
    ``operands``: the float ones (``input`` / ``weight`` of a layer, ``a`` / ``b`` of a matmul,
    ``query`` / ``key`` / ``value`` / ``attention weights`` of a fused attention); ``calls``: how
    often it ran during the probe.
    """

    module: str
    op: str
    operands: tuple[str, ...]
    calls: int = 1

    def __str__(self) -> str:
        text = f"{self.module or '<model>'}: {self.op} with {', '.join(self.operands)} in floating point"
        return text + (" (an nn.Linear left unwrapped, not run by the probe)" if self.calls == 0 else "")


class SimulationReport(list[TensorCheck]):
    """The list of :class:`TensorCheck` of one model, with ``.ok`` and ``.failures``, and the
    :class:`FloatPath` list ``.float_paths`` (``.ops``: the matmul / linear / conv calls checked)."""

    float_paths: list[FloatPath]
    ops: int

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.float_paths = []
        self.ops = 0

    @property
    def failures(self) -> list[TensorCheck]:
        return [c for c in self if not c.ok]

    @property
    def ok(self) -> bool:
        """Every quantized tensor is on its grid (float paths aside)."""
        return bool(self) and not self.failures

    @property
    def integer_only(self) -> bool:
        """:attr:`ok` and no float path: every matmul, linear and conv computes on integer grids."""
        return self.ok and not self.float_paths

    def passes(self, *, allow_float_paths: bool = False) -> bool:
        """What ``verify: true`` requires: :attr:`ok`, and no float path unless ``allow_float_paths``."""
        return self.ok and (allow_float_paths or not self.float_paths)

    def summary(self) -> str:
        if not self:
            return "no fake-quantized module found"
        bad = self.failures
        head = f"{len(self) - len(bad)}/{len(self)} quantized tensors on their grid"
        text = head + "".join(f"\n  {c}" for c in bad)
        if self.float_paths:
            text += (f"; {len(self.float_paths)} float path(s) (matmul / linear / conv with operands not on an "
                     "integer grid):" + "".join(f"\n  {p}" for p in self.float_paths))
        elif self.ops:
            text += f"; all {self.ops} matmul / linear / conv calls on integer grids"
        return text


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
    probe_images: int = 2,
    weight_only: bool | None = None,
) -> SimulationReport:
    """Run ``images`` through ``qmodel`` once (``torch.no_grad``) and check every quantized tensor;
    then run the first ``probe_images`` of them once more to find the float paths.

    ``batch_size=None`` runs one batch. Returns a :class:`SimulationReport` (a list of
    :class:`TensorCheck`, weights and activations per module in module order, then unwrapped linears,
    and ``.float_paths``); ``report.ok`` is true when at least one tensor was checked and all passed.
    ``weight_only`` (default: inferred, true when no simulated module quantizes an input) says
    whether float activation operands are expected.
    """
    modules = [(name, m) for name, m in qmodel.named_modules() if is_simulated_quant_module(m)]
    seen: dict[str, Tensor] = {}
    rows: dict[str, int] = {}
    handles = []
    for name, m in modules:
        if m.act_bits is not None and m.input_quantizer is not None:
            handles.append(m.input_quantizer.register_forward_hook(_collector(seen, rows, name)))
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
                per_group = name in rows
                n = rows[name] if per_group else int(seen[name].numel())
                what = "in a group sharing one scale " if per_group else ""
                report.append(TensorCheck(name, "activation", m.act_bits, n, limit, n <= limit,
                                          "" if n <= limit else f"more distinct values {what}than the bits allow"))
    if probe_images > 0 and images.shape[0] > 0:
        report.float_paths, report.ops = find_float_paths(qmodel, images[:probe_images], weight_only=weight_only)
    if not allow_float_linears:  # a float head (head: fp32) is a float path, with or without a probe
        probed = {(p.module, p.op) for p in report.float_paths}
        for name, m in qmodel.named_modules():
            if isinstance(m, nn.Linear) and (name, "linear") not in probed:
                report.float_paths.append(FloatPath(name, "linear", ("weight",), 0))
    return report


def _collector(seen: dict[str, Tensor], rows: dict[str, int], name: str) -> Any:
    """Forward hook: the union of a static quantizer's outputs, or for a quantizer with ``grid_rows``
    (one scale per group, e.g. dynamic per-token) the most distinct values in any group."""

    def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
        grid_rows = getattr(module, "grid_rows", None)
        if callable(grid_rows):
            rows[name] = max(rows.get(name, 0), distinct_per_row(grid_rows(output)))
            seen[name] = output.detach().reshape(-1)[:0]
            return
        values = torch.unique(output.detach())
        if name in seen:
            values = torch.unique(torch.cat([seen[name], values]))
        seen[name] = values

    return hook


# --------------------------------------------------------------------------------------------------
# Float paths
# --------------------------------------------------------------------------------------------------

Role = Literal["input", "weight", "auto"]
OperandSpec = tuple[int, str, Role]

_LAYER: tuple[OperandSpec, ...] = ((0, "input", "input"), (1, "weight", "weight"))
_PAIR: tuple[OperandSpec, ...] = ((0, "a", "auto"), (1, "b", "auto"))
_ADD_PAIR: tuple[OperandSpec, ...] = ((1, "a", "auto"), (2, "b", "auto"))
_ATTENTION: tuple[OperandSpec, ...] = ((0, "query", "input"), (1, "key", "input"), (2, "value", "input"))

MATMUL_OPS: dict[str, tuple[OperandSpec, ...]] = {
    "torch.nn.functional.linear": _LAYER,
    **{f"torch.nn.functional.conv{d}d": _LAYER for d in (1, 2, 3)},
    **{f"torch.nn.functional.conv_transpose{d}d": _LAYER for d in (1, 2, 3)},
    **{f"torch.{f}": _PAIR for f in ("matmul", "mm", "bmm", "mv", "inner", "tensordot")},
    **{f"torch.Tensor.{f}": _PAIR for f in ("matmul", "__matmul__", "mm", "bmm", "mv")},
    "torch.Tensor.__rmatmul__": ((1, "a", "auto"), (0, "b", "auto")),
    **{f"torch.{f}": _ADD_PAIR for f in ("addmm", "baddbmm", "addbmm", "addmv")},
    **{f"torch.Tensor.{f}": _ADD_PAIR for f in ("addmm", "baddbmm", "addbmm", "addmv")},
    "torch.einsum": (),  # operands: every tensor argument after the equation
    "torch.nn.functional.scaled_dot_product_attention": _ATTENTION,
    "torch.nn.functional.multi_head_attention_forward": (
        (0, "query", "input"), (1, "key", "input"), (2, "value", "input"), (5, "in_proj_weight", "weight"),
    ),
}
"""Resolved torch function name -> its operands ``(position, label, role)``."""

ALWAYS_FLOAT: dict[str, tuple[str, ...]] = {
    "torch.nn.functional.scaled_dot_product_attention": ("attention weights",),
    "torch.nn.functional.multi_head_attention_forward": ("attention weights", "out_proj input"),
}
"""Operands computed inside a fused kernel, never quantized: activations that are always float."""

_PRESERVING = {
    *(f"torch.Tensor.{f}" for f in (
        "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "contiguous", "clone", "flatten",
        "unflatten", "squeeze", "unsqueeze", "expand", "expand_as", "__getitem__", "chunk", "split", "unbind",
        "narrow", "select", "movedim", "moveaxis", "swapaxes", "swapdims", "detach", "to", "float", "half",
        "bfloat16", "double", "type_as", "T.__get__", "mT.__get__", "data.__get__", "repeat", "tile")),
    *(f"torch.{f}" for f in (
        "reshape", "flatten", "permute", "transpose", "t", "squeeze", "unsqueeze", "chunk", "split", "unbind",
        "narrow", "select", "movedim", "moveaxis", "swapaxes", "swapdims", "clone", "detach", "tile")),
    "torch.nn.functional.pad",  # reflect / replicate copy values; constant 0 is on every grid holding zero
}
"""Torch functions whose outputs hold only values of their first argument (views and copies)."""


def _tensors(obj: Any) -> list[Tensor]:
    if isinstance(obj, Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)):
        return [t for item in obj for t in _tensors(item)]
    return []


class _FloatPathProbe(TorchFunctionMode):
    """Watches every torch call of one forward pass; records the matmul-like calls with float operands."""

    def __init__(self, grid: dict[int, Tensor], params: dict[int, Tensor], where: Callable[[], str],
                 weight_only: bool) -> None:
        super().__init__()
        self.grid, self.params, self.where, self.weight_only = grid, params, where, weight_only
        self.paths: dict[tuple[str, str, tuple[str, ...]], int] = {}
        self.ops = 0
        self._names: dict[int, str] = {}

    def _name(self, func: Any) -> str:
        key = id(func)
        if key not in self._names:
            try:
                self._names[key] = resolve_name(func) or ""
            except Exception:  # noqa: BLE001 - an unnamed builtin
                self._names[key] = ""
        return self._names[key]

    def _operands(self, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> list[tuple[Any, str, Role]]:
        if name == "torch.einsum":
            tensors = _tensors(list(args[1:]))
            return [(t, f"operand {i}", "auto") for i, t in enumerate(tensors)]
        return [(args[pos] if pos < len(args) else None, label, role) for pos, label, role in MATMUL_OPS[name]]

    def __torch_function__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = self._name(func)
        if name in _PRESERVING and args and isinstance(args[0], Tensor):
            for table in (self.grid, self.params):
                if id(args[0]) in table:
                    for t in _tensors(out):
                        table[id(t)] = t
        elif name in MATMUL_OPS:
            self.ops += 1
            floats = []
            for t, label, role in self._operands(name, args, kwargs):
                if not isinstance(t, Tensor) or id(t) in self.grid:
                    continue
                weight = role == "weight" or (role == "auto" and id(t) in self.params)
                if weight or not self.weight_only:
                    floats.append(label if not weight or role == "weight" else f"{label} (a model parameter or buffer)")
            if not self.weight_only:
                floats += ALWAYS_FLOAT.get(name, ())
            if floats:
                key = (self.where(), name.rsplit(".", 1)[-1], tuple(floats))
                self.paths[key] = self.paths.get(key, 0) + 1
        return out


def find_float_paths(qmodel: nn.Module, images: Tensor, *, weight_only: bool | None = None) -> tuple[list[FloatPath], int]:
    """The float paths of one forward pass of ``images`` through ``qmodel`` (``torch.no_grad``), and the
    number of matmul / linear / conv calls checked. See the module docstring for the rules."""
    modules = [(name, m) for name, m in qmodel.named_modules() if is_simulated_quant_module(m)]
    if weight_only is None:
        weight_only = not any(m.act_bits is not None and m.input_quantizer is not None for _, m in modules)
    grid: dict[int, Tensor] = {}
    for _, m in modules:
        if m.weight_bits is not None:
            w = m.dequantized_weight()
            if isinstance(w, Tensor):
                grid[id(w)] = w
    params: dict[int, Tensor] = {id(p): p for p in qmodel.parameters()}
    params.update({id(b): b for b in qmodel.buffers()})
    stack: list[str] = []
    handles = []

    def grid_hook(module: nn.Module, inputs: Any, output: Any) -> None:
        for t in _tensors(output):
            grid[id(t)] = t

    for _, m in modules:
        if m.act_bits is not None and m.input_quantizer is not None:
            handles.append(m.input_quantizer.register_forward_hook(grid_hook))
    def enter(name: str) -> Any:
        def hook(module: nn.Module, inputs: Any) -> None:
            stack.append(name)
        return hook

    def leave(module: nn.Module, inputs: Any, output: Any) -> None:
        stack.pop()

    for name, m in qmodel.named_modules():
        handles.append(m.register_forward_pre_hook(enter(name)))
        handles.append(m.register_forward_hook(leave))
    probe = _FloatPathProbe(grid, params, lambda: stack[-1] if stack else "", weight_only)
    try:
        ref = next(iter(qmodel.parameters()), None)
        if ref is not None:
            images = images.to(device=ref.device, dtype=ref.dtype if ref.is_floating_point() else None)
        with torch.no_grad(), probe:
            qmodel(images)
    finally:
        for h in handles:
            h.remove()
    paths = [FloatPath(module, op, operands, calls) for (module, op, operands), calls in probe.paths.items()]
    return paths, probe.ops


def assert_simulation_ok(
    qmodel: nn.Module, images: Tensor, *, allow_float_paths: bool = True, **kwargs: Any
) -> SimulationReport:
    """:func:`verify_simulation`, raising ``AssertionError`` with the failing tensors (and, with
    ``allow_float_paths=False``, the float paths) listed."""
    __tracebackhide__ = True
    report = verify_simulation(qmodel, images, **kwargs)
    if not report.passes(allow_float_paths=allow_float_paths):
        raise AssertionError("fake quantization is not on its grid: " + report.summary())
    return report
