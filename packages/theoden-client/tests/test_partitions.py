from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from theoden_client.partitions import local_splits, partition
from theoden_protocol import BalancedPartition, DirichletPartition, IndexPartition, PercentagePartition


def assert_disjoint(parts: list[np.ndarray]) -> np.ndarray:
    joined = np.concatenate(parts)
    assert len(joined) == len(np.unique(joined)), "parts overlap"
    return joined


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(20, 300),
    num_classes=st.integers(1, 6),
    num_parts=st.integers(1, 6),
    alpha=st.floats(0.05, 10.0),
    seed=st.integers(0, 2**16),
)
def test_dirichlet_is_seeded_disjoint_and_covers_every_sample(
    n: int, num_classes: int, num_parts: int, alpha: float, seed: int
) -> None:
    labels = np.random.default_rng(seed).integers(0, num_classes, size=n)
    spec = DirichletPartition(num_parts=num_parts, alpha=alpha, seed=seed, min_samples=1)
    parts = partition(labels, spec)
    assert len(parts) == num_parts
    assert np.array_equal(np.sort(assert_disjoint(parts)), np.arange(n))
    assert min(len(p) for p in parts) >= 1
    again = partition(labels, spec)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_dirichlet_skews_labels_and_respects_min_samples() -> None:
    labels = np.repeat(np.arange(10), 100)
    parts = partition(labels, DirichletPartition(num_parts=5, alpha=0.1, seed=0, min_samples=50))
    assert min(len(p) for p in parts) >= 50
    # with a small alpha at least one part is dominated by few labels
    shares = [np.bincount(labels[p], minlength=10).max() / len(p) for p in parts]
    assert max(shares) > 0.4


def test_dirichlet_refuses_impossible_min_samples() -> None:
    with pytest.raises(ValueError, match="at least 30 samples"):
        partition(np.zeros(50, dtype=int), DirichletPartition(num_parts=2, alpha=1.0, min_samples=30))


def test_index_partition_is_contiguous() -> None:
    parts = partition(np.zeros(10), IndexPartition(num_parts=3))
    assert [p.tolist() for p in parts] == [[0, 1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_balanced_partition_stratified_keeps_the_label_mix() -> None:
    labels = np.array([0] * 60 + [1] * 30 + [2] * 9)
    parts = partition(labels, BalancedPartition(num_parts=3, stratify=True, seed=1))
    assert np.array_equal(np.sort(assert_disjoint(parts)), np.arange(len(labels)))
    assert sorted(len(p) for p in parts) == [33, 33, 33]
    for p in parts:
        assert np.bincount(labels[p], minlength=3).tolist() == [20, 10, 3]
    plain = partition(labels, BalancedPartition(num_parts=4, seed=1))
    assert sorted(len(p) for p in plain) == [24, 25, 25, 25]


def test_percentage_partition_sizes() -> None:
    parts = partition(np.zeros(100), PercentagePartition(fractions=[0.5, 0.25, 0.1], seed=3))
    assert [len(p) for p in parts] == [50, 25, 10]
    assert_disjoint(parts)


def test_local_splits_use_every_sample_when_fractions_sum_to_one() -> None:
    splits = local_splits(101, {"train": 0.8, "val": 0.2}, seed=0)
    assert len(splits["train"]) + len(splits["val"]) == 101
    assert_disjoint(list(splits.values()))
    assert np.array_equal(local_splits(101, {"train": 0.8, "val": 0.2}, seed=0)["val"], splits["val"])
    partial = local_splits(100, {"train": 0.5}, seed=0)
    assert len(partial["train"]) == 50
