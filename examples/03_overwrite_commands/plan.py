"""An ordinary FedAvg plan; nothing here knows that one site overrides ``train``.

theoden-server run examples/03_overwrite_commands/plan.py --users users.toml
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
    FedAvg,
    InitGlobalModelFromClient,
    MultiRoundTraining,
    RequireNumberOfClients,
    replace_nested,
)

run_name = "overwrite-commands"
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
        # a high learning rate makes large gradients, so the clipping site has something to clip
        SetOptimizer(optimizer=OptimizerSpec(name="sgd", kwargs={"lr": 0.5})),
        SetLosses(losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name="accuracy")]),
    ]
)

instructions = [
    RequireNumberOfClients(N_CLIENTS),
    ClosedDistribution(setup, customize=lambda client, i, cmd: replace_nested(cmd, SetPartition, part=i), name="setup"),
    InitGlobalModelFromClient(),
    MultiRoundTraining(n_rounds=N_ROUNDS, epochs=1, batch_size=32, aggregator=FedAvg()),
]
