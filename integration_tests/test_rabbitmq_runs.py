"""Whole runs with real server and client processes over a real broker."""

from __future__ import annotations

from pathlib import Path

import pika
import pytest
from _procs import (
    BIG_HIDDEN,
    TINY_HIDDEN,
    Proc,
    ServerProc,
    start_cli_client,
    start_client,
    start_server,
    wait_for,
    write_plan,
)
from conftest import CLIENT_USERS, BrokerVhost
from theoden_protocol import Heartbeat, codec
from theoden_server.security import UsersFile

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROUNDS = 5
TRAIN_SAMPLES = 3 * 60  # 240 synthetic samples in 3 parts, 75 % of each for training


def _publish_poison(amqp: BrokerVhost) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(amqp.url("site-a")))
    try:
        channel = connection.channel()
        persistent = pika.DeliveryMode.Persistent  # so the dead letters survive the broker restart below
        channel.basic_publish(
            "theoden.requests",
            "request",
            b"\xc1 poison",
            properties=pika.BasicProperties(user_id="site-a", delivery_mode=persistent),
        )
        channel.basic_publish(
            "theoden.requests",
            "request",
            codec.encode(Heartbeat(), "msgpack"),
            properties=pika.BasicProperties(delivery_mode=persistent),
        )  # no user_id
    finally:
        connection.close()


def _finish(server: ServerProc, clients: list[Proc], timeout: float = 180) -> None:
    for client in clients:
        code = client.wait(timeout)
        assert code == 0, f"{client.name} exited with {code}:\n{client.output()[-4000:]}"
    assert server.wait(60) == 0, server.output()[-4000:]


def _stop_all(procs: list[Proc]) -> None:
    for proc in procs:
        proc.stop()


def _assert_complete(server: ServerProc, rounds: int) -> None:
    metrics = server.metrics()
    assert [(m["phase"], m["round"]) for m in metrics] == [
        *(("round", r) for r in range(rounds)),
        ("final_validation", rounds),
    ]
    for line in metrics[:rounds]:
        assert line["num_samples"] == TRAIN_SAMPLES, line  # every client's update was aggregated in every round
    assert (server.run_dir / "best_model.safetensors").exists()


def test_three_clients_fedavg_over_the_broker_survives_a_broker_restart_and_poison(
    amqp: BrokerVhost, tmp_path: Path
) -> None:
    # Prepare: a 10 MB model, three clients, each with its own broker user
    plan = write_plan(tmp_path / "plan.py", run_name="amqp-fedavg", rounds=ROUNDS, steps=4, hidden=BIG_HIDDEN)
    users = UsersFile(tmp_path / "users.toml")
    users.save()
    server = start_server(tmp_path, plan, rabbitmq=amqp.server_url, users=users.path)
    clients = [start_client(tmp_path, name, rabbitmq=amqp.url(name)) for name in CLIENT_USERS]
    procs: list[Proc] = [server, *clients]
    try:
        # Execute: poison messages and a broker restart while the run goes on
        wait_for(lambda: len(server.metrics()) >= 1, 150, "round 0 to complete", procs)
        _publish_poison(amqp)
        rounds_before_restart = len(server.metrics())
        amqp.broker.restart(down=1.0)
        _finish(server, clients)
        dead_letters = amqp.dead_letters()
    finally:
        _stop_all(procs)

    # Assert: every round completed with all three clients, nothing lost
    assert rounds_before_restart < ROUNDS, "the restart came too late to test anything"
    _assert_complete(server, rounds=ROUNDS)
    assert dead_letters == 2
    model = server.run_dir / "best_model.safetensors"
    assert model.stat().st_size > 10_000_000
    log = server.output()
    assert "dead-lettering a message (user site-a): undecodable message" in log
    assert "dead-lettering a message (user None): no user_id property" in log
    assert "reconnecting in" in log  # the interface lost the broker and came back
    assert "consuming theoden.requests" in log
    for client in clients:
        assert "lost the broker" in client.output()


def test_a_run_with_clients_on_rest_and_on_rabbitmq(amqp: BrokerVhost, tmp_path: Path) -> None:
    # Prepare: site-a and site-b log in over REST, site-c comes through the broker
    plan = write_plan(tmp_path / "plan.py", run_name="mixed", rounds=2, hidden=TINY_HIDDEN)
    users = UsersFile(tmp_path / "users.toml")
    passwords = {name: users.add(name) for name in ("site-a", "site-b")}
    users.save()
    server = start_server(tmp_path, plan, rabbitmq=amqp.server_url, users=users.path)
    clients = [
        start_client(tmp_path, "site-a", rest=server.url, password=passwords["site-a"]),
        # these two are started with the `theoden-client` command line, as a site would
        start_cli_client(tmp_path, "site-b", rest=server.url, password=passwords["site-b"]),
        start_cli_client(tmp_path, "site-c", rabbitmq=amqp.url("site-c")),
    ]
    try:
        # Execute
        _finish(server, clients, timeout=150)
    finally:
        _stop_all([server, *clients])

    # Assert
    _assert_complete(server, rounds=2)
    assert sorted(server.metrics()[0]["clients"]) == ["site-a", "site-b", "site-c"]  # type: ignore[arg-type]
