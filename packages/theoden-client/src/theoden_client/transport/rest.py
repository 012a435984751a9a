"""`RestTransport`: the client side of the server's REST interface (``/api/v1``), on `http.client`.

Bearer tokens come from the OAuth2 password flow and are renewed before they expire and once
more on a 401. Pulls long-poll with a read timeout longer than their ``wait``. Blobs are
streamed from and to files, and downloads are verified against their reference. The standard
library's `http.client` keeps the client's dependencies few and costs a quarter of httpx's CPU
per request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from os import PathLike
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import msgspec
from theoden_protocol import (
    SAFETENSORS_MEDIA_TYPE,
    Ack,
    BlobRef,
    ErrorResponse,
    LoginResponse,
    ProtocolError,
    PullCommand,
    RegisterRequest,
    RegisterResponse,
    ServerRequest,
    ServerResponse,
    StatusUpdate,
    codec,
)

from theoden_client.errors import (
    AuthenticationError,
    BlobIntegrityError,
    ServerRejected,
    ServerUnavailable,
)
from theoden_client.transport._http import Body, Connections, Exchange
from theoden_client.transport.base import BlobCollector, BlobSink, Transport, salvage_command, verify_blob
from theoden_client.weights import CHUNK_BYTES

__all__ = ["API_PREFIX", "KEEP_BUFFER_BYTES", "RestTransport"]

#: Every route of the server lives under this prefix.
API_PREFIX = "/api/v1"
logger = logging.getLogger("theoden_client.transport.rest")

_RETRYABLE_STATUS = frozenset({408, 425, 429})
#: Upload pieces smaller than this are joined before sending.
_SMALL_PART_BYTES = 256 * 1024
#: A download buffer up to this size is kept for the next download.
KEEP_BUFFER_BYTES = 16 * 1024 * 1024


class _Token(msgspec.Struct):
    access_token: str
    token_type: str = "bearer"
    expires_in: int | None = None


class _ErrorBody(msgspec.Struct):
    code: str = ""
    detail: Any = ""


def _error_from(status: int, body: bytes) -> Exception:
    """Map a non-2xx answer to the client's error types."""
    try:
        decoded = msgspec.json.decode(body, type=_ErrorBody)
        code, detail = decoded.code or f"http_{status}", str(decoded.detail)
    except msgspec.MsgspecError:
        code, detail = f"http_{status}", body[:500].decode("utf-8", "replace")
    if status >= 500 or status in _RETRYABLE_STATUS:
        return ServerUnavailable(f"server answered {status} {code}: {detail}")
    if status == 401:
        return AuthenticationError(status, code, detail)
    return ServerRejected(status, code, detail)


def _check_announced(exchange: Exchange, ref: BlobRef) -> None:
    """Refuse a download whose announced digest or length differs from its reference before reading it."""
    announced = exchange.response.getheader("X-Content-SHA256")
    if announced is not None and announced.lower() != ref.sha256:
        raise BlobIntegrityError(
            f"server sent blob {ref.id} with sha256 {announced}, but the reference says {ref.sha256}"
        )
    length = exchange.response.length
    if length is not None and length != ref.size:
        raise BlobIntegrityError(f"server sent blob {ref.id} as {length} bytes, but the reference says {ref.size}")


def _coalesced(parts: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """Join runs of small pieces (each send is a system call); large pieces stay where they are."""
    out: list[bytes | memoryview] = []
    small: list[bytes | memoryview] = []
    for part in parts:
        if memoryview(part).nbytes < _SMALL_PART_BYTES:
            small.append(part)
            continue
        if small:
            out.append(b"".join(small))
            small = []
        out.append(part)
    if small:
        out.append(b"".join(small))
    return out


class RestTransport(Transport):
    """Talk to a TheODen server over HTTP(S).

    Connections are kept alive in a small pool: each request takes an idle connection (or opens
    one) and returns it once the answer is read, so the heartbeat thread never waits behind a
    long-poll. A request that finds its reused connection closed by the server goes once more
    over a new one. Proxies come from the environment as for other tools: ``HTTPS_PROXY`` (an
    ``http://`` proxy, tunnelled with CONNECT, so TLS still ends at the server), ``HTTP_PROXY``,
    and ``NO_PROXY`` for hosts reached directly; credentials in the proxy URL are sent as Basic
    authentication.

    Args:
        server_url: Base URL of the server, e.g. ``https://fl.example.org:8443`` (without ``/api/v1``).
        username: The client's user name.
        password: The client's password (kept in memory only).
        ca_file: CA bundle to verify the server's certificate (a private CA); default: the system's CAs.
        timeout: Seconds for connecting, reading, writing; pulls add their ``wait`` to the read timeout.
        poll_margin: Seconds added to a pull's ``wait`` for its read timeout.

    Raises:
        ValueError: ``server_url`` is not an http(s) URL, or the environment names an unusable proxy.
    """

    def __init__(
        self,
        server_url: str,
        *,
        username: str,
        password: str,
        ca_file: str | PathLike[str] | None = None,
        timeout: float = 30.0,
        poll_margin: float = 15.0,
    ) -> None:
        from theoden_client import __version__

        self.server_url = server_url.rstrip("/")
        self._http = Connections(
            self.server_url,
            prefix=API_PREFIX,
            ca_file=ca_file,
            timeout=timeout,
            headers={"User-Agent": f"theoden-client/{__version__}"},
        )
        self._username = username
        self._password = password
        self._security = (
            "plain HTTP"
            if not self.server_url.startswith("https://")
            else f"TLS, server certificate verified against {ca_file if ca_file else 'the system trust store'}"
        )
        self._timeout = timeout
        self._poll_margin = poll_margin
        self._token: str | None = None
        self._token_deadline = 0.0
        self._lock = threading.Lock()
        self._buffer = bytearray()
        self._buffer_lock = threading.Lock()

    # -- authentication ------------------------------------------------------------------------

    def login(self) -> LoginResponse:
        """Exchange the credentials for a bearer token (OAuth2 password form).

        Raises:
            AuthenticationError: The server refused the credentials.
            ServerUnavailable: The server could not be reached.
        """
        with self._lock:
            return self._login_locked()

    def _login_locked(self) -> LoginResponse:
        form = urlencode({"grant_type": "password", "username": self._username, "password": self._password})
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        exchange = self._http.open(
            "POST", "/auth/token", body=form.encode(), headers=headers, read_timeout=self._timeout
        )
        body = self._http.read_all(exchange)
        if exchange.response.status != 200:
            raise _error_from(exchange.response.status, body)
        try:
            token = msgspec.json.decode(body, type=_Token)
        except msgspec.MsgspecError as exc:
            raise ProtocolError(f"the token endpoint answered something that is not a token: {exc}") from None
        expires_in = token.expires_in if token.expires_in is not None else 3600
        self._token = token.access_token
        self._token_deadline = time.monotonic() + expires_in - min(30.0, expires_in / 10)
        logger.info(
            "logged in to %s as %s (%s; token valid for %ss)",
            self.server_url,
            self._username,
            self._security,
            expires_in,
        )
        return LoginResponse(access_token=token.access_token, token_type=token.token_type, expires_in=expires_in)

    def _current_token(self) -> str:
        with self._lock:
            if self._token is None or time.monotonic() >= self._token_deadline:
                self._login_locked()
            assert self._token is not None
            return self._token

    def _renew_after_401(self, rejected_token: str) -> None:
        with self._lock:
            if self._token == rejected_token:  # another thread may have renewed it already
                self._login_locked()

    # -- sending -------------------------------------------------------------------------------

    def _authed(
        self, method: str, route: str, *, body: Body = None, headers: dict[str, str], read_timeout: float | None = None
    ) -> Exchange:
        """Send with a bearer token; on 401 log in again once and retry. Returns a 2xx answer, body unread."""
        read = self._timeout if read_timeout is None else read_timeout

        def send(token: str) -> Exchange:
            authed = {**headers, "Authorization": f"Bearer {token}"}
            return self._http.open(method, route, body=body, headers=authed, read_timeout=read)

        token = self._current_token()
        exchange = send(token)
        if exchange.response.status == 401:
            self._http.read_all(exchange)
            self._renew_after_401(token)
            exchange = send(self._current_token())
        if not 200 <= exchange.response.status < 300:
            raise _error_from(exchange.response.status, self._http.read_all(exchange))
        return exchange

    def _post(self, route: str, body: bytes, *, read_timeout: float | None = None) -> ServerResponse:
        """POST a JSON body and decode the server's response."""
        exchange = self._authed(
            "POST", route, body=body, headers={"Content-Type": "application/json"}, read_timeout=read_timeout
        )
        content = self._http.read_all(exchange)
        try:
            decoded = codec.decode_response(content)
        except ProtocolError as exc:
            raise salvage_command(content, exc) from None
        if isinstance(decoded, ErrorResponse):
            if decoded.status >= 500:
                raise ServerUnavailable(f"server error {decoded.code}: {decoded.detail}")
            raise ServerRejected(decoded.status, decoded.code, decoded.detail)
        return decoded

    def request(self, request: ServerRequest, *, timeout: float | None = None) -> ServerResponse:
        """POST ``request`` to ``/requests`` and return the decoded response."""
        read = timeout if timeout is not None else self._timeout
        if isinstance(request, PullCommand):
            read += request.wait + self._poll_margin
        return self._post("/requests", codec.encode(request), read_timeout=read)

    def register(self, request: RegisterRequest) -> RegisterResponse:
        """Send the registration and return the server's `RegisterResponse`."""
        response = self.request(request)
        if not isinstance(response, RegisterResponse):
            raise ProtocolError(f"expected a registration response, got {type(response).__name__}")
        return response

    def send_status(self, update: StatusUpdate) -> Ack:
        """POST a status update to ``/status``."""
        decoded = self._post("/status", codec.encode(update))
        return decoded if isinstance(decoded, Ack) else Ack(message=type(decoded).__name__)

    # -- blobs ---------------------------------------------------------------------------------

    def upload_blob(self, path: Path, *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE) -> BlobRef:
        """PUT the file at ``path`` to ``/storage/{sha256}``, streamed in chunks.

        Raises:
            BlobIntegrityError: The server's reference does not match the digest and size sent.
        """
        return self._put_blob(lambda: path.open("rb"), sha256=sha256, size=size, media_type=media_type)

    def _put_blob(self, content: Body, *, sha256: str, size: int, media_type: str) -> BlobRef:
        headers = {"Content-Type": media_type, "X-Content-SHA256": sha256, "Content-Length": str(size)}
        # a retry (after a 401, or on a new connection) opens the file again, hence the factory
        exchange = self._authed("PUT", f"/storage/{sha256}", body=content, headers=headers)
        try:
            ref = msgspec.json.decode(self._http.read_all(exchange), type=BlobRef)
        except msgspec.MsgspecError as exc:
            raise ProtocolError(f"the upload answer is not a blob reference: {exc}") from None
        if ref.sha256 != sha256 or ref.size != size:
            raise BlobIntegrityError(
                f"server stored blob {ref.id} as {ref.size} bytes with sha256 {ref.sha256}, "
                f"but {size} bytes with sha256 {sha256} were sent"
            )
        return ref

    def upload_parts(
        self, parts: Sequence[bytes | memoryview], *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE
    ) -> BlobRef:
        """PUT consecutive pieces of memory to ``/storage/{sha256}`` as one body, sent from where they lie.

        Raises:
            BlobIntegrityError: The server's reference does not match the digest and size sent.
        """
        return self._put_blob(_coalesced(parts), sha256=sha256, size=size, media_type=media_type)

    def download_blob(self, ref: BlobRef, destination: Path) -> None:
        """GET ``/storage/{ref.id}`` into ``destination``, streamed and verified.

        Raises:
            BlobIntegrityError: Size or digest differ from ``ref`` (the file is removed).
            ServerUnavailable: The connection broke during the transfer.
        """
        self._get_blob(ref, self._into_sink(lambda: BlobSink(ref, destination)))

    def download_bytes(self, ref: BlobRef) -> bytes:
        """GET ``/storage/{ref.id}`` into memory, verified.

        Raises:
            BlobIntegrityError: Size or digest differ from ``ref``.
            ServerUnavailable: The connection broke during the transfer.
        """
        collector = BlobCollector(ref)
        self._get_blob(ref, self._into_sink(lambda: collector))
        return collector.result

    @contextmanager
    def download_buffer(self, ref: BlobRef) -> Iterator[memoryview]:
        """GET ``/storage/{ref.id}`` straight into a buffer kept for the next download, verified.

        Reusing the memory spares a fresh allocation per round (its page faults cost about as much as
        the transfer of a small model); buffers larger than `KEEP_BUFFER_BYTES` are not kept.
        """
        if not self._buffer_lock.acquire(blocking=False):  # another thread holds the kept buffer
            yield memoryview(self.download_bytes(ref))
            return
        try:
            buffer = self._buffer if len(self._buffer) >= ref.size else bytearray(ref.size)
            view = memoryview(buffer)[: ref.size]
            self._get_blob(ref, lambda exchange: self._http.read_into(exchange, view))
            verify_blob(ref, view)
            if ref.size <= KEEP_BUFFER_BYTES:
                self._buffer = buffer
            yield view.toreadonly()
        finally:
            self._buffer_lock.release()

    def _get_blob(self, ref: BlobRef, receive: Callable[[Exchange], None]) -> None:
        """GET a blob, refuse an announced digest or length that differs from ``ref``, hand the body to ``receive``."""
        exchange = self._authed("GET", f"/storage/{ref.id}", headers={})
        try:
            _check_announced(exchange, ref)
            receive(exchange)
        except BaseException:
            exchange.conn.close()
            raise
        self._http.release(exchange)

    def _into_sink(self, open_sink: Callable[[], BlobSink | BlobCollector]) -> Callable[[Exchange], None]:
        """A receiver for `_get_blob` streaming the body into a sink (which checks it; aborted on failure)."""

        def receive(exchange: Exchange) -> None:
            sink = open_sink()
            try:
                while chunk := self._http.read_piece(exchange, CHUNK_BYTES):
                    sink.write(chunk)
                sink.finish()
            except BaseException:
                sink.abort()
                raise

        return receive

    def close(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        self._http.close()
