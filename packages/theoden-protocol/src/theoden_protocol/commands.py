"""Commands: what the server asks a client to do, as a tagged union on ``type``.

Three kinds: *resource* commands create or change what a client holds between commands (its
data set, model, optimizer, ...), *action* commands use those resources (train, validate, send
the model), and *meta* commands combine other commands. Every command carries a ``uuid`` that
its status updates refer to; the children of a meta command have their own.

User commands: subclass `Command` with an explicit tag and decorate it with `register`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import msgspec

from theoden_protocol._base import (
    WireStruct,
    _declare_family,
    _register_builtin,
    coerce_member,
    coerce_members,
    new_uuid,
    set_field,
)
from theoden_protocol._types import Name, Uuid
from theoden_protocol.blobs import BlobRef
from theoden_protocol.specs import (
    AugmentationSpec,
    DatasetSpec,
    LossSpec,
    MetricSpec,
    ModelSpec,
    OptimizerSpec,
    PartitionSpec,
    SchedulerSpec,
)

__all__ = [
    "ClearResources",
    "ClientCondition",
    "Command",
    "ComputeClientScore",
    "Conditional",
    "Exit",
    "HasResource",
    "InitModel",
    "InspectLabelDistribution",
    "LoadDataset",
    "LoadWeights",
    "PrintResourceKeys",
    "Repeat",
    "SendModel",
    "Sequential",
    "SetDataloader",
    "SetLocalPartition",
    "SetLosses",
    "SetOptimizer",
    "SetPartition",
    "SetScheduler",
    "Train",
    "Validate",
    "iter_commands",
]

#: Most children a meta command may hold; protects receivers from unbounded messages.
MAX_CHILDREN = 1024

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
Split = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-.]+$")]


class Command(WireStruct, tag_field="type", frozen=True):
    """Base of every command; ``uuid`` identifies it in status updates."""

    uuid: Uuid = msgspec.field(default_factory=new_uuid)


class ClientCondition(WireStruct, tag_field="type", frozen=True):
    """Base of conditions a client evaluates on itself (for `Conditional`)."""


class HasResource(ClientCondition, tag="has_resource", kw_only=True, frozen=True):
    """True when the client holds a resource under ``key`` (false when ``negate``)."""

    key: Name
    negate: bool = False


# -- resource commands ---------------------------------------------------------------------------


class LoadDataset(Command, tag="load_dataset", kw_only=True, frozen=True):
    """Load a data set from the client's own data root and hold it under ``key``."""

    dataset: DatasetSpec
    key: Name = "dataset"


class SetPartition(Command, tag="set_partition", kw_only=True, frozen=True):
    """Keep only part ``part`` of the data set under ``source`` after splitting it by ``partition``.

    The server customises ``part`` per client, so each client takes its own share; the result
    replaces ``key`` (by default the data set itself).
    """

    if TYPE_CHECKING:
        partition: PartitionSpec
    else:
        partition: Any
    part: Annotated[int, msgspec.Meta(ge=0)] = 0
    source: Name = "dataset"
    key: Name = "dataset"

    def __post_init__(self) -> None:
        """Decode the partition against every registered partition scheme."""
        set_field(self, "partition", coerce_member(self.partition, PartitionSpec, "partition"))


class SetLocalPartition(Command, tag="set_local_partition", kw_only=True, frozen=True):
    """Split the client's data set into named splits, e.g. ``{"train": 0.8, "val": 0.2}``.

    Each split is held under ``"<source>:<split>"``; the split is seeded and so repeatable.
    """

    splits: Annotated[
        dict[Split, Annotated[float, msgspec.Meta(gt=0, le=1)]], msgspec.Meta(min_length=1, max_length=64)
    ]
    seed: int = 0
    source: Name = "dataset"

    def __post_init__(self) -> None:
        """Refuse splits that add up to more than the whole data set."""
        total = sum(self.splits.values())
        if total > 1.0 + 1e-9:
            raise ValueError(f"local split fractions sum to {total:.6g}, more than 1")


class InitModel(Command, tag="init_model", kw_only=True, frozen=True):
    """Build a model from the client's model registry and hold it under ``key``."""

    model: ModelSpec
    key: Name = "model"


class SetOptimizer(Command, tag="set_optimizer", kw_only=True, frozen=True):
    """Create an optimizer over the parameters of the model held under ``model_key``."""

    optimizer: OptimizerSpec
    model_key: Name = "model"
    key: Name = "optimizer"


class SetLosses(Command, tag="set_losses", kw_only=True, frozen=True):
    """Set the training losses (summed by weight) and the validation metrics.

    ``choosing_metric`` names the metric that decides which model is best (e.g. ``accuracy``);
    ``higher_is_better`` says in which direction.
    """

    losses: Annotated[list[LossSpec], msgspec.Meta(min_length=1, max_length=64)]
    metrics: Annotated[list[MetricSpec], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)
    choosing_metric: Name | None = None
    higher_is_better: bool = True


class SetScheduler(Command, tag="set_scheduler", kw_only=True, frozen=True):
    """Attach a learning-rate scheduler to the optimizer held under ``optimizer_key``."""

    scheduler: SchedulerSpec
    optimizer_key: Name = "optimizer"
    key: Name = "scheduler"


class SetDataloader(Command, tag="set_dataloader", kw_only=True, frozen=True):
    """Configure how the split ``split`` is batched (and augmented) for training or validation."""

    split: Split = "train"
    batch_size: PositiveInt = 32
    shuffle: bool = True
    drop_last: bool = False
    num_workers: Annotated[int, msgspec.Meta(ge=0, le=64)] = 0
    augmentations: Annotated[list[AugmentationSpec], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)


class LoadWeights(Command, tag="load_weights", kw_only=True, frozen=True):
    """Download the safetensors blob ``blob``, verify it, and load it into the model (strictly)."""

    blob: BlobRef
    model_key: Name = "model"
    strict: bool = True


class ClearResources(Command, tag="clear_resources", kw_only=True, frozen=True):
    """Drop the named resources, or every resource when ``keys`` is ``None``."""

    keys: Annotated[list[Name], msgspec.Meta(max_length=1024)] | None = None


class PrintResourceKeys(Command, tag="print_resource_keys", kw_only=True, frozen=True):
    """Report (and log) the keys and types of the resources the client holds."""


# -- action commands -----------------------------------------------------------------------------


class Train(Command, tag="train", kw_only=True, frozen=True):
    """Train the model for exactly one of ``steps`` optimizer steps or ``epochs`` passes over ``split``.

    ``steps=0`` is allowed (no training; useful to measure the framework's own overhead).
    ``round`` is the communication round this training belongs to, for logs and metrics.
    """

    steps: Annotated[int, msgspec.Meta(ge=0)] | None = None
    epochs: Annotated[int, msgspec.Meta(ge=0)] | None = None
    split: Split = "train"
    batch_size: PositiveInt | None = None
    model_key: Name = "model"
    optimizer_key: Name = "optimizer"
    round: Annotated[int, msgspec.Meta(ge=0)] | None = None

    def __post_init__(self) -> None:
        """Require exactly one of ``steps`` and ``epochs``."""
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("train needs exactly one of `steps` or `epochs`")


class Validate(Command, tag="validate", kw_only=True, frozen=True):
    """Compute the losses and metrics of the model on ``split``; metrics come back as ``<split>/<name>``."""

    split: Split = "val"
    batch_size: PositiveInt | None = None
    model_key: Name = "model"
    round: Annotated[int, msgspec.Meta(ge=0)] | None = None


class SendModel(Command, tag="send_model", kw_only=True, frozen=True):
    """Upload the model's weights as a safetensors blob and report its reference and sample count.

    ``num_samples`` in the response is the size of ``sample_split`` (the weight in FedAvg).
    """

    model_key: Name = "model"
    name: Name = "model"
    sample_split: Split = "train"


class InspectLabelDistribution(Command, tag="inspect_label_distribution", kw_only=True, frozen=True):
    """Report how many samples of each label ``split`` holds (counts only, never the data)."""

    split: Split = "train"


class ComputeClientScore(Command, tag="compute_client_score", kw_only=True, frozen=True):
    """Report one number that ranks this client, the ``metric`` of the model on ``split``."""

    split: Split = "val"
    metric: Name = "accuracy"


# -- meta commands -------------------------------------------------------------------------------


class Sequential(Command, tag="sequential", kw_only=True, frozen=True):
    """Run ``commands`` one after another; the first failure stops the sequence and fails it."""

    if TYPE_CHECKING:
        commands: list[Command]
    else:
        commands: Annotated[list[Any], msgspec.Meta(max_length=MAX_CHILDREN, description="Registered commands.")]

    def __post_init__(self) -> None:
        """Decode the children against every registered command type."""
        set_field(self, "commands", coerce_members(self.commands, Command, "commands"))


class Conditional(Command, tag="conditional", kw_only=True, frozen=True):
    """Run ``then`` when the client-side ``condition`` holds, else ``otherwise`` (if given)."""

    if TYPE_CHECKING:
        condition: ClientCondition
        then: Command
        otherwise: Command | None
    else:
        condition: Any
        then: Any
        otherwise: Any = None

    def __post_init__(self) -> None:
        """Decode the condition and both branches against the registered types."""
        set_field(self, "condition", coerce_member(self.condition, ClientCondition, "condition"))
        set_field(self, "then", coerce_member(self.then, Command, "then"))
        if self.otherwise is not None:
            set_field(self, "otherwise", coerce_member(self.otherwise, Command, "otherwise"))


class Repeat(Command, tag="repeat", kw_only=True, frozen=True):
    """Run ``command`` ``times`` times in a row."""

    times: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)]
    if TYPE_CHECKING:
        command: Command
    else:
        command: Any

    def __post_init__(self) -> None:
        """Decode the repeated command against every registered command type."""
        set_field(self, "command", coerce_member(self.command, Command, "command"))


class Exit(Command, tag="exit", kw_only=True, frozen=True):
    """Tell the client the run is over: it logs ``reason`` and exits cleanly."""

    reason: Annotated[str, msgspec.Meta(max_length=4096)] = ""


def iter_commands(command: Command) -> list[Command]:
    """Return ``command`` and every command nested in it, depth first."""
    out: list[Command] = [command]
    if isinstance(command, Sequential):
        for child in command.commands:
            out.extend(iter_commands(child))
    elif isinstance(command, Conditional):
        out.extend(iter_commands(command.then))
        if command.otherwise is not None:
            out.extend(iter_commands(command.otherwise))
    elif isinstance(command, Repeat):
        out.extend(iter_commands(command.command))
    return out


_declare_family("command", Command)
_declare_family("client condition", ClientCondition)
_register_builtin([HasResource])
_register_builtin(
    [
        LoadDataset,
        SetPartition,
        SetLocalPartition,
        InitModel,
        SetOptimizer,
        SetLosses,
        SetScheduler,
        SetDataloader,
        LoadWeights,
        ClearResources,
        PrintResourceKeys,
        Train,
        Validate,
        SendModel,
        InspectLabelDistribution,
        ComputeClientScore,
        Sequential,
        Conditional,
        Repeat,
        Exit,
    ]
)
