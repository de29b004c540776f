"""The one atomic file writer of pytest-qrel (baselines, cache entries, reports, zoo weights).

A reader never sees half a file, and a process killed at any moment leaves either the old file or
the new one, never a torn one:

1. write to a temp file in the *same* directory (``os.replace`` is atomic only within one file
   system), named ``.<target>.<host>.<pid>.<random>.tmp`` so that several processes, or several
   machines sharing the directory over NFS, never write the same temp file;
2. ``fsync`` it, set its permissions from the umask (``mkstemp`` would leave 0600), then
   ``os.replace`` it onto the target and ``fsync`` the directory so the rename is durable.

No file locks are involved (``flock`` is unreliable on NFS): concurrent writers of the same target
each replace it whole, and the last one wins. Temp files left by killed writers are removed by the
next write of the same target (only those of dead processes on this host, or older than a day, so
a write in progress elsewhere is never disturbed).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import time
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "remove_stray_temps", "temp_path"]

_STALE_SECONDS = 24 * 3600


_HOST = socket.gethostname().replace(".", "_") or "host"


def temp_path(target: Path) -> Path:
    """A process-unique temp name beside ``target`` (what :func:`remove_stray_temps` recognises)."""
    return target.with_name(f".{target.name}.{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stray_temps(target: Path) -> list[Path]:
    """Delete temp files of ``target`` left by killed writers; returns what was removed."""
    removed = []
    prefix = f".{target.name}."
    try:
        entries = list(target.parent.iterdir())
    except OSError:
        return removed
    now = time.time()
    for path in entries:
        name = path.name
        if not (name.startswith(prefix) and name.endswith(".tmp")):
            continue
        parts = name[len(prefix) : -len(".tmp")].split(".")
        stale = False
        if len(parts) == 3 and parts[0] == _HOST and parts[1].isdigit():
            stale = int(parts[1]) != os.getpid() and not _alive(int(parts[1]))
        with contextlib.suppress(OSError):
            stale = stale or now - path.stat().st_mtime > _STALE_SECONDS
            if stale:
                path.unlink()
                removed.append(path)
    return removed


def atomic_write_bytes(target: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``target`` atomically (see the module docstring); parents are created."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stray_temps(target)
    tmp = temp_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable (not supported everywhere)
        dir_fd = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    return target


def atomic_write_text(target: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write_bytes` of ``text`` encoded as UTF-8."""
    return atomic_write_bytes(target, text.encode("utf-8"))
