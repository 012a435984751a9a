"""The two entry points: identity, registration, status-update rules, blobs, long-poll support."""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import save
from theoden_protocol import (
    Ack,
    BlobChunk,
    BlobChunkGet,
    BlobChunkPut,
    BlobDownload,
    BlobTicket,
    BlobUpload,
    CommandStatus,
    ExecutionResponse,
    Heartbeat,
    IncompatibleVersionError,
    LoginRequest,
    PullCommand,
    RegisterRequest,
    RegisterResponse,
    StatusUpdate,
)
from theoden_server.errors import BadRequest, Conflict, Forbidden, InvalidRequest, NotFound
from theoden_server.operations import (
    Condition,
    DistributionStatus,
    LoadGlobalModel,
    MultiRoundTraining,
    RequireNumberOfClients,
)
from theoden_server.server import CHUNK_SIZE
from theoden_server.watchers import Notification, TopologyChangeNotification, Watcher

from ._harness import SimClient, drive, wait_for


def training_server(make_server, global_file: Path, **kwargs):
    return make_server(
        instructions=[RequireNumberOfClients(2), LoadGlobalModel(global_file), MultiRoundTraining(2, steps=1)], **kwargs
    )


def test_register_returns_the_run_settings_and_refuses_other_major_versions(make_server) -> None:
    # Prepare
    server = make_server(heartbeat_interval=2.5, max_wait=12.0)

    # Execute
    response = server.process_server_request(RegisterRequest(), "alice")

    # Assert
    assert response == RegisterResponse(client_name="alice", run_name="test-run", heartbeat_interval=2.5, max_wait=12.0)
    with pytest.raises(IncompatibleVersionError, match=r"speaks protocol 2\.0 .* speaks protocol 1\.0"):
        server.process_server_request(RegisterRequest(protocol_version="2.0"), "bob")
    assert "bob" not in server.topology


def test_impersonation_is_forbidden_and_changes_nothing(make_server, global_file: Path) -> None:
    # Prepare
    server = training_server(make_server, global_file)
    alice, bob = SimClient(server, "alice"), SimClient(server, "bob")
    alice.register()
    bob.register()
    command = alice.pull_wait()
    head = server.operations.current
    before = dict(head.statuses())
    last_seen = server.topology.get("alice").last_seen

    # Execute / Assert
    with pytest.raises(Forbidden, match="authenticated as 'bob'"):
        server.process_status_update(
            StatusUpdate(client_name="alice", command_uuid=command.uuid, status=CommandStatus.FAILED), "bob"
        )
    with pytest.raises(Forbidden):
        server.process_server_request(PullCommand(client_name="alice"), "bob")
    with pytest.raises(Forbidden):
        server.process_server_request(RegisterRequest(client_name="mallory"), "bob")
    assert head.statuses() == before
    assert server.topology.get("alice").last_seen == last_seen
    assert "mallory" not in server.topology


def test_status_update_rules(make_server, global_file: Path) -> None:
    # Prepare
    server = training_server(make_server, global_file)
    alice, bob = SimClient(server, "alice"), SimClient(server, "bob")
    alice.register()
    bob.register()
    command = alice.pull_wait()
    head = server.operations.current

    # Execute / Assert
    with pytest.raises(NotFound, match="no command nope"):
        server.process_status_update(StatusUpdate(client_name="alice", command_uuid="nope", status="started"), "alice")
    with pytest.raises(Conflict, match="not handed to bob"):
        server.process_status_update(
            StatusUpdate(client_name="bob", command_uuid=command.uuid, status=CommandStatus.FAILED), "bob"
        )
    assert head.statuses()["alice"] is DistributionStatus.SEND
    alice.report(command, CommandStatus.STARTED)
    assert head.statuses()["alice"] is DistributionStatus.STARTED
    alice.report(command, CommandStatus.FAILED, ExecutionResponse(error="boom"))
    with pytest.raises(Conflict, match="already failed"):
        alice.report(command, CommandStatus.FINISHED)
    assert head.failed_clients() == {"alice": "boom"}


def test_unregistered_clients_and_login_requests_are_refused(make_server) -> None:
    server = make_server()
    with pytest.raises(Conflict, match="RegisterRequest first"):
        server.process_server_request(PullCommand(), "ghost")
    with pytest.raises(InvalidRequest, match="log in through the transport"):
        server.process_server_request(LoginRequest(username="a", password="b"), "a")


def test_heartbeat_and_resent_command_until_started(make_server, global_file: Path) -> None:
    # Prepare
    server = training_server(make_server, global_file)
    alice, bob = SimClient(server, "alice"), SimClient(server, "bob")
    alice.register()
    bob.register()

    # Execute
    first = alice.pull_wait()
    again = alice.pull()
    alice.report(first, CommandStatus.STARTED)
    while_running = alice.pull()
    ack = server.process_server_request(Heartbeat(), "alice")

    # Assert
    assert first is not None
    assert again == first
    assert while_running is None
    assert isinstance(ack, Ack)


def test_silent_client_times_out_and_the_round_does_not_wait(make_server, global_file: Path) -> None:
    # Prepare
    server = training_server(make_server, global_file, heartbeat_timeout=0.3, heartbeat_interval=0.05)
    alice, silent = SimClient(server, "alice"), SimClient(server, "silent")
    alice.register()
    silent.register()
    assert silent.pull_wait() is not None  # takes its command, then never speaks again
    alice_keepalive = threading.Event()

    def keep_alive() -> None:
        while not alice_keepalive.is_set():
            server.process_server_request(Heartbeat(), "alice")
            alice_keepalive.wait(0.05)

    thread = threading.Thread(target=keep_alive)
    thread.start()
    round0 = server.operations.current

    # Execute
    try:
        drive(server, [alice], timeout=10)
    finally:
        alice_keepalive.set()
        thread.join()

    # Assert
    assert server.failed is None
    assert round0.statuses()["silent"] is DistributionStatus.FAILED
    assert "went silent" in round0.failed_clients()["silent"]
    assert not server.topology.is_online("silent")
    # a client that comes back is online again
    server.process_server_request(Heartbeat(), "silent")
    assert server.topology.is_online("silent")


def test_user_condition_and_user_watcher_by_subclassing(make_server, global_file: Path) -> None:
    # Prepare
    class Gate(Condition):
        def __init__(self) -> None:
            super().__init__()
            self.open = False

        def resolved(self, server) -> bool:
            return self.open

    class Recorder(Watcher):
        notification_types = (TopologyChangeNotification,)

        def __init__(self) -> None:
            self.seen: list[Notification] = []

        def handle(self, notification, pool) -> None:
            self.seen.append(notification)

    class Broken(Watcher):
        def handle(self, notification, pool) -> None:
            raise ValueError("watcher bug")

    gate, recorder = Gate(), Recorder()
    server = make_server(
        instructions=[gate, LoadGlobalModel(global_file), MultiRoundTraining(1, steps=1)], watchers=[Broken(), recorder]
    )
    client = SimClient(server, "a")
    client.register()

    # Execute
    blocked = client.pull()
    gate.open = True
    server.operations.advance()
    drive(server, [client])

    # Assert
    assert blocked is None
    assert server.failed is None
    assert server.global_model is not None
    assert [(n.client, n.change) for n in recorder.seen] == [("a", "joined")]
    assert server.watchers.errors > 0  # the broken watcher was logged, not fatal


def test_chunked_upload_and_download(make_server) -> None:
    # Prepare
    server = make_server()
    server.process_server_request(RegisterRequest(), "a")
    server.process_server_request(RegisterRequest(), "b")
    data = save({"x": torch.arange(CHUNK_SIZE // 4 + 10, dtype=torch.float32)})
    sha = hashlib.sha256(data).hexdigest()

    # Execute
    ticket = server.process_server_request(BlobUpload(sha256=sha, size=len(data)), "a")
    assert isinstance(ticket, BlobTicket)
    assert ticket.num_chunks == 2
    assert ticket.url == f"/api/v1/storage/{sha}"
    with pytest.raises(Conflict, match="expected chunk 0"):
        server.process_server_request(BlobChunkPut(blob_id=sha, index=1, data=data[CHUNK_SIZE:]), "a")
    with pytest.raises(NotFound):
        server.process_server_request(BlobChunkPut(blob_id=sha, index=0, data=data[:CHUNK_SIZE]), "b")
    partial = server.process_server_request(BlobChunkPut(blob_id=sha, index=0, data=data[:CHUNK_SIZE]), "a")
    done = server.process_server_request(BlobChunkPut(blob_id=sha, index=1, data=data[CHUNK_SIZE:]), "a")

    # Assert
    assert partial.ref is None
    assert done.ref is not None
    assert done.ref.id == sha
    assert server.store.owners(sha) == ["a"]
    chunks = [server.process_server_request(BlobChunkGet(blob_id=sha, index=i), "a") for i in range(2)]
    assert all(isinstance(c, BlobChunk) for c in chunks)
    assert [c.last for c in chunks] == [False, True]
    assert b"".join(c.data for c in chunks) == data
    assert server.process_server_request(BlobDownload(blob_id=sha), "a").ref.size == len(data)
    with pytest.raises(Forbidden):
        server.process_server_request(BlobDownload(blob_id=sha), "b")
    assert server.process_server_request(BlobDownload(blob_id=sha), "admin", is_admin=True).ref.id == sha
    with pytest.raises(NotFound):
        server.process_server_request(BlobDownload(blob_id="0" * 64), "a")
    with pytest.raises(BadRequest, match="not a lower-case hex SHA-256"):
        server.process_server_request(BlobDownload(blob_id="not-a-digest"), "a")


def test_corrupted_chunked_upload_is_refused_and_not_stored(make_server) -> None:
    server = make_server()
    server.process_server_request(RegisterRequest(), "a")
    data = b"x" * 100
    sha = hashlib.sha256(b"y" * 100).hexdigest()
    server.process_server_request(BlobUpload(sha256=sha, size=100), "a")
    with pytest.raises(InvalidRequest, match="SHA-256"):
        server.process_server_request(BlobChunkPut(blob_id=sha, index=0, data=data), "a")
    assert not server.store.exists(sha)


def test_subscribers_hear_when_a_command_may_be_available(make_server, global_file: Path) -> None:
    # Prepare
    server = training_server(make_server, global_file)
    heard: list[str | None] = []
    unsubscribe = server.subscribe(heard.append)

    # Execute
    SimClient(server, "a").register()
    SimClient(server, "b").register()
    wait_for(lambda: None in heard and "b" in heard)
    unsubscribe()
    count = len(heard)
    SimClient(server, "c").register()

    # Assert
    assert "a" in heard
    assert len(heard) == count


def test_the_server_writes_out_uploads_held_in_memory_that_nobody_used(
    make_server, monkeypatch: pytest.MonkeyPatch
) -> None:
    from theoden_server import server as server_module

    from ._harness import wait_for

    monkeypatch.setattr(server_module, "HELD_UPLOAD_SECONDS", 0.05)
    server = make_server(heartbeat_timeout=0.1, heartbeat_interval=0.02)
    with server.store.writer(owner="crashed-client", expected_size=1000, in_memory=True) as writer:
        writer.write(b"z" * 1000)
        ref = writer.commit()
    assert server.store.held(ref.id) is not None

    wait_for(lambda: server.store.held(ref.id) is None, timeout=5)

    assert server.store.exists(ref.id) and server.store.path(ref.id).read_bytes() == b"z" * 1000
