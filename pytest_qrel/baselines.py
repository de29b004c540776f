"""Store and load FP32 baselines, atomically, with a format version and a fingerprint.

Layout: ``<baseline_dir>/<suite>/<model>.json`` (metrics + fingerprint, the commit point) and
``<model>.npz`` (per-sample arrays of the FP32 model: ``id.correct``, ``id.nll``, ``id.confidence``
and ``score.<score>.<dataset>``; for suites with spectral checks also ``spectrum.<id set>``, the
FP32 last-block feature spectrum of :mod:`pytest_qrel.spectral`). The JSON records the SHA-256
of the npz, so a half-replaced pair is detected. Only FP32 results are ever stored here.
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BaselineError, BaselineMissingError
from .io import atomic_write_bytes

FORMAT_VERSION = 1


@dataclass
class Baseline:
    """A loaded FP32 baseline record (see module docstring for the layout)."""

    path: Path
    suite: str
    model: str
    fingerprint: dict[str, Any]
    metrics: dict[str, Any]  # {"id": {metric: v}, "ood": {score: {dataset: {metric: v}}}}
    run_id: str | None
    created: str
    variants: dict[str, Any] | None = None  # {"FP32+temperature": {"metrics": .., "params": {"temperature": T}}}

    def arrays(self) -> dict[str, np.ndarray]:
        """The per-sample arrays (loaded on demand; checked against the recorded digest)."""
        npz = self.path.with_suffix(".npz")
        try:
            data = npz.read_bytes()
        except OSError as exc:
            raise BaselineError(f"{npz}: cannot read per-sample baseline arrays ({exc}); regenerate with --qrel-update-baselines") from None
        if hashlib.sha256(data).hexdigest() != self._npz_sha256:
            raise BaselineError(f"{npz} does not match {self.path} (digest differs); regenerate with --qrel-update-baselines")
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    _npz_sha256: str = ""


def baseline_path(baseline_dir: Path, suite: str, model: str) -> Path:
    return Path(baseline_dir) / suite / f"{model}.json"


def write_baseline(
    path: Path,
    *,
    suite: str,
    model: str,
    fingerprint: dict[str, Any],
    metrics: dict[str, Any],
    arrays: dict[str, np.ndarray],
    run_id: str | None,
    created: str,
    variants: dict[str, Any] | None = None,
) -> None:
    """Write the npz, then the JSON that names its digest (the JSON replace is the commit point)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    npz_bytes = buf.getvalue()
    record = {
        "format_version": FORMAT_VERSION,
        "suite": suite,
        "model": model,
        "created": created,
        "run_id": run_id,
        "fingerprint": fingerprint,
        "metrics": metrics,
        "variants": variants or {},
        "npz_sha256": hashlib.sha256(npz_bytes).hexdigest(),
    }
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    atomic_write_bytes(path.with_suffix(".npz"), npz_bytes)
    atomic_write_bytes(path, text.encode())


def read_baseline(path: Path, *, update_command: str) -> Baseline:
    """Load ``path``; a missing or unreadable file raises an error that says how to regenerate it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineMissingError(f"no FP32 baseline at {path}; create it with: {update_command}") from None
    except OSError as exc:
        raise BaselineError(f"cannot read FP32 baseline {path} ({exc})") from None
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise BaselineError(f"FP32 baseline {path} is corrupt ({exc}); regenerate it with: {update_command}") from None
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise BaselineError(
            f"FP32 baseline {path} has format version {version!r}, this pytest-qrel reads {FORMAT_VERSION}; regenerate it with: {update_command}"
        )
    try:
        b = Baseline(
            path=path,
            suite=record["suite"],
            model=record["model"],
            fingerprint=record["fingerprint"],
            metrics=record["metrics"],
            run_id=record.get("run_id"),
            created=record.get("created", ""),
            variants=record.get("variants") or {},
        )
        b._npz_sha256 = record["npz_sha256"]
    except KeyError as exc:
        raise BaselineError(f"FP32 baseline {path} lacks field {exc}; regenerate it with: {update_command}") from None
    return b
