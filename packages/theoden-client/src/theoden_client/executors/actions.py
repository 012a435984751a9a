"""Built-in handlers of action commands: train, validate, send the model, label counts, client score."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from theoden_protocol import (
    ComputeClientScore,
    ExecutionResponse,
    InspectLabelDistribution,
    SendModel,
    Train,
    Validate,
)
from torch import nn
from torch.utils.data import Dataset

from theoden_client.data import labels_of
from theoden_client.errors import ResourceNotFoundError
from theoden_client.executors.base import ExecutionContext, builtin
from theoden_client.executors.resource_commands import LOSSES_KEY, METRICS_KEY, dataloader_key
from theoden_client.losses import METRICS, LossSet, MetricSet
from theoden_client.optim import ScheduledLR
from theoden_client.resources import split_key
from theoden_client.trainer import DataloaderSettings, evaluate, make_loader, train
from theoden_client.weights import weights_payload

__all__ = [
    "DATASET_KEY",
    "SCHEDULER_KEY",
    "compute_client_score",
    "inspect_label_distribution",
    "resolve_split",
    "send_model",
    "train_command",
    "validate_command",
]

logger = logging.getLogger("theoden_client.executors")

#: The dataset whose splits commands name (``dataset:<split>``).
DATASET_KEY = "dataset"
#: Where `SetScheduler` keeps the scheduler by default; `Train` steps it when present.
SCHEDULER_KEY = "scheduler"


def resolve_split(ctx: ExecutionContext, split: str) -> Dataset[Any]:
    """Return the dataset of ``split``: ``dataset:<split>``, or else a resource named ``split`` itself.

    Raises:
        ResourceNotFoundError: Neither exists; the message lists what the client holds.
    """
    for key in (split_key(DATASET_KEY, split), split):
        if ctx.resources.has(key):
            return ctx.resources.get(key, Dataset)
    raise ResourceNotFoundError(
        f"no data for split {split!r}: the client holds neither {split_key(DATASET_KEY, split)!r} nor {split!r} "
        f"(send SetLocalPartition first); it holds: {', '.join(ctx.resources.keys()) or 'nothing'}"
    )


def _settings(ctx: ExecutionContext, split: str) -> DataloaderSettings:
    settings = ctx.resources.get_optional(dataloader_key(split), DataloaderSettings)
    return settings if settings is not None else DataloaderSettings(shuffle=split == "train")


def _objective(ctx: ExecutionContext) -> LossSet:
    if not ctx.resources.has(LOSSES_KEY):
        raise ResourceNotFoundError("training needs losses, but none are set; send SetLosses first")
    return ctx.resources.get(LOSSES_KEY, LossSet)


def _check_optimizer_fits(optimizer: torch.optim.Optimizer, model: nn.Module, command: Train) -> None:
    """Refuse an optimizer built for another model (e.g. after a new `InitModel`): it would train nothing."""
    model_params = {id(p) for p in model.parameters()}
    if not all(id(p) in model_params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError(
            f"the optimizer {command.optimizer_key!r} was created for another model than {command.model_key!r}; "
            "send SetOptimizer after InitModel"
        )


def _round(command: Train | Validate) -> str:
    return f" (round {command.round})" if command.round is not None else ""


@builtin(Train)
def train_command(command: Train, ctx: ExecutionContext) -> ExecutionResponse:
    """Train the model for the command's steps or epochs; reports ``train/loss`` and the split's size."""
    model = ctx.resources.get(command.model_key, nn.Module)
    optimizer = ctx.resources.get(command.optimizer_key, torch.optim.Optimizer)
    dataset = resolve_split(ctx, command.split)
    settings = _settings(ctx, command.split)
    scheduler = ctx.resources.get_optional(SCHEDULER_KEY, ScheduledLR)
    _check_optimizer_fits(optimizer, model, command)
    logger.info("training on %d samples of %r%s", len(dataset), command.split, _round(command))  # type: ignore[arg-type]
    result = train(
        model,
        make_loader(dataset, settings, batch_size=command.batch_size, train=True),
        optimizer,
        _objective(ctx),
        steps=command.steps,
        epochs=command.epochs,
        device=ctx.device,
        augmentations=settings.augmentations,
        scheduler=scheduler if scheduler is not None and scheduler.scheduler.optimizer is optimizer else None,
        stop=ctx.stop,
        progress=ctx.progress,
    )
    metrics: dict[str, float] = {f"{command.split}/lr": float(optimizer.param_groups[0]["lr"])}
    if result.mean_loss is not None:
        metrics[f"{command.split}/loss"] = result.mean_loss
    return ExecutionResponse(
        metrics=metrics,
        counts={f"{command.split}/steps": result.steps, f"{command.split}/samples_seen": result.samples_seen},
        num_samples=len(dataset),  # type: ignore[arg-type]
    )


@builtin(Validate)
def validate_command(command: Validate, ctx: ExecutionContext) -> ExecutionResponse:
    """Evaluate the losses and metrics on the split; reports ``<split>/loss`` and ``<split>/<metric>``."""
    model = ctx.resources.get(command.model_key, nn.Module)
    dataset = resolve_split(ctx, command.split)
    settings = _settings(ctx, command.split)
    result = evaluate(
        model,
        make_loader(dataset, settings, batch_size=command.batch_size, train=False),
        ctx.resources.get_optional(LOSSES_KEY, LossSet),
        ctx.resources.get_optional(METRICS_KEY, MetricSet),
        device=ctx.device,
        augmentations=settings.augmentations,
        progress=ctx.progress,
    )
    metrics = {f"{command.split}/{name}": value for name, value in result.metrics.items()}
    if result.loss is not None:
        metrics[f"{command.split}/loss"] = result.loss
    logger.info("validated on %r%s: %s", command.split, _round(command), metrics)
    counts = {f"{command.split}/{name}": value for name, value in result.counts.items()}
    return ExecutionResponse(metrics=metrics, counts=counts, num_samples=result.num_samples)


@builtin(SendModel)
def send_model(command: SendModel, ctx: ExecutionContext) -> ExecutionResponse:
    """Upload the weights as safetensors (from the tensors' memory) and report the blob and the sample count."""
    model = ctx.resources.get(command.model_key, nn.Module)
    num_samples = len(resolve_split(ctx, command.sample_split))  # type: ignore[arg-type]
    payload = weights_payload(model)  # views of the tensors: nothing is copied, whatever the size
    ref = ctx.require_transport().upload_parts(payload.parts, sha256=payload.sha256, size=payload.size)
    return ExecutionResponse(blobs={command.name: ref}, num_samples=num_samples)


@builtin(InspectLabelDistribution)
def inspect_label_distribution(command: InspectLabelDistribution, ctx: ExecutionContext) -> ExecutionResponse:
    """Count the samples of each label in the split (counts ``<split>/label/<label>``; never the data)."""
    labels = labels_of(resolve_split(ctx, command.split))
    values, counts = np.unique(labels, return_counts=True)
    return ExecutionResponse(
        counts={f"{command.split}/label/{v}": int(c) for v, c in zip(values.tolist(), counts.tolist(), strict=True)},
        num_samples=len(labels),
    )


@builtin(ComputeClientScore)
def compute_client_score(command: ComputeClientScore, ctx: ExecutionContext) -> ExecutionResponse:
    """Compute ``command.metric`` of the model on the split; reported as ``score`` and ``<split>/<metric>``."""
    model = ctx.resources.get("model", nn.Module)
    dataset = resolve_split(ctx, command.split)
    held = ctx.resources.get_optional(METRICS_KEY, MetricSet)
    metric = held.metrics.get(command.metric) if held is not None else None
    if metric is None:
        metric = METRICS.get(command.metric)()
    result = evaluate(
        model,
        make_loader(dataset, _settings(ctx, command.split), train=False),
        None,
        MetricSet({command.metric: metric}),
        device=ctx.device,
        augmentations=_settings(ctx, command.split).augmentations,
        progress=ctx.progress,
    )
    if command.metric not in result.metrics:
        raise ValueError(f"metric {command.metric!r} gives no single value to score with")
    score = result.metrics[command.metric]
    return ExecutionResponse(
        metrics={"score": score, f"{command.split}/{command.metric}": score}, num_samples=result.num_samples
    )
