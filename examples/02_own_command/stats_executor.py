"""Client plugin: run ``data_statistics`` commands. Load it with ``theoden-client ... --plugin stats_executor``."""

from __future__ import annotations

import torch
from stats_command import DataStatistics
from theoden_client import EXECUTORS, ExecutionContext
from theoden_protocol import ExecutionResponse
from torch.utils.data import DataLoader, Dataset


@EXECUTORS.register(DataStatistics)
def data_statistics(command: DataStatistics, ctx: ExecutionContext) -> ExecutionResponse:
    """Compute per-feature mean and standard deviation in one pass over the data set."""
    dataset = ctx.resources.get(command.key, Dataset)
    total = 0
    sums = squares = None
    for x, _ in DataLoader(dataset, batch_size=256):
        x = x.reshape(len(x), -1).to(torch.float64)
        sums = x.sum(0) if sums is None else sums + x.sum(0)
        squares = (x * x).sum(0) if squares is None else squares + (x * x).sum(0)
        total += len(x)
    if sums is None or squares is None:
        raise ValueError(f"the data set {command.key!r} is empty")
    mean = sums / total
    std = (squares / total - mean * mean).clamp_min(0).sqrt()
    n = min(command.max_features, len(mean))
    metrics = {f"mean/{i}": float(mean[i]) for i in range(n)}
    metrics |= {f"std/{i}": float(std[i]) for i in range(n)}
    return ExecutionResponse(metrics=metrics, num_samples=total)
