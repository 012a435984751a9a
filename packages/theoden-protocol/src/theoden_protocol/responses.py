"""Server responses: the server's answer to each `ServerRequest`, a tagged union on ``type``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from theoden_protocol._base import WireStruct, _declare_family, _register_builtin, coerce_member, set_field
from theoden_protocol._types import BlobId, Name
from theoden_protocol.blobs import BlobRef
from theoden_protocol.commands import Command
from theoden_protocol.version import PROTOCOL_VERSION

__all__ = [
    "Ack",
    "BlobChunk",
    "BlobTicket",
    "CommandResponse",
    "ErrorResponse",
    "LoginResponse",
    "RegisterResponse",
    "ServerResponse",
]


class ServerResponse(WireStruct, tag_field="type", frozen=True):
    """Base of every server → client response."""


class LoginResponse(ServerResponse, tag="token", kw_only=True, frozen=True, omit_defaults=False):
    """An access token: send it as ``Authorization: Bearer <access_token>``; it expires after ``expires_in`` s.

    Every field is always sent (OAuth2 clients require ``token_type``).
    """

    access_token: str
    token_type: str = "bearer"
    expires_in: int


class RegisterResponse(ServerResponse, tag="registered", kw_only=True, frozen=True, omit_defaults=False):
    """The client joined the run as ``client_name``; it should send a heartbeat every ``heartbeat_interval`` s."""

    client_name: Name
    run_name: Name
    protocol_version: str = PROTOCOL_VERSION
    heartbeat_interval: float = 5.0
    max_wait: float = 30.0


class CommandResponse(ServerResponse, tag="command", kw_only=True, frozen=True):
    """The next command for the client, or ``None`` with a hint to ask again after ``retry_after`` s."""

    if TYPE_CHECKING:
        command: Command | None
    else:
        command: Any = None
    retry_after: Annotated[float, msgspec.Meta(ge=0)] = 0.0

    def __post_init__(self) -> None:
        """Decode the command against every registered command type."""
        if self.command is not None:
            set_field(self, "command", coerce_member(self.command, Command, "command"))


class Ack(ServerResponse, tag="ack", kw_only=True, frozen=True):
    """The request was accepted; ``message`` may say more."""

    message: str = ""
    server_time: float = msgspec.field(default_factory=time.time)


class BlobTicket(ServerResponse, tag="blob_ticket", kw_only=True, frozen=True):
    """Where to send or fetch a blob: ``url`` for HTTP, ``chunk_size``/``num_chunks`` for the broker."""

    blob_id: BlobId
    ref: BlobRef | None = None
    url: str = ""
    chunk_size: int = 0
    num_chunks: int = 0
    max_size: int | None = None


class BlobChunk(ServerResponse, tag="blob_chunk", kw_only=True, frozen=True):
    """One chunk of a blob (broker transport)."""

    blob_id: BlobId
    index: int
    data: bytes
    last: bool


class ErrorResponse(ServerResponse, tag="error", kw_only=True, frozen=True):
    """The request failed: a stable ``code`` (e.g. ``forbidden``) and a ``detail`` a person can act on."""

    code: str
    detail: str
    status: int = 400


_declare_family("server response", ServerResponse)
_register_builtin([LoginResponse, RegisterResponse, CommandResponse, Ack, BlobTicket, BlobChunk, ErrorResponse])
