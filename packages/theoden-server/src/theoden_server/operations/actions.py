"""Actions and action-like distributions: initialise the global model, aggregate, exit.

`Aggregation` works together with the round's `ClosedDistribution`: its `Aggregation.begin`
is the distribution's ``on_init`` hook (the aggregator starts a round), its `Aggregation.collect`
the ``on_client_finish`` hook (each upload is checked against the global model and handed to the
aggregator as it arrives, on the worker thread), and `Aggregation.perform` runs as the next item
of the queue, once every client is final, to write the new global model.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from theoden_protocol import BlobRef, ExecutionResponse, Exit, ModelSpec, SendModel

from theoden_server.aggregation.base import AggregationContext, AggregationError, Aggregator, ClientResult
from theoden_server.operations.distributions import ClientEntry, ClosedDistribution, DistributionStatus
from theoden_server.operations.instructions import Action
from theoden_server.operations.selectors import NClients, Selector
from theoden_server.watchers.base import AggregationCompletedNotification, RoundCompletedNotification
from theoden_server.weights import (
    Layout,
    WeightsError,
    build_model,
    check_layout,
    layout_of_bytes,
    read_layout,
    save_tensors,
    state_dict_of,
)

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = [
    "Aggregation",
    "ExitRun",
    "InitGlobalModel",
    "InitGlobalModelFromClient",
    "LoadGlobalModel",
    "client_result",
    "owned_upload",
]

logger = logging.getLogger(__name__)


def owned_upload(server: Server, client: str, response: ExecutionResponse, *, blob_name: str = "model") -> BlobRef:
    """The stored blob ``client`` reported as ``blob_name`` in ``response``, checked to be the client's own upload.

    Raises:
        WeightsError: no such blob reported, not in the store, or uploaded by someone else.
    """
    ref = response.blobs.get(blob_name)
    if ref is None:
        raise WeightsError(f"client {client} reported no {blob_name!r} blob (SendModel must upload the weights)")
    if not server.store.exists(ref.id) or ref.sha256 != ref.id:
        raise WeightsError(f"blob {ref.id} reported by client {client} is not in the store")
    if client not in server.store.owners(ref.id):
        raise WeightsError(f"blob {ref.id} was not uploaded by client {client}")
    return server.store.ref(ref.id)


def client_result(
    server: Server,
    client: str,
    response: ExecutionResponse,
    reference: Layout | None,
    *,
    blob_name: str = "model",
    upload: BlobRef | None = None,
) -> ClientResult:
    """Check a client's uploaded weights and return them as a `ClientResult`.

    ``upload`` is the blob `owned_upload` already returned for this response (else it is looked up).

    Raises:
        WeightsError: no upload, an upload the client does not own, not a safetensors file, or
            weights that do not fit ``reference`` (missing / unknown keys, other shapes).
    """
    blob = upload if upload is not None else owned_upload(server, client, response, blob_name=blob_name)
    data = server.store.held(blob.id)  # a small upload held in memory is read from there, not written
    path = server.store.path(blob.id) if data is None else None
    layout = read_layout(path) if path is not None else layout_of_bytes(data or b"")
    if reference is not None:
        check_layout(reference, layout)
    return ClientResult(
        client=client,
        blob=blob,
        path=path,
        layout=layout,
        num_samples=response.num_samples,
        metrics=response.metrics,
        data=data,
        store=server.store,
    )


class InitGlobalModel(Action):
    """Build the global model on the server from a `ModelSpec` (server-side model registry, e.g. ``mlp``).

    Args:
        model: The model to build; its name must be registered with `register_model`.
        seed: Seed of the initial weights.
    """

    def __init__(self, model: ModelSpec, *, seed: int = 0, name: str | None = None) -> None:
        super().__init__(name=name)
        self.model = model
        self.seed = seed

    def perform(self, server: Server) -> None:
        """Build the model and publish its weights as the global model."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            state = state_dict_of(build_model(self.model))
        ref = save_tensors(
            server.store, state, metadata={"model": self.model.name, "seed": str(self.seed)}, public=True
        )
        server.set_global_model(ref, source=f"model spec {self.model.name!r}")


class LoadGlobalModel(Action):
    """Take the global model from a safetensors file on the server."""

    def __init__(self, path: str | os.PathLike[str], *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.path = Path(path)

    def perform(self, server: Server) -> None:
        """Check the file, store it and publish it as the global model."""
        read_layout(self.path)
        ref = server.store.put_file(self.path)
        server.set_global_model(ref, source=f"file {self.path.name}")


class InitGlobalModelFromClient(ClosedDistribution):
    """Take the global model from one randomly chosen client's weights (a `SendModel` to one client).

    The run fails loudly if that client fails or sends weights that are not a valid safetensors file.

    Args:
        seed: Seed of the random choice.
        selector: Pick the client another way (default: one at random).
    """

    def __init__(self, *, seed: int | None = 0, selector: Selector | None = None, name: str | None = None) -> None:
        super().__init__(SendModel(), selector or NClients(1, seed=seed), name=name or "InitGlobalModelFromClient")

    def on_client_finish(self, server: Server, client: str, response: ExecutionResponse) -> None:
        """Publish the client's weights as the global model."""
        result = client_result(server, client, response, None)
        server.set_global_model(result.blob, source=f"client {client}")

    def on_finish(self, server: Server) -> None:
        """Fail the run if no client provided the weights."""
        if not self.finished_clients():
            reasons = "; ".join(f"{c}: {e}" for c, e in self.failed_clients().items()) or "no client was available"
            server.fail(f"could not initialise the global model from a client ({reasons})")


class Aggregation(Action):
    """Turn a round's uploads into the next global model with ``aggregator``.

    Use its `begin` and `collect` as the round distribution's ``on_init`` and ``on_client_finish``
    hooks (`TrainingRound` does). With fewer usable results than ``min_successful_clients`` (or
    the server's default) the run fails loudly; with none and no minimum, the global model stays
    as it was and an `AggregationCompletedNotification` says why. Once the round is over, the
    clients' uploads it received are deleted from the store (the global models stay), unless the
    server keeps uploads (`Server.keep_uploads`).

    Args:
        aggregator: The strategy (kept across rounds, e.g. for FedOpt's moments).
        round: The communication round.
        min_successful_clients: Fewest usable results to aggregate; ``None`` takes the server's.
    """

    def __init__(
        self,
        aggregator: Aggregator,
        *,
        round: int | None = None,
        min_successful_clients: int | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"Aggregation[{aggregator.name}] round {round}")
        self.aggregator = aggregator
        self.round = round
        self.min_successful_clients = min_successful_clients
        self.distribution: ClosedDistribution | None = None
        self._uploads: list[str] = []  # the clients' blobs this round received, released after it

    def begin(self, server: Server, distribution: ClosedDistribution) -> None:
        """Start the aggregator's round against the current global model."""
        self.distribution = distribution
        self._uploads = []
        model = server.global_model
        path = None if model is None else server.store.path(model.id)
        self.aggregator.start(AggregationContext(round=self.round, global_model=model, global_path=path))

    def collect(
        self, server: Server, distribution: ClosedDistribution, client: str, response: ExecutionResponse
    ) -> None:
        """Check one client's upload and hand it to the aggregator (raises to reject it)."""
        context = self.aggregator.context
        upload = owned_upload(server, client, response)
        self._uploads.append(upload.id)  # released after the round, whether it is accepted or not
        result = client_result(server, client, response, context.layout, upload=upload)
        if context.layout is None:  # no global model yet: the first upload defines the layout
            context.layout = result.layout
        self.aggregator.add(result)

    def perform(self, server: Server) -> None:
        """Write the new global model (or keep the old one, or fail the run, per the minimum)."""
        try:
            self._perform(server)
        finally:
            uploads, self._uploads = self._uploads, []
            server.release_uploads(uploads)

    def _perform(self, server: Server) -> None:
        failed = {} if self.distribution is None else self.distribution.failed_clients()
        selected = 0 if self.distribution is None else len(self.distribution.selected)
        usable = self.aggregator.num_results
        minimum = self.min_successful_clients
        if minimum is None:
            minimum = server.min_successful_clients
        if minimum is not None and usable < minimum:
            details = "; ".join(f"{c}: {e}" for c, e in failed.items()) or "no client took part"
            server.fail(
                f"round {self.round}: {usable} of {selected} clients returned usable results, fewer than the "
                f"minimum of {minimum} ({details})"
            )
            return
        if usable == 0:
            message = f"round {self.round}: no usable results from {selected} clients; the global model stays as it was"
            logger.warning(message)
            self._announce(server, server.global_model, failed, message)
            return
        try:
            tensors = self.aggregator.aggregate()
            layout = self.aggregator.context.layout
            metadata = {"round": str(self.round), "aggregator": self.aggregator.name}
            ref = save_tensors(server.store, tensors, layout=layout, metadata=metadata, public=True)
        except (AggregationError, WeightsError) as exc:
            server.fail(f"round {self.round}: {self.aggregator.name} could not aggregate: {exc}")
            return
        server.set_global_model(ref, round=self.round, source=self.aggregator.name)
        self._announce(server, ref, failed, "")

    def _announce(self, server: Server, model: Any, failed: dict[str, str], message: str) -> None:
        server.watchers.notify(
            AggregationCompletedNotification(
                round=self.round,
                model=model,
                aggregator=self.aggregator.name,
                num_results=self.aggregator.num_results,
                failed_clients=failed,
                message=message,
            )
        )
        server.watchers.notify(RoundCompletedNotification(round=self.round, model=model))


class ExitRun(ClosedDistribution):
    """Tell every online client to exit, then end the run (whatever is left of the plan is dropped).

    The distribution does not wait for the clients to confirm: a client counts once it got the command.
    """

    gated: ClassVar[bool] = False  # ending the run never waits for the permanent conditions

    def __init__(self, reason: str = "the run is complete", *, name: str | None = None) -> None:
        super().__init__(Exit(reason=reason), name=name or "ExitRun")
        self.reason = reason

    def start(self, server: Server) -> None:
        """Address every online client, ready or not."""
        self.started = True
        self.selected = server.topology.online_clients()
        self.entries = {client: ClientEntry(DistributionStatus.UNREQUESTED) for client in self.selected}
        self.on_init(server)
        self._check_complete(server)

    def _settled(self, entry: ClientEntry) -> bool:
        return entry.status is not DistributionStatus.UNREQUESTED

    def on_finish(self, server: Server) -> None:
        """End the plan."""
        server.operations.end_plan(self.reason)
