"""A user watcher that steers the run: stop training when a metric stops improving."""

from __future__ import annotations

import logging
from typing import ClassVar

from theoden_server import Notification, Server, Watcher, WatcherPool
from theoden_server.watchers import InitializationNotification, RoundMetricsNotification

logger = logging.getLogger("theoden_server.run")


class EarlyStopping(Watcher):
    """End the plan when the round-averaged ``metric`` has not improved by ``min_delta`` for ``patience`` rounds.

    Ending the plan drops what is left of it (further rounds, the final validation); clients are told
    to exit and the run ends normally, with the best model so far in the run directory.

    Args:
        metric: A round-averaged metric, e.g. ``val/loss`` or ``val/accuracy``.
        patience: Rounds without improvement before stopping.
        min_delta: Smallest change that counts as an improvement.
        higher_is_better: Direction of the metric.
    """

    notification_types: ClassVar = (InitializationNotification, RoundMetricsNotification)

    def __init__(
        self, metric: str = "val/loss", *, patience: int = 3, min_delta: float = 0.0, higher_is_better: bool = False
    ) -> None:
        self.metric = metric
        self.patience = patience
        self.min_delta = min_delta
        self.higher_is_better = higher_is_better
        self.best: float | None = None
        self.waited = 0
        self.stopped_after: int | None = None
        self._server: Server | None = None

    def handle(self, notification: Notification, pool: WatcherPool) -> None:
        """Remember the server; compare each training round's metric with the best so far."""
        if isinstance(notification, InitializationNotification):
            self._server = notification.server
            return
        assert isinstance(notification, RoundMetricsNotification)
        value = notification.metrics.get(self.metric)
        if notification.phase != "round" or value is None or self.stopped_after is not None:
            return
        gain = (value - self.best if self.higher_is_better else self.best - value) if self.best is not None else None
        if gain is None or gain > self.min_delta:
            self.best, self.waited = value, 0
            return
        self.waited += 1
        if self.waited >= self.patience and self._server is not None:
            self.stopped_after = notification.round
            reason = f"early stopping: {self.metric} did not improve for {self.patience} round(s)"
            logger.info("%s (best %.4g); ending the plan after round %s", reason, self.best, notification.round)
            self._server.operations.end_plan(reason)
            self._server.operations.advance()  # finish now, so waiting clients get their exit at once
