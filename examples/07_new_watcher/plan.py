"""A short FedAvg plan (the watcher is added in ``server.py``)."""

from __future__ import annotations

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
    Instruction,
    MultiRoundTraining,
    RequireNumberOfClients,
    replace_nested,
)

run_name = "new-watcher"


def build_instructions(*, clients: int = 2, rounds: int = 3) -> list[Instruction]:
    """Return the plan for ``clients`` sites and ``rounds`` rounds."""
    setup = Sequential(
        commands=[
            LoadDataset(
                dataset=DatasetSpec(name="synthetic", kwargs={"n_samples": 600, "n_features": 16, "num_classes": 4})
            ),
            SetPartition(partition=BalancedPartition(num_parts=clients, seed=0)),
            SetLocalPartition(splits={"train": 0.8, "val": 0.2}),
            InitModel(model=ModelSpec(name="mlp", kwargs={"in_features": 16, "hidden": [32], "num_classes": 4})),
            SetOptimizer(optimizer=OptimizerSpec(name="adam", kwargs={"lr": 0.01})),
            SetLosses(losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name="accuracy")]),
        ]
    )
    return [
        RequireNumberOfClients(clients),
        ClosedDistribution(
            setup, customize=lambda client, i, cmd: replace_nested(cmd, SetPartition, part=i), name="setup"
        ),
        InitGlobalModelFromClient(),
        MultiRoundTraining(n_rounds=rounds, epochs=1, batch_size=32),
    ]


instructions = build_instructions()
