"""Broker fixtures: a testcontainers RabbitMQ container where Docker answers, else a private
``rabbitmq-server`` node started here, else ``THEODEN_TEST_AMQP_URL``; skipped only when none exists.

Each test that needs per-client identities gets its own vhost (so runs never see each other's
messages) with a server user and three client users, set up in one ``import_definitions`` call.
"""

from __future__ import annotations

import secrets
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _broker import CLIENT_PERMISSIONS, SERVER_PERMISSIONS, Broker, any_broker

SERVER_USER = "theoden-server"
CLIENT_USERS = ("site-a", "site-b", "site-c")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    """The session's broker (see the module docstring for the order of preference)."""
    with any_broker() as (found, how):
        if found is None:
            print(f"\nno RabbitMQ broker: {how}", file=sys.stderr)
            pytest.skip(f"no RabbitMQ broker available: {how}")
        print(f"\nRabbitMQ broker: {how}", file=sys.stderr)
        yield found


@pytest.fixture(scope="session")
def amqp_url(broker: Broker) -> str:
    """A URL of the session's broker (the given one, or the server user's on a fresh vhost)."""
    if broker.admin_url is not None:
        return broker.admin_url
    return _vhost(broker).url(SERVER_USER)


@dataclass
class BrokerVhost:
    """A fresh vhost with a server user and client users on it."""

    broker: Broker
    vhost: str
    passwords: dict[str, str]

    def url(self, user: str) -> str:
        return self.broker.url(user, self.passwords[user], self.vhost)

    @property
    def server_url(self) -> str:
        return self.url(SERVER_USER)

    def dead_letters(self) -> int:
        return self.broker.list_queue(self.vhost, "theoden.dead")


def _vhost(broker: Broker) -> BrokerVhost:
    vhost = f"run-{secrets.token_hex(4)}"
    passwords = {name: f"pw-{name}-{secrets.token_hex(8)}" for name in (SERVER_USER, *CLIENT_USERS)}
    users = {SERVER_USER: (passwords[SERVER_USER], SERVER_PERMISSIONS)}
    users.update({name: (passwords[name], CLIENT_PERMISSIONS) for name in CLIENT_USERS})
    broker.add_users(users, vhost)
    return BrokerVhost(broker=broker, vhost=vhost, passwords=passwords)


@pytest.fixture
def amqp(broker: Broker) -> BrokerVhost:
    """A fresh vhost with users ``theoden-server``, ``site-a``, ``site-b``, ``site-c`` (needs an administrable broker)."""
    if not broker.manageable:
        pytest.skip(
            "per-client broker users need an administrable broker (container or local node), not THEODEN_TEST_AMQP_URL"
        )
    return _vhost(broker)
