"""Notifications (what happened on the server) and the `Watcher` base that reacts to them.

Every notification is a small frozen dataclass; a watcher names the notification types it
wants in ``notification_types`` and handles each in `Watcher.handle`. Watchers may notify the
pool in turn (the metric collector emits `RoundMetricsNotification`, the best-model detector
`NewBestModelNotification`, ...).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from theoden_protocol import BlobRef, CommandStatus, ExecutionResponse, ServerRequest, StatusUpdate

if TYPE_CHECKING:
    from theoden_server.server import Server
    from theoden_server.watchers.pool import WatcherPool

__all__ = [
    "AggregationCompletedNotification",
    "CommandFinishedNotification",
    "InitializationNotification",
    "MetricNotification",
    "NewBestModelNotification",
    "Notification",
    "ParametersNotification",
    "RoundCompletedNotification",
    "RoundMetricsNotification",
    "RunFinishedNotification",
    "ServerRequestNotification",
    "StatusUpdateNotification",
    "TopologyChangeNotification",
    "Watcher",
]


@dataclass(frozen=True, kw_only=True)
class Notification:
    """Base of every notification; ``time`` is when it was created (epoch seconds)."""

    time: float = field(default_factory=time.time)


@dataclass(frozen=True, kw_only=True)
class InitializationNotification(Notification):
    """The server started; watchers may prepare (open files, ...)."""

    server: Server


@dataclass(frozen=True, kw_only=True)
class ServerRequestNotification(Notification):
    """A client sent a server request (pull, heartbeat, register, blob transfer)."""

    client: str
    request: ServerRequest


@dataclass(frozen=True, kw_only=True)
class StatusUpdateNotification(Notification):
    """A client reported a command's status (already validated and applied)."""

    client: str
    update: StatusUpdate


@dataclass(frozen=True, kw_only=True)
class TopologyChangeNotification(Notification):
    """A client joined, came back online, or went offline (``change`` says which)."""

    client: str
    change: str
    online_clients: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class CommandFinishedNotification(Notification):
    """A client's command became final (FINISHED or FAILED, after the server's own checks)."""

    client: str
    command_uuid: str
    status: CommandStatus
    response: ExecutionResponse | None = None
    error: str | None = None
    distribution: str = ""
    round: int | None = None


@dataclass(frozen=True, kw_only=True)
class MetricNotification(Notification):
    """Metrics one client reported for a round, with the number of samples they stand for."""

    client: str
    round: int | None
    metrics: Mapping[str, float]
    num_samples: int | None = None
    phase: str = "round"


@dataclass(frozen=True, kw_only=True)
class RoundCompletedNotification(Notification):
    """A round (or a final validation) is over; ``model`` is the global model it stands for."""

    round: int | None
    model: BlobRef | None
    phase: str = "round"


@dataclass(frozen=True, kw_only=True)
class RoundMetricsNotification(Notification):
    """The clients' metrics of a round, averaged weighted by sample count."""

    round: int | None
    metrics: Mapping[str, float]
    num_clients: int
    model: BlobRef | None = None
    phase: str = "round"


@dataclass(frozen=True, kw_only=True)
class NewBestModelNotification(Notification):
    """A global model beat every earlier one on ``metric``."""

    round: int | None
    model: BlobRef
    metric: str
    value: float


@dataclass(frozen=True, kw_only=True)
class AggregationCompletedNotification(Notification):
    """An aggregation produced a new global model (or kept the old one; ``message`` says why)."""

    round: int | None
    model: BlobRef | None
    aggregator: str
    num_results: int
    failed_clients: Mapping[str, str] = field(default_factory=dict)
    message: str = ""


@dataclass(frozen=True, kw_only=True)
class ParametersNotification(Notification):
    """The global model's parameters changed (initialised, loaded or aggregated)."""

    model: BlobRef
    round: int | None = None
    source: str = ""


@dataclass(frozen=True, kw_only=True)
class RunFinishedNotification(Notification):
    """The plan is done, or the run failed (``failed`` holds the reason)."""

    failed: str | None = None


class Watcher:
    """Base of every watcher: override `handle`; list the wanted types in ``notification_types``.

    Handlers run on the watcher pool's own thread, one notification at a time, so they never
    slow a client's request; an exception is logged and never reaches the server.
    """

    notification_types: ClassVar[tuple[type[Notification], ...]] = (Notification,)

    def wants(self, notification: Notification) -> bool:
        """Whether this watcher handles ``notification``."""
        return isinstance(notification, self.notification_types)

    def handle(self, notification: Notification, pool: WatcherPool) -> None:
        """React to ``notification``; ``pool.notify`` may emit further notifications."""

    def close(self) -> None:
        """Release resources when the server stops."""

    def describe(self) -> Mapping[str, Any]:
        """Return a short description for logs."""
        return {"watcher": type(self).__name__}
