"""Authentication, decoding and ack/reject/park decisions of the broker interface, without a broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from theoden_protocol import (
    Ack,
    CommandResponse,
    CommandStatus,
    ErrorResponse,
    Exit,
    Heartbeat,
    PullCommand,
    RegisterRequest,
    RegisterResponse,
    StatusUpdate,
    Train,
    codec,
)
from theoden_server.messaging import Delivery, Disposition, RequestProcessor
from theoden_server.operations import ClosedDistribution, RequireNumberOfClients
from theoden_server.server import Server
from theoden_server.storage import BlobStore


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(
        run_name="unit",
        instructions=[RequireNumberOfClients(1), ClosedDistribution(Train(steps=1)), ClosedDistribution(Exit())],
        store=BlobStore(tmp_path / "blobs"),
        run_dir=tmp_path / "run",
        max_wait=5.0,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def processor(server: Server) -> RequestProcessor:
    return RequestProcessor(server, server_user="theoden-server")


def msg(message: object, user: str | None = "site-a", **kwargs: object) -> Delivery:
    return Delivery(
        body=codec.encode(message, "msgpack"), user_id=user, reply_to="amq.gen-x", correlation_id="1", **kwargs
    )  # type: ignore[arg-type]


def take_the_command(processor: RequestProcessor) -> None:
    """Register site-a, pull its Train command and report it STARTED (a pull then finds nothing)."""
    processor.handle(msg(RegisterRequest(), user="site-a"))
    command = processor.handle(msg(PullCommand(), user="site-a")).reply.command  # type: ignore[union-attr]
    processor.handle(msg(StatusUpdate(client_name="site-a", command_uuid=command.uuid, status=CommandStatus.STARTED)))


def test_identity_comes_from_user_id_not_from_the_body(processor: RequestProcessor) -> None:
    outcome = processor.handle(msg(RegisterRequest(), user="site-a"))
    assert outcome.disposition is Disposition.ACK
    assert isinstance(outcome.reply, RegisterResponse)
    assert outcome.reply.client_name == "site-a"


def test_a_message_without_user_id_is_rejected(processor: RequestProcessor, server: Server) -> None:
    outcome = processor.handle(msg(RegisterRequest(), user=None))
    assert outcome.disposition is Disposition.REJECT
    assert "user_id" in outcome.reason
    assert server.topology.clients() == []


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",
        b"",
        codec.encode({"type": "alien"}, "msgpack"),
        codec.encode({"type": "pull_command", "wait": -1}, "msgpack"),
    ],
)
def test_undecodable_messages_are_rejected(processor: RequestProcessor, body: bytes) -> None:
    outcome = processor.handle(Delivery(body=body, user_id="site-a"))
    assert outcome.disposition is Disposition.REJECT
    assert outcome.reason.startswith("undecodable message from site-a")


def test_an_invalid_user_name_is_rejected(processor: RequestProcessor) -> None:
    assert processor.handle(msg(Heartbeat(), user="../etc")).disposition is Disposition.REJECT


def test_naming_another_client_is_answered_forbidden_and_changes_nothing(
    processor: RequestProcessor, server: Server
) -> None:
    # Prepare
    processor.handle(msg(RegisterRequest(), user="site-a"))
    processor.handle(msg(RegisterRequest(), user="site-b"))
    command = processor.handle(msg(PullCommand(), user="site-a")).reply.command  # type: ignore[union-attr]
    before = server.describe()

    # Execute
    update = StatusUpdate(client_name="site-a", command_uuid=command.uuid, status=CommandStatus.FINISHED)
    outcome = processor.handle(msg(update, user="site-b"))
    pulled = processor.handle(msg(PullCommand(client_name="site-a"), user="site-b"))

    # Assert
    for result in (outcome, pulled):
        assert result.disposition is Disposition.ACK  # processed: answered, not dead-lettered
        assert isinstance(result.reply, ErrorResponse)
        assert (result.reply.code, result.reply.status) == ("forbidden", 403)
    assert server.describe() == before


def test_status_updates_reach_the_server(processor: RequestProcessor) -> None:
    processor.handle(msg(RegisterRequest()))
    command = processor.handle(msg(PullCommand())).reply.command  # type: ignore[union-attr]
    update = StatusUpdate(client_name="site-a", command_uuid=command.uuid, status=CommandStatus.FINISHED)
    outcome = processor.handle(msg(update))
    assert isinstance(outcome.reply, Ack)


def test_the_servers_own_user_is_not_a_client(processor: RequestProcessor, server: Server) -> None:
    outcome = processor.handle(msg(RegisterRequest(), user="theoden-server"))
    assert isinstance(outcome.reply, ErrorResponse)
    assert outcome.reply.status == 403
    assert server.topology.clients() == []


def test_an_empty_pull_that_may_wait_is_parked_with_its_generation(server: Server) -> None:
    processor = RequestProcessor(server, server_user="s", generation=lambda client: 7)
    take_the_command(processor)
    outcome = processor.handle(msg(PullCommand(wait=60), user="site-a"))  # nothing until it reports
    assert outcome.disposition is Disposition.PARK
    assert outcome.generation == 7
    assert outcome.deadline > 0
    no_wait = processor.handle(msg(PullCommand(wait=0), user="site-b"))
    assert isinstance(no_wait.reply, ErrorResponse)  # site-b never registered: 409
    assert no_wait.reply.status == 409


def test_an_unexpected_error_is_retried_once_then_dead_lettered(
    processor: RequestProcessor, server: Server, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(server, "process_server_request", boom)
    first = processor.handle(msg(Heartbeat()))
    assert first.disposition is Disposition.REQUEUE
    assert first.reply is None
    second = processor.handle(msg(Heartbeat(), redelivered=True))
    assert second.disposition is Disposition.REJECT
    assert isinstance(second.reply, ErrorResponse)
    assert second.reply.status == 500


def test_repoll_after_the_deadline_answers_empty(processor: RequestProcessor) -> None:
    take_the_command(processor)
    outcome = processor.repoll(PullCommand(wait=1), "site-a", deadline=0.0)
    assert outcome.disposition is Disposition.ACK
    assert isinstance(outcome.reply, CommandResponse)
    assert outcome.reply.command is None
