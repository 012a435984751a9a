"""FedAvg (McMahan et al. 2017): the sample-weighted mean of the clients' weights."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch

from theoden_server.aggregation._math import accumulator_dtype, merge_non_float
from theoden_server.aggregation.base import AggregationContext, AggregationError, Aggregator, ClientResult
from theoden_server.weights import WeightsError, mapped, mapped_tensor

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

    Each upload is folded into a running sum as it arrives, straight from its memory-mapped file
    or, for a small upload the store holds in memory, from its bytes (no copy), so server memory is one model-sized sum independent of the number of clients
    (plus the page cache of the one upload being folded), and folding an upload costs about
    what an in-memory ``acc.add_(t, alpha=w)`` does.
    Sums are kept in the global model's floating-point dtype, at least float32 (float16 and
    bfloat16 models are summed in float32, float64 models in float64): the mean of float32
    weights is then within a few float32 rounding steps of the exact mean (relative error about
    ``n * 6e-8`` for ``n`` clients in the worst case), far below what one local step changes.
    Non-float tensors (e.g. BatchNorm's integer ``num_batches_tracked``) are never averaged:
    integers take the element-wise maximum over clients, booleans the first client's value.
    Results are written in the global model's dtypes. The running sums' memory is reused from round
    to round (a fresh 100 MB buffer costs ~30 ms of page faults on a typical VM before the first add),
    so the tensors `aggregate` returns are valid until the next round starts: a subclass that keeps
    one past its round must clone it.

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
        self._spare: dict[str, torch.Tensor] = {}  # last round's running sums, reused when shapes match

    def start(self, context: AggregationContext) -> None:
        """Reset the running sums for a new round."""
        super().start(context)
        self._sums, self._others, self._total, self._broken = {}, {}, 0.0, None

    def weight_of(self, result: ClientResult) -> float:
        """Return the weight of a result (its sample count, or 1 when unweighted)."""
        if not self.weighted:
            return 1.0
        if result.num_samples is None:
            raise WeightsError(f"client {result.client} sent weights without num_samples; FedAvg needs the count")
        return float(result.num_samples)

    def add(self, result: ClientResult) -> None:
        """Fold the result into the running sums (the first result sets them), straight from its file."""
        weight = self.weight_of(result)
        first = not self._sums
        if first:  # allocate every running sum at once: no heap fragmentation between uploads
            reference = self.context.layout or result.layout
            self._sums = {
                name: self._buffer(name, info.shape, accumulator_dtype(reference.get(name, info).dtype))
                for name, info in result.layout.items()
                if info.dtype.is_floating_point
            }
            self._spare = {}
        try:
            held = contextlib.nullcontext(result.data) if result.data is not None else None
            with held or mapped(result.path, result.layout) as mm:
                for name, info in result.layout.items():
                    tensor = mapped_tensor(mm, result.layout, name)
                    if not info.dtype.is_floating_point:
                        self._others[name] = merge_non_float(self._others.get(name), tensor)
                    elif not first:
                        self._sums[name].add_(tensor, alpha=weight)
                    elif tensor.dtype == self._sums[name].dtype:  # the first upload sets the sums: one pass
                        torch.mul(tensor, weight, out=self._sums[name])
                    else:  # convert before scaling (a float16 upload times a sample count may overflow float16)
                        self._sums[name].copy_(tensor).mul_(weight)
                    del tensor  # no view of the mapping may outlive it
        except Exception as exc:  # a half-folded upload would skew the mean: the round cannot be trusted
            self._broken = f"reading the upload of {result.client} failed halfway: {exc}"
            raise
        self._total += weight
        self._count += 1

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        spare = self._spare.get(name)
        if spare is not None and tuple(spare.shape) == tuple(shape) and spare.dtype == dtype:
            return spare  # every element is overwritten by the first add
        return torch.empty(shape, dtype=dtype)

    def aggregate(self) -> Mapping[str, torch.Tensor]:
        """Return the weighted means (computed lazily as the server writes them; valid until the next round)."""
        if self._broken:
            raise AggregationError(self._broken)
        if self._count == 0:
            raise AggregationError("no client result to average")
        if self._total <= 0:
            raise AggregationError("the results' sample counts add up to 0; nothing to weight by")
        sums, self._sums = self._sums, {}
        self._spare = dict(sums)
        return _MeanMapping(sums, self._others, self._total)

    def describe(self) -> dict[str, Any]:
        """Return the settings."""
        return {"aggregator": self.name, "weighted": self.weighted}
