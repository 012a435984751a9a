"""`RabbitMQTransport`: the client side of the server's RabbitMQ interface (pika, blocking adapter).

One I/O thread owns the broker connection: it keeps the AMQP heartbeat going (also while the
client trains), publishes requests with publisher confirms, and consumes the client's exclusive
reply queue, handing each reply to the caller waiting on its ``correlation_id``. Callers on any
thread (the client loop, the heartbeat thread) block only on their own reply, with a timeout.
When the broker goes away every waiting call fails with `ServerUnavailable` (the client then
reconnects with back-off) and the I/O thread reconnects on its own.

Identity: every message carries ``user_id`` = the broker user of the URL; the broker refuses a
``user_id`` that differs from the connection's user, so the server can trust it.
Blobs travel through the broker in chunks of the size the server's ticket names (4 MiB, never
more than `MAX_CHUNK_BYTES`); downloads are reassembled into a `BlobSink` and verified.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from os import PathLike
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import pika
import pika.exceptions
from theoden_protocol import (
    MAX_CHUNK_BYTES,
    SAFETENSORS_MEDIA_TYPE,
    Ack,
    BlobChunk,
    BlobChunkGet,
    BlobChunkPut,
    BlobDownload,
    BlobRef,
    BlobTicket,
    BlobUpload,
    ErrorResponse,
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
from theoden_client.reconnect import Backoff
from theoden_client.transport.base import BlobCollector, BlobSink, PartsReader, Transport, salvage_command

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

__all__ = ["RabbitMQTransport"]

logger = logging.getLogger("theoden_client.transport.amqp")

_CONTENT_TYPE = "application/msgpack"
T = TypeVar("T", bound=ServerResponse)
R = TypeVar("R")
#: What an upload reads its chunks from: an open file, or pieces of memory.
_Source = IO[bytes] | PartsReader


def _map_error(response: ErrorResponse) -> Exception:
    if response.status >= 500:
        return ServerUnavailable(f"server error {response.code}: {response.detail}")
    if response.status == 401:
        return AuthenticationError(response.status, response.code, response.detail)
    return ServerRejected(response.status, response.code, response.detail)


class RabbitMQTransport(Transport):
    """Talk to a TheODen server through a RabbitMQ broker.

    Args:
        url: ``amqp[s]://USER:PASSWORD@HOST:PORT/VHOST``; USER is this client's broker user and
            so its name in the run. URL query options of pika apply (e.g. ``?heartbeat=30``).
        timeout: Seconds to wait for an answer (a pull adds its ``wait``) and for the connection.
        heartbeat: AMQP heartbeat in seconds (``None``: the URL's or pika's default).
        transfer_retry: Seconds a blob transfer keeps retrying over broker reconnects before it fails.
        ca_file: CA bundle to verify an ``amqps://`` broker's certificate (a private CA).
        request_exchange: Exchange the server's requests queue is bound to.
        routing_key: Routing key of requests.
        prefetch: Replies the broker may push before the client acknowledged them.
        backoff: Delays between the I/O thread's reconnect attempts.
    """

    def __init__(
        self,
        url: str,
        *,
        timeout: float = 30.0,
        heartbeat: int | None = 30,
        transfer_retry: float = 120.0,
        ca_file: str | PathLike[str] | None = None,
        request_exchange: str = "theoden.requests",
        routing_key: str = "request",
        prefetch: int = 4,
        backoff: Backoff | None = None,
    ) -> None:
        params = pika.URLParameters(url)
        if heartbeat is not None:
            params.heartbeat = heartbeat
        if url.startswith("amqps://") and ca_file is not None:
            params.ssl_options = pika.SSLOptions(ssl.create_default_context(cafile=str(ca_file)), params.host)
        self._params = params
        self.username: str = params.credentials.username
        self.timeout = timeout
        self.transfer_retry = transfer_retry
        self.request_exchange = request_exchange
        self.routing_key = routing_key
        self.prefetch = prefetch
        self._backoff = backoff or Backoff(initial=0.2, maximum=5.0)
        self._lock = threading.Lock()
        self._pending: dict[str, Future[bytes]] = {}
        self._connected = threading.Event()
        self._state_changed = threading.Condition(self._lock)
        self._closed = threading.Event()
        self._fatal: BaseException | None = None
        self._last_error: str = "not connected yet"
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._reply_queue: str | None = None
        self._thread: threading.Thread | None = None
        self._was_connected = False

    def __repr__(self) -> str:  # never shows the password
        return f"RabbitMQTransport(user={self.username!r}, host={self._params.host!r})"

    # -- connection (I/O thread) ---------------------------------------------------------------

    def _ensure_started(self) -> None:
        if self._closed.is_set():
            raise ServerUnavailable("the transport is closed")
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._fatal = None
            self._thread = threading.Thread(target=self._run, name=f"theoden-amqp-{self.username}", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._closed.is_set():
            try:
                self._session()
            except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError) as exc:
                self._set_fatal(exc)
                return
            except pika.exceptions.ProbableAccessDeniedError as exc:
                self._set_fatal(exc)
                return
            except pika.exceptions.ChannelClosedByBroker as exc:
                if exc.reply_code == 403 and not self._was_connected:
                    self._set_fatal(exc)  # the broker user lacks permissions: retrying will not help
                    return
                self._last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("lost the broker (%s)", self._last_error)
            except (pika.exceptions.AMQPError, OSError) as exc:
                self._last_error = f"{type(exc).__name__}: {exc}"
                logger.warning("lost the broker (%s)", self._last_error)
            except Exception as exc:  # a bug: never let the I/O thread die silently
                self._last_error = f"{type(exc).__name__}: {exc}"
                logger.exception("broker I/O thread failed")
            if self._closed.wait(self._backoff.next_delay()):
                return

    def _set_fatal(self, exc: BaseException) -> None:
        logger.error("the broker refused broker user %s (credentials or permissions): %s", self.username, exc)
        with self._lock:
            self._fatal = exc
            self._state_changed.notify_all()

    def _session(self) -> None:
        connection = pika.BlockingConnection(self._params)
        try:
            channel = connection.channel()
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self.prefetch)
            declared = channel.queue_declare("", exclusive=True, auto_delete=True)
            reply_queue = declared.method.queue
            channel.basic_consume(reply_queue, self._on_reply, auto_ack=False)
            with self._lock:
                self._connection, self._channel, self._reply_queue = connection, channel, reply_queue
                self._connected.set()
                self._was_connected = True
                self._state_changed.notify_all()
            self._backoff.reset()
            logger.info("connected to the broker at %s as %s", self._params.host, self.username)
            while not self._closed.is_set():
                connection.process_data_events(time_limit=1.0)
        finally:
            with self._lock:
                self._connected.clear()
                self._connection = self._channel = self._reply_queue = None
                pending, self._pending = self._pending, {}
            for future in pending.values():
                if not future.done():
                    future.set_exception(ServerUnavailable(f"lost the broker connection ({self._last_error})"))
            if connection.is_open:
                with contextlib.suppress(Exception):  # already broken
                    connection.close()

    def _on_reply(self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        with self._lock:
            future = self._pending.pop(properties.correlation_id or "", None)
        if future is None:
            logger.debug("dropping a late or unknown reply (correlation id %s)", properties.correlation_id)
        elif not future.done():
            future.set_result(body)

    def _publish(self, correlation_id: str, body: bytes, persistent: bool) -> None:
        """On the I/O thread: publish one request (confirmed by the broker, mandatory routing)."""
        with self._lock:
            future = self._pending.get(correlation_id)
            channel, reply_queue = self._channel, self._reply_queue
        if future is None or future.done():
            return
        if channel is None or not channel.is_open or reply_queue is None:
            future.set_exception(ServerUnavailable("not connected to the broker"))
            return
        try:
            channel.basic_publish(
                exchange=self.request_exchange,
                routing_key=self.routing_key,
                body=body,
                properties=pika.BasicProperties(
                    user_id=self.username,
                    reply_to=reply_queue,
                    correlation_id=correlation_id,
                    content_type=_CONTENT_TYPE,
                    delivery_mode=pika.DeliveryMode.Persistent if persistent else pika.DeliveryMode.Transient,
                ),
                mandatory=True,
            )
        except pika.exceptions.UnroutableError:
            future.set_exception(ServerUnavailable("the broker has no server queue bound: is the server running?"))
            with self._lock:
                self._pending.pop(correlation_id, None)
        except pika.exceptions.NackError:
            future.set_exception(ServerUnavailable("the broker refused the message (nack)"))
            with self._lock:
                self._pending.pop(correlation_id, None)
        except pika.exceptions.ChannelClosedByBroker as exc:
            # e.g. 404: the server never declared its exchange (not started yet); reconnect.
            self._last_error = f"{exc.reply_code} {exc.reply_text}"
            raise

    # -- calls (any thread) --------------------------------------------------------------------

    def _wait_connected(self, deadline: float) -> None:
        self._ensure_started()
        with self._lock:
            while not self._connected.is_set():
                if self._fatal is not None:
                    raise AuthenticationError(
                        401, "unauthorized", f"the broker refused broker user {self.username!r}: {self._fatal}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed.is_set():
                    raise ServerUnavailable(f"cannot reach the broker at {self._params.host}: {self._last_error}")
                self._state_changed.wait(min(remaining, 0.5))

    def _call(self, request: ServerRequest, *, timeout: float, persistent: bool = False) -> bytes:
        deadline = time.monotonic() + timeout
        self._wait_connected(deadline)
        body = codec.encode(request, "msgpack")
        correlation_id = uuid.uuid4().hex
        future: Future[bytes] = Future()
        with self._lock:
            connection = self._connection
            self._pending[correlation_id] = future
        try:
            if connection is None:
                raise ServerUnavailable("not connected to the broker")
            try:
                connection.add_callback_threadsafe(lambda: self._publish(correlation_id, body, persistent))
            except Exception as exc:
                raise ServerUnavailable(f"lost the broker connection: {exc}") from exc
            try:
                return future.result(max(0.0, deadline - time.monotonic()))
            except FutureTimeout:
                raise ServerUnavailable(
                    f"no answer to {type(request).__name__} within {timeout:g} s: is the server running?"
                ) from None
        finally:
            with self._lock:
                self._pending.pop(correlation_id, None)

    def _decode(self, raw: bytes) -> ServerResponse:
        try:
            decoded = codec.decode_response(raw, "msgpack")
        except ProtocolError as exc:
            raise salvage_command(raw, exc, format="msgpack") from None
        if isinstance(decoded, ErrorResponse):
            raise _map_error(decoded)
        return decoded

    def _expect(self, response: ServerResponse, kind: type[T], request: ServerRequest) -> T:
        if not isinstance(response, kind):
            raise ProtocolError(
                f"expected {kind.__name__} in answer to {type(request).__name__}, got {type(response).__name__}"
            )
        return response

    def login(self) -> None:
        """Connect to the broker (the broker checks the credentials); idempotent.

        Raises:
            AuthenticationError: The broker refused the credentials.
            ServerUnavailable: The broker could not be reached within ``timeout``.
        """
        self._wait_connected(time.monotonic() + self.timeout)
        return None

    def request(self, request: ServerRequest, *, timeout: float | None = None) -> ServerResponse:
        """Publish ``request`` and wait for its reply (a pull waits up to its ``wait`` longer)."""
        seconds = timeout if timeout is not None else self.timeout
        if isinstance(request, PullCommand):
            seconds += request.wait
        persistent = isinstance(request, StatusUpdate)
        return self._decode(self._call(request, timeout=seconds, persistent=persistent))

    def register(self, request: RegisterRequest) -> RegisterResponse:
        """Join the run; the server answers with this client's name (its broker user)."""
        return self._expect(self.request(request), RegisterResponse, request)

    def send_status(self, update: StatusUpdate) -> Ack:
        """Report a command's status (a persistent message: it survives a broker restart once queued)."""
        response = self.request(update)
        return response if isinstance(response, Ack) else Ack(message=type(response).__name__)

    # -- blobs ---------------------------------------------------------------------------------

    def _retrying(self, what: str, deadline: float, operation: Callable[[], R]) -> R:
        """Run ``operation`` again after `ServerUnavailable` until ``deadline`` (the broker may be restarting)."""
        backoff = Backoff(initial=0.2, maximum=3.0)
        while True:
            try:
                return operation()
            except ServerUnavailable as exc:
                if time.monotonic() + backoff.initial >= deadline or self._closed.is_set():
                    raise
                delay = min(backoff.next_delay(), max(0.0, deadline - time.monotonic()))
                logger.warning("%s: %s; retrying in %.1f s", what, exc, delay)
                time.sleep(delay)

    def upload_blob(self, path: Path, *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE) -> BlobRef:
        """Send the file in chunks through the broker; start over if the transfer breaks off.

        Raises:
            BlobIntegrityError: The server stored something else than was sent.
            ServerUnavailable: The broker stayed away longer than ``transfer_retry``.
        """
        return self._upload(lambda: path.open("rb"), sha256, size, media_type)

    def upload_parts(
        self, parts: Sequence[bytes | memoryview], *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE
    ) -> BlobRef:
        """Send consecutive pieces of memory in chunks through the broker (no temporary file).

        Raises:
            BlobIntegrityError: The server stored something else than was sent.
            ServerUnavailable: The broker stayed away longer than ``transfer_retry``.
        """
        return self._upload(lambda: PartsReader(parts), sha256, size, media_type)

    def _upload(self, open_source: Callable[[], _Source], sha256: str, size: int, media_type: str) -> BlobRef:
        deadline = time.monotonic() + self.transfer_retry
        restarts = 0
        while True:
            try:
                return self._retrying(
                    f"upload of {sha256[:12]}",
                    deadline,
                    lambda: self._upload_once(open_source, sha256, size, media_type),
                )
            except ServerRejected as exc:
                # A chunk processed twice (its reply was lost) puts the server one chunk ahead; start over.
                if exc.code != "conflict" or restarts >= 3:
                    raise
                restarts += 1
                logger.warning("upload of %s out of step (%s); starting over", sha256[:12], exc.detail)

    def _upload_once(self, open_source: Callable[[], _Source], sha256: str, size: int, media_type: str) -> BlobRef:
        announce = BlobUpload(sha256=sha256, size=size, media_type=media_type)
        ticket = self._expect(self.request(announce), BlobTicket, announce)
        if ticket.max_size is not None and size > ticket.max_size:
            raise ServerRejected(
                413, "payload_too_large", f"blob of {size} bytes is larger than the server's limit of {ticket.max_size}"
            )
        chunk_size = min(ticket.chunk_size or MAX_CHUNK_BYTES, MAX_CHUNK_BYTES)
        index = 0
        with open_source() as fh:
            while ticket.ref is None:
                data = fh.read(chunk_size)
                if not data:
                    raise ProtocolError(f"the server did not confirm blob {sha256} after all {index} chunks")
                put = BlobChunkPut(blob_id=ticket.blob_id, index=index, data=data)
                ticket = self._expect(self.request(put), BlobTicket, put)
                index += 1
        ref = ticket.ref
        if ref.sha256 != sha256 or ref.size != size:
            raise BlobIntegrityError(
                f"server stored blob {ref.id} as {ref.size} bytes with sha256 {ref.sha256}, "
                f"but {size} bytes with sha256 {sha256} were sent"
            )
        return ref

    def download_blob(self, ref: BlobRef, destination: Path) -> None:
        """Fetch blob ``ref`` chunk by chunk into ``destination`` and verify size and SHA-256.

        Raises:
            BlobIntegrityError: Size or digest differ from ``ref`` (the file is removed).
            ServerUnavailable: The broker stayed away longer than ``transfer_retry``.
        """
        self._download(ref, lambda: BlobSink(ref, destination))

    def download_bytes(self, ref: BlobRef) -> bytes:
        """Fetch blob ``ref`` chunk by chunk into memory and verify size and SHA-256 (no temporary file).

        Raises:
            BlobIntegrityError: Size or digest differ from ``ref``.
            ServerUnavailable: The broker stayed away longer than ``transfer_retry``.
        """
        collector = BlobCollector(ref)
        self._download(ref, lambda: collector)
        return collector.result

    def _download(self, ref: BlobRef, open_sink: Callable[[], BlobSink | BlobCollector]) -> None:
        deadline = time.monotonic() + self.transfer_retry
        what = f"download of {ref.id[:12]}"
        ask = BlobDownload(blob_id=ref.id)
        ticket = self._retrying(what, deadline, lambda: self._expect(self.request(ask), BlobTicket, ask))
        if ticket.ref is not None and (ticket.ref.sha256 != ref.sha256 or ticket.ref.size != ref.size):
            raise BlobIntegrityError(
                f"server describes blob {ref.id} as {ticket.ref.size} bytes with sha256 {ticket.ref.sha256}, "
                f"but the reference says {ref.size} bytes with sha256 {ref.sha256}"
            )
        sink = open_sink()
        try:
            for index in range(ticket.num_chunks):
                get = BlobChunkGet(blob_id=ref.id, index=index)
                chunk = self._retrying(what, deadline, lambda get=get: self._expect(self.request(get), BlobChunk, get))  # type: ignore[misc]
                if chunk.index != index:
                    raise ProtocolError(f"asked for chunk {index} of blob {ref.id}, got chunk {chunk.index}")
                sink.write(chunk.data)
            sink.finish()
        except BaseException:
            sink.abort()
            raise

    def close(self) -> None:
        """Close the connection and stop the I/O thread; waiting calls fail with `ServerUnavailable`."""
        self._closed.set()
        with self._lock:
            connection, thread = self._connection, self._thread
            self._state_changed.notify_all()
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.add_callback_threadsafe(lambda: None)  # wake the I/O loop
        if thread is not None and thread is not threading.current_thread():
            thread.join(5.0)
