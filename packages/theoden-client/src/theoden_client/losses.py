"""Loss and metric registries, with ``cross_entropy``/``mse`` losses and ``accuracy``/``macro_f1``/``class_counts``.

A loss factory returns a callable ``(outputs, targets) -> scalar tensor``. A metric factory returns a
`Metric`: a callable ``(outputs, targets) -> dict[str, float]`` over a whole split (outputs of
every batch concatenated). A metric with ``counts = True`` reports integer tallies, which travel in
``ExecutionResponse.counts`` rather than ``metrics``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from theoden_protocol import LossSpec, MetricSpec
from torch import nn

from theoden_client.registry import Registry

__all__ = [
    "LOSSES",
    "METRICS",
    "LossSet",
    "Metric",
    "MetricSet",
    "build_losses",
    "build_metrics",
    "register_loss",
    "register_metric",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LossFactory = Callable[..., LossFn]
MetricFactory = Callable[..., "Metric"]

#: Every loss the client can create, by name.
LOSSES: Registry[LossFactory] = Registry("loss")
#: Every metric the client can compute, by name.
METRICS: Registry[MetricFactory] = Registry("metric")


def register_loss(name: str, *, override: bool = False) -> Callable[[LossFactory], LossFactory]:
    """Decorator: register ``fn(**kwargs) -> (outputs, targets) -> loss`` as ``name``."""
    return LOSSES.register(name, override=override)


def register_metric(name: str, *, override: bool = False) -> Callable[[MetricFactory], MetricFactory]:
    """Decorator: register ``fn(**kwargs) -> Metric`` as ``name``."""
    return METRICS.register(name, override=override)


class Metric:
    """A metric over a whole split; subclasses implement `__call__`."""

    #: Whether the values are integer tallies (sent as ``counts``) rather than metrics.
    counts: ClassVar[bool] = False

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Return ``{suffix: value}``; an empty suffix means the metric's own name."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class LossSet:
    """The training objective: named losses summed by weight."""

    losses: list[tuple[str, float, LossFn]]

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Return the weighted sum of every loss."""
        total = torch.zeros((), device=outputs.device)
        for _, weight, fn in self.losses:
            total = total + weight * fn(outputs, targets)
        return total


@dataclass(frozen=True, slots=True)
class MetricSet:
    """The validation metrics, and which one ranks models."""

    metrics: dict[str, Metric] = field(default_factory=dict)
    choosing_metric: str | None = None
    higher_is_better: bool = True


def build_losses(specs: list[LossSpec]) -> LossSet:
    """Create every loss in ``specs``."""
    return LossSet([(s.name, s.weight, LOSSES.get(s.name)(**s.kwargs)) for s in specs])


def build_metrics(specs: list[MetricSpec], *, choosing_metric: str | None = None, higher: bool = True) -> MetricSet:
    """Create every metric in ``specs``."""
    return MetricSet({s.name: METRICS.get(s.name)(**s.kwargs) for s in specs}, choosing_metric, higher)


@register_loss("cross_entropy")
def cross_entropy(**kwargs: Any) -> LossFn:
    """Cross-entropy on logits and class indices (``label_smoothing`` etc. as in torch)."""
    return nn.CrossEntropyLoss(**kwargs)


@register_loss("mse")
def mse(**kwargs: Any) -> LossFn:
    """Mean squared error; targets are cast to the outputs' shape and dtype."""
    loss = nn.MSELoss(**kwargs)

    def fn(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return loss(outputs, targets.to(outputs.dtype).reshape(outputs.shape))  # type: ignore[no-any-return]

    return fn


def _confusion(outputs: torch.Tensor, targets: torch.Tensor, num_classes: int | None) -> torch.Tensor:
    predictions = outputs.argmax(dim=1) if outputs.ndim > 1 else (outputs > 0).long()
    targets = targets.long()
    k = num_classes or int(max(outputs.shape[1] if outputs.ndim > 1 else 2, int(targets.max()) + 1))
    return torch.bincount(targets * k + predictions, minlength=k * k).reshape(k, k)


class Accuracy(Metric):
    """Share of samples whose arg-max prediction is the label."""

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Return ``{"": accuracy}``."""
        if len(targets) == 0:
            return {"": 0.0}
        predictions = outputs.argmax(dim=1) if outputs.ndim > 1 else (outputs > 0).long()
        return {"": float((predictions == targets.long()).float().mean())}


class MacroF1(Metric):
    """Unweighted mean of the per-class F1 scores over classes that occur in labels or predictions."""

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Return ``{"": macro_f1}``."""
        if len(targets) == 0:
            return {"": 0.0}
        cm = _confusion(outputs, targets, self.num_classes).double()
        tp = cm.diag()
        denominator = cm.sum(0) + cm.sum(1)
        present = denominator > 0
        f1 = 2 * tp[present] / denominator[present]
        return {"": float(f1.mean())}


class ClassCounts(Metric):
    """Per-class tallies: ``<label>/total`` samples and ``<label>/correct`` predictions."""

    counts: ClassVar[bool] = True

    def __init__(self, num_classes: int | None = None) -> None:
        self.num_classes = num_classes

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Return ``{"<label>/total": n, "<label>/correct": m}`` for every label."""
        if len(targets) == 0:
            return {}
        cm = _confusion(outputs, targets, self.num_classes)
        out: dict[str, float] = {}
        for label in range(cm.shape[0]):
            out[f"{label}/total"] = float(cm[label].sum())
            out[f"{label}/correct"] = float(cm[label, label])
        return out


register_metric("accuracy")(Accuracy)
register_metric("macro_f1")(MacroF1)
register_metric("class_counts")(ClassCounts)
