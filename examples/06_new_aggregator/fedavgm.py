"""A user aggregator: FedAvgM, federated averaging with server momentum (Hsu et al. 2019).

With the clients' sample-weighted mean ``mean`` and the global weights ``x``, each round takes

    delta = mean - x
    v     = momentum * v + delta          (v starts at 0, one buffer per float tensor)
    x     = x + server_lr * v

``momentum=0, server_lr=1`` is plain FedAvg. The running mean comes from `FedAvg` (uploads are
folded in as they arrive, so memory does not grow with the number of clients); only the step is new.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch
from theoden_server import AggregationError, FedAvg


def momentum_step(
    x: torch.Tensor, mean: torch.Tensor, v: torch.Tensor, *, momentum: float, server_lr: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``(x_new, v_new)`` for one tensor, in float64 (pure maths, tested on its own)."""
    x64 = x.to(torch.float64)
    v_new = momentum * v + (mean.to(torch.float64) - x64)
    return x64 + server_lr * v_new, v_new


class FedAvgM(FedAvg):
    """FedAvg followed by a server momentum step.

    Args:
        momentum: Decay of the server's velocity, in ``[0, 1)``.
        server_lr: Server learning rate.
        weighted: Weight the clients' mean by their sample counts.
    """

    def __init__(self, *, momentum: float = 0.9, server_lr: float = 1.0, weighted: bool = True) -> None:
        super().__init__(weighted=weighted)
        if not 0 <= momentum < 1 or server_lr <= 0:
            raise ValueError("FedAvgM needs momentum in [0, 1) and server_lr > 0")
        self.momentum = momentum
        self.server_lr = server_lr
        self.velocity: dict[str, torch.Tensor] = {}  # kept across rounds: the aggregator lives for the whole run

    def aggregate(self) -> Mapping[str, torch.Tensor]:
        """Return the new global weights (computed tensor by tensor as the server writes them)."""
        if self.context.global_path is None:
            raise AggregationError("FedAvgM steps from the global model; initialise one first")
        return _Stepped(self, super().aggregate())

    def step(self, name: str, mean: torch.Tensor) -> torch.Tensor:
        """Apply the momentum step to one tensor and remember its velocity."""
        x = self.context.global_tensor(name)
        v = self.velocity.get(name)
        if v is None:
            v = torch.zeros(x.shape, dtype=torch.float64)
        x_new, self.velocity[name] = momentum_step(x, mean, v, momentum=self.momentum, server_lr=self.server_lr)
        return x_new

    def describe(self) -> dict[str, Any]:
        """Return the settings (they go into the run's log)."""
        return {**super().describe(), "momentum": self.momentum, "server_lr": self.server_lr}


class _Stepped(Mapping[str, torch.Tensor]):
    """FedAvg's lazy means, each passed through the momentum step on access."""

    def __init__(self, owner: FedAvgM, means: Mapping[str, torch.Tensor]) -> None:
        self._owner = owner
        self._means = means

    def __getitem__(self, name: str) -> torch.Tensor:
        mean = self._means[name]
        if not mean.is_floating_point():
            return mean  # integer / boolean buffers (e.g. BatchNorm counters) keep FedAvg's rule
        return self._owner.step(name, mean)

    def __iter__(self) -> Iterator[str]:
        return iter(self._means)

    def __len__(self) -> int:
        return len(self._means)
