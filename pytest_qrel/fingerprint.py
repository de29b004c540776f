"""Fingerprints: what produced a result, so stale baselines and caches are detected, not trusted."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any

# Versions that change FP32 numbers enough to matter are compared at major.minor.
FINGERPRINT_PACKAGES = ("torch", "timm", "pytest-qrel")


def digest(obj: Any) -> str:
    """SHA-256 of the canonical JSON form of ``obj``."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def package_version(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        if name == "pytest-qrel":
            from ._version import __version__

            return __version__
        return "absent"


@functools.lru_cache(maxsize=1)
def versions_major_minor() -> dict[str, str]:
    """``{"torch": "2.14", "timm": "1.0", "pytest-qrel": "0.1"}`` (local build tags dropped)."""
    out = {}
    for name in FINGERPRINT_PACKAGES:
        v = package_version(name).split("+")[0]
        out[name] = ".".join(v.split(".")[:2])
    return out


CACHE_PACKAGES = (
    "torch", "torchvision", "timm", "open_clip_torch", "numpy", "pillow", "onnxruntime", "openvino", "nncf", "torchao",
)
"""Packages whose exact versions key the outputs cache: each can change what a model or a quantizer
computes (timm's attention, OpenCLIP's towers, PIL's decoders and resampling, a runtime's kernels),
and a cache, unlike a baseline, is free to recompute, so any release is a miss."""


@functools.lru_cache(maxsize=1)
def versions_exact() -> dict[str, str]:
    """The full version of every package of :data:`CACHE_PACKAGES` (``"absent"`` when not installed)."""
    return {name: package_version(name) for name in CACHE_PACKAGES}


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    """SHA-256 of this package's Python sources: part of every cache key, so editing the code
    (or upgrading the package) can never serve outputs computed by older code."""
    root = Path(__file__).resolve().parent
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def diff(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """Human-readable differences ``field: old -> new`` between two nested dicts (leaves only)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        out: list[str] = []
        for key in sorted(set(stored) | set(current), key=str):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in stored:
                out.append(f"{name}: (none) -> {_short(current[key])}")
            elif key not in current:
                out.append(f"{name}: {_short(stored[key])} -> (none)")
            else:
                out.extend(diff(stored[key], current[key], name))
        return out
    return [] if stored == current else [f"{prefix}: {_short(stored)} -> {_short(current)}"]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a digest: the prefix is enough to tell them apart
    return text if len(text) <= 80 else text[:77] + "..."


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB chunks (the one file digest of the package: model
    checkpoints, artifacts, suite files, images). Raises OSError when the file cannot be read."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



_STAMP_ATTR = "_qrel_files_stamp"


def files_stamp(paths: list[Path]) -> str:
    """SHA-256 over each file's path, size, modification and status-change times (ns) and inode.

    The key of what a *cache* may reuse, never of a baseline: a dataset's fingerprint hashes its
    files' paths and sizes (and their bytes only with ``content_hash``), so an edit that keeps a
    file's size -- with its modification time set back (``os.utime``) -- keeps the fingerprint; the
    status-change time cannot be set back and changes with every write, so a cache keyed on this stamp
    recomputes. A copy or checkout of the data changes it too, which costs one recomputation, not a
    stale result. A file that cannot be stat'ed is recorded as missing (reading it fails later, with
    the data source's own message)."""
    h = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            record = f"{path}\t{st.st_size}\t{st.st_mtime_ns}\t{st.st_ctime_ns}\t{st.st_ino}\n"
        except OSError:
            record = f"{path}\tmissing\n"
        h.update(record.encode())
    return h.hexdigest()


def _dataset_files(ds: Any, positions: Any = None) -> list[Path] | None:
    """The files a dataset reads its samples from, by duck typing (this module imports nothing of
    the data sources): file sets (``root`` / ``relpaths``: imagefolder, filelist, image-text) and
    torchvision sets over per-sample files (``samples`` / ``imgs`` / ``_image_files``); None for
    in-memory sets, whose fingerprint hashes their content. ``positions``: those samples' only."""
    root, relpaths = getattr(ds, "root", None), getattr(ds, "relpaths", None)
    if isinstance(root, (str, os.PathLike)) and isinstance(relpaths, list):
        chosen = relpaths if positions is None else [relpaths[int(i)] for i in positions]
        return [Path(root) / r for r in chosen]
    inner, indices = getattr(ds, "dataset", None), getattr(ds, "indices", None)
    if inner is not None and indices is not None:
        if positions is not None:
            indices = [indices[int(i)] for i in positions]
        for attr in ("samples", "imgs", "_samples", "_image_files"):
            value = getattr(inner, attr, None)
            if isinstance(value, (list, tuple)) and value:
                try:
                    return [Path(os.fspath(v[0] if isinstance(v, (tuple, list)) else v)) for v in (value[int(i)] for i in indices)]
                except (TypeError, IndexError):
                    return None
    return None


def data_stamp(ds: Any, positions: Any = None) -> str:
    """The cache-side identity of a dataset's files (:func:`files_stamp`), "" for a set that reads no
    per-sample files; a shifted set has its base set's. ``positions``: only those samples' files
    (the calibration images drawn from a training split). The whole set's is computed once per
    dataset object (one ``stat`` per file), which lives for one run."""
    base = getattr(ds, "base", None)
    if base is not None and base is not ds:
        return data_stamp(base, positions)
    if positions is not None:
        files = _dataset_files(ds, positions)
        return files_stamp(files) if files is not None else ""
    cached = getattr(ds, _STAMP_ATTR, None)
    if isinstance(cached, str):
        return cached
    files = _dataset_files(ds)
    stamp = files_stamp(files) if files is not None else ""
    try:
        setattr(ds, _STAMP_ATTR, stamp)
    except (AttributeError, TypeError):  # a frozen or slotted set: recomputed next time
        pass
    return stamp


def module_code_digest(module: Any) -> str:
    """SHA-256 of what a model's code is, beyond its weights: every submodule's name and class
    (``pkg.mod.Class``), and the bytes of each class's source file that lies outside the installed
    packages (a ``python:`` model's file and the modules it imports; installed packages are keyed
    by their versions, :func:`versions_exact`). A cache key, not a baseline's: refactoring a model
    file so that a layer becomes an ``nn.Linear`` keeps its state dict but changes what a quantizer
    quantizes, and must not be served the old outputs. Source files that cannot be read are named
    without their bytes."""
    import inspect

    h = hashlib.sha256()
    files: set[str] = set()
    classes: set[type] = set()
    for name, sub in module.named_modules():
        cls = type(sub)
        h.update(f"{name}\t{cls.__module__}.{cls.__qualname__}\n".encode())
        classes.update(cls.__mro__)
    for klass in classes:  # each class once, however many submodules share it
        if klass.__module__ == "builtins":
            continue
        try:
            source = inspect.getsourcefile(klass)
        except (TypeError, OSError):
            continue
        if source and not any(part in ("site-packages", "dist-packages") for part in Path(source).parts):
            files.add(source)
    for source in sorted(files):
        try:
            h.update(f"{source}\t{file_sha256(source)}\n".encode())
        except OSError:
            h.update(f"{source}\tunreadable\n".encode())
    return h.hexdigest()
