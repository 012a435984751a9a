"""Dataset registry and built-ins: CIFAR-10 (local files), scikit-learn digits, ``.npz`` arrays, synthetic.

A dataset factory takes the client's `DataRoot` and the spec's keyword arguments and returns a
`torch.utils.data.Dataset` whose items are ``(features, label)``. Register your own with
`register_dataset`; paths must go through ``root.resolve(...)`` so they stay under the data root.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from theoden_protocol import DatasetSpec
from torch.utils.data import Dataset

from theoden_client._safe_pickle import load_array_pickle
from theoden_client.data import ArrayDataset, DataRoot
from theoden_client.registry import Registry

__all__ = ["DATASETS", "DatasetFactory", "build_dataset", "register_dataset"]

DatasetFactory = Callable[..., Dataset[Any]]

#: Every dataset the client can load, by name.
DATASETS: Registry[DatasetFactory] = Registry("dataset")


def register_dataset(name: str, *, override: bool = False) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator: register a dataset factory ``fn(root: DataRoot, **kwargs) -> Dataset`` as ``name``."""
    return DATASETS.register(name, override=override)


def build_dataset(spec: DatasetSpec, root: DataRoot) -> Dataset[Any]:
    """Build the dataset ``spec`` names, with its paths resolved under ``root``.

    Raises:
        RegistryError: ``spec.name`` is not registered.
        DataPathError: A path leaves the data root.
    """
    return DATASETS.get(spec.name)(root, **spec.kwargs)


_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = ["test_batch"]


@register_dataset("cifar10")
def cifar10(root: DataRoot, *, path: str = "cifar-10-batches-py", train: bool = True) -> ArrayDataset:
    """CIFAR-10 from the official ``cifar-10-batches-py`` folder: images ``(3, 32, 32)`` in [0, 1], labels 0-9.

    Args:
        root: The client's data root.
        path: The batches folder, relative to the data root.
        train: Load the five training batches (50 000 images) or else the test batch.
    """
    folder = root.resolve(path)
    names = _CIFAR_TRAIN if train else _CIFAR_TEST
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise FileNotFoundError(f"CIFAR-10 batches {', '.join(missing)} not found in {folder}")
    images: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    for name in names:
        batch = load_array_pickle(folder / name)
        if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
            raise ValueError(f"{folder / name} is not a CIFAR-10 batch (no b'data' / b'labels')")
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
            raise ValueError(f"{folder / name}: expected data of shape (N, 3072), got {data.shape}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(batch[b"labels"], dtype=np.int64))
    features = torch.from_numpy(np.concatenate(images))
    return ArrayDataset(features, torch.from_numpy(np.concatenate(labels)), scale=1.0 / 255.0)


@register_dataset("digits")
def digits(root: DataRoot, *, images: bool = False) -> ArrayDataset:
    """The 8x8 hand-written digits shipped with scikit-learn (1797 samples, 10 classes), scaled to [0, 1].

    Needs the ``digits`` extra (``pip install theoden-client[digits]``); nothing is downloaded.

    Args:
        root: The client's data root (unused: the data ship with scikit-learn).
        images: Items of shape ``(1, 8, 8)`` instead of flat ``(64,)`` vectors.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the 'digits' dataset needs scikit-learn: pip install 'theoden-client[digits]'") from exc
    bunch = load_digits()
    x = torch.tensor(np.asarray(bunch.data, dtype=np.float32) / 16.0)
    if images:
        x = x.reshape(-1, 1, 8, 8)
    return ArrayDataset(x, torch.tensor(np.asarray(bunch.target, dtype=np.int64)))


@register_dataset("npz")
def npz(root: DataRoot, *, path: str, x_key: str = "x", y_key: str = "y", scale: float | None = None) -> ArrayDataset:
    """Arrays ``x_key`` (features) and ``y_key`` (labels) from a NumPy ``.npz`` file (no pickles allowed).

    Args:
        root: The client's data root.
        path: The ``.npz`` file, relative to the data root.
        x_key: Name of the features array.
        y_key: Name of the labels array.
        scale: Factor applied to each item's features (e.g. ``1/255`` for ``uint8`` images).
    """
    with np.load(root.resolve(path), allow_pickle=False) as arrays:
        for key in (x_key, y_key):
            if key not in arrays:
                raise KeyError(f"{path} has no array {key!r}; it has {sorted(arrays.files)}")
        x = np.asarray(arrays[x_key])
        y = np.asarray(arrays[y_key])
    features = torch.from_numpy(x if x.dtype == np.uint8 else x.astype(np.float32))
    labels = torch.from_numpy(y.astype(np.int64) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32))
    return ArrayDataset(features, labels, scale=scale)


@register_dataset("synthetic")
def synthetic(
    root: DataRoot,
    *,
    n_samples: int = 512,
    n_features: int | None = None,
    shape: Sequence[int] | None = None,
    num_classes: int = 2,
    seed: int = 0,
    noise: float = 1.0,
) -> ArrayDataset:
    """A seeded, learnable classification set: Gaussian clusters around one random centre per class.

    Args:
        root: The client's data root (unused).
        n_samples: Number of samples (classes are balanced).
        n_features: Length of flat feature vectors (default 16 unless ``shape`` is given).
        shape: Shape of each sample instead, e.g. ``[1, 8, 8]`` or ``[3, 32, 32]``.
        num_classes: Number of classes.
        seed: Seed of the generator: the same arguments give the same data on every machine.
        noise: Standard deviation of the samples around their class centre.
    """
    if n_features is not None and shape is not None:
        raise ValueError("give either n_features or shape, not both")
    if n_samples < 1 or num_classes < 1:
        raise ValueError("n_samples and num_classes must be at least 1")
    item_shape = tuple(int(s) for s in shape) if shape is not None else (n_features or 16,)
    dim = int(np.prod(item_shape))
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, size=(num_classes, dim))
    labels = rng.permutation(np.arange(n_samples) % num_classes)
    x = centres[labels] + rng.normal(0.0, noise, size=(n_samples, dim))
    features = torch.tensor(x.astype(np.float32)).reshape(n_samples, *item_shape)
    return ArrayDataset(features, torch.tensor(labels.astype(np.int64)))
