"""On-disk cache of per-sample arrays, shared by xdist workers, shards and later runs.

One entry holds the per-sample arrays (:mod:`pytest_qrel.engine.samples`) of one seed of one unit
on one dataset (about 40 bytes a sample, never logits), or the fitted parameters of a post-hoc
step. Entries are keyed by a digest of everything that produced them (model weights,
preprocessing, quantizer config and seed, dataset fingerprint, code digest, torch version,
device) and carry a digest of their own content: a truncated, byte-flipped or edited entry is a
miss (recomputed and overwritten, with one warning line), never trusted. Writes go through the
one atomic writer (:mod:`pytest_qrel.io`: process-unique temp names and ``os.replace``), so a
directory shared over NFS is safe without file locks.

The cache is optional: when an entry cannot be written (a read-only ``.pytest_cache``, a full disk)
the run goes on without it, with one warning line naming the path, the reason and the fix, given
once per cache however many writes fail.
"""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .errors import StorageError
from .io import atomic_write_bytes, storage_error

CACHE_FORMAT = 2
_DIGEST = "__digest__"
_FORMAT = "__format__"


def arrays_digest(arrays: Mapping[str, np.ndarray]) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of ``arrays`` (in name order)."""
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}|{a.dtype.str}|{a.shape};".encode())
        h.update(a.view(np.uint8).tobytes() if a.size else b"")
    return h.hexdigest()


class OutputsCache:
    """``get`` / ``put`` dicts of arrays by key under ``root``; see the module docstring.

    ``warn(message)`` receives one line per corrupt entry found (default: ignore).
    """

    def __init__(self, root: Path, warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.warn = warn or (lambda message: None)
        self.hits = 0
        self.misses = 0
        self.write_failures = 0  # entries that could not be written (warned about once)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays stored under ``key``; None when absent, of another format, or corrupt."""
        path = self.path(key)
        try:
            data = path.read_bytes()
        except OSError:
            self.misses += 1
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            fmt = int(arrays.pop(_FORMAT, -1))
            digest = str(arrays.pop(_DIGEST, ""))
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zipfile.LargeZipFile):
            self._corrupt(path, "unreadable (truncated or not an npz file)")
            return None
        if fmt != CACHE_FORMAT:
            self.misses += 1
            return None
        if digest != arrays_digest(arrays):
            self._corrupt(path, "altered (its content digest does not match)")
            return None
        self.hits += 1
        return arrays

    def _corrupt(self, path: Path, why: str) -> None:
        self.misses += 1
        self.warn(f"pytest-qrel: cache entry {path} is {why}; it is recomputed")

    def put(self, key: str, arrays: Mapping[str, np.ndarray]) -> None:
        buf = io.BytesIO()
        plain: dict[str, Any] = {k: np.asarray(v) for k, v in arrays.items()}  # Any: savez's **kwds, not allow_pickle
        header: dict[str, Any] = {_FORMAT: np.array(CACHE_FORMAT), _DIGEST: np.array(arrays_digest(plain))}
        np.savez(buf, **header, **plain)
        try:
            atomic_write_bytes(self.path(key), buf.getvalue())
        except StorageError as exc:
            self.write_failures += 1
            if self.write_failures == 1:
                self.warn(not_cached_warning("write the outputs cache entry", exc))


def not_cached_warning(what: str, exc: StorageError) -> str:
    """The one warning line of a cache that cannot be written (``what``: "write the outputs cache
    entry"): the path, the reason, that the run goes on uncached, and the fix."""
    fix = f"{exc.fix}, or pass --qrel-no-cache" if exc.fix else "pass --qrel-no-cache"
    return f"pytest-qrel: cannot {what} {exc.path}: {exc.reason}; the run goes on without caching (fix: {fix})"


def cache_folder(make: Callable[[], Path], warn: Callable[[str], None]) -> Path | None:
    """``make()`` (e.g. ``config.cache.mkdir("qrel")``), or None with one warning line when the
    folder cannot be created (a read-only or full ``.pytest_cache``): the run goes on uncached."""
    try:
        return make()
    except OSError as exc:
        # pytest builds .pytest_cache in a temp folder beside it and renames it into place: name
        # the folder the user knows (the rename's destination), not the temp one.
        named = exc.filename2 or exc.filename
        target = Path(named) if isinstance(named, (str, os.PathLike)) else Path(".pytest_cache")
        if target.name.startswith("pytest-cache-files-"):
            target = target.with_name(".pytest_cache")
        warn(not_cached_warning("create the outputs cache folder", storage_error(target, exc, "create")))
        return None
