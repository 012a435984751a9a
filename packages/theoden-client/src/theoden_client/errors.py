"""Errors the client raises on purpose, each with a message a site operator can act on."""

from __future__ import annotations

from typing import ClassVar

from theoden_protocol import TheodenError

__all__ = [
    "AuthenticationError",
    "BlobIntegrityError",
    "ClientError",
    "CommandRefusedError",
    "DataPathError",
    "NoExecutorError",
    "RegistryError",
    "ResourceNotFoundError",
    "ResourceTypeError",
    "ServerRejected",
    "ServerUnavailable",
    "ShutdownRequested",
    "TransportError",
    "UndecodableCommandError",
    "WeightsMismatchError",
]


class ClientError(TheodenError):
    """Base of every error the client raises on purpose."""

    code: ClassVar[str] = "client_error"


class TransportError(ClientError):
    """Base of errors talking to the server."""

    code: ClassVar[str] = "transport_error"


class ServerUnavailable(TransportError):
    """The server could not be reached or failed (connection error, timeout, 5xx): reconnect and retry."""

    code: ClassVar[str] = "server_unavailable"


class ServerRejected(TransportError):
    """The server understood the request and refused it (4xx); retrying the same request will not help.

    Attributes:
        status: The HTTP status (or the broker's equivalent).
        code: The server's stable error code, e.g. ``forbidden``.
        detail: The server's explanation.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"server refused the request ({status} {code}): {detail}")
        self.status = status
        self.code = code  # type: ignore[misc]  # instance attribute shadows the class default on purpose
        self.detail = detail


class AuthenticationError(ServerRejected):
    """The credentials were refused, or a fresh token was refused again."""


class UndecodableCommandError(TransportError):
    """The server sent a command this client cannot decode (e.g. an unregistered ``type``).

    Attributes:
        uuid: The command's uuid when it could be read, so the command can be failed.
        type: The command's wire tag when it could be read.
    """

    code: ClassVar[str] = "undecodable_command"

    def __init__(self, detail: str, *, uuid: str | None, type: str | None) -> None:
        super().__init__(detail)
        self.uuid = uuid
        self.type = type


class BlobIntegrityError(ClientError):
    """A transferred blob's size or SHA-256 digest differs from its reference."""

    code: ClassVar[str] = "blob_integrity"


class ResourceNotFoundError(ClientError, LookupError):
    """A command needs a resource the client does not hold."""

    code: ClassVar[str] = "resource_not_found"


class ResourceTypeError(ClientError, TypeError):
    """A resource exists but holds a different type than a command needs."""

    code: ClassVar[str] = "resource_type"


class RegistryError(ClientError, LookupError):
    """A spec names a model, dataset, optimizer, ... the client has not registered."""

    code: ClassVar[str] = "registry_error"


class NoExecutorError(ClientError):
    """No handler is registered for a command's type."""

    code: ClassVar[str] = "no_executor"


class CommandRefusedError(ClientError):
    """The site's allowlist forbids a command type."""

    code: ClassVar[str] = "command_refused"


class DataPathError(ClientError, ValueError):
    """A path in a dataset spec points outside the client's data root."""

    code: ClassVar[str] = "data_path"


class WeightsMismatchError(ClientError, ValueError):
    """Received weights do not fit the model (missing, unexpected or differently shaped tensors)."""

    code: ClassVar[str] = "weights_mismatch"


class ShutdownRequested(ClientError):
    """The client was asked to stop (signal or `Client.stop`) while a command was running."""

    code: ClassVar[str] = "shutdown"
