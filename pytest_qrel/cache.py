"""On-disk cache of per-dataset model outputs, shared by xdist workers and later runs.

Entries are keyed by a digest of everything that produced them (model weights, preprocessing,
quantizer config, dataset fingerprint, code digest, torch version, device). A file lock per key
makes concurrent workers compute an entry once; a corrupt or unreadable entry is recomputed, never
trusted.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from .io import atomic_write_bytes

CACHE_FORMAT = 1


class OutputsCache:
    """``get``/``put`` arrays by key under ``root``; ``lock(key)`` serialises computing one key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    @contextlib.contextmanager
    def lock(self, key: str) -> Iterator[None]:
        from filelock import FileLock

        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock"):
            yield

    def get(self, key: str) -> dict[str, np.ndarray] | None:
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError, KeyError):
            return None  # missing or corrupt: the caller recomputes and overwrites
        if int(arrays.pop("__format__", -1)) != CACHE_FORMAT:
            return None
        return arrays

    def put(self, key: str, arrays: dict[str, np.ndarray]) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        np.savez(buf, __format__=np.array(CACHE_FORMAT), **arrays)
        atomic_write_bytes(path, buf.getvalue())
