"""Client plugin: this site trains with gradient-norm clipping instead of the built-in ``train``.

Load it with ``theoden-client ... --plugin clipped_train``. The server's plan does not change:
it still sends the protocol's `Train` command; this site only runs it its own way. The largest
gradient norm comes from the site's environment (``THEODEN_CLIP_NORM``, default 1.0).
"""

from __future__ import annotations

import os

import torch
from theoden_client import EXECUTORS, ExecutionContext
from theoden_client.executors import LOSSES_KEY, dataloader_key, resolve_split
from theoden_client.losses import LossSet
from theoden_client.trainer import DataloaderSettings, make_loader
from theoden_protocol import ExecutionResponse, Train
from torch import nn

MAX_NORM = float(os.environ.get("THEODEN_CLIP_NORM", "1.0"))


@EXECUTORS.register(Train, override=True)
def clipped_train(command: Train, ctx: ExecutionContext) -> ExecutionResponse:
    """Train like the built-in, but clip the gradients' total L2 norm to ``MAX_NORM`` before each step."""
    model = ctx.resources.get(command.model_key, nn.Module)
    optimizer = ctx.resources.get(command.optimizer_key, torch.optim.Optimizer)
    objective = ctx.resources.get(LOSSES_KEY, LossSet)
    dataset = resolve_split(ctx, command.split)
    settings = ctx.resources.get_optional(dataloader_key(command.split), DataloaderSettings) or DataloaderSettings()
    loader = make_loader(dataset, settings, batch_size=command.batch_size, train=True)
    total = command.steps if command.steps is not None else (command.epochs or 0) * len(loader)

    model.to(ctx.device).train()
    losses: list[float] = []
    norms: list[float] = []
    while len(losses) < total:
        for x, y in loader:
            if ctx.stop.is_set() or len(losses) >= total:
                break
            optimizer.zero_grad(set_to_none=True)
            loss = objective(model(x.to(ctx.device)), y.to(ctx.device))
            loss.backward()
            norms.append(float(nn.utils.clip_grad_norm_(model.parameters(), MAX_NORM)))  # the norm before clipping
            optimizer.step()
            losses.append(float(loss.detach()))
        if ctx.stop.is_set():
            break

    metrics = {f"{command.split}/lr": float(optimizer.param_groups[0]["lr"])}
    if losses:
        metrics[f"{command.split}/loss"] = sum(losses) / len(losses)
        metrics[f"{command.split}/grad_norm"] = sum(norms) / len(norms)
        metrics[f"{command.split}/clipped"] = sum(n > MAX_NORM for n in norms) / len(norms)
    return ExecutionResponse(
        metrics=metrics,
        counts={f"{command.split}/steps": len(losses)},
        num_samples=len(dataset),  # type: ignore[arg-type]
    )
