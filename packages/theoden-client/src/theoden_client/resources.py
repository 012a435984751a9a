"""`ResourceManager`: everything a client holds between commands, by key.

Key conventions used by the built-in executors:

- ``dataset``: the loaded (and possibly partitioned) data set; ``dataset:<split>`` its local splits
- ``model``, ``optimizer``, ``scheduler``
- ``losses`` (a `LossSet`) and ``metrics`` (a `MetricSet`)
- ``dataloader:<split>``: how a split is batched (a `DataloaderSettings`)
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, TypeVar, overload

from theoden_client.errors import ResourceNotFoundError, ResourceTypeError

__all__ = ["ResourceManager", "split_key"]

T = TypeVar("T")


def split_key(source: str, split: str) -> str:
    """Return the key under which split ``split`` of the data set at ``source`` is held."""
    return f"{source}:{split}"


def _type_name(value: object) -> str:
    cls = type(value)
    return cls.__qualname__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"


class ResourceManager:
    """A thread-safe, typed key → object store for a client's resources."""

    def __init__(self) -> None:
        self._items: dict[str, Any] = {}
        self._lock = threading.RLock()

    def set(self, key: str, value: object) -> None:
        """Hold ``value`` under ``key``, replacing what was there."""
        with self._lock:
            self._items[key] = value

    @overload
    def get(self, key: str) -> Any: ...
    @overload
    def get(self, key: str, type: type[T]) -> T: ...
    @overload
    def get(self, key: str, type: tuple[type, ...]) -> Any: ...

    def get(self, key: str, type: Any = None) -> Any:
        """Return the resource under ``key``, checked against ``type`` when given.

        Raises:
            ResourceNotFoundError: Nothing is held under ``key``; the message lists what is.
            ResourceTypeError: The resource is not an instance of ``type``.
        """
        with self._lock:
            if key not in self._items:
                raise ResourceNotFoundError(f"the client holds no resource {key!r}; it holds: {self._present()}")
            value = self._items[key]
        if type is not None and not isinstance(value, type):
            wanted = " or ".join(t.__name__ for t in type) if isinstance(type, tuple) else type.__name__
            raise ResourceTypeError(f"resource {key!r} is a {_type_name(value)}, not a {wanted}")
        return value

    def get_optional(self, key: str, type: type[T]) -> T | None:
        """Return the resource under ``key`` or ``None`` when absent (type-checked when present)."""
        with self._lock:
            if key not in self._items:
                return None
        return self.get(key, type)

    def has(self, key: str) -> bool:
        """Return whether a resource is held under ``key``."""
        with self._lock:
            return key in self._items

    def pop(self, key: str) -> Any:
        """Remove and return the resource under ``key``.

        Raises:
            ResourceNotFoundError: Nothing is held under ``key``.
        """
        with self._lock:
            if key not in self._items:
                raise ResourceNotFoundError(f"the client holds no resource {key!r}; it holds: {self._present()}")
            return self._items.pop(key)

    def clear(self) -> list[str]:
        """Drop every resource and return the keys that were held."""
        with self._lock:
            keys = sorted(self._items)
            self._items.clear()
            return keys

    def keys(self) -> list[str]:
        """Return the held keys, sorted."""
        with self._lock:
            return sorted(self._items)

    def describe(self) -> dict[str, str]:
        """Return key → type name of every held resource (for logs and `PrintResourceKeys`)."""
        with self._lock:
            return {key: _type_name(self._items[key]) for key in sorted(self._items)}

    def _present(self) -> str:
        described = self.describe()
        return ", ".join(f"{k} ({v})" for k, v in described.items()) or "nothing"

    def __contains__(self, key: object) -> bool:
        return self.has(key) if isinstance(key, str) else False

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __repr__(self) -> str:
        return f"ResourceManager({self._present()})"
