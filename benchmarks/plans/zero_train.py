"""Benchmark plan: N clients, an MLP of a chosen size, zero training steps, FedAvg, authentication on.

Configured through environment variables (the benchmark runner sets them):
``BENCH_CLIENTS`` (3), ``BENCH_ROUNDS`` (20), ``BENCH_IN`` (16), ``BENCH_HIDDEN`` (13797 -> ~1 MB float32),
``BENCH_TIMES`` (JSON-lines file where the `RoundTimer` watcher writes one line per completed round).
"""

import json
import os
import time

from theoden_protocol import (
    DatasetSpec,
    InitModel,
    LoadDataset,
    LossSpec,
    ModelSpec,
    OptimizerSpec,
    Sequential,
    SetLocalPartition,
    SetLosses,
    SetOptimizer,
)
from theoden_server import (
    ClosedDistribution,
    FedAvg,
    InitGlobalModelFromClient,
    MultiRoundTraining,
    RequireNumberOfClients,
)
from theoden_server.watchers.base import (
    AggregationCompletedNotification,
    RoundCompletedNotification,
    StatusUpdateNotification,
    Watcher,
)

N_CLIENTS = int(os.environ.get("BENCH_CLIENTS", "3"))
N_ROUNDS = int(os.environ.get("BENCH_ROUNDS", "20"))
IN_FEATURES = int(os.environ.get("BENCH_IN", "16"))
HIDDEN = int(os.environ.get("BENCH_HIDDEN", "13797"))
TIMES = os.environ.get("BENCH_TIMES")

if os.environ.get("BENCH_SERVER_TRACE"):  # timeline.py: time the server's steps of each round
    import server_trace  # noqa: F401

run_name = "bench-zero-train"


class RoundTimer(Watcher):
    """Append one JSON line per round (completion time) and per aggregation to ``BENCH_TIMES``."""

    notification_types = (RoundCompletedNotification, AggregationCompletedNotification, StatusUpdateNotification)

    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115 - closed in close()

    def handle(self, notification, pool) -> None:  # type: ignore[no-untyped-def]
        if isinstance(notification, RoundCompletedNotification):
            record = {"event": "round", "round": notification.round, "phase": notification.phase}
        elif isinstance(notification, AggregationCompletedNotification):
            record = {"event": "aggregated", "round": notification.round, "n": notification.num_results}
        else:
            record = {"event": "status", "client": notification.client, "status": notification.update.status.value}
        record["t"] = notification.time
        record["mono"] = time.monotonic()
        self._file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        self._file.close()


setup = Sequential(
    commands=[
        LoadDataset(dataset=DatasetSpec(name="synthetic", kwargs={"n_samples": 64, "n_features": IN_FEATURES})),
        SetLocalPartition(splits={"train": 1.0}, seed=1),
        InitModel(
            model=ModelSpec(name="mlp", kwargs={"in_features": IN_FEATURES, "hidden": [HIDDEN], "num_classes": 2})
        ),
        SetOptimizer(optimizer=OptimizerSpec(name="sgd", kwargs={"lr": 0.01})),
        SetLosses(losses=[LossSpec(name="cross_entropy")]),
    ]
)

instructions = [
    RequireNumberOfClients(N_CLIENTS),
    ClosedDistribution(setup, name="setup"),
    InitGlobalModelFromClient(seed=0),
    MultiRoundTraining(n_rounds=N_ROUNDS, steps=0, aggregator=FedAvg(), validate=False, final_validation=False),
]

watchers = [RoundTimer(TIMES)] if TIMES else []
