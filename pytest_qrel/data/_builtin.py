"""Import every built-in dataset source module so its registry entries exist."""

from . import embedded  # noqa: F401
