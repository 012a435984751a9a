"""The RabbitMQ interface: clients reach the server through a broker instead of (or beside) REST."""

from __future__ import annotations

from theoden_server.messaging.consumer import RabbitMQInterface, connection_parameters
from theoden_server.messaging.handling import Delivery, Disposition, Outcome, RequestProcessor
from theoden_server.messaging.longpoll import ParkedPull, PullParking
from theoden_server.messaging.reconnect import Backoff, is_fatal, run_with_reconnect
from theoden_server.messaging.topology import CONTENT_TYPE, DEFAULT_TOPOLOGY, BrokerTopology, declare_topology

__all__ = [
    "CONTENT_TYPE",
    "DEFAULT_TOPOLOGY",
    "Backoff",
    "BrokerTopology",
    "Delivery",
    "Disposition",
    "Outcome",
    "ParkedPull",
    "PullParking",
    "RabbitMQInterface",
    "RequestProcessor",
    "connection_parameters",
    "declare_topology",
    "is_fatal",
    "run_with_reconnect",
]
