"""Train round by round and save a checkpoint after each; resume from one with ``EXAMPLE_RESUME=path``.

    theoden-server run examples/05_new_action/plan.py --users users.toml
    EXAMPLE_RESUME=runs/new-action/checkpoints/round-002.safetensors \\
        theoden-server run examples/05_new_action/plan.py --users users.toml

Instead of `MultiRoundTraining`, the plan lists its rounds itself (`TrainingRound` is what
`MultiRoundTraining` unpacks into), so an action can follow each of them.
"""

from __future__ import annotations

import os

from checkpoint import SaveCheckpoint
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
    ExitRun,
    FedAvg,
    InitGlobalModelFromClient,
    Instruction,
    LoadGlobalModel,
    RequireNumberOfClients,
    TrainingRound,
    ValidationRound,
    replace_nested,
)

run_name = "new-action"
N_CLIENTS = int(os.environ.get("EXAMPLE_CLIENTS", "2"))
N_ROUNDS = int(os.environ.get("EXAMPLE_ROUNDS", "3"))
RESUME = os.environ.get("EXAMPLE_RESUME")

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

aggregator = FedAvg()  # one aggregator for the whole run (stateful strategies keep their state across rounds)
instructions: list[Instruction] = [
    RequireNumberOfClients(N_CLIENTS),
    ClosedDistribution(setup, customize=lambda client, i, cmd: replace_nested(cmd, SetPartition, part=i), name="setup"),
    LoadGlobalModel(RESUME) if RESUME else InitGlobalModelFromClient(),
]
for r in range(N_ROUNDS):
    instructions += [
        TrainingRound(r, aggregator=aggregator, epochs=1, batch_size=32),
        SaveCheckpoint(f"round-{r:03d}", round=r),
    ]
instructions += [ValidationRound(N_ROUNDS), ExitRun(f"trained {N_ROUNDS} rounds")]
