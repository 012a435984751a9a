"""Kept-alive HTTP(S) connections to one server on `http.client`, for `RestTransport`.

A small pool of idle connections, proxies from the environment, per-request timeouts, one retry
when a reused connection turns out closed, and network failures turned into `ServerUnavailable`
with a message a person can act on.
"""

from __future__ import annotations

import base64
import http.client
import logging
import socket
import ssl
import threading
import urllib.request
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from os import PathLike
from typing import BinaryIO, NamedTuple, cast
from urllib.parse import unquote, urlsplit

from theoden_client.errors import BlobIntegrityError, ServerUnavailable
from theoden_client.weights import CHUNK_BYTES

__all__ = ["Body", "Connections", "Exchange", "Proxy", "proxy_for"]

logger = logging.getLogger("theoden_client.transport.rest")

#: Idle connections kept: the main and the heartbeat thread need two; a few more cost nothing.
MAX_IDLE = 4
# How a kept-alive connection the server closed while idle fails before any answer arrives
# (RemoteDisconnected is the empty status line; SSLEOFError the same under TLS).
_STALE = (
    http.client.RemoteDisconnected,
    BrokenPipeError,
    ConnectionResetError,
    ConnectionAbortedError,
    ssl.SSLEOFError,
)
_WRITE_ERRORS = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)

#: A request body: bytes, pieces of memory sent one after another, or a factory opening a file (called
#: again for each attempt).
Body = bytes | list[bytes | memoryview] | Callable[[], BinaryIO] | None


class Proxy(NamedTuple):
    """An ``http://`` proxy and the headers it needs (Basic credentials from its URL)."""

    host: str
    port: int
    headers: dict[str, str]

    @property
    def url(self) -> str:
        """The proxy's URL without credentials."""
        return f"http://{self.host}:{self.port}"


class Exchange(NamedTuple):
    """A request whose answer's head has arrived; its body is still to be read."""

    response: http.client.HTTPResponse
    conn: http.client.HTTPConnection
    reusable: bool  # false after a write error: the server has closed the connection
    method: str
    route: str
    read_timeout: float


def proxy_for(scheme: str, host: str) -> Proxy | None:
    """Return the proxy the environment names for ``scheme`` URLs, unless ``NO_PROXY`` exempts ``host``.

    Raises:
        ValueError: The proxy is not an ``http://`` proxy.
    """
    url = urllib.request.getproxies().get(scheme)
    if not url or urllib.request.proxy_bypass(host):
        return None
    parts = urlsplit(url if "://" in url else f"http://{url}")
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"proxy {url!r} for {scheme}:// URLs is not supported; use an http:// proxy")
    headers = {}
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        headers["Proxy-Authorization"] = "Basic " + base64.b64encode(credentials).decode("ascii")
    return Proxy(parts.hostname, parts.port or 80, headers)


class Connections:
    """Send requests to the routes under ``server_url + prefix`` over a pool of kept-alive connections.

    Each request takes an idle connection (or opens one) and gives it back only once its answer
    was read to the end, so two threads never share a connection.

    Args:
        server_url: Scheme, host and port of the server, e.g. ``https://fl.example.org:8443``.
        prefix: Path before every route, e.g. ``/api/v1``.
        ca_file: CA bundle to verify an HTTPS server; default: the operating system's trust store.
        timeout: Seconds to connect (and the default to read).
        headers: Sent with every request.

    Raises:
        ValueError: ``server_url`` is not an http(s) URL, or the environment names an unusable proxy.
    """

    def __init__(
        self,
        server_url: str,
        *,
        prefix: str,
        ca_file: str | PathLike[str] | None,
        timeout: float,
        headers: dict[str, str],
    ) -> None:
        parts = urlsplit(server_url + prefix)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a server URL starts with http:// or https://, got {server_url!r}")
        self.base_url = server_url + prefix
        self._tls: ssl.SSLContext | None = None
        if parts.scheme == "https":  # the system's trust store is where an institution installs its own CA
            self._tls = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        self._host, self._port = parts.hostname, parts.port or (443 if self._tls else 80)
        self.proxy = proxy_for(parts.scheme, parts.hostname)
        self._headers = dict(headers)
        self._target = parts.path
        if self.proxy is not None and self._tls is None:  # a plain-HTTP proxy takes absolute URLs
            self._target = f"http://{parts.netloc.rpartition('@')[2]}{parts.path}"
            self._headers.update(self.proxy.headers)
        self._timeout = timeout
        self._idle: list[http.client.HTTPConnection] = []
        self._closed = False
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        """Return a new, not yet connected connection to the server (or to its proxy)."""
        host, port = (self._host, self._port) if self.proxy is None else (self.proxy.host, self.proxy.port)
        if self._tls is None:
            return http.client.HTTPConnection(host, port, timeout=self._timeout, blocksize=CHUNK_BYTES)
        conn = http.client.HTTPSConnection(host, port, timeout=self._timeout, context=self._tls, blocksize=CHUNK_BYTES)
        if self.proxy is not None:  # TLS runs through the tunnel and is verified against the server's name
            conn.set_tunnel(self._host, self._port, headers=self.proxy.headers)
        return conn

    def _take(self) -> tuple[http.client.HTTPConnection, bool]:
        """Return an idle connection (``True``: reused) or a new one (``False``)."""
        with self._lock:
            if self._idle:
                return self._idle.pop(), True  # the most recently used one: least likely closed by the server
        return self._connection(), False

    def release(self, exchange: Exchange) -> None:
        """Keep the connection of an answer read to its end for the next request, or close it."""
        conn = exchange.conn
        if exchange.reusable and conn.sock is not None and not exchange.response.will_close:
            with self._lock:
                if not self._closed and len(self._idle) < MAX_IDLE:
                    self._idle.append(conn)
                    return
        conn.close()

    def open(
        self, method: str, route: str, *, body: Body = None, headers: dict[str, str], read_timeout: float
    ) -> Exchange:
        """Send a request and return the answer with its head read and its body still to read.

        A reused connection that fails before any answer arrives was closed by the server while
        idle; the request then goes once more over a new connection.

        Raises:
            ServerUnavailable: The server could not be reached or did not answer in time.
        """
        target, headers = self._target + route, {**self._headers, **headers}
        if isinstance(body, bytes):  # a file body comes with its Content-Length from the caller
            headers["Content-Length"] = str(len(body))
        conn, reused = self._take()
        while True:
            # the file is opened outside the network errors below: a missing file is not the server's fault
            payload: AbstractContextManager[bytes | list[bytes | memoryview] | BinaryIO | None] = (
                body() if callable(body) else nullcontext(body)
            )
            with payload as content:
                try:
                    response, intact = self._exchange(conn, method, target, content, headers, read_timeout)
                    return Exchange(response, conn, intact, method, route, read_timeout)
                except _STALE as exc:
                    conn.close()
                    if not reused:
                        raise self.unavailable(method, route, exc, read_timeout) from exc
                    logger.debug("%s %s: kept-alive connection was closed (%r), retrying", method, route, exc)
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    raise self.unavailable(method, route, exc, read_timeout) from exc
            conn, reused = self._connection(), False

    @staticmethod
    def _exchange(
        conn: http.client.HTTPConnection,
        method: str,
        target: str,
        content: bytes | list[bytes | memoryview] | BinaryIO | None,
        headers: dict[str, str],
        read_timeout: float,
    ) -> tuple[http.client.HTTPResponse, bool]:
        """Send one request over ``conn`` and read the answer's head; ``False``: do not reuse ``conn``."""
        if conn.sock is None:
            conn.connect()  # within the connect timeout the connection was made with
            # a request goes out as head and body writes: Nagle's algorithm would hold the second
            # until the server's delayed acknowledgement of the first
            cast(socket.socket, conn.sock).setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.sock.settimeout(read_timeout)
        conn.putrequest(method, target)  # with Accept-Encoding: identity, so that bodies come as they are
        for name, value in headers.items():
            conn.putheader(name, value)
        try:
            conn.endheaders(content)
        except _WRITE_ERRORS:
            # the server may have answered before reading the whole body (a 401 to an upload): read that
            return conn.getresponse(), False
        return conn.getresponse(), True

    def read_all(self, exchange: Exchange) -> bytes:
        """Read the rest of an answer and give its connection back.

        Raises:
            ServerUnavailable: The answer broke off.
        """
        try:
            body = exchange.response.read()
        except (OSError, http.client.HTTPException) as exc:
            exchange.conn.close()
            raise self.unavailable(exchange.method, exchange.route, exc, exchange.read_timeout) from exc
        self.release(exchange)
        return body

    def read_into(self, exchange: Exchange, view: memoryview) -> None:
        """Read the rest of an answer, which must be exactly ``len(view)`` bytes, into ``view``.

        Raises:
            ServerUnavailable: The answer broke off.
            BlobIntegrityError: The answer is longer than ``view``.
        """
        response, filled, total = exchange.response, 0, view.nbytes
        try:
            while filled < total:
                got = response.readinto(view[filled:])
                if not got:
                    raise http.client.IncompleteRead(b"", total - filled)
                filled += got
            if response.length or (response.length is None and response.read(1)):
                raise BlobIntegrityError(
                    f"the answer to {exchange.method} {exchange.route} is longer than {total} bytes"
                )
        except (OSError, http.client.HTTPException) as exc:
            raise self.unavailable(exchange.method, exchange.route, exc, exchange.read_timeout) from exc

    def read_piece(self, exchange: Exchange, size: int) -> bytes:
        """Read up to ``size`` more bytes of an answer as they arrive; ``b""`` at its end.

        Raises:
            ServerUnavailable: The answer broke off (the caller closes ``exchange.conn``).
        """
        response = exchange.response
        try:
            piece = response.read(size)
        except (OSError, http.client.HTTPException) as exc:
            raise self.unavailable(exchange.method, exchange.route, exc, exchange.read_timeout) from exc
        if not piece and response.length:  # http.client ends a body cut short without an error
            cut = http.client.IncompleteRead(b"", response.length)
            raise self.unavailable(exchange.method, exchange.route, cut, exchange.read_timeout)
        return piece

    def unavailable(self, method: str, route: str, exc: BaseException, read_timeout: float) -> ServerUnavailable:
        """Describe a network failure: which request, to which URL, what happened."""
        if isinstance(exc, ssl.SSLCertVerificationError):
            reason = (
                f"the server's certificate is not trusted ({exc.verify_message}); if a private CA signed it, "
                "pass that CA's certificate as ca_file (--ca-cert)"
            )
        elif isinstance(exc, TimeoutError):
            reason = f"no answer in time (connect timeout {self._timeout:g} s, read timeout {read_timeout:g} s)"
        elif isinstance(exc, http.client.IncompleteRead):
            reason = f"the answer broke off {exc.expected} bytes before its end"
        elif isinstance(exc, ConnectionRefusedError):
            reason = "connection refused; is the server running, and are host and port right?"
        else:
            reason = f"{type(exc).__name__}: {exc}"
        via = f" through proxy {self.proxy.url}" if self.proxy is not None else ""
        return ServerUnavailable(f"{method} {self.base_url}{route}{via} failed: {reason}")

    def close(self) -> None:
        """Close the idle connections; connections in use close when their request ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()
