"""The census of a deployed model: what runs in integer kernels and what stays in floating point.

Each runtime lists the kernels it executes (ONNX Runtime: its profiler's node events after graph
optimisation; OpenVINO: the compiled runtime model's layers and their runtime precision; torch /
torchao: the linear layers and whether their weights are quantized tensor subclasses) as
:class:`Kernel` rows, and :func:`census_of` sums them up:

- ``ops``: every executed op type and how many times it ran, split by ``integer`` / ``float``;
- ``macs``: multiply-accumulates per image of the *matrix* ops (Linear / MatMul / Gemm / Conv and
  their integer forms) by how they compute: ``int8`` (integer activations and weights, e.g.
  ``MatMulIntegerToFloat``, ``QGemm``, ``DynamicQuantizeMatMul``, an OpenVINO ``FullyConnected``
  at ``i8``, torchao's ``_int_mm``), ``weight_only`` (integer weights, float activations) and
  ``float``;
- ``int8_share``: the share of those multiply-accumulates that run in int8 (0 to 1).

:func:`bits_problem` says whether a quantizer's declared ``weight_bits`` / ``act_bits`` are what
the census found; a unit whose census disagrees fails every check with the census in the message.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

Compute = Literal["int8", "weight_only", "float", "other"]
"""How a kernel computes: ``other`` for ops that are not matrix products (LayerNorm, Softmax, GELU,
QuantizeLinear, ...); those are ``integer`` when they take or make integer tensors."""

MATRIX_KINDS: tuple[str, ...] = ("int8", "weight_only", "float")


@dataclass(frozen=True)
class Kernel:
    """One executed kernel: its op type, how it computes, its multiply-accumulates per image
    (matrix ops only; 0 otherwise), whether it is an integer kernel and its weight bits."""

    op: str
    compute: Compute
    macs: float = 0.0
    integer: bool = False
    weight_bits: int | None = None
    counted: bool = True  # False: contributes multiply-accumulates only (its kernel is counted by another row)


def census_of(runtime: str, kernels: Iterable[Kernel], *, images: int = 1, notes: str = "") -> dict[str, Any]:
    """The census (plain data) of the kernels executed for ``images`` images.

    Returns ``{"runtime", "ops": {"integer": {op: n}, "float": {op: n}}, "macs": {"int8", "weight_only",
    "float"} per image, "int8_share", "weight_int8_share", "weight_bits", "act_bits", "notes"}``;
    ``act_bits`` is 8 when some matrix op runs with integer activations, ``weight_bits`` the
    widest integer weight found (``None``: none).
    """
    ops: dict[str, Counter[str]] = {"integer": Counter(), "float": Counter()}
    macs = dict.fromkeys(MATRIX_KINDS, 0.0)
    weight_bits: set[int] = set()
    for k in kernels:
        if k.counted:
            ops["integer" if k.integer else "float"][k.op] += 1
        if k.compute in macs:
            macs[k.compute] += k.macs / max(images, 1)
        if k.weight_bits is not None and k.compute in ("int8", "weight_only"):
            weight_bits.add(k.weight_bits)
    total = sum(macs.values())
    return {
        "runtime": runtime,
        "ops": {side: dict(sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))) for side, c in ops.items()},
        "macs": {k: float(v) for k, v in macs.items()},
        "int8_share": macs["int8"] / total if total else 0.0,
        "weight_int8_share": (macs["int8"] + macs["weight_only"]) / total if total else 0.0,
        "weight_bits": max(weight_bits) if weight_bits else None,
        "act_bits": 8 if macs["int8"] > 0 else None,
        "notes": notes,
    }


def summary(census: dict[str, Any]) -> str:
    """One line: ``onnxruntime: 78.1% of Linear/MatMul/Conv MACs in int8 (weight-only 0.0%, float
    21.9%); integer kernels MatMulIntegerToFloat x16, QGemm x1; float MatMul x8, Conv x1, ...``."""
    total = sum(census["macs"].values()) or 1.0
    share = {k: 100.0 * census["macs"][k] / total for k in MATRIX_KINDS}

    def ops(side: str, n: int = 6) -> str:
        items = list(census["ops"].get(side, {}).items())
        text = ", ".join(f"{op} x{c}" for op, c in items[:n])
        return (text + (", ..." if len(items) > n else "")) or "none"

    return (f"{census['runtime']}: {share['int8']:.1f}% of Linear/MatMul/Conv MACs in int8 (weight-only "
            f"{share['weight_only']:.1f}%, float {share['float']:.1f}%); integer kernels {ops('integer')}; "
            f"float kernels {ops('float')}")


def bits_problem(census: dict[str, Any], weight_bits: int, act_bits: int | None) -> tuple[str, str] | None:
    """``(why, fix)`` when the census contradicts the declared bit widths, ``None`` when it does not.

    Declared integer activations need some matrix op computing with integer activations; declared
    integer weights need some matrix op with integer weights of that width (the runtimes here
    quantize to 8 bits, so a declared W4 on an 8-bit artifact is a contradiction too). A share
    below 100 % is not a contradiction (the patch embedding or the attention matmuls may stay in
    float, as in the simulation): bound it with an ``int8_share`` check.
    """
    declared = f"W{weight_bits}A{act_bits or 16}"
    if census["weight_bits"] is None:
        return (f"declared {declared}, but no matrix op runs with integer weights",
                "give the quantized model (a float export is not one), or a recipe that quantizes its Linear layers")
    if census["weight_bits"] != weight_bits:
        return (f"declared {weight_bits}-bit weights, but the integer kernels use {census['weight_bits']}-bit weights",
                f"declare 'weight_bits: {census['weight_bits']}'")
    if act_bits is not None and census["act_bits"] is None:
        return (f"declared {declared}, but every matrix op computes with floating-point activations",
                "declare 'act_bits: null' for a weight-only model, or give one quantized with integer activations "
                "(e.g. torchao's Int8DynamicActivationInt8WeightConfig)")
    if act_bits is not None and census["act_bits"] != act_bits:
        return (f"declared {act_bits}-bit activations, but the integer kernels take {census['act_bits']}-bit activations",
                f"declare 'act_bits: {census['act_bits']}'")
    if act_bits is None and census["act_bits"] is not None:
        return (f"declared {declared} (float activations), but {100 * census['int8_share']:.1f}% of the MACs run with int8 activations",
                f"declare 'act_bits: {census['act_bits']}'")
    return None


def matmul_macs(out_shape: Iterable[int], k: int) -> float:
    """Multiply-accumulates of a matrix product with output ``out_shape`` and inner size ``k``."""
    n = 1.0
    for d in out_shape:
        n *= max(int(d), 0)
    return n * max(int(k), 0)
