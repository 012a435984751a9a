"""Partitioning schemes as pure functions: (labels, spec) → one index array per part.

Every built-in is seeded by ``spec.seed`` and returns disjoint parts. Register a function for your
own `theoden_protocol.PartitionSpec` subclass with `register_partitioner`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
from theoden_protocol import (
    BalancedPartition,
    DirichletPartition,
    IndexPartition,
    PartitionSpec,
    PercentagePartition,
)

from theoden_client.errors import RegistryError

__all__ = [
    "PARTITIONERS",
    "Partitioner",
    "balanced_partition",
    "dirichlet_partition",
    "index_partition",
    "local_splits",
    "partition",
    "percentage_partition",
    "register_partitioner",
]

#: ``fn(labels, spec) -> parts``; ``labels`` has one entry per sample.
Partitioner = Callable[[np.ndarray, Any], list[np.ndarray]]
P = TypeVar("P", bound=Partitioner)

#: Partition spec type → function.
PARTITIONERS: dict[type[PartitionSpec], Partitioner] = {}

#: How often `dirichlet_partition` redraws before giving up on ``min_samples``.
MAX_DIRICHLET_DRAWS = 1000


def register_partitioner(spec_type: type[PartitionSpec]) -> Callable[[P], P]:
    """Decorator: use ``fn(labels, spec) -> list[np.ndarray]`` for specs of ``spec_type``."""

    def add(fn: P) -> P:
        PARTITIONERS[spec_type] = fn
        return fn

    return add


def partition(labels: np.ndarray, spec: PartitionSpec) -> list[np.ndarray]:
    """Split sample indices ``0..len(labels)-1`` into parts as ``spec`` says.

    Raises:
        RegistryError: No partitioner is registered for ``type(spec)``.
    """
    fn = PARTITIONERS.get(type(spec))
    if fn is None:
        known = ", ".join(sorted(str(t.__struct_config__.tag) for t in PARTITIONERS))
        raise RegistryError(
            f"no partitioner for {type(spec).__name__} ({spec.__struct_config__.tag!r}); this client knows: {known}"
        )
    return fn(np.asarray(labels), spec)


@register_partitioner(IndexPartition)
def index_partition(labels: np.ndarray, spec: IndexPartition) -> list[np.ndarray]:
    """Contiguous ranges of (nearly) equal size in the data set's own order."""
    return [part.astype(np.int64) for part in np.array_split(np.arange(len(labels)), spec.num_parts)]


@register_partitioner(BalancedPartition)
def balanced_partition(labels: np.ndarray, spec: BalancedPartition) -> list[np.ndarray]:
    """Equal-sized parts (±1) of a seeded shuffle; with ``stratify`` each part keeps the label mix."""
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(labels))
    if spec.stratify:
        # Group the shuffled indices by label, then deal them out like cards: sizes differ by at
        # most one and every part gets each label's share (±1).
        order = order[np.argsort(labels[order], kind="stable")]
        return [np.sort(order[i :: spec.num_parts]).astype(np.int64) for i in range(spec.num_parts)]
    return [np.sort(part).astype(np.int64) for part in np.array_split(order, spec.num_parts)]


@register_partitioner(PercentagePartition)
def percentage_partition(labels: np.ndarray, spec: PercentagePartition) -> list[np.ndarray]:
    """Parts of ``floor(fraction * N)`` samples of a seeded shuffle; samples beyond the fractions stay unused."""
    rng = np.random.default_rng(spec.seed)
    order = rng.permutation(len(labels))
    sizes = [int(np.floor(f * len(labels) + 1e-9)) for f in spec.fractions]
    bounds = np.cumsum([0, *sizes])
    return [np.sort(order[bounds[i] : bounds[i + 1]]).astype(np.int64) for i in range(len(sizes))]


@register_partitioner(DirichletPartition)
def dirichlet_partition(labels: np.ndarray, spec: DirichletPartition) -> list[np.ndarray]:
    """Label-skewed parts: each class is spread over the parts by a seeded Dirichlet(``alpha``) draw.

    The parts are disjoint and cover every sample. Draws are repeated until every part has at
    least ``min_samples`` samples.

    Raises:
        ValueError: ``min_samples`` cannot be met (too few samples, or no success in
            `MAX_DIRICHLET_DRAWS` draws).
    """
    n, k = len(labels), spec.num_parts
    if spec.min_samples * k > n:
        raise ValueError(f"cannot give {k} parts at least {spec.min_samples} samples each from {n} samples")
    rng = np.random.default_rng(spec.seed)
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    for _ in range(MAX_DIRICHLET_DRAWS):
        parts: list[list[np.ndarray]] = [[] for _ in range(k)]
        for idx in by_class:
            shares = rng.dirichlet(np.full(k, spec.alpha))
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
            for part, chunk in zip(parts, np.split(idx, cuts), strict=True):
                part.append(chunk)
        result = [np.sort(np.concatenate(p)).astype(np.int64) for p in parts]
        if min(len(p) for p in result) >= spec.min_samples:
            return result
    raise ValueError(
        f"no Dirichlet(alpha={spec.alpha}) draw gave each of {k} parts at least {spec.min_samples} samples "
        f"in {MAX_DIRICHLET_DRAWS} tries; raise alpha or lower min_samples"
    )


def local_splits(n: int, fractions: dict[str, float], seed: int) -> dict[str, np.ndarray]:
    """Split ``n`` samples into named, disjoint splits of a seeded shuffle.

    Sizes are ``floor(fraction * n)``; when the fractions add up to 1 the samples lost to
    rounding go to the splits in order, so every sample is used.
    """
    order = np.random.default_rng(seed).permutation(n)
    sizes = {name: int(np.floor(f * n + 1e-9)) for name, f in fractions.items()}
    if abs(sum(fractions.values()) - 1.0) <= 1e-9:
        names = list(sizes)
        for i in range(n - sum(sizes.values())):
            sizes[names[i % len(names)]] += 1
    out: dict[str, np.ndarray] = {}
    start = 0
    for name, size in sizes.items():
        out[name] = np.sort(order[start : start + size]).astype(np.int64)
        start += size
    return out
