"""A small named registry of factories, shared by models, datasets, optimizers, losses and metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Generic, TypeVar, overload

from theoden_client.errors import RegistryError

__all__ = ["Registry"]

F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[F]):
    """Name → factory table; unknown names raise `RegistryError` listing what is registered.

    Args:
        kind: What the registry holds, for messages (``"model"``, ``"dataset"``, ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, F] = {}
        self._lock = threading.Lock()

    @overload
    def register(self, name: str, factory: None = None, *, override: bool = False) -> Callable[[F], F]: ...
    @overload
    def register(self, name: str, factory: F, *, override: bool = False) -> F: ...

    def register(self, name: str, factory: F | None = None, *, override: bool = False) -> F | Callable[[F], F]:
        """Register ``factory`` under ``name``; use directly or as a decorator.

        Args:
            name: The name specs use to ask for the factory.
            factory: The callable; omitted when used as ``@registry.register("name")``.
            override: Replace an existing entry instead of refusing it.

        Raises:
            RegistryError: ``name`` is taken and ``override`` is false.
        """

        def add(fn: F) -> F:
            with self._lock:
                if name in self._items and not override and self._items[name] is not fn:
                    raise RegistryError(
                        f"a {self.kind} named {name!r} is already registered; pass override=True to replace it"
                    )
                self._items[name] = fn
            return fn

        return add(factory) if factory is not None else add

    def get(self, name: str) -> F:
        """Return the factory registered as ``name``.

        Raises:
            RegistryError: Nothing is registered under ``name``; the message lists known names.
        """
        try:
            return self._items[name]
        except KeyError:
            known = ", ".join(sorted(self._items)) or "none"
            raise RegistryError(f"unknown {self.kind} {name!r}; this client knows: {known}") from None

    def unregister(self, name: str) -> None:
        """Remove ``name`` (no error if absent)."""
        with self._lock:
            self._items.pop(name, None)

    def names(self) -> list[str]:
        """Return the registered names, sorted."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
