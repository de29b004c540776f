"""The one atomic writer: permissions from the umask, no temp file left, strays of dead writers removed."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

from pytest_qrel.io import _HOST, atomic_write_bytes, atomic_write_text, remove_stray_temps


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
