"""`RestTransport`: the client side of the server's REST interface (``/api/v1``), on httpx.

Bearer tokens come from the OAuth2 password flow and are renewed before they expire and once
more on a 401. Pulls long-poll with a read timeout longer than their ``wait``. Blobs are
streamed from and to files, and downloads are verified against their reference.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from os import PathLike
from pathlib import Path
from typing import Any

import httpx
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
from theoden_client.transport.base import BlobCollector, BlobSink, Transport, salvage_command
from theoden_client.weights import CHUNK_BYTES

__all__ = ["API_PREFIX", "RestTransport"]

#: Every route of the server lives under this prefix.
API_PREFIX = "/api/v1"
logger = logging.getLogger("theoden_client.transport.rest")

_RETRYABLE_STATUS = frozenset({408, 425, 429})


class _Token(msgspec.Struct):
    access_token: str
    token_type: str = "bearer"
    expires_in: int | None = None


class _ErrorBody(msgspec.Struct):
    code: str = ""
    detail: Any = ""


def _error_from(response: httpx.Response) -> Exception:
    """Map a non-2xx response to the client's error types."""
    status = response.status_code
    try:
        body = msgspec.json.decode(response.content, type=_ErrorBody)
        code, detail = body.code or f"http_{status}", str(body.detail)
    except msgspec.MsgspecError:
        code, detail = f"http_{status}", response.text[:500]
    if status >= 500 or status in _RETRYABLE_STATUS:
        return ServerUnavailable(f"server answered {status} {code}: {detail}")
    if status == 401:
        return AuthenticationError(status, code, detail)
    return ServerRejected(status, code, detail)


class RestTransport(Transport):
    """Talk to a TheODen server over HTTP(S).

    Args:
        server_url: Base URL of the server, e.g. ``https://fl.example.org:8443`` (without ``/api/v1``).
        username: The client's user name.
        password: The client's password (kept in memory only).
        ca_file: CA bundle to verify the server's certificate (a private CA); default: system CAs.
        timeout: Seconds for connecting, reading, writing; pulls add their ``wait`` to the read timeout.
        poll_margin: Seconds added to a pull's ``wait`` for its read timeout.
        http_transport: An httpx transport to use instead of the network (tests: `httpx.MockTransport`).
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
        http_transport: httpx.BaseTransport | None = None,
    ) -> None:
        from theoden_client import __version__

        # without a CA file: the operating system's trust store (where an institution installs its own
        # CA), not the certifi bundle httpx would use with verify=True
        verify = ssl.create_default_context(cafile=str(ca_file)) if ca_file else ssl.create_default_context()
        self.server_url = server_url.rstrip("/")
        self._username = username
        self._password = password
        self._timeout = timeout
        self._poll_margin = poll_margin
        self._http = httpx.Client(
            base_url=self.server_url + API_PREFIX,
            verify=verify,
            timeout=httpx.Timeout(timeout),
            transport=http_transport,
            headers={"User-Agent": f"theoden-client/{__version__}"},
        )
        self._token: str | None = None
        self._token_deadline = 0.0
        self._lock = threading.Lock()

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
        form = {"grant_type": "password", "username": self._username, "password": self._password}
        response = self._send(lambda: self._http.build_request("POST", "/auth/token", data=form))
        if response.status_code != 200:
            raise _error_from(response)
        try:
            token = msgspec.json.decode(response.content, type=_Token)
        except msgspec.MsgspecError as exc:
            raise ProtocolError(f"the token endpoint answered something that is not a token: {exc}") from None
        expires_in = token.expires_in if token.expires_in is not None else 3600
        self._token = token.access_token
        # Renew a little early so a request never carries a token that expires on the way.
        self._token_deadline = time.monotonic() + expires_in - min(30.0, expires_in / 10)
        logger.debug("logged in as %s (token valid for %ss)", self._username, expires_in)
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

    def _send(self, build: Callable[[], httpx.Request], *, stream: bool = False) -> httpx.Response:
        try:
            return self._http.send(build(), stream=stream)
        except httpx.TransportError as exc:
            raise ServerUnavailable(f"cannot reach {self.server_url}: {type(exc).__name__}: {exc}") from exc

    def _authed(self, build: Callable[[dict[str, str]], httpx.Request], *, stream: bool = False) -> httpx.Response:
        """Send with a bearer token; on 401 log in again once and retry. Returns a 2xx response."""
        token = self._current_token()
        response = self._send(lambda: build({"Authorization": f"Bearer {token}"}), stream=stream)
        if response.status_code == 401:
            response.close()
            self._renew_after_401(token)
            token = self._current_token()
            response = self._send(lambda: build({"Authorization": f"Bearer {token}"}), stream=stream)
        if not response.is_success:
            if stream:
                response.read()
                response.close()
            raise _error_from(response)
        return response

    def _decode(self, response: httpx.Response) -> ServerResponse:
        try:
            decoded = codec.decode_response(response.content)
        except ProtocolError as exc:
            raise salvage_command(response.content, exc) from None
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
        body = codec.encode(request)
        http_timeout = httpx.Timeout(self._timeout, read=read)
        response = self._authed(
            lambda auth: self._http.build_request(
                "POST",
                "/requests",
                content=body,
                headers={**auth, "Content-Type": "application/json"},
                timeout=http_timeout,
            )
        )
        return self._decode(response)

    def register(self, request: RegisterRequest) -> RegisterResponse:
        """Send the registration and return the server's `RegisterResponse`."""
        response = self.request(request)
        if not isinstance(response, RegisterResponse):
            raise ProtocolError(f"expected a registration response, got {type(response).__name__}")
        return response

    def send_status(self, update: StatusUpdate) -> Ack:
        """POST a status update to ``/status``."""
        body = codec.encode(update)
        response = self._authed(
            lambda auth: self._http.build_request(
                "POST", "/status", content=body, headers={**auth, "Content-Type": "application/json"}
            )
        )
        decoded = self._decode(response)
        return decoded if isinstance(decoded, Ack) else Ack(message=type(decoded).__name__)

    # -- blobs ---------------------------------------------------------------------------------

    def upload_blob(self, path: Path, *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE) -> BlobRef:
        """PUT the file at ``path`` to ``/storage/{sha256}``, streamed in chunks.

        Raises:
            BlobIntegrityError: The server's reference does not match the digest and size sent.
        """

        def chunks() -> Iterator[bytes]:
            with path.open("rb") as fh:
                while chunk := fh.read(CHUNK_BYTES):
                    yield chunk

        return self._put_blob(chunks, sha256=sha256, size=size, media_type=media_type)

    def _put_blob(
        self, content: bytes | Callable[[], Iterator[bytes]], *, sha256: str, size: int, media_type: str
    ) -> BlobRef:
        headers = {"Content-Type": media_type, "X-Content-SHA256": sha256, "Content-Length": str(size)}
        response = self._authed(  # a retry after a 401 needs a fresh body iterator, hence the factory
            lambda auth: self._http.build_request(
                "PUT",
                f"/storage/{sha256}",
                content=content if isinstance(content, bytes) else content(),
                headers={**auth, **headers},
            )
        )
        try:
            ref = msgspec.json.decode(response.content, type=BlobRef)
        except msgspec.MsgspecError as exc:
            raise ProtocolError(f"the upload answer is not a blob reference: {exc}") from None
        if ref.sha256 != sha256 or ref.size != size:
            raise BlobIntegrityError(
                f"server stored blob {ref.id} as {ref.size} bytes with sha256 {ref.sha256}, "
                f"but {size} bytes with sha256 {sha256} were sent"
            )
        return ref

    def upload_bytes(self, data: bytes, *, sha256: str, media_type: str = SAFETENSORS_MEDIA_TYPE) -> BlobRef:
        """PUT ``data`` to ``/storage/{sha256}`` in one body.

        Raises:
            BlobIntegrityError: The server's reference does not match the digest and size sent.
        """
        return self._put_blob(data, sha256=sha256, size=len(data), media_type=media_type)

    def download_blob(self, ref: BlobRef, destination: Path) -> None:
        """GET ``/storage/{ref.id}`` into ``destination``, streamed and verified.

        Raises:
            BlobIntegrityError: Size or digest differ from ``ref`` (the file is removed).
            ServerUnavailable: The connection broke during the transfer.
        """
        self._get_blob(ref, lambda: BlobSink(ref, destination))

    def download_bytes(self, ref: BlobRef) -> bytes:
        """GET ``/storage/{ref.id}`` into memory, verified.

        Raises:
            BlobIntegrityError: Size or digest differ from ``ref``.
            ServerUnavailable: The connection broke during the transfer.
        """
        collector = BlobCollector(ref)
        self._get_blob(ref, lambda: collector)
        return collector.result

    def _get_blob(self, ref: BlobRef, open_sink: Callable[[], BlobSink | BlobCollector]) -> None:
        response = self._authed(
            lambda auth: self._http.build_request("GET", f"/storage/{ref.id}", headers=auth), stream=True
        )
        sink: BlobSink | BlobCollector | None = None
        try:
            announced = response.headers.get("X-Content-SHA256")
            if announced is not None and announced.lower() != ref.sha256:
                raise BlobIntegrityError(
                    f"server sent blob {ref.id} with sha256 {announced}, but the reference says {ref.sha256}"
                )
            sink = open_sink()
            for chunk in response.iter_bytes():  # as received: re-chunking would copy every byte once more
                sink.write(chunk)
            sink.finish()
        except httpx.TransportError as exc:
            if sink is not None:
                sink.abort()
            raise ServerUnavailable(f"download of blob {ref.id} broke off: {exc}") from exc
        except BaseException:
            if sink is not None:
                sink.abort()
            raise
        finally:
            response.close()

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()
