"""The RabbitMQ transport without a broker: error mapping, secrets, and failing fast when no broker answers."""

from __future__ import annotations

import socket
import time

import pytest
from theoden_client.errors import AuthenticationError, ServerRejected, ServerUnavailable
from theoden_client.transport.amqp import RabbitMQTransport, _map_error
from theoden_protocol import ErrorResponse, Heartbeat


def test_error_responses_map_to_the_client_errors() -> None:
    forbidden = _map_error(ErrorResponse(code="forbidden", detail="not you", status=403))
    assert isinstance(forbidden, ServerRejected)
    assert (forbidden.status, forbidden.code) == (403, "forbidden")
    assert isinstance(_map_error(ErrorResponse(code="internal_error", detail="x", status=500)), ServerUnavailable)
    assert isinstance(_map_error(ErrorResponse(code="unauthorized", detail="x", status=401)), AuthenticationError)


def test_the_user_name_comes_from_the_url_and_the_password_never_shows() -> None:
    transport = RabbitMQTransport("amqp://site-a:s3cret-pass@broker.example.org:5671/fl")
    assert transport.username == "site-a"
    assert "s3cret" not in repr(transport)
    transport.close()


def test_no_broker_means_server_unavailable_within_the_timeout() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    transport = RabbitMQTransport(f"amqp://site-a:pw@127.0.0.1:{port}/", timeout=1.0)
    try:
        started = time.monotonic()
        with pytest.raises(ServerUnavailable, match="cannot reach the broker"):
            transport.request(Heartbeat())
        assert time.monotonic() - started < 5
    finally:
        transport.close()
    with pytest.raises(ServerUnavailable, match="closed"):
        transport.login()
