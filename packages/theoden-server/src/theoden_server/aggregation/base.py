"""The `Aggregator` base: what every aggregation strategy (built-in or yours) implements.

An aggregator lives for the whole run. Each round the server calls `Aggregator.start` with an
`AggregationContext`, `Aggregator.add` once per accepted client upload (on the server's worker
thread, as the upload arrives; uploads were already checked against the global model's layout),
and `Aggregator.aggregate` once the round's clients are done. ``aggregate`` returns the new
global weights as a mapping from tensor name to tensor; the server streams it into the store in
the global model's layout (so a lazy mapping that computes each tensor on access keeps memory low).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from theoden_protocol import BlobRef

from theoden_server.storage import BlobStore
from theoden_server.weights import Layout, iter_tensors, load_tensors, mapped_tensor, read_layout, read_tensor

__all__ = ["AggregationContext", "AggregationError", "Aggregator", "ClientResult"]


class AggregationError(RuntimeError):
    """An aggregation cannot produce a model (no usable results, missing global model, ...)."""


class ClientResult:
    """One client's upload for a round: its safetensors weights, layout and sample count.

    A small upload may be held in memory by the store (``data``); its file (``path``) is then
    written only when something asks for it, so aggregators that can should read ``data`` (or use
    `tensors` / `tensor` / `load`, which do) and fall back to ``path``.

    Args:
        client: The client that uploaded the weights.
        blob: The upload's reference.
        layout: The upload's tensors (checked against the global model).
        path: The upload's file; without it, ``store`` gives it on first access.
        num_samples: The client's sample count for this round.
        metrics: The client's metrics for this round.
        data: The upload's bytes, when held in memory.
        store: The store holding the blob (needed when ``path`` is not given).
    """

    __slots__ = ("_path", "_store", "blob", "client", "data", "layout", "metrics", "num_samples")

    def __init__(
        self,
        *,
        client: str,
        blob: BlobRef,
        layout: Layout,
        path: Path | None = None,
        num_samples: int | None = None,
        metrics: Mapping[str, float] | None = None,
        data: bytes | None = None,
        store: BlobStore | None = None,
    ) -> None:
        if path is None and store is None:
            raise ValueError("a ClientResult needs the upload's path or the store that holds it")
        self.client = client
        self.blob = blob
        self.layout = layout
        self.num_samples = num_samples
        self.metrics: Mapping[str, float] = dict(metrics or {})
        self.data = data
        self._path = path
        self._store = store

    @property
    def path(self) -> Path:
        """The upload's safetensors file (written from memory first if the store held it there)."""
        if self._path is None:
            assert self._store is not None
            self._path = self._store.path(self.blob.id)
        return self._path

    def __repr__(self) -> str:
        return f"ClientResult(client={self.client!r}, blob={self.blob.id[:12]}, num_samples={self.num_samples})"

    def tensors(self, *, reuse_buffer: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield the client's tensors one at a time (see `iter_tensors` for ``reuse_buffer``)."""
        if self.data is not None:
            return ((name, self.tensor(name)) for name in self.layout)
        return iter_tensors(self.path, self.layout, reuse_buffer=reuse_buffer)

    def tensor(self, name: str) -> torch.Tensor:
        """Read one tensor of the client's upload (a copy: safe to keep and modify)."""
        if self.data is not None:
            return mapped_tensor(self.data, self.layout, name).clone()
        with self.path.open("rb") as f:
            return read_tensor(f, self.layout, name)

    def load(self) -> dict[str, torch.Tensor]:
        """Load every tensor of the upload (memory grows with the model)."""
        if self.data is not None:
            return dict(self.tensors())
        return load_tensors(self.path)


@dataclass(kw_only=True)
class AggregationContext:
    """What an aggregator knows about the round: its number and the current global model."""

    round: int | None = None
    global_model: BlobRef | None = None
    global_path: Path | None = None
    layout: Layout | None = None

    def __post_init__(self) -> None:
        if self.layout is None and self.global_path is not None:
            self.layout = read_layout(self.global_path)

    def global_tensor(self, name: str) -> torch.Tensor:
        """Read one tensor of the current global model."""
        if self.global_path is None or self.layout is None:
            raise AggregationError("there is no global model yet; initialise one before this aggregator runs")
        with self.global_path.open("rb") as f:
            return read_tensor(f, self.layout, name)

    def load_global(self) -> dict[str, torch.Tensor]:
        """Load the whole current global model."""
        if self.global_path is None:
            raise AggregationError("there is no global model yet; initialise one before this aggregator runs")
        return load_tensors(self.global_path)


class Aggregator(ABC):
    """Base of every aggregator: collects a round's results and turns them into new global weights.

    The default `add` keeps the `ClientResult` (a file reference, not tensors); subclasses that
    can fold results as they arrive (like `FedAvg`) override it to keep memory flat. Calls come
    from one worker thread, one at a time.
    """

    def __init__(self) -> None:
        self.context = AggregationContext()
        self.results: list[ClientResult] = []
        self._count = 0

    @property
    def name(self) -> str:
        """The aggregator's name for logs and notifications."""
        return type(self).__name__

    @property
    def num_results(self) -> int:
        """How many results were added this round."""
        return self._count

    def start(self, context: AggregationContext) -> None:
        """Begin a round: forget the previous round's results."""
        self.context = context
        self.results = []
        self._count = 0

    def add(self, result: ClientResult) -> None:
        """Take one accepted client result (raise to reject it; the client then counts as failed)."""
        self.results.append(result)
        self._count += 1

    @abstractmethod
    def aggregate(self) -> Mapping[str, torch.Tensor]:
        """Return the new global weights (every tensor of the global model's layout).

        Raises:
            AggregationError: no model can be produced from the results.
        """

    def describe(self) -> dict[str, Any]:
        """Return the aggregator's settings, for logs and the metrics file."""
        return {"aggregator": self.name}
