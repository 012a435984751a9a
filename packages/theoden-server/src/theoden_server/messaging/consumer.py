"""`RabbitMQInterface`: serve a `Server` to clients through a RabbitMQ broker (pika, blocking adapter).

One connection thread owns the pika connection: it consumes the request queue with a bounded
prefetch and manual acknowledgements. Each message is handled on a worker thread (see
`RequestProcessor`); the reply and the ack (or nack) go back to the connection thread with
``add_callback_threadsafe`` and are issued only after processing. Empty pulls wait in
`PullParking` without holding a worker. When the broker goes away the connection thread
reconnects with capped, jittered back-off (`run_with_reconnect`) and resumes consuming.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Collection
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from os import PathLike
from typing import TYPE_CHECKING, Any

import pika
import pika.exceptions
from theoden_protocol import PullCommand, codec

from theoden_server.messaging.handling import Delivery, Disposition, Outcome, RequestProcessor
from theoden_server.messaging.longpoll import ParkedPull, PullParking
from theoden_server.messaging.reconnect import Backoff, run_with_reconnect
from theoden_server.messaging.topology import CONTENT_TYPE, DEFAULT_TOPOLOGY, BrokerTopology, declare_topology

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

    from theoden_server.server import Server

__all__ = ["RabbitMQInterface", "connection_parameters"]

logger = logging.getLogger("theoden.server.amqp")


def connection_parameters(
    url: str, *, heartbeat: int | None = None, ca_file: str | PathLike[str] | None = None
) -> pika.URLParameters:
    """Parse an ``amqp://`` / ``amqps://`` URL; ``ca_file`` verifies the broker's certificate with a private CA."""
    params = pika.URLParameters(url)
    if heartbeat is not None:
        params.heartbeat = heartbeat
    if url.startswith("amqps://") and ca_file is not None:
        context = ssl.create_default_context(cafile=str(ca_file))
        params.ssl_options = pika.SSLOptions(context, params.host)
    return params


@dataclass(frozen=True)
class _Reply:
    reply_to: str | None
    correlation_id: str | None


class RabbitMQInterface:
    """Serve ``server`` through the broker at ``url`` (alongside REST or alone).

    Args:
        server: The server core.
        url: ``amqp[s]://USER:PASSWORD@HOST:PORT/VHOST``; USER is the server's own broker user.
        topology: Exchange and queue names (default ``theoden.*``).
        prefetch: Unacknowledged messages the broker hands the server at a time.
        workers: Threads that process messages.
        heartbeat: AMQP heartbeat in seconds (``None``: the URL's or pika's default).
        max_wait: Longest a pull is held (default the server's ``max_wait``).
        admin_users: Broker users that may read any blob (not clients).
        ca_file: CA bundle to verify an ``amqps://`` broker's certificate.
        backoff: Reconnect policy (default 0.5 s doubling up to 15 s, jittered).
    """

    def __init__(
        self,
        server: Server,
        *,
        url: str,
        topology: BrokerTopology = DEFAULT_TOPOLOGY,
        prefetch: int = 16,
        workers: int = 8,
        heartbeat: int | None = 30,
        max_wait: float | None = None,
        admin_users: Collection[str] = (),
        ca_file: str | PathLike[str] | None = None,
        backoff: Backoff | None = None,
    ) -> None:
        if prefetch < 1 or workers < 1:
            raise ValueError("prefetch and workers must be at least 1")
        self.server = server
        self.topology = topology
        self.prefetch = prefetch
        self.workers = workers
        self._params = connection_parameters(url, heartbeat=heartbeat, ca_file=ca_file)
        self.server_user: str = self._params.credentials.username
        self.parking = PullParking(self._release)
        self.processor = RequestProcessor(
            server,
            server_user=self.server_user,
            admin_users=admin_users,
            max_wait=max_wait,
            generation=self.parking.generation,
        )
        self.backoff = backoff or Backoff()
        self.connected = threading.Event()
        self.error: BaseException | None = None
        self.stats: dict[str, int] = {"processed": 0, "rejected": 0, "requeued": 0, "parked": 0, "connections": 0}
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._thread: threading.Thread | None = None
        self._unsubscribe: Callable[[], None] | None = None

    def __repr__(self) -> str:  # never shows the password
        queue = self.topology.request_queue
        return f"RabbitMQInterface(user={self.server_user!r}, host={self._params.host!r}, queue={queue!r})"

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Connect and consume in background threads; returns at once (see `connected`)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._pool = ThreadPoolExecutor(self.workers, thread_name_prefix="theoden-amqp-worker")
        self.parking.start()
        self._unsubscribe = self.server.subscribe(self.parking.notify)
        self._thread = threading.Thread(target=self._run, name="theoden-amqp", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop consuming, let running handlers finish, close the connection (idempotent)."""
        self._stop.set()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self.parking.close()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)

    def wait_connected(self, timeout: float | None = None) -> bool:
        """Block until the interface consumes (True) or ``timeout`` passes / it gave up (False)."""
        return self.connected.wait(timeout) and self.error is None

    def __enter__(self) -> RabbitMQInterface:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _run(self) -> None:
        def on_fatal(exc: BaseException) -> None:
            self.error = exc

        run_with_reconnect(self._session, stop=self._stop, backoff=self.backoff, on_fatal=on_fatal, name="rabbitmq")

    def _session(self, mark_consuming: Callable[[], None]) -> None:
        connection = pika.BlockingConnection(self._params)
        try:
            channel = connection.channel()
            declare_topology(channel, self.topology)
            channel.basic_qos(prefetch_count=self.prefetch)
            channel.basic_consume(self.topology.request_queue, self._on_message, auto_ack=False)
            with self._lock:
                self._connection, self._channel = connection, channel
            self._count("connections")
            mark_consuming()
            self.connected.set()
            logger.info("consuming %s on %s as %s", self.topology.request_queue, self._params.host, self.server_user)
            while not self._stop.is_set():
                connection.process_data_events(time_limit=0.5)
        finally:
            self.connected.clear()
            with self._lock:
                self._connection = self._channel = None
            if connection.is_open:
                with contextlib.suppress(pika.exceptions.AMQPError):
                    connection.close()

    # -- connection thread ---------------------------------------------------------------------

    def _on_message(self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes) -> None:
        delivery = Delivery(
            body=body,
            user_id=properties.user_id,
            reply_to=properties.reply_to,
            correlation_id=properties.correlation_id,
            redelivered=bool(method.redelivered),
        )
        pool = self._pool
        if pool is None:
            return  # stopping: the unacknowledged message goes back to the queue
        with contextlib.suppress(RuntimeError):  # pool shut down: same
            pool.submit(self._work, channel, method.delivery_tag, delivery)

    def _count(self, what: str) -> None:
        with self._lock:
            self.stats[what] += 1

    def _call_on_connection(self, callback: Callable[[], None]) -> bool:
        with self._lock:
            connection = self._connection
        if connection is None or not connection.is_open:
            return False
        try:
            connection.add_callback_threadsafe(callback)
        except Exception:  # closed in between
            return False
        return True

    def _settle(self, channel: BlockingChannel | None, tag: int | None, reply_to: _Reply, outcome: Outcome) -> None:
        """On the connection thread: publish the reply, then ack / nack the delivery on its own channel."""
        body = codec.encode(outcome.reply, "msgpack") if outcome.reply is not None else None

        def settle() -> None:
            current = self._channel
            if body is not None and reply_to.reply_to and current is not None and current.is_open:
                current.basic_publish(
                    exchange="",
                    routing_key=reply_to.reply_to,
                    body=body,
                    properties=pika.BasicProperties(correlation_id=reply_to.correlation_id, content_type=CONTENT_TYPE),
                )
            origin = channel
            if tag is None or origin is not current or origin is None or not origin.is_open:
                return  # nothing to settle, or the delivery's channel is gone (the broker redelivers it)
            if outcome.disposition is Disposition.REJECT:
                origin.basic_nack(tag, requeue=False)
            elif outcome.disposition is Disposition.REQUEUE:
                origin.basic_nack(tag, requeue=True)
            else:
                origin.basic_ack(tag)

        if not self._call_on_connection(settle):
            logger.debug("no connection to settle a message of %s; it will be redelivered", outcome.client)

    # -- workers -------------------------------------------------------------------------------

    def _work(self, channel: BlockingChannel, tag: int, delivery: Delivery) -> None:
        outcome = self.processor.handle(delivery)
        reply = _Reply(delivery.reply_to, delivery.correlation_id)
        if outcome.disposition is Disposition.REJECT:
            self._count("rejected")
            logger.warning("dead-lettering a message (user %s): %s", delivery.user_id, outcome.reason)
        elif outcome.disposition is Disposition.REQUEUE:
            self._count("requeued")
        else:
            self._count("processed")
        if outcome.disposition is Disposition.PARK:
            self._count("parked")
            self._settle(channel, tag, reply, Outcome(disposition=Disposition.ACK))
            self._park(outcome, reply)
            return
        self._settle(channel, tag, reply, outcome)

    def _park(self, outcome: Outcome, reply: _Reply) -> None:
        assert outcome.client is not None
        assert outcome.pull is not None
        self.parking.park(
            ParkedPull(
                client=outcome.client,
                deadline=outcome.deadline,
                generation=outcome.generation,
                payload=(outcome.pull, reply),
            )
        )

    def _release(self, pull: ParkedPull) -> None:
        """Parking thread: re-check a notified or expired pull on a worker."""
        pool = self._pool
        if pool is None or self._stop.is_set():
            return
        with contextlib.suppress(RuntimeError):  # pool shut down
            pool.submit(self._recheck, pull)

    def _recheck(self, pull: ParkedPull) -> None:
        request, reply = pull.payload
        assert isinstance(request, PullCommand)
        outcome = self.processor.repoll(request, pull.client, deadline=pull.deadline)
        if outcome.disposition is Disposition.PARK:
            self._park(outcome, reply)
        else:
            self._settle(None, None, reply, outcome)
