"""Base structs of the wire, the type registry and the helpers that keep unions open to user types.

Every message family (commands, server requests, responses, partition specs, client conditions)
is a tagged union on the ``type`` field. The members of a family are held in a registry so a
user can add a message type from their own module (see `register`); decoders are rebuilt when a
family changes and otherwise reused.
"""

from __future__ import annotations

import os
import re
import threading
import uuid as _uuid
from collections.abc import Iterable
from typing import Any, Final, TypeVar, Union

import msgspec
from msgspec.structs import force_setattr

from theoden_protocol.errors import ProtocolError, RegistrationError

__all__ = [
    "WireStruct",
    "new_uuid",
    "register",
    "registered_types",
    "registry_generation",
]

_TAG_PATTERN: Final = re.compile(r"^[a-z][a-z0-9_.:\-]*$")
_PATH_SUFFIX: Final = re.compile(r" - at `\$(?P<path>[^`]*)`$")

T = TypeVar("T", bound=type)


#: Identifiers drawn from the system's random source at a time (one system call instead of one each).
_UUID_BATCH: Final = 256
_uuids: list[str] = []
_uuids_lock = threading.Lock()


def _refill_uuids() -> None:
    with _uuids_lock:
        if not _uuids:
            raw = os.urandom(16 * _UUID_BATCH)
            _uuids.extend(_uuid.UUID(bytes=raw[i : i + 16], version=4).hex for i in range(0, len(raw), 16))


def new_uuid() -> str:
    """Return a fresh random identifier (a version-4 UUID as 32 hex characters) for a command or a message.

    As random as `uuid.uuid4` (``os.urandom``), drawn in batches; a forked child starts a batch of its own.
    """
    while True:
        try:
            return _uuids.pop()  # atomic: no two threads get the same one
        except IndexError:
            _refill_uuids()


if hasattr(os, "register_at_fork"):  # a child must not hand out its parent's identifiers again
    os.register_at_fork(after_in_child=_uuids.clear)


class WireStruct(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Base of every struct on the wire: immutable, keyword-only; fields at their default are not sent."""


class _Family:
    """The registered members of one tagged union (e.g. every command type)."""

    def __init__(self, name: str, base: type[msgspec.Struct]) -> None:
        self.name = name
        self.base = base
        self.members: dict[str, type[msgspec.Struct]] = {}

    def add(self, cls: type[msgspec.Struct]) -> None:
        """Add ``cls`` to the family, refusing a missing, malformed or duplicate tag."""
        tag = cls.__struct_config__.tag
        if not isinstance(tag, str) or not _TAG_PATTERN.match(tag):
            raise RegistrationError(
                f"{cls.__qualname__} needs an explicit snake_case wire tag, e.g. "
                f'`class {cls.__name__}({self.base.__name__}, tag="my_{self.name}")`; got {tag!r}'
            )
        existing = self.members.get(tag)
        if existing is not None and existing is not cls:
            raise RegistrationError(
                f"the {self.name} tag {tag!r} is already taken by "
                f"{existing.__module__}.{existing.__qualname__}; choose another tag for "
                f"{cls.__module__}.{cls.__qualname__}"
            )
        self.members[tag] = cls

    def union(self) -> Any:
        """Return the typing union of all members (for building decoders)."""
        members = tuple(self.members.values())
        if not members:
            return self.base
        return members[0] if len(members) == 1 else Union[members]  # noqa: UP007


_lock = threading.RLock()
_families: dict[type[msgspec.Struct], _Family] = {}
_generation = 0


def _declare_family(name: str, base: type[msgspec.Struct]) -> None:
    """Declare ``base`` as the root of a message family called ``name``."""
    _families[base] = _Family(name, base)


def _family_of(cls: type) -> _Family:
    for base, family in _families.items():
        if isinstance(cls, type) and issubclass(cls, base) and cls is not base:
            return family
    names = ", ".join(b.__name__ for b in _families)
    raise RegistrationError(
        f"{getattr(cls, '__qualname__', cls)!r} cannot be registered: it must subclass one of {names}"
    )


def register(cls: T) -> T:
    """Register a user-defined message type so every decoder (client and server) accepts it.

    Use as a class decorator on a subclass of `Command`, `ServerRequest`, `ServerResponse`,
    `PartitionSpec` or `ClientCondition` that declares its own ``tag``::

        @register
        class Hello(Command, tag="hello"):
            greeting: str

    Registering the same class twice is harmless; a tag taken by another class is refused
    with `RegistrationError`. Both sides must import the module that registers the type.
    """
    global _generation
    with _lock:
        _family_of(cls).add(cls)
        _generation += 1
    return cls


def _register_builtin(classes: Iterable[type[msgspec.Struct]]) -> None:
    for cls in classes:
        register(cls)


def registered_types(base: type[msgspec.Struct]) -> dict[str, type[msgspec.Struct]]:
    """Return a copy of the tag → class table of the family rooted at ``base``."""
    with _lock:
        return dict(_families[base].members)


def family_union(base: type[msgspec.Struct]) -> Any:
    """Return the current tagged union of the family rooted at ``base``."""
    with _lock:
        return _families[base].union()


def registry_generation() -> int:
    """Return a counter that grows whenever a type is registered (decoders cache on it)."""
    return _generation


# ----------------------------------------------------------------------------------------------
# Open (registry-backed) fields
#
# msgspec fixes a union when a decoder is built, so a field such as ``Sequential.commands`` that
# must accept user commands registered later is declared as ``Any`` for msgspec (static type
# checkers see the real type) and converted here, in ``__post_init__``, against the family's
# current union. Errors are re-raised with the JSON path of the offending value.


def _join_path(prefix: str, error: msgspec.ValidationError | ProtocolError | ValueError) -> str:
    """Prefix the path in an error message: ``x - at `$.a``` under ``b`` → ``x - at `$.b.a```."""
    text = str(error)
    match = _PATH_SUFFIX.search(text)
    if match is None:
        return f"{text} - at `$.{prefix}`"
    return f"{text[: match.start()]} - at `$.{prefix}{match.group('path')}`"


def coerce_member(value: Any, base: type[msgspec.Struct], path: str) -> Any:
    """Return ``value`` as a registered member of ``base``'s family (decoding a mapping if needed)."""
    if isinstance(value, base):
        family = _families[base]
        tag = type(value).__struct_config__.tag
        if family.members.get(tag) is not type(value):  # type: ignore[arg-type]
            raise ValueError(
                f"{type(value).__qualname__} is not a registered {family.name} type; "
                "decorate it with @theoden_protocol.register"
            )
        return value
    try:
        return msgspec.convert(value, family_union(base), strict=True)
    except msgspec.ValidationError as exc:
        raise ValueError(_join_path(path, exc)) from None


def coerce_members(values: Any, base: type[msgspec.Struct], path: str) -> list[Any]:
    """Coerce every element of a sequence with `coerce_member`, paths indexed."""
    return [coerce_member(v, base, f"{path}[{i}]") for i, v in enumerate(values)]


def set_field(obj: msgspec.Struct, name: str, value: Any) -> None:
    """Set a field of a frozen struct while it is being built (``__post_init__`` only)."""
    force_setattr(obj, name, value)
