"""Latency, working memory and size of a runtime unit against FP32, measured in the same process.

The CLIP paper's Table 3 analogue. For the FP32 module and the runtime's module, one after the
other on the same images:

- ``latency``: the median wall time of a forward pass at batch 1 (``b1_ms``, after
  ``WARMUP_B1`` passes, over ``REPEATS_B1``) and at the suite's batch size (``batch_ms``, after
  ``WARMUP_BATCH``, over ``REPEATS_BATCH``), in milliseconds, FP32 and the runtime taking turns
  call by call;
- ``peak_mb``: working memory, the growth of the process's resident set (its high-water mark,
  reset through ``/proc/self/clear_refs`` after returning freed heap to the system with
  ``malloc_trim``) during one pass at the suite's batch size; ``None`` where the OS offers no way
  to reset it. Runtimes that keep an arena between passes are measured on their first pass;
- ``size``: the bytes a deployment ships (the artifact's files; for FP32 its parameters and buffers).

Every ratio is runtime / FP32 (below 1: faster, smaller). Wall times on a shared machine are noisy:
a bound on them (``ORT latency <= 1.2``) is allowed but flaky where other work competes for the
cores; the committed demo bounds only ``int8_share`` and parity. Tests count calls, never time.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from typing import Any

WARMUP_B1, REPEATS_B1 = 3, 15
WARMUP_BATCH, REPEATS_BATCH = 1, 5
CLEAR_REFS = "/proc/self/clear_refs"
STATUS = "/proc/self/status"


def median_ms(fns: dict[str, Callable[[Any], Any]], x: Any, *, warmup: int, repeats: int) -> dict[str, float]:
    """Median wall time in milliseconds of each ``fns[name](x)`` over ``repeats`` calls after
    ``warmup`` calls. The functions take turns call by call, so a machine that slows down or
    speeds up during the measurement does so for all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn(x)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    return {name: 1000.0 * statistics.median(t) for name, t in times.items()}


def _status_kb(key: str) -> int | None:
    try:
        with open(STATUS) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def peak_mb(fn: Callable[[Any], Any], x: Any) -> float | None:
    """Growth of the resident set's high-water mark during ``fn(x)``, in MiB (``None``: not measurable here)."""
    _trim()
    try:
        with open(CLEAR_REFS, "w") as f:
            f.write("5")
    except OSError:
        return None
    before = _status_kb("VmRSS")
    fn(x)
    after = _status_kb("VmHWM")
    if before is None or after is None:
        return None
    return max(after - before, 0) / 1024.0


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b <= 0 else a / b


def measure(fp32: Callable[[Any], Any], runtime: Callable[[Any], Any], x1: Any, batch: Any) -> dict[str, Any]:
    """Latency and working memory of ``runtime`` and ``fp32`` (callables of an image batch) on the
    batch-1 images ``x1`` and the batch ``batch``; ratios runtime / FP32."""
    memory = {"runtime": peak_mb(runtime, batch), "fp32": peak_mb(fp32, batch)}  # the runtime's first pass first
    fns = {"fp32": fp32, "runtime": runtime}
    b1 = median_ms(fns, x1, warmup=WARMUP_B1, repeats=REPEATS_B1)
    at_batch = median_ms(fns, batch, warmup=WARMUP_BATCH, repeats=REPEATS_BATCH)
    out: dict[str, Any] = {"batch": len(batch)}
    for name in fns:
        out[name] = {"b1_ms": b1[name], "batch_ms": at_batch[name], "peak_mb": memory[name]}
    out["ratio"] = {
        "latency_b1": _ratio(out["runtime"]["b1_ms"], out["fp32"]["b1_ms"]),
        "latency": _ratio(out["runtime"]["batch_ms"], out["fp32"]["batch_ms"]),
        "memory": _ratio(memory["runtime"], memory["fp32"]),
    }
    return out


def fp32_bytes(module: Any) -> int:
    """Bytes of the FP32 module's parameters and buffers (what an FP32 deployment stores)."""
    return int(sum(t.numel() * t.element_size() for t in module.state_dict().values()))
