"""Aggregators: turn the clients' uploaded weights into the next global model."""

from __future__ import annotations

from theoden_server.aggregation.base import AggregationContext, AggregationError, Aggregator, ClientResult
from theoden_server.aggregation.fedavg import FedAvg
from theoden_server.aggregation.fedmedian import FedMedian
from theoden_server.aggregation.fedopt import FedAdagrad, FedAdam, FedOpt, FedYogi
from theoden_server.aggregation.trimmed_mean import TrimmedMean

__all__ = [
    "AggregationContext",
    "AggregationError",
    "Aggregator",
    "ClientResult",
    "FedAdagrad",
    "FedAdam",
    "FedAvg",
    "FedMedian",
    "FedOpt",
    "FedYogi",
    "TrimmedMean",
]
