"""Watchers: observers of what happens on the server (metrics, best models, logging, your own)."""

from __future__ import annotations

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
    ServerRequestNotification,
    StatusUpdateNotification,
    TopologyChangeNotification,
    Watcher,
)
from theoden_server.watchers.builtin import (
    BestModelDetector,
    BestModelSaver,
    LoggingWatcher,
    MetricCollector,
    weighted_metrics,
)
from theoden_server.watchers.pool import WatcherPool

__all__ = [
    "AggregationCompletedNotification",
    "BestModelDetector",
    "BestModelSaver",
    "CommandFinishedNotification",
    "InitializationNotification",
    "LoggingWatcher",
    "MetricCollector",
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
    "WatcherPool",
    "weighted_metrics",
]
