"""Pure tensor maths of the aggregators, free of the server (tested on their own).

Every function works on one tensor name at a time (a list holds that tensor from each client),
so callers can stream a model tensor by tensor. Floating-point maths is done in float64;
callers cast back to the model's dtype. (`FedAvg` folds uploads itself, in `accumulator_dtype`.)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch

__all__ = [
    "accumulator_dtype",
    "fedopt_step",
    "fold_weighted",
    "median",
    "merge_non_float",
    "second_moment",
    "trimmed_mean",
    "weighted_mean",
]

#: Elements folded at a time (bounds the temporary float64 copy to 2 MiB).
_SLICE = 1 << 18

FedOptVariant = Literal["adagrad", "adam", "yogi"]


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype a running sum of ``dtype`` tensors is kept in: ``dtype``, but at least float32."""
    return torch.promote_types(dtype, torch.float32)


def fold_weighted(
    acc: torch.Tensor | None, tensor: torch.Tensor, weight: float, *, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """Add ``weight * tensor`` to the float64 running sum ``acc`` (created when ``None``) and return it.

    The tensor is converted to float64 in slices of at most ``_SLICE`` elements; with ``scratch``
    (a float64 tensor of at least that many elements) the conversion reuses it and folding
    allocates nothing, which keeps a long-running server's heap from fragmenting.
    """
    if acc is None:
        acc = torch.zeros(tensor.shape, dtype=torch.float64)
    flat_acc, flat = acc.view(-1), tensor.reshape(-1)
    for start in range(0, flat.numel(), _SLICE):
        part = flat[start : start + _SLICE]
        if scratch is not None and part.dtype != torch.float64:
            converted = scratch[: part.numel()]
            converted.copy_(part)
            part = converted
        flat_acc[start : start + part.numel()].add_(part, alpha=weight)
    return acc


def merge_non_float(current: torch.Tensor | None, tensor: torch.Tensor) -> torch.Tensor:
    """Combine a non-float tensor across clients: integers take the element-wise maximum, booleans the first.

    Integer buffers are counters (BatchNorm's ``num_batches_tracked``) for which an average
    makes no sense; the maximum is the count of the client that saw most batches.
    """
    if current is None:
        return tensor.clone()
    if tensor.dtype == torch.bool:
        return current
    return torch.maximum(current, tensor)


def weighted_mean(tensors: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Return ``sum(w_i * t_i) / sum(w_i)`` in float64."""
    if len(tensors) != len(weights) or not tensors:
        raise ValueError("weighted_mean needs as many weights as tensors, and at least one")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights sum to zero")
    acc: torch.Tensor | None = None
    for tensor, weight in zip(tensors, weights, strict=True):
        acc = fold_weighted(acc, tensor, float(weight))
    assert acc is not None
    return acc.div_(total)


def median(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """Element-wise median in float64; for an even count, the mean of the two middle values."""
    if not tensors:
        raise ValueError("median of no tensors")
    stacked = torch.stack([t.to(torch.float64) for t in tensors]).sort(dim=0).values
    n = stacked.shape[0]
    if n % 2:
        return stacked[n // 2].clone()
    return (stacked[n // 2 - 1] + stacked[n // 2]) / 2


def trimmed_mean(tensors: Sequence[torch.Tensor], beta: float) -> torch.Tensor:
    """Element-wise mean after dropping the ``floor(beta * n)`` smallest and largest values, in float64."""
    if not 0 <= beta < 0.5:
        raise ValueError("beta must be in [0, 0.5)")
    n = len(tensors)
    if n == 0:
        raise ValueError("trimmed mean of no tensors")
    k = int(beta * n)
    stacked = torch.stack([t.to(torch.float64) for t in tensors]).sort(dim=0).values
    return stacked[k : n - k].mean(dim=0)


def second_moment(variant: FedOptVariant, v: torch.Tensor, delta: torch.Tensor, beta_2: float) -> torch.Tensor:
    """Return the new second moment of FedAdagrad, FedAdam or FedYogi (Reddi et al. 2021, Alg. 2)."""
    square = delta * delta
    if variant == "adagrad":
        return v + square
    if variant == "adam":
        return beta_2 * v + (1 - beta_2) * square
    if variant == "yogi":
        return v - (1 - beta_2) * square * torch.sign(v - square)
    raise ValueError(f"unknown FedOpt variant {variant!r}")


def fedopt_step(
    x: torch.Tensor,
    mean: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    *,
    variant: FedOptVariant,
    eta: float,
    beta_1: float,
    beta_2: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One server step of adaptive federated optimisation; returns ``(x_new, m_new, v_new)`` in float64.

    ``delta = mean - x``; ``m = beta_1 * m + (1 - beta_1) * delta``; ``v`` per `second_moment`;
    ``x_new = x + eta * m / (sqrt(v) + tau)``.
    """
    x64 = x.to(torch.float64)
    delta = mean.to(torch.float64) - x64
    m_new = beta_1 * m.to(torch.float64) + (1 - beta_1) * delta
    v_new = second_moment(variant, v.to(torch.float64), delta, beta_2)
    x_new = x64 + eta * m_new / (torch.sqrt(v_new) + tau)
    return x_new, m_new, v_new
