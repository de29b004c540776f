"""The baseline store: FP32 results per (suite, model), written so that neither a kill nor a second
writer can tear them, and read only after their integrity *and their evidence* are checked.

Layout under the baseline directory::

    <suite>/<model>.json               metrics, fingerprint, the npz's name and SHA-256, the roles of
                                       the datasets (which is the ID set, which sets form a pair), the
                                       device type the arrays were computed on, and a SHA-256 of the
                                       JSON's own content (the commit point)
    <suite>/<model>.<sha12>.npz        per-sample FP32 arrays, named by the first 12 hex digits
                                       of their SHA-256 (content-addressed)

The npz holds ``<variant>|<dataset>|<field>`` arrays (``FP32|digits|correct``,
``FP32+temperature|textures|score.msp``; fields as in :mod:`pytest_qrel.engine.samples`) and, for
suites with spectral checks, ``FP32|<id set>|spectrum``.

Writing (:func:`write_baseline`), safe with no lock, with any number of concurrent writers, on NFS:

1. the new npz goes to its content address (a temp file, then ``os.replace``): a file with that
   name always holds those bytes, so two writers of it never disagree;
2. stray npz files are removed (:func:`remove_unreferenced_npz`) *before* the commit, and only
   those that no writer can still need: not named by the JSON as it is now, older than
   :data:`GRACE_SECONDS`, and only when the JSON itself is older than :data:`GRACE_SECONDS` (so no
   commit happened within the grace period: every stray was superseded longer ago than that, and
   every npz a live writer is about to commit is younger than that). Ages are taken against the
   file system's own clock (the mtime of the npz this writer just wrote), so machines with skewed
   clocks sharing a folder agree;
3. the JSON is replaced atomically: the commit;
4. the writer checks that the npz its JSON names is still there (a writer stalled for longer than
   the grace period may have seen it removed by another's cleanup) and writes it again if not:
   content-addressed, so writing it again is always correct.

A process killed at any moment therefore leaves the old pair or the new pair, and of two writers
one JSON wins and the npz it names is on disk. What it does not do: remove strays soon (they wait
for a write after a quiet grace period), or protect a writer stalled for longer than the grace
period between steps 3 and 4 *and* killed there (the next read then says the npz is missing).
``docs/baselines.md`` states the rule for users.

Reading (:func:`read_baseline`) verifies the JSON's own digest (any edit, a flipped digit), its
fields and their types, that the npz it names is its own content address in the same folder (never
a path elsewhere), the npz digest (a torn or swapped pair), the range of every stored metric, and
then *recomputes every stored metric from the per-sample arrays* (:func:`metrics_from_arrays`):
arrays of another model with the JSON's digests recomputed are refused, because they do not give
the stored numbers. Each failure is one line naming the file and the command that re-creates it.
Only FP32 results are ever stored here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import zipfile
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import BaselineError, BaselineMissingError, SpecError
from .io import atomic_write_bytes, remove_stray_temps

FORMAT_VERSION = 3
"""3: the JSON records the datasets' roles and the device type (so metrics can be recomputed and the
FP32 model's reproduction judged); 2: content-addressed npz."""

GRACE_SECONDS = 600.0
"""An npz no JSON names is removed only once it, and the JSON, are older than this (seconds, by the
file system's clock). A baseline write spends well under a second between writing its npz and
committing its JSON; ten minutes leaves a stalled NFS write a wide margin."""

METRIC_TOLERANCE = 1e-6
"""Largest difference (absolute, in the metric's own units: fractions for top-1, ECE, AUROC, ...)
between a stored metric and the same metric recomputed from the stored arrays. The stored number
was computed from exactly these arrays, so they agree to rounding; 1e-6 is 0.0001 percentage
points, far below any bound a check states, and far above the float64 rounding of a metric."""

_SELF = "content_sha256"
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _canonical(record: dict[str, Any]) -> bytes:
    return json.dumps({k: v for k, v in record.items() if k != _SELF}, sort_keys=True, allow_nan=False).encode()


@dataclass
class Baseline:
    """A loaded, verified FP32 baseline (see the module docstring).

    ``id_dataset``: the in-distribution set's name; ``pairs``: ``{pair: (common set, counter set)}``;
    ``device``: the device type (``cpu``, ``cuda``, ``mps``) the arrays were computed on."""

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
    id_dataset: str = ""
    pairs: dict[str, tuple[str, str]] = field(default_factory=dict)
    device: str = "cpu"
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


def claim_baseline_folder(claims: MutableMapping[str, Path], suite_name: str, suite_file: Path) -> None:
    """Record that the suite file ``suite_file`` keeps its baselines under ``<baseline dir>/<suite_name>``.

    Two suite files with one ``name:`` would read and overwrite each other's baselines, so the
    second is an error naming both files. Names differing only in case count as one (they are one
    folder on macOS and Windows, and a repository moves between them). The same file claimed
    twice is fine. ``claims`` maps the case-folded name to the first file (the caller keeps it for
    a session).

    Raises:
        SpecError: at ``suite_file``, field ``name``, naming the other file.
    """
    key = suite_name.casefold()
    mine = Path(suite_file).resolve()
    first = claims.setdefault(key, mine)
    if first != mine:
        raise SpecError(
            f"suite '{suite_name}' has the name of another suite, {first}: both would keep their FP32 baselines in the "
            f"one folder '{suite_name}/' and overwrite each other's",
            file=suite_file, field="name", fix="give each suite file its own 'name:'",
        )


def _npz_name(model: str, sha: str) -> str:
    return f"{model}.{sha[:12]}.npz"


def _write_error(path: Path, exc: OSError) -> BaselineError:
    # The atomic writer's StorageError carries the failing path and the OS's reason as attributes.
    where = exc.filename or getattr(exc, "path", None) or path
    reason = exc.strerror or getattr(exc, "reason", "") or type(exc).__name__
    return BaselineError(
        f"cannot write the FP32 baseline {path}: {reason} ({where}) (fix: make {path.parent} writable, or free space on its disk)"
    )


def check_writable(path: Path) -> None:
    """Fail now, before an FP32 pass of many minutes, if the baseline ``path`` cannot be written:
    creates its folder and a probe file (named like the atomic writer's temp files, so a killed
    probe is cleaned up as one of them), then removes the probe.

    Raises:
        BaselineError: one line naming the path (read-only folder, a file in the way, full disk,
            a name too long).
    """
    from .io import temp_path

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = temp_path(path)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as exc:
        raise _write_error(path, exc) from None


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
    id_dataset: str,
    pairs: Mapping[str, tuple[str, str]] | None = None,
    device: str = "cpu",
    variants: dict[str, Any] | None = None,
) -> None:
    """Write the npz under its content address, remove strays no writer can need, commit by
    replacing the JSON, then make sure the npz it names is there (see the module docstring).

    Temp files of killed writes are removed first: the JSON's by the atomic writer, the npz's here
    (a killed write of other content left a temp under another npz name, which no later write of
    the writer would look for).

    Raises:
        BaselineError: the folder or a file cannot be written (read-only, full disk, name too
            long): one line naming the path.
    """
    buf = io.BytesIO()
    plain: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}  # Any: savez's **kwds, not allow_pickle
    np.savez_compressed(buf, **plain)
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
        "roles": {"id": id_dataset, "pairs": {k: list(v) for k, v in (pairs or {}).items()}},
        "device": str(device).split(":")[0],
        "npz": npz.name,
        "npz_sha256": sha,
    }
    record[_SELF] = hashlib.sha256(_canonical(record)).hexdigest()
    text = json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n"
    try:
        _remove_stray_npz_temps(path.parent, model)
        atomic_write_bytes(npz, npz_bytes)
        remove_unreferenced_npz(path, model, keep=npz)
        atomic_write_bytes(path, text.encode())
        if not npz.is_file():  # removed by another writer's cleanup while this one stalled: content-addressed, so rewrite it
            atomic_write_bytes(npz, npz_bytes)
    except OSError as exc:
        raise _write_error(path, exc) from None


def remove_unreferenced_npz(path: Path, model: str, *, keep: Path, grace: float = GRACE_SECONDS) -> list[Path]:
    """Remove ``<model>.<sha12>.npz`` files beside ``path`` that no writer can still need; returns them.

    A file goes only if the JSON at ``path`` does not name it, the file is older than ``grace``
    seconds, and the JSON is older than ``grace`` seconds too (no commit within the grace period,
    so nobody can hold a JSON naming it, and a writer's npz not yet committed is younger). Ages are
    measured against the mtime of ``keep`` (the npz this writer has just written: the file
    system's clock, not this machine's). Nothing is removed when the JSON cannot be read.
    """
    folder = path.parent
    try:
        now = keep.stat().st_mtime
        record = json.loads(path.read_text(encoding="utf-8"))
        named = record.get("npz") if isinstance(record, dict) else None
        if now - path.stat().st_mtime <= grace:
            return []
        entries = list(folder.iterdir())
    except (OSError, ValueError):  # no JSON yet, or an unreadable one: keep everything
        return []
    mine = re.compile(rf"{re.escape(model)}(\.[0-9a-f]{{12}})?\.npz")
    removed = []
    for other in entries:
        if other.name in (keep.name, named) or not mine.fullmatch(other.name):
            continue
        with contextlib.suppress(OSError):
            if now - other.stat().st_mtime > grace:
                other.unlink()
                removed.append(other)
    return removed


def _remove_stray_npz_temps(directory: Path, model: str) -> None:
    """Temp files of ``<model>.<sha12>.npz`` for any digest, left by killed writers (only those of
    dead processes: :func:`pytest_qrel.io.remove_stray_temps` decides)."""
    temp = re.compile(rf"\.({re.escape(model)}\.[0-9a-f]{{12}}\.npz)\..+\.tmp")
    if not directory.is_dir():
        return
    for name in {m.group(1) for m in map(temp.fullmatch, (p.name for p in directory.iterdir())) if m}:
        remove_stray_temps(directory / name)


def _fail(path: Path, problem: str, update_command: str) -> BaselineError:
    return BaselineError(f"FP32 baseline {path} {problem}; re-create it with: {update_command}")


def _field(record: dict[str, Any], name: str, kind: type | tuple[type, ...], path: Path, command: str) -> Any:
    if name not in record:
        raise _fail(path, f"lacks field '{name}'", command)
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):
        kinds = kind if isinstance(kind, tuple) else (kind,)
        raise _fail(path, f"has field '{name}' of type {type(value).__name__}, not {' or '.join(k.__name__ for k in kinds)}", command)
    return value


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
    except (ValueError, RecursionError) as exc:
        raise _fail(path, f"is not valid JSON ({str(exc)[:200]})", update_command) from None
    version = record.get("format_version")
    if version != FORMAT_VERSION:
        raise _fail(path, f"has format version {version!r}; this pytest-qrel reads {FORMAT_VERSION}", update_command)
    try:
        canonical = _canonical(record)
    except ValueError as exc:  # NaN / Infinity written by hand
        raise _fail(path, f"holds a value JSON does not allow ({exc})", update_command) from None
    if record.get(_SELF) != hashlib.sha256(canonical).hexdigest():
        raise _fail(path, "was modified after it was written (its content digest does not match)", update_command)
    b = _from_record(path, record, update_command)
    _check_ranges(b, update_command)
    b.arrays()  # verify the npz now: a torn pair is an error for every suite, not only those reading arrays
    _check_evidence(b)
    return b


def _from_record(path: Path, record: dict[str, Any], command: str) -> Baseline:
    """The record's fields, type-checked; the npz must be this model's content address beside ``path``."""
    model = _field(record, "model", str, path, command)
    if model != path.stem:
        raise _fail(path, f"was written for model '{model}', not '{path.stem}' (a copied or renamed file)", command)
    sha = _field(record, "npz_sha256", str, path, command)
    npz = _field(record, "npz", str, path, command)
    if not _SHA256.fullmatch(sha):
        raise _fail(path, f"has an npz_sha256 that is not a SHA-256 ({sha[:80]!r})", command)
    if npz != _npz_name(model, sha):
        raise _fail(
            path, f"names the npz {npz[:200]!r}, not its own arrays {_npz_name(model, sha)} in the same folder (baselines are read "
            "from their own folder only)", command,
        )
    variants = _field(record, "variants", dict, path, command)
    for name, v in variants.items():
        if not isinstance(v, dict) or not isinstance(v.get("metrics", {}), dict) or not isinstance(v.get("params", {}), dict):
            raise _fail(path, f"has a malformed variants.{name} (expected {{'metrics': {{..}}, 'params': {{..}}}})", command)
    roles = _field(record, "roles", dict, path, command)
    id_dataset = roles.get("id")
    pairs = roles.get("pairs", {})
    if not isinstance(id_dataset, str) or not isinstance(pairs, dict) or not all(
        isinstance(v, list) and len(v) == 2 and all(isinstance(s, str) for s in v) for v in pairs.values()
    ):
        raise _fail(path, "has malformed roles (expected {'id': <set>, 'pairs': {<pair>: [<set>, <set>]}})", command)
    created = record.get("created", "")
    run_id = record.get("run_id")
    return Baseline(
        path=path,
        suite=_field(record, "suite", str, path, command),
        model=model,
        fingerprint=_field(record, "fingerprint", dict, path, command),
        metrics=_field(record, "metrics", dict, path, command),
        run_id=run_id if isinstance(run_id, str) else None,
        created=created if isinstance(created, str) else "",
        variants=variants,
        npz_path=path.with_name(npz),
        npz_sha256=sha,
        update_command=command,
        id_dataset=id_dataset,
        pairs={k: (v[0], v[1]) for k, v in pairs.items()},
        device=_field(record, "device", str, path, command),
    )


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


# ------------------------------------------------------------------------------ evidence


def metrics_from_arrays(
    samples: Mapping[str, Mapping[str, np.ndarray]],
    *,
    like: Mapping[str, Any],
    id_dataset: str,
    pairs: Mapping[str, tuple[str, str]],
    conventions: str,
    spectrum: np.ndarray | None = None,
) -> dict[str, Any]:
    """The metrics ``like`` holds, recomputed from per-sample arrays ``{dataset: SampleArrays}``.

    ``like`` is a stored ``{"id", "ood", "shifted", "pairs", "spectral"}`` dict: only its sections,
    scores and sets are recomputed (what the arrays cannot give is left out, and so shows up as a
    difference). The formulas are the engine's (:func:`pytest_qrel.engine.units.metrics_of`): ID
    metrics of the ID set, OOD metrics of ``score.<s>`` of the ID set against each OOD set under
    ``conventions``, ID metrics of each shifted set, pair metrics of each (common, counter) pair,
    and the spectral metrics of the FP32 spectrum against itself.
    """
    from .metrics import compute_ood_metrics, compute_spectral_metrics, id_metrics_from_samples, pair_metrics_from_samples

    out: dict[str, Any] = {}

    def attempt(fn: Any, *args: Any, **kwargs: Any) -> dict[str, float] | None:
        try:
            return dict(fn(*args, **kwargs))
        except (KeyError, ValueError, TypeError, IndexError):  # NumericsError is a ValueError
            return None

    if "id" in like and id_dataset in samples:
        got = attempt(id_metrics_from_samples, samples[id_dataset])
        if got is not None:
            out["id"] = got
    if isinstance(like.get("ood"), dict):
        out["ood"] = {}
        for score, per in like["ood"].items():
            out["ood"][score] = {}
            for d in per if isinstance(per, dict) else ():
                if id_dataset in samples and d in samples and f"score.{score}" in samples[d] and f"score.{score}" in samples[id_dataset]:
                    got = attempt(compute_ood_metrics, samples[id_dataset][f"score.{score}"], samples[d][f"score.{score}"], conventions=conventions)
                    if got is not None:
                        out["ood"][score][d] = got
    if isinstance(like.get("shifted"), dict):
        out["shifted"] = {}
        for d in like["shifted"]:
            got = attempt(id_metrics_from_samples, samples[d]) if d in samples else None
            if got is not None:
                out["shifted"][d] = got
    if isinstance(like.get("pairs"), dict):
        out["pairs"] = {}
        for p in like["pairs"]:
            common, counter = pairs.get(p, ("", ""))
            if common in samples and counter in samples:
                got = attempt(pair_metrics_from_samples, samples[common], samples[counter])
                if got is not None:
                    out["pairs"][p] = got
    if "spectral" in like and spectrum is not None:
        got = attempt(compute_spectral_metrics, spectrum, spectrum)
        if got is not None:
            out["spectral"] = got
    return out


def metric_differences(stored: Any, recomputed: Any, *, tolerance: float = METRIC_TOLERANCE, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(name, stored, recomputed)`` of every stored leaf the recomputation does not give within
    ``tolerance`` (absolute); a leaf the arrays cannot give at all has ``recomputed`` None."""
    if isinstance(stored, dict):
        out = []
        for k, v in stored.items():
            name = f"{prefix}.{k}" if prefix else str(k)
            sub = recomputed.get(k) if isinstance(recomputed, dict) else None
            out.extend(metric_differences(v, sub, tolerance=tolerance, prefix=name))
        return out
    if not isinstance(recomputed, (int, float)) or not abs(float(stored) - float(recomputed)) <= tolerance:
        return [(prefix, stored, recomputed)]
    return []


def _check_evidence(b: Baseline) -> None:
    """Every stored metric, of FP32 and of each post-hoc variant, is what the stored arrays give."""
    conventions = b.fingerprint.get("conventions", "hendrycks")
    if not isinstance(conventions, str):
        conventions = "hendrycks"
    differences: list[tuple[str, Any, Any]] = []
    for variant, metrics, where in [("FP32", b.metrics, "metrics"), *((k, v.get("metrics", {}), f"variants.{k}.metrics") for k, v in b.variants.items())]:
        again = metrics_from_arrays(
            b.samples(variant), like=metrics, id_dataset=b.id_dataset, pairs=b.pairs, conventions=conventions,
            spectrum=b.spectrum(b.id_dataset),
        )
        differences += [(f"{where}.{name}", s, r) for name, s, r in metric_differences(metrics, again)]
    if differences:
        name, stored, again = differences[0]
        shown = f"{again:.6g}" if isinstance(again, (int, float)) else "nothing (no arrays for it)"
        more = f"; {len(differences) - 1} more differ" if len(differences) > 1 else ""
        raise _fail(
            b.path, f"is refused: the arrays do not reproduce the stored metrics ({name} is {stored:.6g} in the JSON, {shown} from "
            f"{b.npz_path.name if b.npz_path else 'the npz'}{more}): the npz holds other results than the JSON (another model's "
            "arrays with the digests recomputed, or an edit), or the metric definitions changed since it was written",
            b.update_command,
        )
