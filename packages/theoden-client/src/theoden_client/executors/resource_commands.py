"""Built-in handlers of resource commands: load data, partition it, build model and training objects."""

from __future__ import annotations

import logging

import torch
from theoden_protocol import (
    ClearResources,
    ExecutionResponse,
    InitModel,
    LoadDataset,
    LoadWeights,
    PrintResourceKeys,
    SetDataloader,
    SetLocalPartition,
    SetLosses,
    SetOptimizer,
    SetPartition,
    SetScheduler,
)
from torch import nn
from torch.utils.data import Dataset, Subset

from theoden_client.augment import build_augmentations
from theoden_client.data import labels_of
from theoden_client.datasets import build_dataset
from theoden_client.executors.base import ExecutionContext, builtin
from theoden_client.losses import build_losses, build_metrics
from theoden_client.models import build_model
from theoden_client.optim import build_optimizer, build_scheduler
from theoden_client.partitions import local_splits, partition
from theoden_client.resources import split_key
from theoden_client.trainer import DataloaderSettings
from theoden_client.weights import IN_MEMORY_BYTES, load_weights, scratch_file

__all__ = [
    "LOSSES_KEY",
    "METRICS_KEY",
    "clear_resources",
    "dataloader_key",
    "init_model",
    "load_dataset",
    "load_weights_command",
    "print_resource_keys",
    "set_dataloader",
    "set_local_partition",
    "set_losses",
    "set_optimizer",
    "set_partition",
    "set_scheduler",
]

logger = logging.getLogger("theoden_client.executors")

#: Where `SetLosses` keeps the training objective (a `LossSet`).
LOSSES_KEY = "losses"
#: Where `SetLosses` keeps the validation metrics (a `MetricSet`).
METRICS_KEY = "metrics"


def dataloader_key(split: str) -> str:
    """Return the key of the dataloader settings of ``split``."""
    return f"dataloader:{split}"


@builtin(LoadDataset)
def load_dataset(command: LoadDataset, ctx: ExecutionContext) -> ExecutionResponse:
    """Build the dataset from the client's registry under its data root and hold it as ``command.key``."""
    dataset = build_dataset(command.dataset, ctx.data_root)
    ctx.resources.set(command.key, dataset)
    return ExecutionResponse(num_samples=len(dataset), details={"dataset": command.dataset.name})  # type: ignore[arg-type]


@builtin(SetPartition)
def set_partition(command: SetPartition, ctx: ExecutionContext) -> ExecutionResponse:
    """Split the source dataset by the partition spec and keep part ``command.part``."""
    dataset = ctx.resources.get(command.source, Dataset)
    parts = partition(labels_of(dataset), command.partition)
    if command.part >= len(parts):
        raise ValueError(f"part {command.part} requested, but the partition has only {len(parts)} parts (0-based)")
    subset = Subset(dataset, parts[command.part].tolist())
    ctx.resources.set(command.key, subset)
    return ExecutionResponse(num_samples=len(subset), details={"part": command.part, "num_parts": len(parts)})


@builtin(SetLocalPartition)
def set_local_partition(command: SetLocalPartition, ctx: ExecutionContext) -> ExecutionResponse:
    """Split the source dataset into named splits held as ``"<source>:<split>"``."""
    dataset = ctx.resources.get(command.source, Dataset)
    splits = local_splits(len(dataset), dict(command.splits), command.seed)  # type: ignore[arg-type]
    counts: dict[str, int] = {}
    for name, indices in splits.items():
        ctx.resources.set(split_key(command.source, name), Subset(dataset, indices.tolist()))
        counts[f"split/{name}"] = len(indices)
    return ExecutionResponse(counts=counts, num_samples=sum(counts.values()))


@builtin(InitModel)
def init_model(command: InitModel, ctx: ExecutionContext) -> ExecutionResponse:
    """Build the model from the client's registry, move it to the device and hold it as ``command.key``."""
    model = build_model(command.model).to(ctx.device)
    ctx.resources.set(command.key, model)
    n_params = sum(p.numel() for p in model.parameters())
    return ExecutionResponse(details={"model": command.model.name, "parameters": n_params})


@builtin(SetOptimizer)
def set_optimizer(command: SetOptimizer, ctx: ExecutionContext) -> ExecutionResponse:
    """Create the optimizer over the parameters of the model at ``command.model_key``."""
    model = ctx.resources.get(command.model_key, nn.Module)
    ctx.resources.set(command.key, build_optimizer(command.optimizer, model.parameters()))
    return ExecutionResponse(details={"optimizer": command.optimizer.name})


@builtin(SetLosses)
def set_losses(command: SetLosses, ctx: ExecutionContext) -> ExecutionResponse:
    """Hold the training losses as ``losses`` and the validation metrics as ``metrics``."""
    ctx.resources.set(LOSSES_KEY, build_losses(list(command.losses)))
    metrics = build_metrics(
        list(command.metrics), choosing_metric=command.choosing_metric, higher=command.higher_is_better
    )
    if command.choosing_metric is not None and command.choosing_metric not in metrics.metrics:
        raise ValueError(
            f"choosing_metric {command.choosing_metric!r} is not among the metrics {sorted(metrics.metrics)}"
        )
    ctx.resources.set(METRICS_KEY, metrics)
    return ExecutionResponse()


@builtin(SetScheduler)
def set_scheduler(command: SetScheduler, ctx: ExecutionContext) -> ExecutionResponse:
    """Attach the scheduler to the optimizer at ``command.optimizer_key``."""
    optimizer = ctx.resources.get(command.optimizer_key, torch.optim.Optimizer)
    ctx.resources.set(command.key, build_scheduler(command.scheduler, optimizer))
    return ExecutionResponse()


@builtin(SetDataloader)
def set_dataloader(command: SetDataloader, ctx: ExecutionContext) -> ExecutionResponse:
    """Hold how split ``command.split`` is batched and augmented as ``dataloader:<split>``."""
    settings = DataloaderSettings(
        batch_size=command.batch_size,
        shuffle=command.shuffle,
        drop_last=command.drop_last,
        num_workers=command.num_workers,
        augmentations=build_augmentations(command.augmentations),
    )
    ctx.resources.set(dataloader_key(command.split), settings)
    return ExecutionResponse()


@builtin(LoadWeights)
def load_weights_command(command: LoadWeights, ctx: ExecutionContext) -> ExecutionResponse:
    """Download the weights blob (into memory, or a scratch file when large), verify it and load it."""
    model = ctx.resources.get(command.model_key, nn.Module)
    transport = ctx.require_transport()
    if command.blob.size <= IN_MEMORY_BYTES:
        with transport.download_buffer(command.blob) as data:
            load_weights(model, data, strict=command.strict)  # copies into the model's own tensors
    else:
        with scratch_file(ctx.workdir, prefix="download-") as path:
            transport.download_blob(command.blob, path)
            load_weights(model, path, strict=command.strict)
    return ExecutionResponse(details={"blob": command.blob.id})


@builtin(ClearResources)
def clear_resources(command: ClearResources, ctx: ExecutionContext) -> ExecutionResponse:
    """Drop the named resources (or all); names the client did not hold are reported, not an error."""
    if command.keys is None:
        cleared = ctx.resources.clear()
        missing: list[str] = []
    else:
        cleared = [k for k in command.keys if ctx.resources.has(k)]
        missing = [k for k in command.keys if k not in cleared]
        for key in cleared:
            ctx.resources.pop(key)
    details: dict[str, str] = {"cleared": ", ".join(cleared)}
    if missing:
        details["not_held"] = ", ".join(missing)
    return ExecutionResponse(details=details)  # type: ignore[arg-type]


@builtin(PrintResourceKeys)
def print_resource_keys(command: PrintResourceKeys, ctx: ExecutionContext) -> ExecutionResponse:
    """Log the held resources and report them (key → type) in ``details["resources"]``."""
    described = ctx.resources.describe()
    logger.info("resources: %s", ", ".join(f"{k} ({v})" for k, v in described.items()) or "none")
    return ExecutionResponse(details={"resources": described})  # type: ignore[dict-item]
