"""Specs: what a command asks a client to create, as a registered name plus typed keyword arguments.

A spec never carries code. The client looks ``name`` up in its own registry (models, optimizers,
datasets, ...) and calls the factory with ``kwargs``; an unknown name fails the command with a
message listing the names the client knows.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from theoden_protocol._base import WireStruct, _declare_family, _register_builtin
from theoden_protocol._types import Kwargs, Name

__all__ = [
    "AugmentationSpec",
    "BalancedPartition",
    "DatasetSpec",
    "DirichletPartition",
    "IndexPartition",
    "LossSpec",
    "MetricSpec",
    "ModelSpec",
    "OptimizerSpec",
    "PartitionSpec",
    "PercentagePartition",
    "SchedulerSpec",
    "Spec",
]


class Spec(WireStruct, frozen=True):
    """A registered factory ``name`` and the keyword arguments to call it with."""

    name: Name
    kwargs: Kwargs = msgspec.field(default_factory=dict)


class ModelSpec(Spec, frozen=True):
    """A model from the client's model registry, e.g. ``ModelSpec(name="mlp", kwargs={"hidden": [64]})``."""


class OptimizerSpec(Spec, frozen=True):
    """A torch optimizer by registered name (``sgd``, ``adam``, ``adamw``, ...) and its arguments."""


class SchedulerSpec(Spec, frozen=True):
    """A learning-rate scheduler by registered name (``step``, ``cosine``, ...) and its arguments."""


class LossSpec(Spec, frozen=True):
    """A loss by registered name; ``weight`` scales it when several losses are summed."""

    weight: float = 1.0


class MetricSpec(Spec, frozen=True):
    """A metric by registered name (``accuracy``, ``macro_f1``, ...) computed during validation."""


class DatasetSpec(Spec, frozen=True):
    """A dataset by registered name; paths in ``kwargs`` are relative to the client's own data root."""


class AugmentationSpec(Spec, frozen=True):
    """A data augmentation by registered name applied by a dataloader."""


# -- partitions: how a data set is split into parts, one part per client ------------------------


class PartitionSpec(WireStruct, tag_field="type", frozen=True):
    """Base of the tagged family of partitioning schemes (register your own with `register`)."""

    seed: int = 0


class IndexPartition(PartitionSpec, tag="index", kw_only=True, frozen=True):
    """Contiguous index ranges of (nearly) equal size, in the data set's own order."""

    num_parts: Annotated[int, msgspec.Meta(ge=1, le=100_000)]


class BalancedPartition(PartitionSpec, tag="balanced", kw_only=True, frozen=True):
    """Equal-sized parts after a seeded shuffle; with ``stratify`` every part keeps the label mix."""

    num_parts: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    stratify: bool = False


class PercentagePartition(PartitionSpec, tag="percentage", kw_only=True, frozen=True):
    """Parts whose sizes are the given fractions of the data set (summing to at most 1)."""

    fractions: Annotated[
        list[Annotated[float, msgspec.Meta(gt=0, le=1)]], msgspec.Meta(min_length=1, max_length=100_000)
    ]

    def __post_init__(self) -> None:
        """Refuse fractions that add up to more than the whole data set."""
        if sum(self.fractions) > 1.0 + 1e-9:
            raise ValueError(f"partition fractions sum to {sum(self.fractions):.6g}, more than 1")


class DirichletPartition(PartitionSpec, tag="dirichlet", kw_only=True, frozen=True):
    """Non-IID label skew: each class is spread over parts by a Dirichlet(``alpha``) draw."""

    num_parts: Annotated[int, msgspec.Meta(ge=1, le=100_000)]
    alpha: Annotated[float, msgspec.Meta(gt=0)]
    min_samples: Annotated[int, msgspec.Meta(ge=0)] = 1


_declare_family("partition spec", PartitionSpec)
_register_builtin([IndexPartition, BalancedPartition, PercentagePartition, DirichletPartition])
