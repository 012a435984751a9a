"""Domain errors of the server; transports map each to a status code in one place."""

from __future__ import annotations

from typing import ClassVar

from theoden_protocol import IncompatibleVersionError, ProtocolError, TheodenError

__all__ = [
    "BadRequest",
    "BlobIntegrityError",
    "Conflict",
    "Forbidden",
    "IncompatibleVersionError",
    "InvalidRequest",
    "NotFound",
    "PayloadTooLarge",
    "ProtocolError",
    "ServerError",
    "TheodenError",
    "Unauthorized",
]


class ServerError(TheodenError):
    """Base of the server's own errors; ``status`` is the HTTP status a transport answers with."""

    code: ClassVar[str] = "server_error"
    status: ClassVar[int] = 400


class BadRequest(ServerError):
    """Malformed input (an invalid blob id, a body that is not what the route takes)."""

    code: ClassVar[str] = "bad_request"
    status: ClassVar[int] = 400


class Unauthorized(ServerError):
    """No credentials, or credentials that are wrong, expired or forged."""

    code: ClassVar[str] = "unauthorized"
    status: ClassVar[int] = 401


class Forbidden(ServerError):
    """Valid credentials asking for something they may not (another client's name, an admin route)."""

    code: ClassVar[str] = "forbidden"
    status: ClassVar[int] = 403


class NotFound(ServerError):
    """The named thing (blob, command, client) does not exist."""

    code: ClassVar[str] = "not_found"
    status: ClassVar[int] = 404


class Conflict(ServerError):
    """The request clashes with the current state (e.g. a status update for a closed command)."""

    code: ClassVar[str] = "conflict"
    status: ClassVar[int] = 409


class PayloadTooLarge(ServerError):
    """An upload is larger than the server accepts."""

    code: ClassVar[str] = "payload_too_large"
    status: ClassVar[int] = 413


class InvalidRequest(ServerError):
    """Well-formed input that is invalid (e.g. weights that do not fit the model)."""

    code: ClassVar[str] = "invalid_request"
    status: ClassVar[int] = 422


class BlobIntegrityError(InvalidRequest):
    """Uploaded bytes do not match the announced SHA-256 or size."""

    code: ClassVar[str] = "blob_integrity"


def status_of(error: TheodenError) -> int:
    """Return the HTTP status for any TheODen error (protocol errors are 400, version clashes 409)."""
    if isinstance(error, ServerError):
        return error.status
    if isinstance(error, ProtocolError):
        return 400
    if isinstance(error, IncompatibleVersionError):
        return 409
    return 400
