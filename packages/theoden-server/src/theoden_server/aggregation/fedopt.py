"""Adaptive federated optimisation (Reddi et al. 2021): FedAdagrad, FedAdam and FedYogi.

The clients' (sample-weighted) mean defines the pseudo-gradient ``delta = mean - x`` of the
global weights ``x``; the server then takes one adaptive step:
``m = beta_1 * m + (1 - beta_1) * delta``, ``v`` per variant, ``x = x + eta * m / (sqrt(v) + tau)``.
The moments persist across rounds; ``v`` starts at ``tau**2`` as in the paper's Algorithm 2 and
``m`` at zero; there is no bias correction (neither has the paper).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any, ClassVar

import torch

from theoden_server.aggregation._math import FedOptVariant, fedopt_step
from theoden_server.aggregation.base import AggregationError
from theoden_server.aggregation.fedavg import FedAvg

__all__ = ["FedAdagrad", "FedAdam", "FedOpt", "FedYogi"]


class _StepMapping(Mapping[str, torch.Tensor]):
    def __init__(self, owner: FedOpt, means: Mapping[str, torch.Tensor]) -> None:
        self._owner = owner
        self._means = means

    def __getitem__(self, name: str) -> torch.Tensor:
        mean = self._means[name]
        if not mean.is_floating_point():
            return mean  # integer / boolean buffers follow FedAvg's rule, never an optimiser step
        return self._owner.step(name, mean)

    def __iter__(self) -> Iterator[str]:
        return iter(self._means)

    def __len__(self) -> int:
        return len(self._means)


class FedOpt(FedAvg):
    """Base of the FedOpt family: FedAvg's running mean followed by one adaptive server step.

    Moments are held in float64, one pair per float tensor (memory: about 4x the model besides
    the running sums). Non-float tensors take FedAvg's rule (maximum / first).

    Args:
        eta: Server learning rate.
        beta_1: Decay of the first moment.
        beta_2: Decay of the second moment (FedAdam, FedYogi).
        tau: Adaptivity constant (and ``sqrt`` of the second moment's start value).
        weighted: Weight the clients' mean by sample counts.
    """

    variant: ClassVar[FedOptVariant] = "adam"

    def __init__(
        self, *, eta: float = 0.1, beta_1: float = 0.9, beta_2: float = 0.99, tau: float = 1e-3, weighted: bool = True
    ) -> None:
        super().__init__(weighted=weighted)
        if eta <= 0 or tau <= 0 or not 0 <= beta_1 < 1 or not 0 <= beta_2 < 1:
            raise ValueError("FedOpt needs eta > 0, tau > 0 and betas in [0, 1)")
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau
        self.m: dict[str, torch.Tensor] = {}
        self.v: dict[str, torch.Tensor] = {}

    def aggregate(self) -> Mapping[str, torch.Tensor]:
        """Return the stepped global weights (computed lazily)."""
        if self.context.global_path is None:
            raise AggregationError(f"{self.name} needs a global model to step from; initialise one first")
        return _StepMapping(self, super().aggregate())

    def step(self, name: str, mean: torch.Tensor) -> torch.Tensor:
        """Take the server step for one tensor and remember its moments."""
        x = self.context.global_tensor(name)
        m = self.m.get(name)
        v = self.v.get(name)
        if m is None or v is None:
            m = torch.zeros(x.shape, dtype=torch.float64)
            v = torch.full(x.shape, self.tau**2, dtype=torch.float64)
        x_new, self.m[name], self.v[name] = fedopt_step(
            x, mean, m, v, variant=self.variant, eta=self.eta, beta_1=self.beta_1, beta_2=self.beta_2, tau=self.tau
        )
        return x_new

    def describe(self) -> dict[str, Any]:
        """Return the settings."""
        return {
            "aggregator": self.name,
            "eta": self.eta,
            "beta_1": self.beta_1,
            "beta_2": self.beta_2,
            "tau": self.tau,
            "weighted": self.weighted,
        }


class FedAdagrad(FedOpt):
    """FedAdagrad: ``v = v + delta**2``."""

    variant: ClassVar[FedOptVariant] = "adagrad"


class FedAdam(FedOpt):
    """FedAdam: ``v = beta_2 * v + (1 - beta_2) * delta**2``."""

    variant: ClassVar[FedOptVariant] = "adam"


class FedYogi(FedOpt):
    """FedYogi: ``v = v - (1 - beta_2) * delta**2 * sign(v - delta**2)``."""

    variant: ClassVar[FedOptVariant] = "yogi"
