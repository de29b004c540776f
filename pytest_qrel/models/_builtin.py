"""Import every built-in model source module so its registry entries exist."""

from . import embedded  # noqa: F401
