"""Training and evaluation loops: pure functions over a model, a loader, an optimizer and an objective."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from theoden_client.augment import Augmentation
from theoden_client.errors import ShutdownRequested
from theoden_client.losses import LossSet, MetricSet
from theoden_client.optim import ScheduledLR
from theoden_client.progress import Progress, ProgressMode

__all__ = ["DataloaderSettings", "EvalResult", "TrainResult", "evaluate", "make_loader", "train"]


@dataclass(frozen=True, slots=True)
class DataloaderSettings:
    """How one split is batched and augmented (held as ``dataloader:<split>``)."""

    batch_size: int = 32
    shuffle: bool = True
    drop_last: bool = False
    num_workers: int = 0
    augmentations: list[Augmentation] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class TrainResult:
    """What a training run did: optimizer steps, samples seen, mean and last loss (``None`` with 0 steps)."""

    steps: int
    samples_seen: int
    mean_loss: float | None
    last_loss: float | None


@dataclass(frozen=True, slots=True)
class EvalResult:
    """Mean loss (``None`` without losses), metrics by name, integer tallies and the sample count."""

    loss: float | None
    metrics: dict[str, float]
    counts: dict[str, int]
    num_samples: int


def make_loader(
    dataset: Dataset[Any], settings: DataloaderSettings, *, batch_size: int | None = None, train: bool = True
) -> DataLoader[Any]:
    """Build a DataLoader for ``dataset``; shuffling and dropping the last batch apply only when ``train``."""
    return DataLoader(
        dataset,
        batch_size=batch_size or settings.batch_size,
        shuffle=settings.shuffle and train,
        drop_last=settings.drop_last and train,
        num_workers=settings.num_workers,
    )


def _apply(augmentations: Sequence[Augmentation], x: torch.Tensor, *, train: bool) -> torch.Tensor:
    for aug in augmentations:
        if train or not aug.train_only:
            x = aug(x)
    return x


def _batches(loader: DataLoader[Any], steps: int) -> Iterator[Any]:
    """Yield exactly ``steps`` batches, starting new passes over ``loader`` as needed."""
    produced = 0
    while produced < steps:
        empty = True
        for batch in loader:
            empty = False
            yield batch
            produced += 1
            if produced >= steps:
                return
        if empty:
            raise ValueError("the training split yields no batches (empty, or smaller than one batch with drop_last)")


def train(
    model: nn.Module,
    loader: DataLoader[Any],
    optimizer: torch.optim.Optimizer,
    objective: LossSet,
    *,
    steps: int | None = None,
    epochs: int | None = None,
    device: torch.device | str = "cpu",
    augmentations: Sequence[Augmentation] = (),
    scheduler: ScheduledLR | None = None,
    stop: threading.Event | None = None,
    progress: ProgressMode = "auto",
) -> TrainResult:
    """Train ``model`` for exactly ``steps`` optimizer steps or ``epochs`` passes over ``loader``.

    Raises:
        ValueError: Both or neither of ``steps`` and ``epochs`` are given, or the loader is empty.
        ShutdownRequested: ``stop`` was set; the model keeps the steps already taken.
    """
    if (steps is None) == (epochs is None):
        raise ValueError("train needs exactly one of steps or epochs")
    total = steps if steps is not None else (epochs or 0) * len(loader)
    model.to(device)
    model.train()
    loss_sum, samples, done = 0.0, 0, 0
    last: float | None = None
    with Progress(total, "train", mode=progress) as bar:
        for x, y in _batches(loader, total):
            if stop is not None and stop.is_set():
                raise ShutdownRequested(f"training stopped after {done} of {total} steps: the client is shutting down")
            x = _apply(augmentations, x.to(device), train=True)
            y = y.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = objective(model(x), y)
            loss.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
            if scheduler is not None and scheduler.interval == "step":
                scheduler.scheduler.step()
            last = float(loss.detach())
            loss_sum += last
            samples += len(y)
            done += 1
            bar.update(1, loss=last)
    if scheduler is not None and scheduler.interval == "train" and done:
        scheduler.scheduler.step()
    return TrainResult(done, samples, loss_sum / done if done else None, last)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: DataLoader[Any],
    objective: LossSet | None,
    metrics: MetricSet | None,
    *,
    device: torch.device | str = "cpu",
    augmentations: Sequence[Augmentation] = (),
    progress: ProgressMode = "auto",
) -> EvalResult:
    """Return the mean loss and the metrics of ``model`` over every batch of ``loader``.

    Metrics see the outputs and targets of the whole split at once; metrics that count report
    integer tallies under ``<metric>/<suffix>`` in ``counts``.
    """
    model.to(device)
    model.eval()
    outputs: list[torch.Tensor] = []
    targets: list[torch.Tensor] = []
    loss_sum, n = 0.0, 0
    with Progress(len(loader), "validate", mode=progress) as bar:
        for x, y in loader:
            x = _apply(augmentations, x.to(device), train=False)
            y = y.to(device)
            out = model(x)
            if objective is not None:
                loss_sum += float(objective(out, y)) * len(y)
            n += len(y)
            if metrics is not None and metrics.metrics:
                outputs.append(out.detach().cpu())
                targets.append(y.detach().cpu())
            bar.update(1)
    values: dict[str, float] = {}
    counts: dict[str, int] = {}
    if metrics is not None and outputs:
        all_out, all_y = torch.cat(outputs), torch.cat(targets)
        for name, metric in metrics.metrics.items():
            for suffix, value in metric(all_out, all_y).items():
                key = f"{name}/{suffix}" if suffix else name
                if metric.counts:
                    counts[key] = int(value)
                else:
                    values[key] = float(value)
    loss = loss_sum / n if (objective is not None and n) else None
    return EvalResult(loss, values, counts, n)
