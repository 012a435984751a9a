"""The `Transport` interface every way of reaching the server implements (REST now, RabbitMQ later)."""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import IO

import msgspec
from theoden_protocol import (
    SAFETENSORS_MEDIA_TYPE,
    Ack,
    BlobRef,
    CommandResponse,
    Heartbeat,
    LoginResponse,
    ProtocolError,
    PullCommand,
    RegisterRequest,
    RegisterResponse,
    ServerRequest,
    ServerResponse,
    StatusUpdate,
)

from theoden_client.errors import BlobIntegrityError, UndecodableCommandError

__all__ = ["BlobSink", "Transport", "salvage_command"]


class Transport(ABC):
    """How a client talks to the server; implementations hold the credentials and renew tokens.

    Errors: `ServerUnavailable` when the server cannot be reached or fails (the client reconnects
    with back-off), `ServerRejected` (or `AuthenticationError`) when it refuses a request,
    `UndecodableCommandError` when a pulled command cannot be decoded, `BlobIntegrityError` when a
    download does not match its reference.
    """

    @abstractmethod
    def login(self) -> LoginResponse | None:
        """Authenticate with the stored credentials (a broker transport may return ``None``)."""

    @abstractmethod
    def register(self, request: RegisterRequest) -> RegisterResponse:
        """Join the run; sent after every (re)connect."""

    @abstractmethod
    def request(self, request: ServerRequest, *, timeout: float | None = None) -> ServerResponse:
        """Send any server request and return the server's response.

        Args:
            request: The request; a `PullCommand` may be held by the server up to its ``wait``.
            timeout: Seconds to wait for the answer, beyond any long-poll wait; ``None`` for the default.
        """

    @abstractmethod
    def send_status(self, update: StatusUpdate) -> Ack:
        """Report a command's status."""

    @abstractmethod
    def upload_blob(self, path: Path, *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE) -> BlobRef:
        """Stream the file at ``path`` (of digest ``sha256`` and ``size`` bytes) to the server's store."""

    @abstractmethod
    def download_blob(self, ref: BlobRef, destination: Path) -> None:
        """Stream blob ``ref`` into ``destination``, verifying its size and digest (see `BlobSink`)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections; the transport is not used afterwards."""

    def pull_command(self, wait: float) -> CommandResponse:
        """Ask for the next command, letting the server hold the request up to ``wait`` seconds."""
        response = self.request(PullCommand(wait=wait))
        if not isinstance(response, CommandResponse):
            raise ProtocolError(f"expected a command response to pull_command, got {type(response).__name__}")
        return response

    def heartbeat(self) -> None:
        """Tell the server the client is alive."""
        self.request(Heartbeat())

    def __enter__(self) -> Transport:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class BlobSink:
    """Write a blob's bytes to a file while hashing them; `finish` verifies size and digest.

    On a mismatch the partial file is deleted, so nothing unverified is ever loaded.

    Args:
        ref: The reference the bytes must match.
        destination: Where to write.
    """

    def __init__(self, ref: BlobRef, destination: Path) -> None:
        self.ref = ref
        self.destination = destination
        self.size = 0
        self._digest = hashlib.sha256()
        self._fh: IO[bytes] = destination.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``, refusing to grow past the announced size."""
        self.size += len(chunk)
        if self.size > self.ref.size:
            self.abort()
            raise BlobIntegrityError(f"blob {self.ref.id} is larger than its announced {self.ref.size} bytes")
        self._digest.update(chunk)
        self._fh.write(chunk)

    def finish(self) -> None:
        """Close the file and check its size and SHA-256 digest against the reference.

        Raises:
            BlobIntegrityError: The size or the digest differs (the file is removed).
        """
        self._fh.close()
        digest = self._digest.hexdigest()
        if self.size != self.ref.size or digest != self.ref.sha256:
            self.destination.unlink(missing_ok=True)
            raise BlobIntegrityError(
                f"blob {self.ref.id} failed verification: got {self.size} bytes with sha256 {digest}, "
                f"expected {self.ref.size} bytes with sha256 {self.ref.sha256}"
            )

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._fh.close()
        self.destination.unlink(missing_ok=True)


class _CommandHead(msgspec.Struct):
    uuid: str | None = None
    type: str | None = None


class _ResponseHead(msgspec.Struct):
    type: str | None = None
    command: _CommandHead | None = None


def salvage_command(raw: bytes, error: ProtocolError, *, format: str = "json") -> Exception:
    """Turn a response that failed to decode into the error to raise.

    When ``raw`` is a command response whose command could not be decoded (an unknown ``type``,
    a bad field), return `UndecodableCommandError` carrying the command's uuid and tag, so the
    client can fail that command; otherwise return ``error`` itself.
    """
    try:
        if format == "json":
            head = msgspec.json.decode(raw, type=_ResponseHead)
        else:
            head = msgspec.msgpack.decode(raw, type=_ResponseHead)
    except msgspec.MsgspecError:
        return error
    if head.type != "command" or head.command is None:
        return error
    tag = head.command.type
    return UndecodableCommandError(
        f"cannot decode command of type {tag!r}: {error.detail}. If it is a user command, this client "
        "must import the module that registers it and register an executor for it",
        uuid=head.command.uuid,
        type=tag,
    )
