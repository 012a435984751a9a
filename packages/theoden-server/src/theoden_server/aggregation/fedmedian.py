"""FedMedian (Yin et al. 2018): the element-wise median of the clients' weights."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from theoden_server.aggregation._math import median, merge_non_float
from theoden_server.aggregation.base import AggregationError, Aggregator

__all__ = ["FedMedian", "PerTensorMapping"]


class PerTensorMapping(Mapping[str, torch.Tensor]):
    """New global weights computed tensor by tensor from every client's copy of that tensor.

    Memory grows with (number of clients x largest tensor), never with clients x model.
    """

    def __init__(self, aggregator: Aggregator, reduce_float: object) -> None:
        self._aggregator = aggregator
        self._reduce = reduce_float
        layout = aggregator.context.layout or aggregator.results[0].layout
        self._names = list(layout)

    def __getitem__(self, name: str) -> torch.Tensor:
        tensors = [result.tensor(name) for result in self._aggregator.results]
        if tensors[0].is_floating_point():
            return self._reduce(tensors)  # type: ignore[operator, no-any-return]
        merged: torch.Tensor | None = None
        for tensor in tensors:
            merged = merge_non_float(merged, tensor)
        assert merged is not None
        return merged

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


class FedMedian(Aggregator):
    """Element-wise median over clients (the mean of the two middle values for an even count).

    Unweighted and robust to a minority of outliers. Uploads stay on disk until the round ends;
    the median is then computed tensor by tensor. Non-float tensors take the maximum (integers)
    or the first client's value (booleans).
    """

    def aggregate(self) -> Mapping[str, torch.Tensor]:
        """Return the element-wise medians (computed lazily)."""
        if not self.results:
            raise AggregationError("no client result to take the median of")
        return PerTensorMapping(self, median)
