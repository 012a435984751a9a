"""The CIFAR-10 plan: three sites, each with its own share of CIFAR-10, train one model with FedAvg.

Used by ``server.py`` (``build_instructions(...)`` with your options) and runnable on its own with
``theoden-server run examples/01_cifar10_run/plan.py --users users.toml`` (the defaults below).
"""

from __future__ import annotations

from theoden_protocol import (
    BalancedPartition,
    Command,
    DatasetSpec,
    InitModel,
    LoadDataset,
    LossSpec,
    MetricSpec,
    ModelSpec,
    OptimizerSpec,
    Sequential,
    SetDataloader,
    SetLocalPartition,
    SetLosses,
    SetOptimizer,
    SetPartition,
)
from theoden_server import (
    ClosedDistribution,
    FedAvg,
    InitGlobalModelFromClient,
    Instruction,
    MultiRoundTraining,
    RequireNumberOfClients,
    replace_nested,
)

run_name = "cifar10"


def model_spec(model: str = "cnn", width: int | None = None) -> ModelSpec:
    """The client-side model: ``cnn`` (two conv blocks of ``width`` and ``2 * width`` channels) or ``resnet18``."""
    if model == "cnn":
        w = width or 32
        return ModelSpec(name="cnn", kwargs={"in_channels": 3, "num_classes": 10, "channels": [w, 2 * w]})
    if model == "resnet18":
        return ModelSpec(name="resnet18", kwargs={"num_classes": 10, "width": width or 64})
    raise ValueError(f"unknown model {model!r}; choose cnn or resnet18")


def build_instructions(
    *,
    clients: int = 3,
    rounds: int = 10,
    model: str = "cnn",
    width: int | None = None,
    epochs: int | None = 1,
    steps: int | None = None,
    batch_size: int = 32,
    lr: float = 0.01,
) -> list[Instruction]:
    """Return the plan: wait for the sites, set them up, take one site's model, train ``rounds`` rounds."""
    setup = Sequential(
        commands=[
            # each site reads CIFAR-10 from its own data root (<data-root>/cifar-10-batches-py)
            LoadDataset(dataset=DatasetSpec(name="cifar10", kwargs={"path": "cifar-10-batches-py"})),
            # the training set is split into `clients` equal parts; `own_part` gives each site its index
            SetPartition(partition=BalancedPartition(num_parts=clients, seed=42)),
            # each site holds out 20% of its part for validation
            SetLocalPartition(splits={"train": 0.8, "val": 0.2}, seed=1),
            SetDataloader(split="train", batch_size=batch_size, shuffle=True),
            InitModel(model=model_spec(model, width)),
            SetOptimizer(optimizer=OptimizerSpec(name="sgd", kwargs={"lr": lr, "momentum": 0.9})),
            # accuracy decides which global model is the best one
            SetLosses(
                losses=[LossSpec(name="cross_entropy")],
                metrics=[MetricSpec(name="accuracy")],
                choosing_metric="accuracy",
            ),
        ]
    )

    def own_part(client: str, index: int, command: Command) -> Command:
        return replace_nested(command, SetPartition, part=index)

    return [
        RequireNumberOfClients(clients),
        ClosedDistribution(setup, customize=own_part, name="setup"),
        InitGlobalModelFromClient(seed=0),  # one random site's freshly initialised weights start the run
        MultiRoundTraining(
            n_rounds=rounds,
            epochs=epochs if steps is None else None,
            steps=steps,
            batch_size=batch_size,
            aggregator=FedAvg(),
        ),
    ]


instructions = build_instructions()
