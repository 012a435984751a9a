"""Errors shared by every TheODen package, and their wire form."""

from __future__ import annotations

from typing import ClassVar

import msgspec

__all__ = [
    "ErrorBody",
    "IncompatibleVersionError",
    "ProtocolError",
    "RegistrationError",
    "TheodenError",
]


class TheodenError(Exception):
    """Base of every error TheODen raises on purpose; ``code`` is its stable wire name."""

    code: ClassVar[str] = "theoden_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    def to_body(self) -> ErrorBody:
        """Return the error as it travels on the wire."""
        return ErrorBody(code=self.code, detail=self.detail)


class ProtocolError(TheodenError):
    """A message could not be decoded: malformed bytes, unknown ``type``, missing or wrong field.

    ``detail`` says what is wrong and, where known, ends with the JSON path of the offending
    value (``- at `$.commands[0].steps```); ``path`` holds that path alone (or ``None``).
    """

    code: ClassVar[str] = "protocol_error"

    def __init__(self, detail: str, *, path: str | None = None) -> None:
        super().__init__(detail)
        self.path = path


class IncompatibleVersionError(TheodenError):
    """The two sides speak protocol versions with different major numbers."""

    code: ClassVar[str] = "incompatible_version"


class RegistrationError(TheodenError):
    """A user type could not be registered (wrong base class, no tag, tag already taken)."""

    code: ClassVar[str] = "registration_error"


class ErrorBody(msgspec.Struct, frozen=True, kw_only=True):
    """The body of every error response: a stable ``code`` and a ``detail`` a person can act on."""

    code: str
    detail: str
