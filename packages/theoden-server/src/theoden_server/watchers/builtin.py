"""Built-in watchers: metric collection, best-model detection and saving, logging."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from theoden_protocol import Sequential, SetLosses

from theoden_server.watchers.base import (
    AggregationCompletedNotification,
    CommandFinishedNotification,
    InitializationNotification,
    MetricNotification,
    NewBestModelNotification,
    Notification,
    ParametersNotification,
    RoundCompletedNotification,
    RoundMetricsNotification,
    RunFinishedNotification,
    TopologyChangeNotification,
    Watcher,
)

if TYPE_CHECKING:
    from theoden_server.storage import BlobStore
    from theoden_server.watchers.pool import WatcherPool

__all__ = ["BestModelDetector", "BestModelSaver", "LoggingWatcher", "MetricCollector", "weighted_metrics"]

logger = logging.getLogger("theoden_server.run")


def weighted_metrics(reports: Mapping[str, tuple[Mapping[str, float], int | None]]) -> dict[str, float]:
    """Average each metric over clients, weighted by their sample counts.

    A client without a sample count weighs 1 if no client has one; otherwise it weighs 0 for
    the weighted mean. Metrics a client did not report are averaged over the clients that did.
    """
    have_counts = any(n for _, n in reports.values())
    sums: dict[str, float] = defaultdict(float)
    weights: dict[str, float] = defaultdict(float)
    for metrics, num_samples in reports.values():
        weight = float(num_samples or 0) if have_counts else 1.0
        for name, value in metrics.items():
            if not math.isfinite(value):
                continue
            sums[name] += weight * value
            weights[name] += weight
    return {name: sums[name] / weights[name] for name in sorted(sums) if weights[name] > 0}


class MetricCollector(Watcher):
    """Collects the clients' metrics per round and appends one JSON line per round to ``metrics.jsonl``.

    A round's line is written when the round completes (`RoundCompletedNotification`); it holds
    the sample-weighted mean of every metric, the per-client values and the global model's blob
    id. The collector then emits a `RoundMetricsNotification` (the best-model detector uses it).

    Args:
        run_dir: Directory of the run; ``None`` takes the server's run directory at initialisation.
        filename: Name of the JSON-lines file inside ``run_dir``.
        keep_lines: How many of the latest lines `history` keeps in memory (the file has them all).
    """

    notification_types: ClassVar = (InitializationNotification, MetricNotification, RoundCompletedNotification)

    def __init__(self, run_dir: Path | None = None, *, filename: str = "metrics.jsonl", keep_lines: int = 1000) -> None:
        self.run_dir = run_dir
        self.filename = filename
        self._pending: dict[tuple[str, int | None], dict[str, tuple[dict[str, float], int | None]]] = defaultdict(dict)
        # a long run with many clients would otherwise hold every round's per-client metrics forever
        self.history: deque[dict[str, Any]] = deque(maxlen=keep_lines)
        self._lock = threading.Lock()

    @property
    def path(self) -> Path | None:
        """The JSON-lines file, once the run directory is known."""
        return None if self.run_dir is None else self.run_dir / self.filename

    def _write(self, line: dict[str, Any]) -> None:
        with self._lock:
            self.history.append(line)
            if self.path is not None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(json.dumps(line, allow_nan=False) + "\n")

    def handle(self, notification: Notification, pool: WatcherPool) -> None:
        """Buffer client metrics; write and announce a round's aggregate when it completes."""
        if isinstance(notification, InitializationNotification):
            if self.run_dir is None:
                self.run_dir = notification.server.run_dir
        elif isinstance(notification, MetricNotification) and notification.round is None:
            # metrics outside any round (e.g. a user command's statistics) have no round to complete:
            # record them as they come, one line per client report
            n = notification.num_samples
            self._write(
                {
                    "time": time.time(),
                    "phase": notification.phase,
                    "round": None,
                    "num_clients": 1,
                    "num_samples": n or 0,
                    "metrics": dict(notification.metrics),
                    "clients": {notification.client: {"num_samples": n, **notification.metrics}},
                    "model": None,
                }
            )
        elif isinstance(notification, MetricNotification):
            with self._lock:
                reports = self._pending[(notification.phase, notification.round)]
                old_metrics, old_n = reports.get(notification.client, ({}, None))
                reports[notification.client] = (
                    {**old_metrics, **notification.metrics},
                    notification.num_samples if notification.num_samples is not None else old_n,
                )
        elif isinstance(notification, RoundCompletedNotification):
            with self._lock:
                reports = self._pending.pop((notification.phase, notification.round), {})
            if not reports:
                return
            metrics = weighted_metrics(reports)
            line = {
                "time": notification.time,
                "phase": notification.phase,
                "round": notification.round,
                "num_clients": len(reports),
                "num_samples": sum(n or 0 for _, n in reports.values()),
                "metrics": metrics,
                "clients": {name: {"num_samples": n, **m} for name, (m, n) in sorted(reports.items())},
                "model": None if notification.model is None else notification.model.id,
            }
            self._write(line)
            pool.notify(
                RoundMetricsNotification(
                    round=notification.round,
                    metrics=metrics,
                    num_clients=len(reports),
                    model=notification.model,
                    phase=notification.phase,
                )
            )


class BestModelDetector(Watcher):
    """Emits `NewBestModelNotification` when a round's averaged ``metric`` beats every earlier round.

    Args:
        metric: The averaged metric that decides (e.g. ``val/accuracy``).
        higher_is_better: Direction of the metric (``False`` for losses).
    """

    notification_types: ClassVar = (RoundMetricsNotification,)

    def __init__(self, metric: str = "val/accuracy", *, higher_is_better: bool = True) -> None:
        self.metric = metric
        self.higher_is_better = higher_is_better
        self.best: float | None = None
        self.best_round: int | None = None

    @classmethod
    def for_plan(cls, instructions: Iterable[object], open_distribution: object = None) -> BestModelDetector:
        """The detector a plan asks for: the ``choosing_metric`` of its first `SetLosses` that names one.

        The metric is looked for as the rounds report it, ``<val_split>/<choosing_metric>`` (the split
        of the plan's first `MultiRoundTraining`, ``val`` by default), in the command's direction
        (``higher_is_better``). A plan whose `SetLosses` names none gets the default, ``val/accuracy``.
        """
        choice: SetLosses | None = None
        split: str | None = None
        seen: set[int] = set()

        def visit(item: object, depth: int = 0) -> None:
            nonlocal choice, split
            if depth > 8 or id(item) in seen:
                return
            seen.add(id(item))
            if isinstance(item, SetLosses):
                if choice is None and item.choosing_metric is not None:
                    choice = item
                return
            if isinstance(item, Sequential):
                for child in item.commands:
                    visit(child, depth + 1)
                return
            if split is None and isinstance(getattr(item, "val_split", None), str):
                split = item.val_split  # type: ignore[attr-defined]
            for name in ("command", "commands", "instructions"):
                value = getattr(item, name, None)
                for part in value if isinstance(value, list | tuple) else [value]:
                    if part is not None:
                        visit(part, depth + 1)

        for item in [*instructions, open_distribution]:
            if item is not None:
                visit(item)
        if choice is None or choice.choosing_metric is None:
            return cls()
        return cls(f"{split or 'val'}/{choice.choosing_metric}", higher_is_better=choice.higher_is_better)

    def handle(self, notification: Notification, pool: WatcherPool) -> None:
        """Compare the round's metric with the best so far."""
        assert isinstance(notification, RoundMetricsNotification)
        value = notification.metrics.get(self.metric)
        if value is None or notification.model is None:
            return
        better = self.best is None or (value > self.best if self.higher_is_better else value < self.best)
        if better:
            self.best, self.best_round = value, notification.round
            pool.notify(
                NewBestModelNotification(
                    round=notification.round, model=notification.model, metric=self.metric, value=value
                )
            )


class BestModelSaver(Watcher):
    """Copies each new best global model to ``run_dir/best_model.safetensors`` (plus a small JSON note).

    Args:
        store: The run's blob store; ``None`` takes the server's at initialisation.
        run_dir: Directory of the run; ``None`` takes the server's.
        filename: Name of the copied model inside ``run_dir``.
    """

    notification_types: ClassVar = (InitializationNotification, NewBestModelNotification)

    def __init__(
        self, store: BlobStore | None = None, run_dir: Path | None = None, *, filename: str = "best_model.safetensors"
    ) -> None:
        self.store = store
        self.run_dir = run_dir
        self.filename = filename
        self.saved: list[NewBestModelNotification] = []

    def handle(self, notification: Notification, pool: WatcherPool) -> None:
        """Remember the server's store and run directory; copy every new best model."""
        if isinstance(notification, InitializationNotification):
            self.store = self.store or notification.server.store
            self.run_dir = self.run_dir or notification.server.run_dir
            return
        assert isinstance(notification, NewBestModelNotification)
        if self.store is None or self.run_dir is None:
            logger.warning("best model of round %s not saved: no store or run directory", notification.round)
            return
        self.store.copy_to(notification.model.id, self.run_dir / self.filename)
        note = {"round": notification.round, "metric": notification.metric, "value": notification.value}
        note["model"] = notification.model.id
        (self.run_dir / (self.filename + ".json")).write_text(json.dumps(note), encoding="utf-8")
        self.saved.append(notification)


class LoggingWatcher(Watcher):
    """Logs what matters for following a run: clients coming and going, results, rounds, best models.

    Args:
        logger_name: Name of the logger to write to.
        level: Level of the routine messages (failures are logged as warnings).
        client_level: Level of each client's successful command (one line per client and round: DEBUG by
            default, so a run with hundreds of clients logs a few lines per round, not hundreds).
    """

    notification_types: ClassVar = (
        TopologyChangeNotification,
        CommandFinishedNotification,
        RoundMetricsNotification,
        AggregationCompletedNotification,
        NewBestModelNotification,
        ParametersNotification,
        RunFinishedNotification,
    )

    def __init__(
        self, logger_name: str = "theoden_server.run", *, level: int = logging.INFO, client_level: int = logging.DEBUG
    ) -> None:
        self.log = logging.getLogger(logger_name)
        self.level = level
        self.client_level = client_level

    def handle(self, notification: Notification, pool: WatcherPool) -> None:
        """Write one log line for the notification."""
        n = notification
        if isinstance(n, TopologyChangeNotification):
            self.log.log(self.level, "client %s %s (%d online)", n.client, n.change, len(n.online_clients))
        elif isinstance(n, CommandFinishedNotification):
            if n.error:
                self.log.warning("client %s failed %s: %s", n.client, n.distribution or n.command_uuid, n.error)
            else:
                self.log.log(self.client_level, "client %s finished %s", n.client, n.distribution or n.command_uuid)
        elif isinstance(n, RoundMetricsNotification):
            shown = ", ".join(f"{k}={v:.4g}" for k, v in n.metrics.items())
            self.log.log(self.level, "%s %s: %s (%d clients)", n.phase, n.round, shown, n.num_clients)
        elif isinstance(n, AggregationCompletedNotification):
            self.log.log(
                self.level,
                "round %s aggregated by %s from %d results %s",
                n.round,
                n.aggregator,
                n.num_results,
                n.message,
            )
        elif isinstance(n, NewBestModelNotification):
            self.log.log(self.level, "new best model in round %s: %s=%.4g", n.round, n.metric, n.value)
        elif isinstance(n, ParametersNotification):
            self.log.log(self.level, "global model is now %s (%s)", n.model.id[:12], n.source)
        elif isinstance(n, RunFinishedNotification):
            if n.failed:
                self.log.error("run failed: %s", n.failed)
            else:
                self.log.log(self.level, "run finished")
