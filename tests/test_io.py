"""The one atomic writer: permissions from the umask, no temp file left, strays of dead writers removed."""

from __future__ import annotations

import errno
import os
import pickle
import stat
import subprocess
import sys

import pytest

from pytest_qrel.errors import QrelError, StorageError
from pytest_qrel.io import (
    _HOST,
    _host_tag,
    atomic_write_bytes,
    atomic_write_text,
    remove_stray_temps,
    temp_path,
)


def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a" / "report.html", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["report.html"]


def test_replaces_whole_and_leaves_no_temp(tmp_path):
    target = tmp_path / "x.json"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.json"]


def test_strays_of_dead_writers_are_removed_but_not_live_ones(tmp_path):
    target = tmp_path / "b.npz"
    # a process that has exited: its pid is free (or reused by a process we cannot see as ours)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(dead.stdout)
    stray = tmp_path / f".b.npz.{_HOST}.{dead_pid}.deadbeef.tmp"
    stray.write_bytes(b"half")
    live = tmp_path / f".b.npz.{_HOST}.{os.getppid()}.cafebabe.tmp"  # our parent is alive
    live.write_bytes(b"in progress")
    other_host = tmp_path / f".b.npz.elsewhere.{dead_pid}.0000.tmp"  # another machine on NFS
    other_host.write_bytes(b"in progress")
    unrelated = tmp_path / ".c.npz.x.1.y.tmp"
    unrelated.write_bytes(b"")
    atomic_write_bytes(target, b"data")
    assert not stray.exists()
    assert live.exists() and other_host.exists() and unrelated.exists()
    assert target.read_bytes() == b"data"


def test_remove_stray_temps_of_a_missing_directory_is_a_no_op(tmp_path):
    assert remove_stray_temps(tmp_path / "nope" / "f") == []


# ------------------------------------------------------------------ writes that fail: one line each


def _write_fails(target, exc_type=StorageError):
    with pytest.raises(exc_type) as info:
        atomic_write_text(target, "new")
    return info.value


def test_a_name_too_long_is_one_line_naming_the_path(tmp_path):
    target = tmp_path / ("v" * 300 + ".json")
    err = _write_fails(target)
    assert str(err) == f"cannot write {target}: File name too long (fix: use a shorter name: a file name may have at most 255 bytes)"
    assert isinstance(err, QrelError) and isinstance(err, OSError) and err.errno == errno.ENAMETOOLONG and err.path == str(target)
    assert list(tmp_path.iterdir()) == []


def test_a_long_name_that_fits_is_written_through_a_shortened_temp_name(tmp_path):
    target = tmp_path / ("v" * 240 + ".json")  # the temp name would be over 255 bytes if it held the whole name
    assert len(temp_path(target).name.encode()) <= 255 and temp_path(target).name.startswith("." + "v" * 80 + "~")
    atomic_write_text(target, "hello")
    assert target.read_text() == "hello" and [p.name for p in tmp_path.iterdir()] == [target.name]


def test_a_file_where_a_folder_should_be(tmp_path):
    (tmp_path / "afile").write_text("x")
    for target in (tmp_path / "afile" / "x.json", tmp_path / "afile" / "deeper" / "x.json"):
        assert str(_write_fails(target)) == (
            f"cannot write {target}: {tmp_path}/afile is a file, not a folder (fix: give another path, or move {tmp_path}/afile away)"
        )


def test_a_folder_where_the_file_should_be(tmp_path):
    (tmp_path / "report.html").mkdir()
    assert str(_write_fails(tmp_path / "report.html")) == f"cannot write {tmp_path}/report.html: it is a folder (fix: give the path of a file)"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temp left behind


def _refuse(monkeypatch, name, code, *, after=None):
    """Make ``os.<name>`` fail with ``code`` (as a read-only or full file system would) inside the writer."""
    real = getattr(os, name)

    def failing(*args, **kwargs):
        if after is not None:
            real(*args, **kwargs)
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, name, failing)


def test_a_read_only_folder(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    _refuse(monkeypatch, "open", errno.EROFS)
    err = _write_fails(target)
    monkeypatch.undo()
    assert str(err) == f"cannot write {target}: Read-only file system (fix: make {tmp_path} writable, or write elsewhere)"
    assert err.errno == errno.EROFS and list(tmp_path.iterdir()) == []


def test_a_folder_that_cannot_be_created(tmp_path, monkeypatch):
    import pathlib

    target = tmp_path / "sub" / "x.json"

    def denied(self, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", denied)
    err = _write_fails(target)
    monkeypatch.undo()
    assert str(err) == f"cannot write {target}: Permission denied (fix: make {tmp_path} writable, or write elsewhere)"


def test_a_full_disk_keeps_the_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "x.json"
    atomic_write_text(target, "old")
    _refuse(monkeypatch, "fsync", errno.ENOSPC)
    err = _write_fails(target)
    monkeypatch.undo()
    assert str(err) == f"cannot write {target}: No space left on device (fix: free space on the disk that holds {tmp_path})"
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["x.json"]


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_really_read_only_folder(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        assert str(_write_fails(folder / "x.json")) == f"cannot write {folder}/x.json: Permission denied (fix: make {folder} writable, or write elsewhere)"
    finally:
        folder.chmod(0o700)


def test_a_storage_error_keeps_its_errno_through_context_and_pickling(tmp_path):
    err = _write_fails(tmp_path / ("v" * 300))
    for copy in (err.with_context("baseline of model 'vit'"), pickle.loads(pickle.dumps(err))):
        assert type(copy) is StorageError and copy.errno == errno.ENAMETOOLONG and copy.path == err.path
    assert str(err.with_context("baseline of model 'vit'")) == f"baseline of model 'vit': {err}"


def test_long_host_names_stay_unique_in_temp_names():
    a, b = _host_tag("build-runner-" + "x" * 40 + ".a"), _host_tag("build-runner-" + "x" * 40 + ".b")
    assert a != b and len(a) <= 40 and "." not in a
    assert _host_tag("ci.example.org") == "ci_example_org"


# ------------------------------------------------------------------ caches that cannot be written go on

def test_the_outputs_cache_warns_once_and_goes_on_when_it_cannot_write(tmp_path, monkeypatch):
    import numpy as np

    from pytest_qrel.cache import OutputsCache

    warnings: list[str] = []
    cache = OutputsCache(tmp_path / "outputs", warn=warnings.append)
    _refuse(monkeypatch, "open", errno.EROFS)
    cache.put("ab" * 32, {"x": np.arange(3)})
    cache.put("cd" * 32, {"x": np.arange(3)})
    monkeypatch.undo()
    folder = tmp_path / "outputs" / "ab"
    assert warnings == [
        f"pytest-qrel: cannot write the outputs cache entry {folder}/{'ab' * 32}.npz: Read-only file system; the run goes on without "
        f"caching (fix: make {folder} writable, or write elsewhere, or pass --qrel-no-cache)"
    ]
    assert cache.write_failures == 2 and cache.get("ab" * 32) is None
    cache.put("ab" * 32, {"x": np.arange(3)})  # writable again: cached again
    assert cache.get("ab" * 32)["x"].tolist() == [0, 1, 2]


def test_a_cache_folder_that_cannot_be_created_is_one_warning(tmp_path):
    from pytest_qrel.cache import cache_folder

    (tmp_path / ".pytest_cache").write_text("")  # a file where pytest's cache folder should be
    warnings: list[str] = []

    def make():
        (tmp_path / ".pytest_cache" / "d" / "qrel").mkdir(parents=True, exist_ok=True)

    assert cache_folder(make, warnings.append) is None
    assert warnings == [
        f"pytest-qrel: cannot create the outputs cache folder {tmp_path}/.pytest_cache/d/qrel: {tmp_path}/.pytest_cache is a file, not a folder; "
        f"the run goes on without caching (fix: give another path, or move {tmp_path}/.pytest_cache away, or pass --qrel-no-cache)"
    ]
