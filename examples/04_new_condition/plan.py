"""Train only once two sites with at least 100 samples each are ready, and only on those sites.

    theoden-server run examples/04_new_condition/plan.py --users users.toml

The sites join with very different amounts of data (the open distribution gives the third site
to join 5% of the data set); training starts when the condition holds and leaves small sites out.
Set ``EXAMPLE_HOURS=22:00-06:00`` to hand out commands only at night.
"""

from __future__ import annotations

import os

from conditions import ClientsWithSamples, DuringHours, RequireClientsWithSamples
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
    SetLocalPartition,
    SetLosses,
    SetOptimizer,
    SetPartition,
)
from theoden_server import FedAvg, InitGlobalModelFromClient, MultiRoundTraining, OpenDistribution, replace_nested

run_name = "new-condition"
MIN_SAMPLES = 100
N_ROUNDS = int(os.environ.get("EXAMPLE_ROUNDS", "3"))
start, end = os.environ.get("EXAMPLE_HOURS", "00:00-00:00").split("-")

# every site that joins runs these first: its share of the data (45%, 45%, 5%, ...), its model
shares = PercentagePartition(fractions=[0.45, 0.45, 0.05, 0.05], seed=0)


def share_by_join_order(client: str, index: int, command: Command) -> Command:
    return replace_nested(command, SetPartition, part=index % len(shares.fractions))


open_distribution = OpenDistribution(
    [
        LoadDataset(
            dataset=DatasetSpec(name="synthetic", kwargs={"n_samples": 600, "n_features": 16, "num_classes": 4})
        ),
        SetPartition(partition=shares),  # its response carries the site's sample count
        SetLocalPartition(splits={"train": 0.8, "val": 0.2}),
        InitModel(model=ModelSpec(name="mlp", kwargs={"in_features": 16, "hidden": [32], "num_classes": 4})),
        SetOptimizer(optimizer=OptimizerSpec(name="adam", kwargs={"lr": 0.01})),
        SetLosses(losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name="accuracy")]),
    ],
    customize=share_by_join_order,
)

# "00:00-00:00" is an empty window in DuringHours; treat it as "always"
permanent_conditions = [] if start == end else [DuringHours(start, end)]

enough_data = ClientsWithSamples(MIN_SAMPLES)
instructions = [
    RequireClientsWithSamples(2, min_samples=MIN_SAMPLES),
    InitGlobalModelFromClient(selector=enough_data),
    MultiRoundTraining(n_rounds=N_ROUNDS, epochs=1, batch_size=32, aggregator=FedAvg(), selector=enough_data),
]
