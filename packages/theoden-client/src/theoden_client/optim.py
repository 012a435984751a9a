"""Optimizer and learning-rate scheduler registries with the usual built-ins.

An optimizer factory is ``fn(params, **kwargs) -> torch.optim.Optimizer``; a scheduler factory is
``fn(optimizer, **kwargs) -> LRScheduler``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from theoden_protocol import OptimizerSpec, SchedulerSpec
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, StepLR

from theoden_client.registry import Registry

__all__ = [
    "OPTIMIZERS",
    "SCHEDULERS",
    "ScheduledLR",
    "build_optimizer",
    "build_scheduler",
    "register_optimizer",
    "register_scheduler",
]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., LRScheduler]

#: Every optimizer the client can create, by name.
OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")
#: Every learning-rate scheduler the client can create, by name.
SCHEDULERS: Registry[SchedulerFactory] = Registry("scheduler")


def register_optimizer(name: str, *, override: bool = False) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Decorator: register ``fn(params, **kwargs) -> Optimizer`` as ``name``."""
    return OPTIMIZERS.register(name, override=override)


def register_scheduler(name: str, *, override: bool = False) -> Callable[[SchedulerFactory], SchedulerFactory]:
    """Decorator: register ``fn(optimizer, **kwargs) -> LRScheduler`` as ``name``."""
    return SCHEDULERS.register(name, override=override)


def build_optimizer(spec: OptimizerSpec, params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """Create the optimizer ``spec`` names over ``params``."""
    return OPTIMIZERS.get(spec.name)(params, **spec.kwargs)


@dataclass(frozen=True, slots=True)
class ScheduledLR:
    """A scheduler and when to step it: after every optimizer ``"step"`` or once per ``"train"`` command."""

    scheduler: LRScheduler
    interval: Literal["step", "train"] = "train"


def build_scheduler(spec: SchedulerSpec, optimizer: torch.optim.Optimizer) -> ScheduledLR:
    """Create the scheduler ``spec`` names; the reserved kwarg ``interval`` (``step``/``train``) is taken out first."""
    kwargs: dict[str, Any] = dict(spec.kwargs)
    interval = kwargs.pop("interval", "train")
    if interval not in ("step", "train"):
        raise ValueError(f"scheduler interval must be 'step' or 'train', not {interval!r}")
    return ScheduledLR(SCHEDULERS.get(spec.name)(optimizer, **kwargs), interval)


@register_optimizer("sgd")
def sgd(params: Iterable[torch.nn.Parameter], *, lr: float = 0.01, **kwargs: Any) -> torch.optim.Optimizer:
    """Stochastic gradient descent (``momentum``, ``weight_decay``, ``nesterov`` as in torch)."""
    return torch.optim.SGD(params, lr=lr, **kwargs)


@register_optimizer("adam")
def adam(params: Iterable[torch.nn.Parameter], *, lr: float = 1e-3, **kwargs: Any) -> torch.optim.Optimizer:
    """Adam (``betas`` as a two-element list, ``weight_decay``, ``eps`` as in torch)."""
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return torch.optim.Adam(params, lr=lr, **kwargs)


@register_optimizer("adamw")
def adamw(params: Iterable[torch.nn.Parameter], *, lr: float = 1e-3, **kwargs: Any) -> torch.optim.Optimizer:
    """AdamW (decoupled weight decay)."""
    if "betas" in kwargs:
        kwargs["betas"] = tuple(kwargs["betas"])
    return torch.optim.AdamW(params, lr=lr, **kwargs)


@register_scheduler("step")
def step(optimizer: torch.optim.Optimizer, *, step_size: int, gamma: float = 0.1) -> LRScheduler:
    """Multiply the learning rate by ``gamma`` every ``step_size`` scheduler steps."""
    return StepLR(optimizer, step_size=step_size, gamma=gamma)


@register_scheduler("cosine")
def cosine(optimizer: torch.optim.Optimizer, *, t_max: int, eta_min: float = 0.0) -> LRScheduler:
    """Cosine annealing from the initial learning rate to ``eta_min`` over ``t_max`` scheduler steps."""
    return CosineAnnealingLR(optimizer, T_max=t_max, eta_min=eta_min)
