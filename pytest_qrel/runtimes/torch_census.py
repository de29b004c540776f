"""The census of a torch module (torchao, a ``torch.export`` program, a quantized state dict).

One batch-1 forward pass under a :class:`~torch.utils._python_dispatch.TorchDispatchMode` records
every aten op that executes on plain tensors, with its operands' dtypes and shapes. Matrix ops
(``mm``, ``addmm``, ``bmm``, ``baddbmm``, ``_int_mm``, ``_weight_int8pack_mm``, convolutions, the
scaled-dot-product attention kernels) become :class:`~.census.Kernel` rows with their
multiply-accumulates: ``int8`` when both operands are 8-bit integers (torchao's dynamic
activation quantization ends in ``_int_mm``), ``weight_only`` when only the weight is
(``_weight_int8pack_mm``), ``float`` otherwise (torchao's weight-only config dequantizes its int8
weight and multiplies in float: ``mm``). Ops called with a tensor subclass operand are not
counted themselves: the subclass runs them as the plain ops recorded.

A weight-only op on dequantized weights is reported with ``weight_bits`` from the modules whose
weights are quantized tensor subclasses (:func:`quantized_weights`), so a census of
``int8_weight_only`` says: weights stored in int8, every multiply in float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .census import Kernel, census_of, matmul_macs

VIEWS = frozenset({
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "clone", "contiguous", "detach", "alias",
    "slice", "select", "split", "split_with_sizes", "unsqueeze", "squeeze", "as_strided", "empty", "empty_like", "copy_",
    "unbind", "lift_fresh", "_to_copy", "to", "zeros", "ones", "new_empty", "new_zeros", "full", "scalar_tensor", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "is_same_size", "_local_scalar_dense", "item", "dim", "size",
})
INT8 = ("torch.int8", "torch.uint8")
SDPA_PREFIX = "_scaled_dot_product"


def _dtype(t: Any) -> str:
    return str(getattr(t, "dtype", ""))


def _matrix_kernel(name: str, args: tuple[Any, ...], out: Any) -> Kernel | None:
    import torch

    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name in ("mm", "_int_mm", "bmm"):
        a, b = tensors[0], tensors[1]
    elif name in ("addmm", "baddbmm"):
        a, b = tensors[1], tensors[2]
    elif name == "_weight_int8pack_mm":
        a, b = tensors[0], tensors[1]
        return Kernel(name, "weight_only", matmul_macs(out.shape, a.shape[-1]), integer=True, weight_bits=8)
    elif name in ("convolution", "_convolution", "mkldnn_convolution") and len(tensors) >= 2:
        a, b = tensors[0], tensors[1]
        macs = matmul_macs(out.shape, int(np.prod(b.shape[1:])))
        if _dtype(a) in INT8 and _dtype(b) in INT8:
            return Kernel(name, "int8", macs, integer=True, weight_bits=8)
        return Kernel(name, "float", macs)
    elif name.startswith(SDPA_PREFIX) and len(tensors) >= 3:
        q, k, v = tensors[:3]
        macs = matmul_macs(q.shape[:-1], k.shape[-2] * (q.shape[-1] + v.shape[-1]))  # q k^T, then (.) v
        return Kernel(name, "float", macs)
    else:
        return None
    macs = matmul_macs(out.shape, a.shape[-1])
    a_int, b_int = _dtype(a) in INT8, _dtype(b) in INT8
    if a_int and b_int:
        return Kernel(name, "int8", macs, integer=True, weight_bits=8)
    if b_int:
        return Kernel(name, "weight_only", macs, integer=True, weight_bits=8)
    return Kernel(name, "float", macs)


def record_kernels(module: Any, example: Any, quantized: set[str] | frozenset[str] = frozenset()) -> list[Kernel]:
    """Every aten op one forward pass of ``module`` on ``example`` (batch 1) executes on plain
    tensors. A float matrix op inside a layer named in ``quantized`` (whose weight is stored as
    integers and dequantized for the multiply) is counted as ``weight_only``."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    kernels: list[Kernel] = []
    inside: list[str] = []

    class Recorder(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: Any = None) -> Any:
            out = func(*args, **(kwargs or {}))
            if all(t is torch.Tensor or issubclass(torch.Tensor, t) for t in types):  # plain tensors only
                name = func.overloadpacket.__name__
                result = out[0] if isinstance(out, (tuple, list)) else out
                kernel = _matrix_kernel(name, args, result) if isinstance(result, torch.Tensor) else None
                if kernel is not None:
                    if kernel.compute == "float" and inside and "conv" not in name and not name.startswith(SDPA_PREFIX):
                        kernel = Kernel(name, "weight_only", kernel.macs, integer=False, weight_bits=8)
                    kernels.append(kernel)
                elif name not in VIEWS:
                    integer = any(_dtype(a) in INT8 for a in args if isinstance(a, torch.Tensor))
                    kernels.append(Kernel(name, "other", integer=integer))
            return out

    def enter(name: str) -> Any:
        def hook(module: Any, args: Any) -> None:
            inside.append(name)
        return hook

    def leave(module: Any, args: Any, output: Any) -> None:
        inside.pop()

    handles = []
    for name, sub in module.named_modules():
        if name in quantized:
            handles += [sub.register_forward_pre_hook(enter(name)), sub.register_forward_hook(leave)]
    try:
        with torch.no_grad(), Recorder():
            module(example[:1])
    finally:
        for h in handles:
            h.remove()
    return kernels


def quantized_weights(module: Any) -> dict[str, str]:
    """``{module name: weight tensor class}`` of the layers whose weight is a tensor subclass
    (torchao's ``Int8Tensor``, ``AffineQuantizedTensor``, ...)."""
    import torch

    out = {}
    for name, sub in module.named_modules():
        w = getattr(sub, "weight", None)
        if isinstance(w, torch.Tensor) and type(w) not in (torch.Tensor, torch.nn.Parameter):
            out[name] = type(w).__name__
    return out


def torch_census(module: Any, example: Any, *, runtime: str, notes: str = "") -> dict[str, Any]:
    """The census of a torch module on the images ``example`` (multiply-accumulates per image;
    module docstring); its notes name the layers with quantized weights, then ``notes``."""
    quantized = quantized_weights(module)
    kernels = record_kernels(module, example, set(quantized))
    classes = sorted(set(quantized.values()))
    layers = f"{len(quantized)} layers with quantized weights ({', '.join(classes)})" if quantized else "no layer has quantized weights"
    return census_of(runtime, kernels, images=len(example), notes="; ".join(n for n in (layers, notes) if n))
