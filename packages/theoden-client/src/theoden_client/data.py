"""Data-set building blocks: an in-memory `ArrayDataset`, label extraction and the client's `DataRoot`."""

from __future__ import annotations

import os
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, Subset

from theoden_client.errors import DataPathError

__all__ = ["ArrayDataset", "DataRoot", "labels_of"]


class ArrayDataset(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """Features and labels held as tensors; item ``i`` is ``(features[i], labels[i])``.

    Args:
        features: Tensor of shape ``(N, ...)``; ``uint8`` features stay ``uint8`` in memory and are
            converted to ``float32`` (times ``scale``) per item, so big image sets take a quarter of the memory.
        labels: Tensor of shape ``(N,)`` (class indices) or ``(N, ...)`` (regression targets).
        scale: Factor applied to each item's features after conversion to ``float32``.
    """

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, *, scale: float | None = None) -> None:
        if len(features) != len(labels):
            raise ValueError(f"{len(features)} feature rows but {len(labels)} labels")
        self.features = features
        self.targets = labels
        self.scale = scale

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.features[index]
        if not x.is_floating_point():
            x = x.to(torch.float32)
        if self.scale is not None:
            x = x * self.scale
        return x, self.targets[index]

    @property
    def labels(self) -> np.ndarray:
        """The labels as a NumPy array (no copy for CPU tensors)."""
        return self.targets.numpy()


def labels_of(dataset: Any) -> np.ndarray:
    """Return the labels of ``dataset`` as a NumPy array, in item order.

    Uses a ``labels`` or ``targets`` attribute when present, follows `torch.utils.data.Subset`
    to its parent, and otherwise reads every item's second element.
    """
    if isinstance(dataset, Subset):
        return labels_of(dataset.dataset)[np.asarray(dataset.indices, dtype=np.int64)]
    for attribute in ("labels", "targets"):
        labels = getattr(dataset, attribute, None)
        if labels is not None and not callable(labels):
            if isinstance(labels, torch.Tensor):
                return labels.detach().cpu().numpy()
            return np.asarray(labels)
    return np.asarray([_as_scalar(dataset[i][1]) for i in range(len(dataset))])


def _as_scalar(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


class DataRoot:
    """The folder under which all of a client's data lives; spec paths resolve inside it.

    Paths are checked lexically: absolute paths and ``..`` that leave the root are refused.
    Symbolic links the site's operator placed inside the root are followed as usual.

    Args:
        path: The data root folder (need not exist yet).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path).expanduser().absolute()

    def resolve(self, relative: str | os.PathLike[str]) -> Path:
        """Return ``relative`` as a path under the root.

        Raises:
            DataPathError: ``relative`` is absolute or leaves the root.
        """
        pure = PurePath(relative)
        if pure.is_absolute() or pure.drive:
            raise DataPathError(f"dataset path {str(relative)!r} must be relative to the client's data root")
        joined = Path(os.path.normpath(self.path / pure))
        if joined != self.path and self.path not in joined.parents:
            raise DataPathError(f"dataset path {str(relative)!r} leaves the client's data root {str(self.path)!r}")
        return joined

    def __repr__(self) -> str:
        return f"DataRoot({str(self.path)!r})"
