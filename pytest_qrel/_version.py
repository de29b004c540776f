"""The package version (a leaf: :mod:`pytest_qrel.fingerprint` reads it without importing the package)."""

__version__ = "0.1.0"
