"""A user watcher: one CSV row per client, round and metric, written as the results arrive."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import ClassVar

from theoden_server import Notification, Watcher, WatcherPool
from theoden_server.watchers import InitializationNotification, MetricNotification


class ClientMetricsCSV(Watcher):
    """Append every metric a client reports to ``<run_dir>/<filename>``.

    Columns: ``time, phase, round, client, num_samples, metric, value``. Handlers run on the watcher
    pool's own thread, one notification at a time, so writing a file here never slows a client down.

    Args:
        path: The CSV file; ``None`` puts ``client_metrics.csv`` into the server's run directory.
    """

    notification_types: ClassVar = (InitializationNotification, MetricNotification)
    columns: ClassVar = ["time", "phase", "round", "client", "num_samples", "metric", "value"]

    def __init__(self, path: Path | None = None) -> None:
        self.path = path

    def handle(self, notification: Notification, pool: WatcherPool) -> None:
        """Create the file when the server starts; add rows for each client's metrics."""
        if isinstance(notification, InitializationNotification):
            self.path = self.path or notification.server.run_dir / "client_metrics.csv"
            if not self.path.exists():
                with self.path.open("w", newline="") as f:
                    csv.writer(f).writerow(self.columns)
        elif isinstance(notification, MetricNotification) and self.path is not None:
            n = notification
            with self.path.open("a", newline="") as f:
                writer = csv.writer(f)
                for metric, value in sorted(n.metrics.items()):
                    writer.writerow([f"{n.time:.3f}", n.phase, n.round, n.client, n.num_samples, metric, value])
