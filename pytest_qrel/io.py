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

Every ``OSError`` of a write (a read-only folder or file system, a full disk, a name too long, a
folder where the file should be) becomes one :class:`~pytest_qrel.errors.StorageError` naming the
target, the reason and the fix; the temp file is removed first. A temp name never fails where the
target's name would not: the target's name is shortened (with a digest) inside long temp names.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import secrets
import socket
import time
from pathlib import Path

from .errors import StorageError

__all__ = ["atomic_write_bytes", "atomic_write_text", "publish", "remove_stray_temps", "storage_error", "temp_path"]

_STALE_SECONDS = 24 * 3600




def _host_tag(host: str) -> str:
    """This machine's name in temp names: dots replaced, a long name cut to 24 characters plus a
    digest of the whole (still unique per machine, so a stray-temp sweep never takes another
    machine's live temp for a dead one of this machine)."""
    tag = host.replace(".", "_") or "host"
    return tag if len(tag) <= 40 else tag[:24] + "~" + hashlib.sha256(host.encode()).hexdigest()[:12]


_HOST = _host_tag(socket.gethostname())
_LONG_NAME = 120  # temp names add up to ~75 characters to the target's; file names may have 255 bytes


def _temp_prefix(target: Path) -> str:
    """``.<target name>.``, with a long name cut and a digest of the whole name in its place."""
    name = target.name
    if len(name.encode()) > _LONG_NAME:
        name = name.encode()[:80].decode(errors="ignore") + "~" + hashlib.sha256(target.name.encode()).hexdigest()[:16]
    return f".{name}."


def temp_path(target: Path) -> Path:
    """A process-unique temp name beside ``target`` (what :func:`remove_stray_temps` recognises)."""
    return target.with_name(f"{_temp_prefix(target)}{_HOST}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def storage_error(target: str | os.PathLike[str], exc: OSError, what: str = "write") -> StorageError:
    """The one-line :class:`StorageError` of ``exc`` raised while writing ``target``: the path, the
    reason and the fix (which folder to make writable, where to free space, what to shorten)."""
    if isinstance(exc, StorageError):
        return exc
    target = Path(target)
    # the folder whose permissions or disk matter: the parent of what failed (a folder being created, the temp file)
    folder = Path(exc.filename).parent if isinstance(exc.filename, (str, os.PathLike)) and str(exc.filename) else target.parent
    reason = exc.strerror or str(exc) or type(exc).__name__
    code = exc.errno
    fix = None
    if code in (errno.EACCES, errno.EPERM, errno.EROFS):
        fix = f"make {folder} writable, or write elsewhere"
    elif code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        fix = f"free space on the disk that holds {folder}"
    elif code == errno.ENAMETOOLONG:
        fix = "use a shorter name: a file name may have at most 255 bytes"
    elif code in (errno.EISDIR, errno.ENOTDIR, errno.EEXIST):
        above = [*reversed(target.parents), *([target] if what == "create" else [])]  # a folder to create may itself be a file
        blocker = next((q for q in above if q.exists() and not q.is_dir()), None)
        if blocker is not None:
            reason, fix = f"{blocker} is a file, not a folder", f"give another path, or move {blocker} away"
        elif target.is_dir():
            reason, fix = "it is a folder", "give the path of a file"
    message = f"cannot {what} {target}: {reason}" + (f" (fix: {fix})" if fix else "")
    return StorageError(message, path=target, code=code, reason=reason, fix=fix)


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
    removed: list[Path] = []
    prefix = _temp_prefix(target)
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
    """Write ``data`` to ``target`` atomically (see the module docstring); parents are created.
    Raises :class:`~pytest_qrel.errors.StorageError` (one line: path, reason, fix) when it cannot."""
    target = Path(target)
    try:
        return _write(target, data)
    except OSError as exc:
        raise storage_error(target, exc) from exc


def _write(target: Path, data: bytes) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stray_temps(target)
    tmp = temp_path(target)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return publish(tmp, target)


def publish(tmp: Path, target: Path) -> Path:
    """Steps 2 and 3 of the module docstring for a temp file written in place (named by
    :func:`temp_path`): ``fsync`` it, ``os.replace`` it onto ``target``, ``fsync`` the directory.
    :func:`atomic_write_bytes` ends here; so does a file too large to hold in memory as bytes (the
    decoded-image store fills a preallocated memory map, then publishes it). The temp file is
    removed when this raises (an ``OSError``; callers turn it into :func:`storage_error`)."""
    try:
        fd = os.open(tmp, os.O_RDWR)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
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
