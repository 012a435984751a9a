"""The `Transport` interface every way of reaching the server implements (REST now, RabbitMQ later)."""

from __future__ import annotations

import hashlib
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
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

__all__ = ["BlobCollector", "BlobSink", "PartsReader", "Transport", "salvage_command", "verify_blob"]


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

    def upload_bytes(self, data: bytes, *, sha256: str, media_type: str = SAFETENSORS_MEDIA_TYPE) -> BlobRef:
        """Upload a blob held in memory (``sha256`` is its digest); see `upload_parts`."""
        return self.upload_parts([memoryview(data)], sha256=sha256, size=len(data), media_type=media_type)

    def upload_parts(
        self, parts: Sequence[bytes | memoryview], *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE
    ) -> BlobRef:
        """Upload a blob given as consecutive pieces of memory (e.g. a header and views of tensors).

        ``sha256`` and ``size`` describe the pieces joined; they must not change during the call. This
        default goes through a temporary file and `upload_blob`; transports that can send from memory
        override it.
        """
        with tempfile.TemporaryDirectory(prefix="theoden-upload-") as tmp:
            path = Path(tmp) / "blob"
            with path.open("wb") as fh:
                for part in parts:
                    fh.write(part)
            return self.upload_blob(path, sha256=sha256, size=size, media_type=media_type)

    def download_bytes(self, ref: BlobRef) -> bytes:
        """Fetch blob ``ref`` into memory, verified like `download_blob`.

        This default goes through a temporary file; transports that can collect the bytes directly
        override it.
        """
        with tempfile.TemporaryDirectory(prefix="theoden-download-") as tmp:
            path = Path(tmp) / "blob"
            self.download_blob(ref, path)
            return path.read_bytes()

    @contextmanager
    def download_buffer(self, ref: BlobRef) -> Iterator[memoryview]:
        """Fetch blob ``ref`` into memory, verified, as a read-only view that is valid inside the block.

        A transport may reuse the memory for its next download, so nothing that looks at the view
        (e.g. a tensor made from it) may be kept past the block. This default wraps `download_bytes`.
        """
        yield memoryview(self.download_bytes(ref))

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


class PartsReader:
    """Read consecutive pieces of memory as one stream, as `read` on a file would (a copy per piece read)."""

    def __init__(self, parts: Sequence[bytes | memoryview]) -> None:
        self._parts = [memoryview(part).cast("B") for part in parts]
        self._index = 0
        self._offset = 0

    def read(self, size: int) -> bytes:
        """Return the next ``size`` bytes (fewer at the end; ``b""`` when all were read)."""
        pieces: list[memoryview] = []
        while size > 0 and self._index < len(self._parts):
            part = self._parts[self._index]
            piece = part[self._offset : self._offset + size]
            pieces.append(piece)
            size -= len(piece)
            self._offset += len(piece)
            if self._offset >= len(part):
                self._index, self._offset = self._index + 1, 0
        return b"".join(pieces)

    def __enter__(self) -> PartsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._parts = []


class _Verifier:
    """Hash a blob's bytes as they arrive and check them against its reference."""

    def __init__(self, ref: BlobRef) -> None:
        self.ref = ref
        self.size = 0
        self._digest = hashlib.sha256()

    def _take(self, chunk: bytes | memoryview) -> None:
        self.size += len(chunk)
        if self.size > self.ref.size:
            self.abort()
            raise BlobIntegrityError(f"blob {self.ref.id} is larger than its announced {self.ref.size} bytes")
        self._digest.update(chunk)

    def _verify(self) -> None:
        digest = self._digest.hexdigest()
        if self.size != self.ref.size or digest != self.ref.sha256:
            self.abort()
            raise BlobIntegrityError(
                f"blob {self.ref.id} failed verification: got {self.size} bytes with sha256 {digest}, "
                f"expected {self.ref.size} bytes with sha256 {self.ref.sha256}"
            )

    def abort(self) -> None:
        """Drop what was received."""


def verify_blob(ref: BlobRef, data: memoryview) -> None:
    """Check a blob received in one piece against its reference (`BlobIntegrityError` if it differs)."""
    verifier = _Verifier(ref)
    verifier._take(data)
    verifier._verify()


class BlobSink(_Verifier):
    """Write a blob's bytes to a file while hashing them; `finish` verifies size and digest.

    On a mismatch the partial file is deleted, so nothing unverified is ever loaded.

    Args:
        ref: The reference the bytes must match.
        destination: Where to write.
    """

    def __init__(self, ref: BlobRef, destination: Path) -> None:
        super().__init__(ref)
        self.destination = destination
        self._fh: IO[bytes] = destination.open("wb")

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``, refusing to grow past the announced size."""
        self._take(chunk)
        self._fh.write(chunk)

    def finish(self) -> None:
        """Close the file and check its size and SHA-256 digest against the reference.

        Raises:
            BlobIntegrityError: The size or the digest differs (the file is removed).
        """
        self._fh.close()
        self._verify()

    def abort(self) -> None:
        """Close and delete the partial file."""
        self._fh.close()
        self.destination.unlink(missing_ok=True)


class BlobCollector(_Verifier):
    """Collect a blob's bytes in memory while hashing them; `finish` verifies and returns them.

    Args:
        ref: The reference the bytes must match.
    """

    def __init__(self, ref: BlobRef) -> None:
        super().__init__(ref)
        self._chunks: list[bytes] = []
        self.result = b""

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``, refusing to grow past the announced size."""
        self._take(chunk)
        self._chunks.append(chunk)

    def finish(self) -> bytes:
        """Check size and SHA-256 digest against the reference and return the bytes.

        Raises:
            BlobIntegrityError: The size or the digest differs.
        """
        self._verify()
        chunks, self._chunks = self._chunks, []
        self.result = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        return self.result

    def abort(self) -> None:
        """Drop the bytes received so far."""
        self._chunks = []


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
