"""Identity: what makes a runtime unit's outputs what they are, so a changed artifact is never green
from a cache.

A method may register an ``identity(config, base_dir) -> dict`` hook in its
:data:`~pytest_qrel.quantize.QUANTIZERS` entry. The engine puts what it returns into the outputs
cache key of every unit of that method (:func:`unit_identity`), next to the method's options, the
FP32 model's identity and the data's fingerprint. It must be cheap and must *not* build the
artifact: it hashes the files the unit will read and names the runtime, its version and the knobs
that change its numbers (execution provider, threads, graph-optimisation level, precision hint).

The runtime methods' hooks (:func:`runtime_identity`, :func:`artifact_identity`) return::

    {"runtime": "onnxruntime", "version": "1.32.0", "provider": "auto", "threads": 2,
     "graph_optimization": "all", "precision": "f32", "files": {"model.onnx": "<sha256>"}, ...}

Missing, unreadable or wrongly shaped artifact files are a
:class:`~pytest_qrel.errors.QuantOptionError` on ``path`` (the engine locates it at the quantizer).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import QuantOptionError
from ..fingerprint import file_sha256, package_version

RUNTIME_PACKAGES: dict[str, tuple[str, ...]] = {
    "onnxruntime": ("onnxruntime", "onnx", "torch"),
    "openvino": ("openvino", "nncf", "torch"),
    "torchao": ("torchao", "torch"),
    "torch": ("torch",),
}
"""Packages whose versions a unit of each runtime records (the first is the runtime itself)."""

def resolved_threads(threads: int | None) -> int:
    """The thread count a runtime will use: ``threads``, or torch's in this process."""
    if threads:
        return int(threads)
    import torch

    return int(torch.get_num_threads())


def versions(runtime: str) -> dict[str, str]:
    """``{package: version}`` of what ``runtime`` runs on (from package metadata; imports nothing)."""
    return {name: package_version(name) for name in RUNTIME_PACKAGES[runtime]}


def _knobs(options: Any) -> dict[str, Any]:
    """The options that change a runtime's numbers besides the method's own (typed options)."""
    out: dict[str, Any] = {"threads": resolved_threads(getattr(options, "threads", None))}
    for key in ("provider", "graph_optimization", "inference_precision"):
        value = getattr(options, key, None)
        if value is not None:
            out["precision" if key == "inference_precision" else key] = value
    return out


def runtime_identity(config: Any, base_dir: Path | None = None) -> dict[str, Any]:
    """The identity hook of ``onnxruntime``, ``openvino`` and ``torchao``: the runtime, its
    versions and its knobs (the FP32 model it starts from is in the key already)."""
    runtime = config.options.backend
    return {"runtime": runtime, "versions": versions(runtime), **_knobs(config.options)}


def artifact_paths(spelled: str, runtime: str, base_dir: Path | None) -> list[Path]:
    """The files an artifact consists of (an OpenVINO ``.xml`` and its ``.bin``; an ONNX model and
    the external data files its tensors name, as ``torch.onnx.export(dynamo=True)`` writes
    ``model.onnx.data``), resolved against the suite's directory.

    Raises:
        QuantOptionError: on ``path``, when a file does not exist or is not a file.
    """
    base = Path(base_dir) if base_dir is not None else Path.cwd()
    path = Path(spelled).expanduser()
    path = (path if path.is_absolute() else base / path).resolve()
    where = f"(paths are relative to the suite file's directory {base.resolve()})"
    if not path.is_file():
        what = "is a folder, not a file" if path.is_dir() else "does not exist"
        fix = "point 'path' at the quantized model file the team deploys"
        from_cwd = Path(spelled).expanduser().resolve()  # a path written relative to where pytest runs
        if base_dir is not None and from_cwd.is_file() and from_cwd != path:
            fix = f"write 'path: {os.path.relpath(from_cwd, base)}': {from_cwd} is that file, relative to the suite file"
        raise QuantOptionError("path", f"artifact file {path} {what} {where}", fix)
    files = [path]
    if runtime == "onnxruntime":
        from .onnx_files import external_data_files

        for data in external_data_files(path):
            if not data.is_file():
                raise QuantOptionError("path", f"ONNX model {path} keeps its weights in the external data file {data}, "
                                       "which does not exist", "keep the data file saved with the .onnx beside it (as written)")
            files.append(data)
    if runtime == "openvino":
        weights = path.with_suffix(".bin")
        if path.suffix.lower() != ".xml":
            raise QuantOptionError("path", f"artifact file {path} is not an OpenVINO IR (.xml with its .bin)",
                                   "give the .xml of the IR saved by openvino.save_model, or set 'runtime:' to the runtime that reads it")
        if not weights.is_file():
            raise QuantOptionError("path", f"OpenVINO IR {path} has no weights file {weights}",
                                   "keep the .bin saved with the .xml beside it")
        files.append(weights)
    return files


def artifact_identity(config: Any, base_dir: Path | None = None) -> dict[str, Any]:
    """The identity hook of ``artifact``: the SHA-256 of every file it reads, the runtime, its
    versions and knobs.

    Raises:
        QuantOptionError: on ``path``: a missing or unreadable file.
    """
    options = config.options
    runtime = options.backend
    hashes: dict[str, str] = {}
    for path in artifact_paths(str(options.path), runtime, base_dir):
        try:
            hashes[path.name] = file_sha256(path)
        except OSError as exc:
            raise QuantOptionError("path", f"artifact file {path} cannot be read: {exc.strerror or exc}",
                                   "make it readable by the user running the gate") from None
    return {"runtime": runtime, "versions": versions(runtime), "files": hashes, **_knobs(options)}


def unit_identity(spec: Any, base_dir: Path) -> dict[str, Any] | None:
    """What the ``identity`` hook of ``spec``'s method returns (``None`` when it has none), for the
    outputs cache key. ``spec`` is a :class:`~pytest_qrel.spec.schema.QuantizerSpec`.

    Raises:
        SpecError: located at the quantizer, for an option or a file the hook refuses.
    """
    from ..quantize.base import QUANTIZERS, validate_quantizer  # .base: no edge back to quantize/__init__
    from ..spec.quantizers import spec_error_for

    hook = QUANTIZERS.meta(spec.method).get("identity")
    if hook is None:
        return None
    try:
        config = validate_quantizer(spec.method, spec.weight_bits, spec.act_bits, spec.options, seed=spec.calibration.seed)
        return dict(hook(config, base_dir))
    except QuantOptionError as exc:
        raise spec_error_for(exc, spec) from None


def identity_line(identity: dict[str, Any]) -> str:
    """``onnxruntime 1.32.0, provider CPUExecutionProvider, 2 threads, ...; model.onnx 3f2a9c1b7e04``."""
    parts = [f"{identity.get('runtime', '?')} {identity.get('versions', {}).get(identity.get('runtime', ''), '')}".strip()]
    for key in ("provider", "threads", "graph_optimization", "precision", "exporter"):
        if identity.get(key) is not None:
            parts.append(f"{key} {identity[key]}")
    files = identity.get("files") or {}
    text = ", ".join(parts)
    if files:
        text += "; " + ", ".join(f"{name} {sha[:12]}" for name, sha in files.items())
    return text


def run_info_identities(units: Any) -> dict[str, Any]:
    """``{"<suite>/<model>/<quantizer>": identity}`` of every runtime unit record
    (:class:`~pytest_qrel.results.UnitMetrics`), for the run info."""
    return {f"{u.suite}/{u.model}/{u.quantizer}": dict(u.runtime["identity"]) for u in units if u.runtime and u.runtime.get("identity")}
