"""Decode once: the model-geometry images of a dataset, stored in one memory-mapped file.

A dataset of image files is decoded (JPEG -> PIL -> resize / crop -> tensor in [0, 1]) the first
time a model's preprocessing runs over it; the output of the preprocessing's ``to_unit`` stage
(everything before ``Normalize``) is written to ``<root>/<key>.u8`` as ``uint8 (N, C, H, W)``
(float32 when the stage's output is not on the 1/255 grid). Every later pass with the same
preprocessing -- other quantizers, seeds, shifted variants of the set, later runs, other xdist
workers -- reads that file and decodes nothing.

``key`` is a digest of the dataset's content fingerprint and the preprocessing's description,
so a change of either is a new file. The header ``<key>.json`` (written after the data, the commit
point) records the shape, dtype and a BLAKE2 digest per chunk of samples; a chunk that does not
match its digest on read (a truncated or flipped file) makes the store a miss: it is deleted,
one warning is given and the set is decoded again. Writes go through temp files and
``os.replace`` (NFS-safe, no reliance on file locks; a lock only says who builds: a process that
finds it taken decodes for itself and writes nothing). The data file is filled in place through a
memory map (it can be far larger than memory), so it is not handed to
:func:`~pytest_qrel.io.atomic_write_bytes`; it is committed by the same
:func:`~pytest_qrel.io.publish` that ends every atomic write (the header goes through
:func:`~pytest_qrel.io.atomic_write_text`).

The store is optional: when it cannot be written (a read-only ``.pytest_cache``, a full disk) the
pass decodes as if there were no store, with one warning line (path, reason, fix) per store. The
data file's blocks are allocated up front, so a disk that fills up is an error at that point, not
a ``SIGBUS`` when a page of the memory map is written.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StorageError
from ..io import atomic_write_text, publish, remove_stray_temps, storage_error, temp_path

STORE_FORMAT = 1
CHUNK = 64  # samples per digest


class StoreCorrupt(Exception):
    """A stored chunk does not match its digest."""


def _digest(block: np.ndarray) -> str:
    return hashlib.blake2b(np.ascontiguousarray(block).view(np.uint8).tobytes(), digest_size=16).hexdigest()


class ImageStore:
    """Memory-mapped model-geometry images under ``root`` (see the module docstring)."""

    def __init__(self, root: Path, warn: Callable[[str], None] | None = None) -> None:
        self.root = Path(root)
        self.warn = warn or (lambda msg: None)
        self.decodes = 0  # samples decoded into stores by this process (tests count them)
        self.write_failures = 0  # stores that could not be written (warned about once)

    def write_failed(self, exc: StorageError) -> None:
        """A store could not be written: warn once (later failures are counted only)."""
        from ..cache import not_cached_warning

        self.write_failures += 1
        if self.write_failures == 1:
            self.warn(not_cached_warning("write the decoded-image store", exc))

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.root / f"{key}.u8", self.root / f"{key}.json"

    def open(self, key: str) -> "StoredImages | None":
        """The stored images of ``key``, or None when absent or unreadable."""
        data, header = self._paths(key)
        try:
            text = header.read_text(encoding="utf-8")
        except OSError:  # no header: never committed (a plain miss)
            return None
        try:
            meta = json.loads(text)
            if meta.get("format") != STORE_FORMAT:
                return None  # another version's entry: a miss, not damage
            shape = tuple(int(s) for s in meta["shape"])
            dtype = np.dtype(meta["dtype"])
            expected = int(np.prod(shape)) * dtype.itemsize
            size = data.stat().st_size
            if size != expected:  # truncated or overwritten: a header is written only after its data
                raise ValueError(f"{size} bytes where the header says {expected}")
            array = np.memmap(data, dtype=dtype, mode="r", shape=shape)
            digests = [str(d) for d in meta["digests"]]
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            self.discard(key, f"unreadable ({exc})")
            return None
        return StoredImages(self, key, array, digests)

    def discard(self, key: str, why: str) -> None:
        for path in self._paths(key)[::-1]:
            with contextlib.suppress(OSError):
                path.unlink()
        self.warn(f"pytest-qrel: decoded-image store {self._paths(key)[0]} was {why}; it is rebuilt")

    @contextlib.contextmanager
    def building(self, key: str) -> Iterator[bool]:
        """Yields True while this process holds the right to build ``key``; False when another
        process is building it right now. The caller then decodes for itself without writing:
        waiting would serialise the first passes of two xdist workers over the whole pass (the
        builder streams its forward pass while it decodes), which cost more than decoding twice.
        Also False (with one warning) when the store's folder cannot be created."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self.write_failed(storage_error(self.root, exc, "create"))
            yield False
            return
        try:
            from filelock import FileLock, Timeout

            lock = FileLock(str(self._paths(key)[0]) + ".lock", timeout=0)
            lock.acquire()
        except Timeout:
            yield False
            return
        except (OSError, ImportError):  # no usable lock (some NFS mounts): build anyway (os.replace keeps it safe)
            yield True
            return
        try:
            yield True
        finally:
            lock.release()

    def writer(self, key: str, n: int, sample_shape: tuple[int, ...], exact_uint8: bool) -> "StoreWriter":
        return StoreWriter(self, key, n, sample_shape, np.dtype(np.uint8 if exact_uint8 else np.float32))


class StoredImages:
    """Read side: ``batch(start, stop)`` returns float32 images in [0, 1], digest-checked per chunk."""

    def __init__(self, store: ImageStore, key: str, array: np.ndarray, digests: list[str]) -> None:
        self.store, self.key, self.array, self.digests = store, key, array, digests
        self._checked: set[int] = set()

    def __len__(self) -> int:
        return int(self.array.shape[0])

    def batch(self, start: int, stop: int) -> np.ndarray:
        for c in range(start // CHUNK, (stop - 1) // CHUNK + 1):
            if c not in self._checked:
                block = self.array[c * CHUNK : (c + 1) * CHUNK]
                if c >= len(self.digests) or _digest(block) != self.digests[c]:
                    raise StoreCorrupt(f"chunk {c}")
                self._checked.add(c)
        block = np.asarray(self.array[start:stop])
        if block.dtype == np.uint8:
            return block.astype(np.float32) / np.float32(255.0)
        return block.astype(np.float32, copy=False)


class StoreWriter:
    """Write side: fill with ``put(start, images)`` in any order, then ``commit()``."""

    def __init__(self, store: ImageStore, key: str, n: int, sample_shape: tuple[int, ...], dtype: np.dtype) -> None:
        self.store, self.key, self.dtype = store, key, dtype
        self.data_path, self.header_path = store._paths(key)
        store.root.mkdir(parents=True, exist_ok=True)
        remove_stray_temps(self.data_path)
        self.tmp = temp_path(self.data_path)
        self.shape = (n, *sample_shape)
        size = int(np.prod(self.shape)) * dtype.itemsize
        try:
            fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                _allocate(fd, size)
            finally:
                os.close(fd)
            self.array = np.memmap(self.tmp, dtype=dtype, mode="r+", shape=self.shape)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(self.tmp)
            raise storage_error(self.data_path, exc) from exc
        self.filled = 0

    def put(self, start: int, images: np.ndarray) -> bool:
        """Store float images (B, C, H, W) in [0, 1]; False (and nothing stored) when a uint8 store
        gets images off the 1/255 grid, so the caller can give up on the store."""
        if self.dtype == np.uint8:
            scaled = np.asarray(images, dtype=np.float32) * np.float32(255.0)
            levels = np.rint(scaled)
            if np.abs(scaled - levels).max(initial=0.0) > 1e-3:
                return False
            self.array[start : start + len(images)] = levels.astype(np.uint8)
        else:
            self.array[start : start + len(images)] = np.asarray(images, dtype=np.float32)
        self.filled += len(images)
        return True

    def commit(self) -> None:
        """Make the store visible (data, then its header); raises StorageError when it cannot."""
        try:
            self.array.flush()
            digests = [_digest(self.array[c : c + CHUNK]) for c in range(0, self.shape[0], CHUNK)]
            del self.array
            publish(self.tmp, self.data_path)  # io's one commit: fsync, os.replace, fsync the folder
        except OSError as exc:
            self.abort()
            raise storage_error(self.data_path, exc) from exc
        header = {"format": STORE_FORMAT, "shape": list(self.shape), "dtype": self.dtype.str, "digests": digests, "chunk": CHUNK}
        try:
            atomic_write_text(self.header_path, json.dumps(header))
        except StorageError:
            with contextlib.suppress(OSError):  # data without a header is never read: do not leave it behind
                os.unlink(self.data_path)
            raise

    def abort(self) -> None:
        with contextlib.suppress(Exception):
            del self.array
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)


def _allocate(fd: int, size: int) -> None:
    """Reserve ``size`` bytes of disk for ``fd`` (ENOSPC now rather than SIGBUS later); a file
    system without ``posix_fallocate`` gets a sparse file, as ``np.memmap`` would make."""
    if size == 0:
        return
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except AttributeError:  # not on this platform
        pass
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
    os.ftruncate(fd, size)


def store_key(dataset_fingerprint: str, preprocessing: str, geometry: Any = None) -> str:
    """The store key of a dataset's content under a preprocessing (``geometry``: a shifted set's own
    resize / crop before the model's)."""
    from ..fingerprint import versions_exact

    # The decoders and resampling (PIL, torchvision) make the pixels: another release is another store.
    decoders = {k: v for k, v in versions_exact().items() if k in ("pillow", "torchvision", "torch")}
    text = json.dumps([STORE_FORMAT, dataset_fingerprint, preprocessing, geometry, decoders], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:40]
