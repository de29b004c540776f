"""Run metadata for the report and the results files, as one plain dict (:attr:`RunResults.run`).

:func:`run_info` takes plain inputs (the loaded suites, the baseline fingerprints, a device
string, start and end times) and returns JSON-ready data; it imports no torch, timm or open_clip
(versions come from the installed package metadata). Keys, in display order:

``timestamp``
    start of the run, ISO 8601 in UTC (``"2025-01-31T12:00:00+00:00"``).
``duration_s``
    wall time from start to end, seconds (``None`` without an end time).
``host``, ``platform``, ``python``
    :func:`platform.node`, :func:`platform.platform`, the interpreter version.
``device``
    as given (``"cpu"``, ``"cuda:0 (NVIDIA H200)"``); :func:`describe_device` writes one.
``command``
    the command line, when given.
``versions``
    ``{"torch", "timm", "open_clip_torch", "pytest-qrel", "numpy", "scikit-learn", "matplotlib"}``
    (``"absent"`` when not installed).
``suites``
    ``[{"name", "path", "sha256"}]``: each suite file and the SHA-256 of its bytes.
``conventions``
    ``{suite: metric conventions}``.
``baselines``
    ``{"<suite>/<model>": fingerprint}`` as stored with each FP32 baseline (the model's identity:
    ``weights_sha256``, the digest of the loaded weights, and ``checkpoint_sha256``, the SHA-256 of
    the checkpoint file where the model was read from one (``timm:`` and ``open_clip:`` sources);
    dataset fingerprints and sample counts, preprocessing, versions).
``quantizers``
    ``{suite: {quantizer: {"method", "weight_bits", "act_bits", "granularity",
    "calibration_samples", "seeds", "options"}}}``: the configuration as written in the suite
    (``act_bits`` ``None`` = float activations; ``granularity`` is ``options.weight_granularity``
    or ``"method default"``; ``seeds`` lists every calibration seed). With the units' records given
    (``drawn``, :func:`calibration_drawn`), each quantizer also has ``"drawn"``: ``{seed: sha256}``
    of the calibration images that seed was calibrated on
    (:func:`pytest_qrel.calibration_draw.drawn_sha256`: the split's fingerprint and the drawn
    positions, so another seed, draw or train split shows as another digest), or ``None`` where no
    unit of it ran in this run.
``diagnostics``
    ``{suite: [diagnostic names]}`` for suites that enable any.
``runtimes``
    ``{"<suite>/<model>/<quantizer>": identity}`` of runtime units (passed in ``extra`` by
    :func:`pytest_qrel.shards.run_results`): the runtime and its versions, provider, threads,
    graph optimisation, precision and the SHA-256 of every artifact file.
"""

from __future__ import annotations

import datetime as _dt
import platform
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .fingerprint import package_version
from .results import _plain
from .spec.schema import Suite

__all__ = ["VERSION_PACKAGES", "calibration_drawn", "describe_device", "file_sha256", "quantizer_configs", "run_info"]

VERSION_PACKAGES: tuple[str, ...] = ("torch", "timm", "open_clip_torch", "pytest-qrel", "numpy", "scikit-learn", "matplotlib")

Time = _dt.datetime | float | None


def _as_datetime(t: Time) -> _dt.datetime | None:
    if t is None:
        return None
    if isinstance(t, _dt.datetime):
        return t if t.tzinfo else t.astimezone()
    return _dt.datetime.fromtimestamp(float(t), tz=_dt.timezone.utc)


def file_sha256(path: str | Path) -> str | None:
    """SHA-256 of a file's bytes (:func:`pytest_qrel.fingerprint.file_sha256`), or ``None`` when it cannot be read."""
    from .fingerprint import file_sha256 as digest

    try:
        return digest(path)
    except OSError:
        return None


def describe_device(device: str) -> str:
    """``"cpu"``, or ``"cuda:0 (NVIDIA H200)"`` when torch is already imported and sees the GPU.

    Never imports torch itself (the caller ran a model, so torch is loaded if it matters).
    """
    import sys

    torch = sys.modules.get("torch")
    if torch is None or not str(device).startswith("cuda"):
        return str(device)
    try:
        index = int(str(device).partition(":")[2] or 0)
        return f"{device} ({torch.cuda.get_device_name(index)})"
    except Exception:  # noqa: BLE001 - a description must never fail the run
        return str(device)


def quantizer_configs(suite: Suite) -> dict[str, dict[str, Any]]:
    """``{quantizer: config}`` of one suite (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for name, q in suite.quantizers.items():
        cal = q.calibration
        out[name] = {
            "method": q.method,
            "weight_bits": q.weight_bits,
            "act_bits": q.act_bits,
            "granularity": q.options.get("weight_granularity", "method default"),
            "calibration_samples": cal.samples,
            "seeds": list(cal.seeds) if cal.seeds else [cal.seed],
            "options": dict(q.options),
        }
    return out


def calibration_drawn(units: Sequence[Any]) -> dict[str, dict[str, dict[str, str]]]:
    """``{suite: {quantizer: {seed: sha256}}}`` from unit records
    (:class:`~pytest_qrel.results.UnitMetrics`' ``calibration``); post-hoc variants and every
    model of a suite share their quantizer's draws (the draw does not depend on the model)."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    for u in units:
        for record in getattr(u, "calibration", None) or []:
            base = getattr(u, "base", "") or u.quantizer
            out.setdefault(u.suite, {}).setdefault(base, {})[str(record["seed"])] = str(record["sha256"])
    return out


def run_info(
    suites: Sequence[Suite],
    *,
    start: Time = None,
    end: Time = None,
    device: str | None = None,
    baselines: Mapping[str, Mapping[str, Any]] | None = None,
    command: str | None = None,
    extra: Mapping[str, Any] | None = None,
    drawn: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None,
) -> dict[str, Any]:
    """The run metadata dict (keys in the module docstring); plain types only.

    Args:
        suites: the suites of the run (:class:`~pytest_qrel.spec.schema.Suite`), in run order.
        start, end: when the run started and ended (``datetime`` or POSIX seconds).
        device: where the models ran (e.g. ``describe_device("cuda:0")``).
        baselines: ``{"<suite>/<model>": fingerprint dict}`` of the FP32 baselines used.
        command: the command line.
        extra: more entries, appended as given (e.g. ``{"workers": 2}``).
        drawn: ``{suite: {quantizer: {seed: sha256}}}`` of the calibration images drawn
            (:func:`calibration_drawn`); each quantizer's config then records them as ``"drawn"``.
    """
    t0, t1 = _as_datetime(start), _as_datetime(end)
    info: dict[str, Any] = {
        "timestamp": t0.astimezone(_dt.timezone.utc).isoformat(timespec="seconds") if t0 else None,
        "duration_s": round((t1 - t0).total_seconds(), 3) if t0 and t1 else None,
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "device": device,
    }
    if command:
        info["command"] = command
    info["versions"] = {name: package_version(name) for name in VERSION_PACKAGES}
    info["suites"] = [{"name": s.name, "path": str(s.path), "sha256": file_sha256(s.path)} for s in suites]
    info["conventions"] = {s.name: s.conventions for s in suites}
    info["baselines"] = {k: dict(v) for k, v in (baselines or {}).items()}
    info["quantizers"] = {s.name: quantizer_configs(s) for s in suites}
    if drawn is not None:
        for s in suites:
            for name, config in info["quantizers"][s.name].items():
                config["drawn"] = dict((drawn.get(s.name) or {}).get(name) or {}) or None
    diagnostics = {s.name: list(getattr(s, "diagnostics", ())) for s in suites if getattr(s, "diagnostics", ())}
    if diagnostics:
        info["diagnostics"] = diagnostics
    for k, v in (extra or {}).items():
        info[str(k)] = v
    return _plain(info)
