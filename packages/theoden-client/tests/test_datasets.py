from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from theoden_client.data import ArrayDataset, DataRoot, labels_of
from theoden_client.datasets import build_dataset, register_dataset
from theoden_client.errors import DataPathError, RegistryError
from theoden_protocol import DatasetSpec


def write_cifar(folder: Path, *, n_per_batch: int = 6, protocol: int = 2) -> np.ndarray:
    """Write the five train batches and the test batch in the official format; return all train data."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    train = []
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8)
        labels = [int(x) for x in rng.integers(0, 10, size=n_per_batch)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [b"f.png"] * n_per_batch,
        }
        with (folder / name).open("wb") as fh:
            pickle.dump(batch, fh, protocol=protocol)
        if name != "test_batch":
            train.append(data)
    return np.concatenate(train)


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_reads_the_official_batch_format(data_root: Path, protocol: int) -> None:
    raw = write_cifar(data_root / "cifar-10-batches-py", protocol=protocol)
    dataset = build_dataset(DatasetSpec(name="cifar10"), DataRoot(data_root))
    assert len(dataset) == 30
    x, y = dataset[7]
    assert x.shape == (3, 32, 32)
    assert x.dtype == torch.float32
    # channel-first layout: the first 1024 bytes of a row are the red plane
    assert torch.allclose(x[0].flatten(), torch.tensor(raw[7, :1024], dtype=torch.float32) / 255)
    assert 0 <= int(y) < 10
    test = build_dataset(DatasetSpec(name="cifar10", kwargs={"train": False}), DataRoot(data_root))
    assert len(test) == 6


class Evil:
    def __reduce__(self) -> tuple[object, tuple[()]]:
        return (os.getcwd, ())


def test_cifar10_refuses_a_batch_with_foreign_globals(data_root: Path) -> None:
    write_cifar(data_root / "cifar-10-batches-py")
    with (data_root / "cifar-10-batches-py" / "data_batch_3").open("wb") as fh:
        pickle.dump({b"data": Evil(), b"labels": []}, fh)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load global"):
        build_dataset(DatasetSpec(name="cifar10"), DataRoot(data_root))


def test_cifar10_names_missing_batches(data_root: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data_batch_1"):
        build_dataset(DatasetSpec(name="cifar10"), DataRoot(data_root))


def test_paths_may_not_leave_the_data_root(data_root: Path) -> None:
    root = DataRoot(data_root)
    for bad in ["../secrets", "/etc/passwd", "a/../../b"]:
        with pytest.raises(DataPathError):
            root.resolve(bad)
    assert root.resolve("a/../b") == data_root / "b"
    with pytest.raises(DataPathError):
        build_dataset(DatasetSpec(name="npz", kwargs={"path": "../x.npz"}), root)


def test_npz_loads_arrays_without_pickles(data_root: Path) -> None:
    np.savez(data_root / "d.npz", x=np.ones((5, 4), dtype=np.float64), y=np.arange(5))
    dataset = build_dataset(DatasetSpec(name="npz", kwargs={"path": "d.npz"}), DataRoot(data_root))
    x, y = dataset[4]
    assert x.dtype == torch.float32
    assert x.shape == (4,)
    assert int(y) == 4
    np.savez(data_root / "obj.npz", x=np.array([object()] * 2, dtype=object), y=np.arange(2))
    with pytest.raises(ValueError, match="allow_pickle"):
        build_dataset(DatasetSpec(name="npz", kwargs={"path": "obj.npz"}), DataRoot(data_root))
    with pytest.raises(KeyError, match="no array 'features'"):
        build_dataset(DatasetSpec(name="npz", kwargs={"path": "d.npz", "x_key": "features"}), DataRoot(data_root))


def test_synthetic_is_seeded(data_root: Path) -> None:
    root = DataRoot(data_root)
    spec = DatasetSpec(name="synthetic", kwargs={"n_samples": 30, "shape": [1, 4, 4], "num_classes": 3, "seed": 5})
    a, b = build_dataset(spec, root), build_dataset(spec, root)
    assert isinstance(a, ArrayDataset)
    assert isinstance(b, ArrayDataset)
    assert torch.equal(a.features, b.features)
    assert a.features.shape == (30, 1, 4, 4)
    assert sorted(np.bincount(labels_of(a)).tolist()) == [10, 10, 10]
    other = build_dataset(DatasetSpec(name="synthetic", kwargs={"n_samples": 30, "seed": 6}), root)
    assert other[0][0].shape == (16,)


def test_digits_come_from_scikit_learn(data_root: Path) -> None:
    pytest.importorskip("sklearn")
    dataset = build_dataset(DatasetSpec(name="digits", kwargs={"images": True}), DataRoot(data_root))
    assert len(dataset) == 1797
    x, _ = dataset[0]
    assert x.shape == (1, 8, 8)
    assert float(x.max()) <= 1.0


def test_user_datasets_and_unknown_names(data_root: Path) -> None:
    @register_dataset("test_ones", override=True)
    def ones(root: DataRoot, *, n: int = 3) -> ArrayDataset:
        return ArrayDataset(torch.ones(n, 2), torch.zeros(n, dtype=torch.long))

    assert len(build_dataset(DatasetSpec(name="test_ones", kwargs={"n": 4}), DataRoot(data_root))) == 4
    with pytest.raises(RegistryError, match=r"unknown dataset 'imagenet'; this client knows: .*cifar10.*synthetic"):
        build_dataset(DatasetSpec(name="imagenet"), DataRoot(data_root))


def test_labels_of_follows_subsets_and_plain_datasets() -> None:
    from torch.utils.data import Subset, TensorDataset

    base = ArrayDataset(torch.zeros(5, 1), torch.tensor([4, 3, 2, 1, 0]))
    assert labels_of(Subset(Subset(base, [1, 2, 3]), [2, 0])).tolist() == [1, 3]
    assert labels_of(TensorDataset(torch.zeros(3, 1), torch.tensor([2, 2, 1]))).tolist() == [2, 2, 1]


def test_cifar10_accepts_batches_written_by_old_numpy(data_root: Path) -> None:
    """Official batches name numpy.core.multiarray (NumPy 1); loading them must not warn or fail."""
    folder = data_root / "cifar-10-batches-py"
    write_cifar(folder, protocol=2)
    for batch in folder.iterdir():
        batch.write_bytes(batch.read_bytes().replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in (folder / "data_batch_1").read_bytes()
    assert len(build_dataset(DatasetSpec(name="cifar10"), DataRoot(data_root))) == 30
