"""A short FedAvg plan; what this tutorial changes is how the server is reached (HTTPS), not the plan.

    theoden-server run examples/09_ssl/plan.py --users users.toml \\
        --ssl-certfile pki/server.pem --ssl-keyfile pki/server-key.pem
"""

from __future__ import annotations

import os

from theoden_protocol import (
    BalancedPartition,
    DatasetSpec,
    InitModel,
    LoadDataset,
    LossSpec,
    MetricSpec,
    ModelSpec,
    OptimizerSpec,
    Sequential,
    SetLocalPartition,
    SetLosses,
    SetOptimizer,
    SetPartition,
)
from theoden_server import (
    ClosedDistribution,
    InitGlobalModelFromClient,
    MultiRoundTraining,
    RequireNumberOfClients,
    replace_nested,
)

run_name = "ssl"
N_CLIENTS = int(os.environ.get("EXAMPLE_CLIENTS", "2"))
N_ROUNDS = int(os.environ.get("EXAMPLE_ROUNDS", "3"))

setup = Sequential(
    commands=[
        LoadDataset(
            dataset=DatasetSpec(name="synthetic", kwargs={"n_samples": 600, "n_features": 16, "num_classes": 4})
        ),
        SetPartition(partition=BalancedPartition(num_parts=N_CLIENTS, seed=0)),
        SetLocalPartition(splits={"train": 0.8, "val": 0.2}),
        InitModel(model=ModelSpec(name="mlp", kwargs={"in_features": 16, "hidden": [32], "num_classes": 4})),
        SetOptimizer(optimizer=OptimizerSpec(name="adam", kwargs={"lr": 0.01})),
        SetLosses(losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name="accuracy")]),
    ]
)

instructions = [
    RequireNumberOfClients(N_CLIENTS),
    ClosedDistribution(setup, customize=lambda client, i, cmd: replace_nested(cmd, SetPartition, part=i), name="setup"),
    InitGlobalModelFromClient(),
    MultiRoundTraining(n_rounds=N_ROUNDS, epochs=1, batch_size=32),
]
