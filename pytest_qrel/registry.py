"""A tiny decorator registry: a new method, metric, score or source is one entry.

Modelled on timm's ``register_model``: a decorator files an object under its YAML name; an
unknown name raises :class:`~pytest_qrel.errors.UnknownNameError` listing the known names with a
"did you mean". Re-registering a name warns and replaces (useful for user plugins).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from YAML names to objects, with metadata per entry."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **meta: Any) -> Callable[[T], T]:
        """Decorator: ``@REG.register("msp", higher_is_better=True)``."""

        def deco(obj: T) -> T:
            self.add(name, obj, **meta)
            return obj

        return deco

    def add(self, name: str, obj: T, **meta: Any) -> None:
        if name in self._entries:
            warnings.warn(f"{self.kind} '{name}' registered twice; the later one wins", stacklevel=3)
        self._entries[name] = obj
        self._meta[name] = dict(meta)

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, self.names()) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)  # raise the friendly error for unknown names
        return self._meta[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._entries)
