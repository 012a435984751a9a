"""Trimmed mean (Yin et al. 2018): the element-wise mean after dropping the extremes."""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from typing import Any

import torch

from theoden_server.aggregation._math import trimmed_mean
from theoden_server.aggregation.base import AggregationError, Aggregator
from theoden_server.aggregation.fedmedian import PerTensorMapping

__all__ = ["TrimmedMean"]


class TrimmedMean(Aggregator):
    """Element-wise mean after dropping the ``floor(beta * n)`` largest and smallest values.

    Unweighted. Non-float tensors take the maximum (integers) or the first client's value.

    Args:
        beta: Fraction trimmed from each end, in ``[0, 0.5)``.
    """

    def __init__(self, *, beta: float = 0.2) -> None:
        super().__init__()
        if not 0 <= beta < 0.5:
            raise ValueError("beta must be in [0, 0.5)")
        self.beta = beta

    def aggregate(self) -> Mapping[str, torch.Tensor]:
        """Return the trimmed means (computed lazily)."""
        if not self.results:
            raise AggregationError("no client result to average")
        return PerTensorMapping(self, partial(trimmed_mean, beta=self.beta))

    def describe(self) -> dict[str, Any]:
        """Return the settings."""
        return {"aggregator": self.name, "beta": self.beta}
