"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the clients' weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import torch

from theoden_server.aggregation._math import _SLICE, fold_weighted, merge_non_float
from theoden_server.aggregation.base import AggregationContext, AggregationError, Aggregator, ClientResult
from theoden_server.weights import WeightsError, read_tensor

__all__ = ["FedAvg"]


class _MeanMapping(Mapping[str, torch.Tensor]):
    """The final means, computed on access; each running sum is dropped once read (memory stays flat)."""

    def __init__(self, sums: dict[str, torch.Tensor], others: dict[str, torch.Tensor], total: float) -> None:
        self._sums = sums
        self._others = others
        self._total = total
        self._names = [*sums, *others]

    def __getitem__(self, name: str) -> torch.Tensor:
        if name in self._others:
            return self._others[name]
        acc = self._sums.pop(name)
        return acc.div_(self._total)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class FedAvg(Aggregator):
    """Federated averaging weighted by each client's sample count.

    Each upload is folded into a float64 running sum as it arrives (tensor by tensor, read from
    the file), so server memory is about twice the model (the float64 sums), independent of the
    number of clients. Non-float tensors (e.g. BatchNorm's integer ``num_batches_tracked``) are
    never averaged: integers take the element-wise maximum over clients, booleans the first
    client's value. Float results are cast back to the global model's dtype when written.

    Args:
        weighted: Weight by ``num_samples`` (a result without one is rejected); ``False`` gives
            every client the same weight.
    """

    def __init__(self, *, weighted: bool = True) -> None:
        super().__init__()
        self.weighted = weighted
        self._sums: dict[str, torch.Tensor] = {}
        self._others: dict[str, torch.Tensor] = {}
        self._total = 0.0
        self._broken: str | None = None
        self._scratch: torch.Tensor | None = None
        self._buffer: torch.Tensor | None = None

    def start(self, context: AggregationContext) -> None:
        """Reset the running sums for a new round."""
        super().start(context)
        self._sums, self._others, self._total, self._broken = {}, {}, 0.0, None
        self._scratch = self._buffer = None

    def weight_of(self, result: ClientResult) -> float:
        """Return the weight of a result (its sample count, or 1 when unweighted)."""
        if not self.weighted:
            return 1.0
        if result.num_samples is None:
            raise WeightsError(f"client {result.client} sent weights without num_samples; FedAvg needs the count")
        return float(result.num_samples)

    def add(self, result: ClientResult) -> None:
        """Fold the result into the running sums, one tensor at a time."""
        weight = self.weight_of(result)
        if not self._sums:  # allocate every running sum at once: no heap fragmentation between uploads
            self._sums = {
                name: torch.zeros(info.shape, dtype=torch.float64)
                for name, info in result.layout.items()
                if info.dtype.is_floating_point
            }
            self._scratch = torch.empty(_SLICE, dtype=torch.float64)
            self._buffer = torch.empty(
                max((info.end - info.begin for info in result.layout.values()), default=0), dtype=torch.uint8
            )
        try:
            with result.path.open("rb") as f:
                for name in result.layout:
                    tensor = read_tensor(f, result.layout, name, buffer=self._buffer)
                    if tensor.is_floating_point():
                        self._sums[name] = fold_weighted(self._sums.get(name), tensor, weight, scratch=self._scratch)
                    else:
                        self._others[name] = merge_non_float(self._others.get(name), tensor)
        except Exception as exc:  # a half-folded upload would skew the mean: the round cannot be trusted
            self._broken = f"reading the upload of {result.client} failed halfway: {exc}"
            raise
        self._total += weight
        self._count += 1

    def aggregate(self) -> Mapping[str, torch.Tensor]:
        """Return the weighted means (computed lazily as the server writes them)."""
        if self._broken:
            raise AggregationError(self._broken)
        if self._count == 0:
            raise AggregationError("no client result to average")
        if self._total <= 0:
            raise AggregationError("the results' sample counts add up to 0; nothing to weight by")
        sums, self._sums = self._sums, {}
        return _MeanMapping(sums, self._others, self._total)

    def describe(self) -> dict[str, Any]:
        """Return the settings."""
        return {"aggregator": self.name, "weighted": self.weighted}
