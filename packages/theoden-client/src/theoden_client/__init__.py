"""TheODen client: pull commands from a TheODen server, run them on local data with torch, report back."""

from __future__ import annotations

__version__ = "0.1.0"

from theoden_client.allowlist import CommandAllowlist
from theoden_client.client import Client
from theoden_client.data import ArrayDataset, DataRoot, labels_of
from theoden_client.datasets import register_dataset
from theoden_client.errors import (
    AuthenticationError,
    BlobIntegrityError,
    ClientError,
    CommandRefusedError,
    NoExecutorError,
    ResourceNotFoundError,
    ResourceTypeError,
    ServerRejected,
    ServerUnavailable,
    TransportError,
)
from theoden_client.executors import EXECUTORS, ExecutionContext, ExecutorRegistry, default_executors
from theoden_client.losses import Metric, register_loss, register_metric
from theoden_client.models import register_model
from theoden_client.optim import register_optimizer, register_scheduler
from theoden_client.partitions import register_partitioner
from theoden_client.reconnect import Backoff
from theoden_client.resources import ResourceManager
from theoden_client.start import start_client
from theoden_client.transport import RestTransport, Transport

__all__ = [
    "EXECUTORS",
    "ArrayDataset",
    "AuthenticationError",
    "Backoff",
    "BlobIntegrityError",
    "Client",
    "ClientError",
    "CommandAllowlist",
    "CommandRefusedError",
    "DataRoot",
    "ExecutionContext",
    "ExecutorRegistry",
    "Metric",
    "NoExecutorError",
    "ResourceManager",
    "ResourceNotFoundError",
    "ResourceTypeError",
    "RestTransport",
    "ServerRejected",
    "ServerUnavailable",
    "Transport",
    "TransportError",
    "__version__",
    "default_executors",
    "labels_of",
    "register_dataset",
    "register_loss",
    "register_metric",
    "register_model",
    "register_optimizer",
    "register_partitioner",
    "register_scheduler",
    "start_client",
]
