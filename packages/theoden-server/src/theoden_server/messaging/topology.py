"""Names and declaration of TheODen's broker topology, shared by the server, the tests and the docs.

One direct exchange takes every client request and routes it to one durable request queue that
the server consumes. Rejected messages (undecodable, unauthenticated, failing twice) are
dead-lettered through ``theoden.dlx`` into ``theoden.dead`` for an operator to inspect. Replies go
through the default exchange straight to each client's exclusive, server-named reply queue.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from pika.adapters.blocking_connection import BlockingChannel

__all__ = ["CONTENT_TYPE", "DEFAULT_TOPOLOGY", "BrokerTopology", "declare_topology"]

#: Content type of every TheODen broker message body.
CONTENT_TYPE: Final = "application/msgpack"


@dataclass(frozen=True, kw_only=True)
class BrokerTopology:
    """The exchange, queue and dead-letter names one run uses (one run per vhost is the norm).

    Attributes:
        request_exchange: Direct exchange clients publish requests and status updates to.
        request_queue: Durable queue the server consumes (bound with ``routing_key``).
        routing_key: Routing key of requests.
        dead_letter_exchange: Fanout exchange rejected messages are dead-lettered to.
        dead_letter_queue: Durable queue that keeps dead-lettered messages for inspection.
    """

    request_exchange: str = "theoden.requests"
    request_queue: str = "theoden.requests"
    routing_key: str = "request"
    dead_letter_exchange: str = "theoden.dlx"
    dead_letter_queue: str = "theoden.dead"

    @classmethod
    def with_prefix(cls, prefix: str) -> BrokerTopology:
        """Return the topology with every name starting with ``prefix`` instead of ``theoden``."""
        return cls(
            request_exchange=f"{prefix}.requests",
            request_queue=f"{prefix}.requests",
            dead_letter_exchange=f"{prefix}.dlx",
            dead_letter_queue=f"{prefix}.dead",
        )


DEFAULT_TOPOLOGY: Final = BrokerTopology()


def declare_topology(channel: BlockingChannel, topology: BrokerTopology = DEFAULT_TOPOLOGY) -> None:
    """Declare the exchanges, queues and bindings of ``topology`` (idempotent; needs configure rights).

    Raises:
        pika.exceptions.ChannelClosedByBroker: A queue or exchange exists with other arguments
            (406 PRECONDITION_FAILED) or the user may not configure it (403 ACCESS_REFUSED).
    """
    channel.exchange_declare(topology.dead_letter_exchange, exchange_type="fanout", durable=True)
    channel.queue_declare(topology.dead_letter_queue, durable=True)
    channel.queue_bind(topology.dead_letter_queue, topology.dead_letter_exchange, routing_key="")
    channel.exchange_declare(topology.request_exchange, exchange_type="direct", durable=True)
    channel.queue_declare(
        topology.request_queue,
        durable=True,
        arguments={"x-dead-letter-exchange": topology.dead_letter_exchange},
    )
    channel.queue_bind(topology.request_queue, topology.request_exchange, routing_key=topology.routing_key)
