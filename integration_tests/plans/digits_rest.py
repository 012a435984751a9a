"""Plan for the REST integration tests: digits across the clients, an MLP, multi-round FedAvg.

THEODEN_TEST_CLIENTS, THEODEN_TEST_ROUNDS and THEODEN_TEST_STEPS (env) size the run.
"""

import os

from theoden_protocol import (
    Command,
    DatasetSpec,
    InitModel,
    LoadDataset,
    LossSpec,
    MetricSpec,
    ModelSpec,
    OptimizerSpec,
    PercentagePartition,
    Sequential,
    SetLocalPartition,
    SetLosses,
    SetOptimizer,
    SetPartition,
)
from theoden_server import (
    FedAvg,
    InitGlobalModelFromClient,
    MultiRoundTraining,
    OpenDistribution,
    RequireNumberOfClients,
)
from theoden_server.operations.distributions import replace_nested

N = int(os.environ.get("THEODEN_TEST_CLIENTS", "3"))
ROUNDS = int(os.environ.get("THEODEN_TEST_ROUNDS", "3"))
STEPS = int(os.environ.get("THEODEN_TEST_STEPS", "0"))
CLIENTS = [f"site-{i + 1}" for i in range(N)]
PARTITION = PercentagePartition(fractions=[0.8 / N] * N, seed=7)
MODEL = ModelSpec(name="mlp", kwargs={"in_features": 64, "hidden": [64], "num_classes": 10})
LOCAL = SetLocalPartition(splits={"train": 0.8, "val": 0.2}, seed=1)

run_name = "rest-it"

setup = Sequential(
    commands=[
        LoadDataset(dataset=DatasetSpec(name="digits")),
        SetPartition(partition=PARTITION),
        LOCAL,
        InitModel(model=MODEL),
        SetOptimizer(optimizer=OptimizerSpec(name="adam", kwargs={"lr": 0.003})),
        SetLosses(losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name="accuracy")]),
    ]
)


def own_part(client: str, index: int, command: Command) -> Command:
    """Each site takes the share named by its number (site-1 -> part 0), also when it rejoins."""
    return replace_nested(command, SetPartition, part=CLIENTS.index(client))


# an open distribution: every client that joins - or rejoins after a crash - is set up first
open_distribution = OpenDistribution([setup], customize=own_part)
instructions = [
    RequireNumberOfClients(N),
    InitGlobalModelFromClient(seed=0),
    MultiRoundTraining(
        n_rounds=ROUNDS,
        **({"steps": STEPS} if STEPS else {"epochs": 1}),
        batch_size=32,
        aggregator=FedAvg(),
    ),
]
