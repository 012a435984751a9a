"""The RabbitMQ interface in-process against a real broker: identity, dead letters, long-polling."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
from conftest import SERVER_USER, BrokerVhost
from theoden_client.errors import ServerRejected
from theoden_client.transport.amqp import RabbitMQTransport
from theoden_protocol import CommandStatus, Exit, Heartbeat, PullCommand, RegisterRequest, StatusUpdate, Train, codec
from theoden_server.messaging import RabbitMQInterface
from theoden_server.operations import ClosedDistribution, RequireNumberOfClients
from theoden_server.server import Server
from theoden_server.storage import BlobStore

pytestmark = pytest.mark.integration


@pytest.fixture
def served(amqp: BrokerVhost, tmp_path: Path) -> Iterator[tuple[Server, RabbitMQInterface]]:
    server = Server(
        run_name="identity",
        instructions=[RequireNumberOfClients(2), ClosedDistribution(Train(steps=1)), ClosedDistribution(Exit())],
        store=BlobStore(tmp_path / "blobs"),
        run_dir=tmp_path / "run",
        max_wait=10.0,
    )
    server.start()
    interface = RabbitMQInterface(server, url=amqp.server_url, heartbeat=10)
    interface.start()
    assert interface.wait_connected(30), interface.error
    yield server, interface
    interface.stop()
    server.stop()


@pytest.fixture
def transports(amqp: BrokerVhost) -> Iterator[dict[str, RabbitMQTransport]]:
    made = {name: RabbitMQTransport(amqp.url(name), timeout=10) for name in ("site-a", "site-b")}
    yield made
    for transport in made.values():
        transport.close()


def _statuses(server: Server) -> dict[str, str]:
    current = server.describe()["current"]
    return dict(current["statuses"]) if current and "statuses" in current else {}


def test_a_client_using_another_clients_name_is_refused_and_nothing_changes(served, transports) -> None:
    server, interface = served
    a, b = transports["site-a"], transports["site-b"]
    assert a.register(RegisterRequest()).client_name == "site-a"  # the name comes from the broker user
    assert b.register(RegisterRequest()).client_name == "site-b"
    command = a.pull_command(wait=5).command
    assert isinstance(command, Train)
    before = _statuses(server)

    with pytest.raises(ServerRejected) as refused:
        b.send_status(StatusUpdate(client_name="site-a", command_uuid=command.uuid, status=CommandStatus.FINISHED))
    assert (refused.value.status, refused.value.code) == (403, "forbidden")
    assert "site-b" in refused.value.detail
    assert "site-a" in refused.value.detail
    with pytest.raises(ServerRejected) as pulled:
        b.request(PullCommand(client_name="site-a"))
    assert pulled.value.status == 403
    with pytest.raises(ServerRejected) as wrong_command:  # speaking for itself about site-a's command
        b.send_status(StatusUpdate(client_name="site-b", command_uuid=command.uuid, status=CommandStatus.FINISHED))
    assert wrong_command.value.status == 409

    assert _statuses(server) == before
    assert before["site-a"] == "send"
    a.send_status(StatusUpdate(client_name="site-a", command_uuid=command.uuid, status=CommandStatus.FINISHED))
    assert _statuses(server)["site-a"] == "finished"
    assert interface.stats["rejected"] == 0


def test_the_broker_refuses_a_forged_user_id(amqp: BrokerVhost, served) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp.url("site-b")))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.basic_publish(
                "theoden.requests",
                "request",
                codec.encode(Heartbeat(), "msgpack"),
                properties=pika.BasicProperties(user_id="site-a"),
            )
        assert closed.value.reply_code == 406
        assert "authenticated user was 'site-b'" in closed.value.reply_text
    finally:
        if connection.is_open:
            connection.close()


def test_messages_without_user_id_or_undecodable_are_dead_lettered(amqp: BrokerVhost, served, transports) -> None:
    _, interface = served
    connection = pika.BlockingConnection(pika.URLParameters(amqp.url("site-a")))
    try:
        channel = connection.channel()
        channel.basic_publish("theoden.requests", "request", codec.encode(Heartbeat(), "msgpack"))
        channel.basic_publish(
            "theoden.requests", "request", b"\xc1 not msgpack", properties=pika.BasicProperties(user_id="site-a")
        )
        channel.basic_publish(
            "theoden.requests",
            "request",
            codec.encode({"type": "alien"}, "msgpack"),
            properties=pika.BasicProperties(user_id="site-a"),
        )
    finally:
        connection.close()
    deadline = time.monotonic() + 15
    while amqp.dead_letters() < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert amqp.dead_letters() == 3
    assert interface.stats["rejected"] == 3
    assert interface.connected.is_set()  # the consumer is still there and answers
    assert transports["site-a"].register(RegisterRequest()).client_name == "site-a"


def test_the_servers_own_broker_user_is_not_a_client(amqp: BrokerVhost, served) -> None:
    server, interface = served
    before = interface.stats["processed"]
    connection = pika.BlockingConnection(pika.URLParameters(amqp.url(SERVER_USER)))
    try:
        connection.channel().basic_publish(
            "theoden.requests",
            "request",
            codec.encode(RegisterRequest(), "msgpack"),
            properties=pika.BasicProperties(user_id=SERVER_USER),
        )
    finally:
        connection.close()
    deadline = time.monotonic() + 10
    while interface.stats["processed"] == before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert interface.stats["processed"] == before + 1  # answered (403), not dead-lettered
    assert SERVER_USER not in server.topology.clients()


def test_missing_permissions_are_reported_not_retried_forever(amqp: BrokerVhost, served) -> None:
    own = RabbitMQTransport(amqp.url(SERVER_USER), timeout=10)  # may not declare a reply queue
    try:
        started = time.monotonic()
        with pytest.raises(ServerRejected, match="ACCESS_REFUSED"):
            own.login()
        assert time.monotonic() - started < 5
    finally:
        own.close()


def test_a_pull_waits_until_a_command_is_available_then_returns_at_once(served, transports) -> None:
    _server, interface = served
    a, b = transports["site-a"], transports["site-b"]
    a.register(RegisterRequest())
    started = time.monotonic()
    empty = a.pull_command(wait=0.5)  # nobody else joined: nothing to do, answered after the wait
    assert empty.command is None
    assert 0.4 < time.monotonic() - started < 5

    import threading

    result: dict[str, object] = {}

    def pull() -> None:
        begun = time.monotonic()
        result["command"] = a.pull_command(wait=8).command
        result["seconds"] = time.monotonic() - begun

    thread = threading.Thread(target=pull)
    thread.start()
    time.sleep(1.0)
    assert interface.parking.waiting == 1  # parked: no worker thread, no unacknowledged message held
    b.register(RegisterRequest())  # the second client makes the condition true: site-a is woken
    thread.join(10)
    assert isinstance(result["command"], Train)
    assert 0.9 < float(result["seconds"]) < 4  # woken by the notification, long before its 8 s wait
