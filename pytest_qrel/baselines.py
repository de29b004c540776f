"""The baseline store: FP32 results per (suite, model), written so that no kill can tear them and
read only after their integrity is checked.

Layout under the baseline directory::

    <suite>/<model>.json               metrics, fingerprint, the npz's name and SHA-256, and a
                                       SHA-256 of the JSON's own content (the commit point)
    <suite>/<model>.<sha12>.npz        per-sample FP32 arrays, named by the first 12 hex digits
                                       of their SHA-256

The npz holds ``<variant>|<dataset>|<field>`` arrays (``FP32|digits|correct``,
``FP32+temperature|textures|score.msp``; fields as in :mod:`pytest_qrel.engine.samples`) and, for
suites with spectral checks, ``FP32|<id set>|spectrum``.

Writing (:func:`write_baseline`): the new npz goes to a *new* file name (its digest), then the JSON
is replaced atomically, then npz files the JSON no longer names are deleted. A process killed at
any moment therefore leaves the old pair or the new pair: before the JSON replace the old JSON
still names the old npz, which is untouched. Reading (:func:`read_baseline`) verifies the JSON's
own digest (any edit, a flipped digit), the npz digest (a torn or swapped pair) and the range of
every stored metric; each failure is one line naming the file and the command that re-creates it.
Only FP32 results are ever stored here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BaselineError, BaselineMissingError
from .io import atomic_write_bytes, remove_stray_temps

FORMAT_VERSION = 2
_SELF = "content_sha256"


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != _SELF}, sort_keys=True, allow_nan=False).encode()


@dataclass
class Baseline:
    """A loaded, verified FP32 baseline (see the module docstring)."""

    path: Path
    suite: str
    model: str
    fingerprint: dict[str, Any]
    metrics: dict[str, Any]  # {"id": {..}, "ood": {score: {dataset: {..}}}, "shifted": .., "pairs": .., "spectral": ..}
    run_id: str | None
    created: str
    variants: dict[str, Any] = field(default_factory=dict)  # {"FP32+temperature": {"metrics": .., "params": {..}}}
    npz_path: Path | None = None
    npz_sha256: str = ""
    update_command: str = "pytest --qrel-update-baselines"
    _arrays: dict[str, np.ndarray] | None = None

    def arrays(self) -> dict[str, np.ndarray]:
        """Every stored array by its ``variant|dataset|field`` name (read and checked once)."""
        if self._arrays is None:
            self._arrays = _read_npz(self)
        return self._arrays

    def samples(self, variant: str = "FP32") -> dict[str, dict[str, np.ndarray]]:
        """``{dataset: SampleArrays}`` of ``variant`` (``"FP32"`` or e.g. ``"FP32+temperature"``)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for key, value in self.arrays().items():
            v, _, rest = key.partition("|")
            dataset, _, name = rest.partition("|")
            if v == variant and name != "spectrum":
                out.setdefault(dataset, {})[name] = value
        return out

    def spectrum(self, dataset: str) -> np.ndarray | None:
        return self.arrays().get(f"FP32|{dataset}|spectrum")


def baseline_path(baseline_dir: Path, suite: str, model: str) -> Path:
    """``<baseline_dir>/<suite>/<model>.json``; BaselineError if that would leave ``baseline_dir``."""
    root = Path(baseline_dir)
    path = root / suite / f"{model}.json"
    resolved, top = path.resolve(), root.resolve()
    if top not in resolved.parents or any(part in ("", ".", "..") for part in (suite, model)):
        raise BaselineError(f"suite '{suite}' / model '{model}' would put a baseline outside {root} ({path}); rename them")
    return path


def _npz_name(model: str, sha: str) -> str:
    return f"{model}.{sha[:12]}.npz"


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
    """Write the npz under a new name, commit by replacing the JSON, then drop unreferenced npz files.

    Temp files of killed writes are removed first: the JSON's by the atomic writer, the npz's here
    (a killed write of other content left a temp under another npz name, which no later write of
    the writer would look for)."""
    buf = io.BytesIO()
    np.savez_compressed(buf, **{k: np.asarray(v) for k, v in arrays.items()})
    npz_bytes = buf.getvalue()
    sha = hashlib.sha256(npz_bytes).hexdigest()
    npz = path.with_name(_npz_name(model, sha))
    record = {
        "format_version": FORMAT_VERSION,
        "suite": suite,
        "model": model,
        "created": created,
        "run_id": run_id,
        "fingerprint": fingerprint,
        "metrics": metrics,
        "variants": variants or {},
        "npz": npz.name,
        "npz_sha256": sha,
    }
    record[_SELF] = hashlib.sha256(_canonical(record)).hexdigest()
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    _remove_stray_npz_temps(path.parent, model)
    atomic_write_bytes(npz, npz_bytes)
    atomic_write_bytes(path, text.encode())
    mine = re.compile(rf"^{re.escape(model)}(\.[0-9a-f]{{12}})?\.npz$")
    for other in path.parent.iterdir():
        if other.name != npz.name and mine.match(other.name):
            with contextlib.suppress(OSError):
                other.unlink()


def _remove_stray_npz_temps(directory: Path, model: str) -> None:
    """Temp files of ``<model>.<sha12>.npz`` for any digest, left by killed writers (only those of
    dead processes: :func:`pytest_qrel.io.remove_stray_temps` decides)."""
    temp = re.compile(rf"^\.({re.escape(model)}\.[0-9a-f]{{12}}\.npz)\..+\.tmp$")
    if not directory.is_dir():
        return
    for name in {m.group(1) for m in map(temp.match, (p.name for p in directory.iterdir())) if m}:
        remove_stray_temps(directory / name)


def _fail(path: Path, problem: str, update_command: str) -> BaselineError:
    return BaselineError(f"FP32 baseline {path} {problem}; re-create it with: {update_command}")


def read_baseline(path: Path, *, update_command: str) -> Baseline:
    """Load and verify ``path``; every problem is one line with the command that re-creates it."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BaselineMissingError(f"no FP32 baseline at {path}; create it with: {update_command}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _fail(path, f"cannot be read ({exc})", update_command) from None
    try:
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except ValueError as exc:
        raise _fail(path, f"is not valid JSON ({exc})", update_command) from None
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(path, f"has format version {version!r}; this pytest-qrel reads {FORMAT_VERSION}", update_command)
    try:
        canonical = _canonical(record)
    except ValueError as exc:  # NaN / Infinity written by hand
        raise _fail(path, f"holds a value JSON does not allow ({exc})", update_command) from None
    if record.get(_SELF) != hashlib.sha256(canonical).hexdigest():
        raise _fail(path, "was modified after it was written (its content digest does not match)", update_command)
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
            npz_path=path.with_name(str(record["npz"])),
            npz_sha256=str(record["npz_sha256"]),
            update_command=update_command,
        )
    except KeyError as exc:
        raise _fail(path, f"lacks field {exc}", update_command) from None
    _check_ranges(b, update_command)
    b.arrays()  # verify the npz now: a torn pair is an error for every suite, not only those reading arrays
    return b


def _read_npz(b: Baseline) -> dict[str, np.ndarray]:
    command = b.update_command
    assert b.npz_path is not None
    try:
        data = b.npz_path.read_bytes()
    except OSError:
        raise _fail(b.path, f"names {b.npz_path.name}, which is missing (a torn or partial copy)", command) from None
    if hashlib.sha256(data).hexdigest() != b.npz_sha256:
        raise _fail(b.path, f"does not match {b.npz_path.name} (its digest differs: truncated, modified or from another write)", command)
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise _fail(b.path, f"names an unreadable {b.npz_path.name} ({exc})", command) from None


def _walk(metrics: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(metrics, dict):
        return [pair for k, v in metrics.items() for pair in _walk(v, f"{prefix}.{k}" if prefix else str(k))]
    return [(prefix, metrics)]


def _check_ranges(b: Baseline, update_command: str) -> None:
    """Every stored metric is a finite number; fraction metrics lie in [0, 1], NLL >= 0."""
    from .metrics import METRICS

    sections = [("metrics", b.metrics)] + [(f"variants.{k}.metrics", v.get("metrics", {})) for k, v in b.variants.items()]
    for where, metrics in sections:
        for name, value in _walk(metrics):
            metric = name.rsplit(".", 1)[-1]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not np.isfinite(value):
                raise _fail(b.path, f"holds {where}.{name} = {value!r}, not a finite number", update_command)
            if metric not in METRICS:
                continue
            meta = METRICS.meta(metric)
            low = -1.0 if meta["kind"] == "pair" else 0.0  # vulnerability is a signed difference
            if meta["fraction"] and not low <= value <= 1.0:
                raise _fail(b.path, f"holds {where}.{name} = {value!r}, outside [{low:g}, 1] for a fraction metric", update_command)
            if not meta["fraction"] and value < 0:
                raise _fail(b.path, f"holds {where}.{name} = {value!r}, below 0", update_command)
