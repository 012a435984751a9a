"""Aggregators and their pure maths, checked against reference formulas."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save
from theoden_server.aggregation import (
    AggregationContext,
    AggregationError,
    ClientResult,
    FedAdagrad,
    FedAdam,
    FedAvg,
    FedMedian,
    FedYogi,
    TrimmedMean,
    _math,
)
from theoden_server.storage import BlobStore
from theoden_server.weights import layout_of_bytes, load_tensors, read_layout, save_tensors


def result(store: BlobStore, name: str, tensors: dict[str, torch.Tensor], num_samples: int | None) -> ClientResult:
    ref = store.put_bytes(save(tensors), owner=name)
    path = store.path(ref.id)
    return ClientResult(client=name, blob=ref, path=path, layout=read_layout(path), num_samples=num_samples)


def held_result(store: BlobStore, name: str, tensors: dict[str, torch.Tensor], num_samples: int | None) -> ClientResult:
    """A result whose upload the store holds in memory (as a small REST or broker upload is)."""
    data = save(tensors)
    with store.writer(owner=name, expected_size=len(data), in_memory=True) as writer:
        writer.write(data)
        ref = writer.commit()
    held = store.held(ref.id)
    assert held is not None
    return ClientResult(
        client=name, blob=ref, layout=layout_of_bytes(held), num_samples=num_samples, data=held, store=store
    )


def run(aggregator, store: BlobStore, clients, global_tensors=None, make_result=result) -> dict[str, torch.Tensor]:
    context = AggregationContext(round=0)
    if global_tensors is not None:
        ref = store.put_bytes(save(global_tensors))
        context = AggregationContext(round=0, global_model=ref, global_path=store.path(ref.id))
    aggregator.start(context)
    results = [make_result(store, f"c{i}", t, n) for i, (t, n) in enumerate(clients)]
    if context.layout is None:
        context.layout = results[0].layout
    for r in results:
        aggregator.add(r)
    out = save_tensors(store, aggregator.aggregate(), layout=context.layout)
    return load_tensors(store.path(out.id))


@pytest.fixture
def clients() -> list[tuple[dict[str, torch.Tensor], int]]:
    g = torch.Generator().manual_seed(7)
    return [
        (
            {
                "w": torch.randn(3, 4, generator=g),
                "h": torch.randn(5, generator=g).half(),
                "steps": torch.tensor([i * 3, 10 - i], dtype=torch.int64),
                "flag": torch.tensor([i % 2 == 0]),
            },
            n,
        )
        for i, n in enumerate([5, 1, 20, 8, 3])
    ]


def test_fedavg_is_the_sample_weighted_mean_and_keeps_dtypes(tmp_path: Path, clients) -> None:
    # Prepare
    store = BlobStore(tmp_path)
    weights = np.array([n for _, n in clients], dtype=np.float64)

    # Execute
    out = run(FedAvg(), store, clients)

    # Assert
    stacked = np.stack([t["w"].numpy().astype(np.float64) for t, _ in clients])
    expected = (stacked * weights[:, None, None]).sum(0) / weights.sum()
    np.testing.assert_allclose(out["w"].numpy(), expected, rtol=1e-6)
    assert out["h"].dtype == torch.float16
    assert out["steps"].tolist() == [12, 10]  # element-wise max, not an average
    assert out["flag"].tolist() == [True]  # booleans from the first client
    assert out["steps"].dtype == torch.int64


def test_fedavg_float32_sums_stay_within_float32_rounding_of_the_exact_mean(tmp_path: Path) -> None:
    # Prepare: 200 clients with sample counts up to 60,000 and values of mixed sign and scale
    g = torch.Generator().manual_seed(3)
    clients = [
        ({"w": torch.randn(4096, generator=g) * 10 ** torch.randint(-3, 3, (4096,), generator=g)}, int(n))
        for n in torch.randint(1, 60_000, (200,), generator=g)
    ]
    weights = np.array([n for _, n in clients], dtype=np.float64)
    stacked = np.stack([t["w"].numpy().astype(np.float64) for t, _ in clients])
    exact = (stacked * weights[:, None]).sum(0) / weights.sum()

    # Execute
    out = run(FedAvg(), BlobStore(tmp_path), clients)["w"].numpy().astype(np.float64)

    # Assert: the error is measured against the size of the terms (cancellation makes some means tiny)
    scale = (np.abs(stacked) * weights[:, None]).sum(0) / weights.sum()
    assert np.max(np.abs(out - exact) / scale) < 1e-5


def test_fedavg_keeps_float64_models_in_float64(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(4)
    clients = [({"w": torch.randn(64, generator=g, dtype=torch.float64) + 1e8}, n) for n in (3, 7, 11)]
    stacked = np.stack([t["w"].numpy() for t, _ in clients])
    weights = np.array([3.0, 7.0, 11.0])
    out = run(FedAvg(), BlobStore(tmp_path), clients)["w"]
    assert out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), (stacked * weights[:, None]).sum(0) / weights.sum(), rtol=1e-15)


def test_fedavg_unweighted_and_missing_counts(tmp_path: Path, clients) -> None:
    store = BlobStore(tmp_path)
    out = run(FedAvg(weighted=False), store, clients)
    expected = np.mean([t["w"].numpy().astype(np.float64) for t, _ in clients], axis=0)
    np.testing.assert_allclose(out["w"].numpy(), expected, rtol=1e-6)
    with pytest.raises(Exception, match="without num_samples"):
        FedAvg().add(result(store, "x", clients[0][0], None))
    empty = FedAvg()
    empty.start(AggregationContext())
    with pytest.raises(AggregationError, match="no client result"):
        empty.aggregate()


def test_fedmedian_and_trimmed_mean_match_numpy(tmp_path: Path, clients) -> None:
    # Prepare
    store = BlobStore(tmp_path)
    stacked = np.stack([t["w"].numpy().astype(np.float64) for t, _ in clients])

    # Execute
    median = run(FedMedian(), store, clients)
    even = run(FedMedian(), store, clients[:4])
    trimmed = run(TrimmedMean(beta=0.2), store, clients)

    # Assert
    np.testing.assert_allclose(median["w"].numpy(), np.median(stacked, axis=0), rtol=1e-6)
    np.testing.assert_allclose(even["w"].numpy(), np.median(stacked[:4], axis=0), rtol=1e-6)
    expected_trim = np.sort(stacked, axis=0)[1:4].mean(axis=0)
    np.testing.assert_allclose(trimmed["w"].numpy(), expected_trim, rtol=1e-6)
    assert median["steps"].tolist() == [12, 10]


def reference_fedopt(variant, x, means, *, eta, b1, b2, tau):
    m = np.zeros_like(x)
    v = np.full_like(x, tau**2)
    for mean in means:
        delta = mean - x
        m = b1 * m + (1 - b1) * delta
        if variant == "adagrad":
            v = v + delta**2
        elif variant == "adam":
            v = b2 * v + (1 - b2) * delta**2
        else:
            v = v - (1 - b2) * delta**2 * np.sign(v - delta**2)
        x = x + eta * m / (np.sqrt(v) + tau)
    return x


@pytest.mark.parametrize(("cls", "variant"), [(FedAdagrad, "adagrad"), (FedAdam, "adam"), (FedYogi, "yogi")])
def test_fedopt_family_matches_reddi_et_al_over_two_rounds(tmp_path: Path, clients, cls, variant) -> None:
    # Prepare
    store = BlobStore(tmp_path)
    aggregator = cls(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-3)
    x = torch.zeros(3, 4, dtype=torch.float64)
    rounds = [clients[:3], clients[2:]]
    means = []

    # Execute
    for round_clients in rounds:
        model = {"w": x.clone(), "h": torch.zeros(5).half(), "steps": torch.zeros(2, dtype=torch.int64)}
        model["flag"] = torch.tensor([False])
        round_clients = [({**t, "w": t["w"].double()}, n) for t, n in round_clients]
        w = np.array([n for _, n in round_clients], dtype=np.float64)
        means.append(sum(wi * t["w"].numpy() for wi, (t, _) in zip(w, round_clients, strict=True)) / w.sum())
        x = run(aggregator, store, round_clients, model)["w"]

    # Assert
    expected = reference_fedopt(variant, np.zeros((3, 4)), means, eta=0.05, b1=0.9, b2=0.99, tau=1e-3)
    np.testing.assert_allclose(x.numpy(), expected, rtol=1e-9, atol=1e-12)
    assert not np.allclose(expected, means[-1])  # the server step differs from plain averaging


def test_fedopt_needs_a_global_model(tmp_path: Path, clients) -> None:
    with pytest.raises(AggregationError, match="needs a global model"):
        run(FedAdam(), BlobStore(tmp_path), clients)


def test_math_helpers() -> None:
    a, b = torch.tensor([1.0, 4.0]), torch.tensor([3.0, 0.0])
    assert _math.weighted_mean([a, b], [1, 3]).tolist() == [2.5, 1.0]
    assert _math.median([a, b, torch.tensor([2.0, 2.0])]).tolist() == [2.0, 2.0]
    assert _math.trimmed_mean([a, b, torch.tensor([100.0, -100.0])], 0.34).tolist() == [3.0, 0.0]
    assert _math.merge_non_float(torch.tensor([1, 5]), torch.tensor([3, 2])).tolist() == [3, 5]
    with pytest.raises(ValueError, match="sum to zero"):
        _math.weighted_mean([a], [0])
    with pytest.raises(ValueError, match="beta"):
        _math.trimmed_mean([a], 0.5)


@pytest.mark.parametrize(
    "make", [FedAvg, lambda: FedAvg(weighted=False), FedMedian, lambda: TrimmedMean(beta=0.2), FedAdam]
)
def test_uploads_held_in_memory_aggregate_exactly_like_uploaded_files(tmp_path: Path, clients, make) -> None:
    global_tensors = {**clients[0][0], "w": clients[0][0]["w"] * 2}
    from_files = run(make(), BlobStore(tmp_path / "files"), clients, global_tensors)
    held_store = BlobStore(tmp_path / "held")
    from_memory = run(make(), held_store, clients, global_tensors, make_result=held_result)

    assert from_memory.keys() == from_files.keys()
    for name in from_files:
        assert torch.equal(from_memory[name], from_files[name]), name
    uploads = [p for p in (tmp_path / "held" / "blobs").rglob("*") if p.is_file() and not p.name.endswith(".json")]
    assert len(uploads) == 2  # the global model and the new one: no upload was written to disk


def test_a_held_results_tensors_are_copies_and_its_path_writes_the_file(tmp_path: Path, clients) -> None:
    store = BlobStore(tmp_path / "store")
    tensors = clients[0][0]
    held = held_result(store, "c0", tensors, 5)

    loaded = held.load()
    loaded["w"].add_(1)  # a copy: the held bytes are not touched
    assert torch.equal(held.tensor("w"), tensors["w"])
    assert [name for name, _ in held.tensors()] == list(held.layout)
    assert store.held(held.blob.id) is not None
    assert load_tensors(held.path).keys() == tensors.keys()  # asking for the file writes it
    assert store.held(held.blob.id) is None and store.owners(held.blob.id) == ["c0"]


def test_fedavg_reuses_its_running_sums_across_rounds_and_stays_exact(tmp_path: Path, clients) -> None:
    store = BlobStore(tmp_path / "store")
    aggregator = FedAvg()
    first = run(aggregator, store, clients)
    buffer = aggregator._spare["w"].data_ptr()
    doubled = [({**t, "w": t["w"] * 2}, n) for t, n in clients]

    second = run(aggregator, store, doubled)  # same layout: the same memory, every element overwritten

    assert aggregator._spare["w"].data_ptr() == buffer
    torch.testing.assert_close(second["w"], first["w"] * 2, rtol=1e-6, atol=1e-6)
    assert torch.equal(second["h"], first["h"])
    other = [({"w": torch.ones(2, 2)}, 1), ({"w": torch.zeros(2, 2)}, 1)]
    third = run(aggregator, store, other)  # another shape: a fresh buffer
    assert torch.equal(third["w"], torch.full((2, 2), 0.5))
