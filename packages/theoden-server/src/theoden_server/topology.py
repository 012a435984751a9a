"""Topology: the clients of a run, whether each is online, and when each was last heard from."""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ClientInfo", "ClientStatus", "Topology"]


class ClientStatus(enum.StrEnum):
    """Whether a client is reachable."""

    ONLINE = "online"
    """The client was heard from within the heartbeat timeout."""
    OFFLINE = "offline"
    """The client has been silent for longer than the heartbeat timeout."""


@dataclass(slots=True)
class ClientInfo:
    """What the server knows about one client."""

    name: str
    status: ClientStatus = ClientStatus.ONLINE
    joined_at: float = 0.0
    last_seen: float = 0.0
    registrations: int = 0
    info: dict[str, Any] = field(default_factory=dict)


class Topology:
    """The clients of a run with their status and last-seen time; thread-safe.

    A client joins with `join` (its registration) and is kept alive by `touch` (any request).
    `expire` marks every client silent for longer than ``heartbeat_timeout`` seconds offline; a
    client that is heard from again is online again.

    Args:
        heartbeat_timeout: Seconds of silence after which a client counts as offline.
        clock: Source of the current time (tests may pass a fake one).
    """

    def __init__(self, *, heartbeat_timeout: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        if heartbeat_timeout <= 0:
            raise ValueError("heartbeat_timeout must be positive")
        self.heartbeat_timeout = heartbeat_timeout
        self._clock = clock
        self._lock = threading.Lock()
        self._clients: dict[str, ClientInfo] = {}

    def join(self, name: str, info: Mapping[str, Any] | None = None) -> tuple[bool, bool]:
        """Register ``name`` (again); return ``(is_new, was_offline)``."""
        now = self._clock()
        with self._lock:
            client = self._clients.get(name)
            is_new = client is None
            if client is None:
                client = ClientInfo(name=name, joined_at=now)
                self._clients[name] = client
            was_offline = client.status is ClientStatus.OFFLINE
            client.status = ClientStatus.ONLINE
            client.last_seen = now
            client.registrations += 1
            if info:
                client.info = dict(info)
            return is_new, was_offline

    def touch(self, name: str) -> bool:
        """Record that ``name`` was heard from; return whether it came back from offline.

        Raises:
            KeyError: ``name`` never joined.
        """
        with self._lock:
            client = self._clients[name]
            client.last_seen = self._clock()
            came_back = client.status is ClientStatus.OFFLINE
            client.status = ClientStatus.ONLINE
            return came_back

    def expire(self) -> list[str]:
        """Mark every online client silent for longer than the timeout offline; return their names."""
        deadline = self._clock() - self.heartbeat_timeout
        expired: list[str] = []
        with self._lock:
            for client in self._clients.values():
                if client.status is ClientStatus.ONLINE and client.last_seen < deadline:
                    client.status = ClientStatus.OFFLINE
                    expired.append(client.name)
        return expired

    def mark_offline(self, name: str) -> bool:
        """Mark ``name`` offline now (e.g. its connection closed); return whether it was online."""
        with self._lock:
            client = self._clients.get(name)
            if client is None or client.status is ClientStatus.OFFLINE:
                return False
            client.status = ClientStatus.OFFLINE
            return True

    def __contains__(self, name: object) -> bool:
        with self._lock:
            return name in self._clients

    def is_online(self, name: str) -> bool:
        """Whether ``name`` is known and online."""
        with self._lock:
            client = self._clients.get(name)
            return client is not None and client.status is ClientStatus.ONLINE

    def online_clients(self) -> list[str]:
        """Names of the online clients, in the order they first joined."""
        with self._lock:
            return [c.name for c in self._clients.values() if c.status is ClientStatus.ONLINE]

    def clients(self) -> list[str]:
        """Names of every client that ever joined, in the order they first joined."""
        with self._lock:
            return list(self._clients)

    def get(self, name: str) -> ClientInfo | None:
        """Return a snapshot of what is known about ``name`` (or ``None``)."""
        with self._lock:
            client = self._clients.get(name)
            if client is None:
                return None
            return ClientInfo(
                name=client.name,
                status=client.status,
                joined_at=client.joined_at,
                last_seen=client.last_seen,
                registrations=client.registrations,
                info=dict(client.info),
            )

    def snapshot(self) -> list[ClientInfo]:
        """Return snapshots of every client, in join order."""
        return [info for name in self.clients() if (info := self.get(name)) is not None]
