"""An opt-in event trace for counting work across processes (xdist workers, shards).

With ``PYTEST_QREL_TRACE=<file>`` set, every forward pass and every quantization appends one line
``<pid>\t<event>\t<suite>\t<model>\t<quantizer>\t<dataset>`` to the file (a model's load and
release: ``<pid>\tload\t<suite>\t<model>``; a quantization served by the memo:
``<pid>\treuse\t<suite>\t<model>\t<quantizer>``, before its ``quantize`` line) (``O_APPEND``: lines of
concurrent processes do not interleave). The project's tests use it to show that under ``-n 2``
each pass and each calibration happens once across workers; it costs nothing when unset.
"""

from __future__ import annotations

import os

ENV = "PYTEST_QREL_TRACE"


def trace(event: str, *parts: object) -> None:
    path = os.environ.get(ENV)
    if not path:
        return
    line = "\t".join([str(os.getpid()), event, *map(str, parts)]) + "\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)


def read_trace(path: str | os.PathLike[str]) -> list[tuple[str, ...]]:
    """The trace's lines as tuples ``(pid, event, *parts)``."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [tuple(line.rstrip("\n").split("\t")) for line in fh if line.strip()]
    except FileNotFoundError:
        return []
