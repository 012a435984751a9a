"""The demo's training plan: three sites train an MLP on scikit-learn's digits with FedAvg.

Used by ``hatch run demo`` (scripts/demo.py); also a plan you can run yourself with
``theoden-server run scripts/demo_plan.py --users users.toml``.
"""

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
    ClosedDistribution,
    FedAvg,
    InitGlobalModelFromClient,
    MultiRoundTraining,
    RequireNumberOfClients,
)
from theoden_server.operations.distributions import replace_nested

run_name = "digits-demo"

N_CLIENTS = 3
N_ROUNDS = 5
#: 80% of the digits go to the sites (an equal share each); the other 20% never leave the demo: held out.
PARTITION = PercentagePartition(fractions=[0.8 / N_CLIENTS] * N_CLIENTS, seed=7)
MODEL = ModelSpec(name="mlp", kwargs={"in_features": 64, "hidden": [128, 64], "num_classes": 10})

setup = Sequential(
    commands=[
        LoadDataset(dataset=DatasetSpec(name="digits")),
        SetPartition(partition=PARTITION),
        SetLocalPartition(splits={"train": 0.8, "val": 0.2}, seed=1),
        InitModel(model=MODEL),
        SetOptimizer(optimizer=OptimizerSpec(name="adam", kwargs={"lr": 0.003})),
        SetLosses(
            losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name="accuracy")], choosing_metric="accuracy"
        ),
    ]
)


def own_part(client: str, index: int, command: Command) -> Command:
    """Give each site its own share of the data."""
    return replace_nested(command, SetPartition, part=index)


instructions = [
    RequireNumberOfClients(N_CLIENTS),
    ClosedDistribution(setup, customize=own_part, name="setup"),
    InitGlobalModelFromClient(seed=0),
    MultiRoundTraining(n_rounds=N_ROUNDS, epochs=2, batch_size=32, aggregator=FedAvg()),
]
