"""How a dataset option names a path: ``${VARS}`` and ``~`` expanded, relative to the suite file.

A leaf module (it imports only the error tree), shared by the dataset sources, the class lists, the
logit masks and the reference sets, so none of them imports another for it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ..errors import DataError, DataMissingError

_VAR = re.compile(r"\$(?:\{(\w+)\}|(\w+))")


def resolve_path(raw: Any, *, base_dir: Path | None, what: str, must_exist: bool = True) -> Path:
    """Expand ``${VARS}`` and ``~`` in ``raw``, resolve it against ``base_dir``, check it exists.

    Raises:
        DataError: ``raw`` is not a non-empty string, or (``must_exist``) the path does not exist:
            a literal path, or one built from variables that are all set, names data that should be
            there, so its absence is an error (naming the resolved path), never a skip.
        DataMissingError: an environment variable in ``raw`` is unset (the only case that skips).
    """
    if isinstance(raw, os.PathLike):
        raw = os.fspath(raw)
    if not isinstance(raw, str) or not raw.strip():
        raise DataError(f"{what} must be a path (a non-empty string), got {raw!r}")
    expanded = os.path.expanduser(os.path.expandvars(raw))
    unset = [m.group(1) or m.group(2) for m in _VAR.finditer(expanded) if (m.group(1) or m.group(2)) not in os.environ]
    if unset:
        names = ", ".join(dict.fromkeys(unset))
        raise DataMissingError(
            f"{what} '{raw}' uses the environment variable {names}, which is not set "
            f"(set it to the data's location, e.g. `export {unset[0]}=/path/to/data`)"
        )
    path = Path(expanded)
    if not path.is_absolute():
        path = Path(base_dir or Path.cwd()) / path
    path = Path(os.path.normpath(path))
    if must_exist and not path.exists():
        shown = f" (from '{raw}')" if raw != str(path) else ""
        raise DataError(f"{what} {path} does not exist{shown}")
    return path
