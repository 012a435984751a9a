"""Topology, selectors and conditions on their own."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from theoden_server.operations import (
    AllClients,
    NamedClients,
    NClients,
    RandomFraction,
    RequireAllClients,
    RequireClients,
    RequireNumberOfClients,
    RequirePercentageOfClients,
)
from theoden_server.topology import ClientStatus, Topology


def test_topology_marks_silent_clients_offline_and_back_online() -> None:
    # Prepare
    now = [100.0]
    topology = Topology(heartbeat_timeout=10, clock=lambda: now[0])
    assert topology.join("a") == (True, False)
    topology.join("b")

    # Execute
    now[0] = 105
    topology.touch("b")
    now[0] = 111
    expired = topology.expire()

    # Assert
    assert expired == ["a"]
    assert topology.online_clients() == ["b"]
    assert topology.get("a").status is ClientStatus.OFFLINE
    assert topology.touch("a") is True
    assert topology.online_clients() == ["a", "b"]
    assert topology.join("a") == (False, False)
    with pytest.raises(KeyError):
        topology.touch("nobody")


def test_selectors() -> None:
    clients = [f"c{i}" for i in range(10)]
    assert AllClients().select(clients) == clients
    assert NClients(3).select(clients) == ["c0", "c1", "c2"]
    assert NamedClients(["c5", "zz", "c1"]).select(clients) == ["c1", "c5"]
    draws = [RandomFraction(0.25, seed=4).select(clients) for _ in range(2)]
    assert draws[0] == draws[1]
    assert len(draws[0]) == 3
    sequence = RandomFraction(0.5, seed=1)
    rounds = [tuple(sequence.select(clients)) for _ in range(5)]
    assert len(set(rounds)) > 1  # the draw changes round by round, repeatably
    assert rounds == [tuple(s) for s in (lambda r: [r.select(clients) for _ in range(5)])(RandomFraction(0.5, seed=1))]
    assert len(NClients(2, seed=3).select(clients)) == 2
    assert RandomFraction(0.1, seed=0, minimum=2).select(clients[:3]).__len__() == 2


def fake_server(ready: list[str], known: list[str]) -> SimpleNamespace:
    return SimpleNamespace(ready_clients=lambda: ready, topology=SimpleNamespace(clients=lambda: known))


def test_conditions() -> None:
    server = fake_server(["a", "b"], ["a", "b", "c"])
    assert RequireNumberOfClients(2).resolved(server)
    assert not RequireNumberOfClients(3).resolved(server)
    assert RequireClients(["b"]).resolved(server)
    assert not RequireClients(["b", "c"]).resolved(server)
    assert RequirePercentageOfClients(0.6).resolved(server)
    assert not RequirePercentageOfClients(0.7).resolved(server)
    assert RequirePercentageOfClients(0.5, total=4).resolved(server)
    assert not RequireAllClients().resolved(server)
    assert RequireAllClients(["a"]).resolved(server)
    assert not RequireAllClients().resolved(fake_server([], []))


def test_operation_whitelist_and_blacklist() -> None:
    from theoden_protocol import BlobDownload, Heartbeat, PullCommand, StatusUpdate
    from theoden_server.protection import OperationBlacklist, OperationProtection, OperationWhitelist

    white = OperationWhitelist(PullCommand, StatusUpdate)
    assert white.allows(PullCommand(wait=1))
    assert white.allows(StatusUpdate)
    assert not white.allows(Heartbeat())
    black = OperationBlacklist(BlobDownload)
    assert not black.allows(BlobDownload(blob_id="a"))
    assert black.allows(Heartbeat())
    assert OperationProtection().allows(Heartbeat())


def test_start_server_refuses_plain_http_off_loopback(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import pytest
    from theoden_server.security import is_loopback
    from theoden_server.start import start_server

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    with pytest.raises(ValueError, match="refusing plain HTTP on 0.0.0.0"):
        start_server([], "x", host="0.0.0.0", run_dir=tmp_path)


def test_start_server_hands_the_broker_settings_to_the_rabbitmq_interface(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    import pytest
    from theoden_server import messaging
    from theoden_server.start import start_server

    seen: dict[str, object] = {}

    class Stop(Exception):
        pass

    def fake_interface(server, **kwargs):  # type: ignore[no-untyped-def]
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(messaging, "RabbitMQInterface", fake_interface)
    from theoden_server.security import UsersFile

    ca = tmp_path / "ca.pem"
    ca.write_text("pem")
    users = UsersFile(tmp_path / "users.toml")
    users.save()
    url = "amqps://srv:pw@broker/run"
    with pytest.raises(ValueError, match="RabbitMQ CA bundle .* not found"):
        start_server([], "x", port=0, run_dir=tmp_path / "a", rabbitmq=url, rabbitmq_ca_file=tmp_path / "no.pem")
    with pytest.raises(Stop):
        start_server(
            [],
            "x",
            port=0,
            users=users.path,
            run_dir=tmp_path / "b",
            rabbitmq=url,
            rabbitmq_ca_file=ca,
            rabbitmq_admin_users=["ops"],
        )
    assert seen == {"url": url, "ca_file": ca, "admin_users": ["ops"]}
    import logging

    leftover = [h for h in logging.getLogger().handlers if str(tmp_path) in str(getattr(h, "baseFilename", ""))]
    assert leftover == []  # the failed start removed its log handler (and closed its socket)


def test_watcher_pool_queues_only_what_some_watcher_may_want() -> None:
    from theoden_server.watchers import WatcherPool
    from theoden_server.watchers.base import (
        Notification,
        RoundCompletedNotification,
        RunFinishedNotification,
        TopologyChangeNotification,
        Watcher,
    )

    class Recorder(Watcher):
        notification_types = (RoundCompletedNotification,)

        def __init__(self) -> None:
            self.seen: list[Notification] = []

        def handle(self, notification: Notification, pool: WatcherPool) -> None:
            self.seen.append(notification)

    class Picky(Recorder):  # decides per notification: gets every type offered to it
        def wants(self, notification: Notification) -> bool:
            return getattr(notification, "client", "") == "b"

    rounds = Recorder()
    pool = WatcherPool([rounds])
    queued: list[object] = []
    put = pool._queue.put
    pool._queue.put = lambda item, *a, **k: (queued.append(item), put(item, *a, **k))[1]  # type: ignore[method-assign]
    pool.start()
    try:
        pool.notify(TopologyChangeNotification(client="a", change="online"))  # nobody wants it: not queued
        pool.notify(RoundCompletedNotification(round=1, model=None))
        late = Recorder()
        late.notification_types = (TopologyChangeNotification,)
        pool.add(late)  # now somebody does
        pool.notify(TopologyChangeNotification(client="a", change="offline"))
        picky = Picky()
        pool.add(picky)
        pool.notify(RunFinishedNotification())
        pool.notify(TopologyChangeNotification(client="b", change="online"))
        assert pool.flush(5)
    finally:
        pool.stop()

    kinds = [type(item).__name__ for item in queued if isinstance(item, Notification)]
    assert kinds == [
        "RoundCompletedNotification",
        "TopologyChangeNotification",
        "RunFinishedNotification",
        "TopologyChangeNotification",
    ]
    assert [n.round for n in rounds.seen] == [1]  # type: ignore[attr-defined]
    assert [n.change for n in late.seen] == ["offline", "online"]  # type: ignore[attr-defined]
    assert [n.client for n in picky.seen] == ["b"]  # type: ignore[attr-defined]
