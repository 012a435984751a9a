"""Distributions: hand commands to clients and follow each client's status.

`ClosedDistribution` addresses the clients a selector picks when it starts and keeps a status
table per client; it is done when every selected client finished or failed (a client that goes
silent is failed by the heartbeat timeout, so no distribution waits forever). `OpenDistribution`
(in `theoden_server.operations.open_distribution`) holds the commands every client gets first
when it joins (load its data set, its partition, ...).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import msgspec
from theoden_protocol import Command, CommandStatus, Conditional, ExecutionResponse, Repeat, Sequential, StatusUpdate
from theoden_protocol import new_uuid as _new_uuid

from theoden_server.errors import Conflict
from theoden_server.operations.instructions import Distribution
from theoden_server.operations.selectors import AllClients, Selector
from theoden_server.watchers.base import (
    CommandFinishedNotification,
    MetricNotification,
    RoundCompletedNotification,
)

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = [
    "ClientEntry",
    "ClosedDistribution",
    "DistributionStatus",
    "renew_uuids",
    "replace_nested",
]

Customize = Callable[[str, int, Command], Command]
InitHook = Callable[["Server", "ClosedDistribution"], None]
ClientHook = Callable[["Server", "ClosedDistribution", str, ExecutionResponse], None]
FinishHook = Callable[["Server", "ClosedDistribution"], None]


class DistributionStatus(enum.StrEnum):
    """Where one client stands in a distribution."""

    EXCLUDED = "excluded"
    """Not addressed by this distribution."""
    UNREQUESTED = "unrequested"
    """Selected; the client has not pulled its command yet."""
    SEND = "send"
    """The command was handed to the client."""
    STARTED = "started"
    """The client reported that it began."""
    WAIT_FOR_RESPONSE = "wait_for_response"
    """The client reported its result; the server is still processing it (e.g. folding weights)."""
    FINISHED = "finished"
    """Done and accepted."""
    FAILED = "failed"
    """Failed on the client, rejected by the server, or timed out."""

    @property
    def is_final(self) -> bool:
        """Whether the entry can change no more."""
        return self in (DistributionStatus.FINISHED, DistributionStatus.FAILED, DistributionStatus.EXCLUDED)


@dataclass
class ClientEntry:
    """One client's row in a distribution's status table."""

    status: DistributionStatus
    command: Command | None = None
    sent_at: float | None = None
    response: ExecutionResponse | None = None
    error: str | None = None


def renew_uuids(command: Command) -> Command:
    """Return a copy of ``command`` in which it and every nested command have fresh uuids."""
    changes: dict[str, Any] = {"uuid": _new_uuid()}
    if isinstance(command, Sequential):
        changes["commands"] = [renew_uuids(c) for c in command.commands]
    elif isinstance(command, Conditional):
        changes["then"] = renew_uuids(command.then)
        if command.otherwise is not None:
            changes["otherwise"] = renew_uuids(command.otherwise)
    elif isinstance(command, Repeat):
        changes["command"] = renew_uuids(command.command)
    return msgspec.structs.replace(command, **changes)


def replace_nested(command: Command, kind: type[Command], **changes: Any) -> Command:
    """Return ``command`` with ``changes`` applied to it and every nested command of type ``kind``.

    Handy for per-client customisation, e.g. ``replace_nested(cmd, SetPartition, part=index)``.
    """
    nested: dict[str, Any] = {}
    if isinstance(command, Sequential):
        nested["commands"] = [replace_nested(c, kind, **changes) for c in command.commands]
    elif isinstance(command, Conditional):
        nested["then"] = replace_nested(command.then, kind, **changes)
        if command.otherwise is not None:
            nested["otherwise"] = replace_nested(command.otherwise, kind, **changes)
    elif isinstance(command, Repeat):
        nested["command"] = replace_nested(command.command, kind, **changes)
    if isinstance(command, kind):
        nested.update(changes)
    return msgspec.structs.replace(command, **nested) if nested else command


def _final_update(
    server: Server, client: str, entry: ClientEntry, update: StatusUpdate, *, name: str, round: int | None
) -> None:
    """Refuse updates for final entries; apply STARTED/RECEIVED; leave FINISHED/FAILED to the caller."""
    if entry.status.is_final or entry.status is DistributionStatus.WAIT_FOR_RESPONSE:
        raise Conflict(
            f"command {update.command_uuid} of client {client} is already {entry.status.value}; "
            f"no further {update.status.value} update is accepted"
        )
    if update.status is CommandStatus.STARTED:
        entry.status = DistributionStatus.STARTED


def _announce(server: Server, client: str, entry: ClientEntry, *, name: str, round: int | None, phase: str) -> None:
    assert entry.command is not None
    status = CommandStatus.FINISHED if entry.status is DistributionStatus.FINISHED else CommandStatus.FAILED
    server.watchers.notify(
        CommandFinishedNotification(
            client=client,
            command_uuid=entry.command.uuid,
            status=status,
            response=entry.response,
            error=entry.error,
            distribution=name,
            round=round,
        )
    )
    response = entry.response
    if status is CommandStatus.FINISHED and response is not None and response.metrics:
        server.watchers.notify(
            MetricNotification(
                client=client,
                round=round,
                metrics=dict(response.metrics),
                num_samples=response.num_samples,
                phase=phase,
            )
        )


class ClosedDistribution(Distribution):
    """Hands ``command`` to the clients a selector picks when the distribution starts.

    Each selected client gets its own copy with fresh uuids, customised by ``customize(client,
    index, command)`` (index = position among the selected clients). Server-side hooks:
    ``on_init(server, dist)`` when it starts (keep it quick), ``on_client_finish(server, dist,
    client, response)`` for each FINISHED report (run on the worker thread; raising rejects the
    result and fails that client with the error text), and ``on_finish(server, dist)`` once every
    client is final (worker thread). Subclasses may override the methods of the same names.

    Args:
        command: The command (template) to send.
        selector: Which available clients to address.
        customize: Per-client customisation of the command.
        on_init: Hook run when the distribution starts.
        on_client_finish: Hook run for each client's FINISHED result.
        on_finish: Hook run once every selected client is final.
        round: Communication round the distribution belongs to (for metrics).
        phase: Label of the metrics it produces (``round``, ``validation``, ...).
        completes_round: Announce the end of ``round`` when done (for validation-only rounds).
        timeout: Fail clients whose command is not final after this many seconds from hand-out.
        name: Name for logs.
    """

    def __init__(
        self,
        command: Command,
        selector: Selector | None = None,
        *,
        customize: Customize | None = None,
        on_init: InitHook | None = None,
        on_client_finish: ClientHook | None = None,
        on_finish: FinishHook | None = None,
        round: int | None = None,
        phase: str = "round",
        completes_round: bool = False,
        timeout: float | None = None,
        name: str | None = None,
    ) -> None:
        super().__init__(name=name or f"{type(self).__name__}[{type(command).__name__}]")
        self.command = command
        self.selector = selector or AllClients()
        self.customize = customize
        self._on_init = on_init
        self._on_client_finish = on_client_finish
        self._on_finish = on_finish
        self.round = round
        self.phase = phase
        self.completes_round = completes_round
        self.timeout = timeout
        self.entries: dict[str, ClientEntry] = {}
        self.selected: list[str] = []
        self._done = False
        self._finishing = False
        self._unsettled_from = 0  # selected[:_unsettled_from] are settled (see _check_complete)

    # -- hooks (override or pass callables) ----------------------------------------------------

    def on_init(self, server: Server) -> None:
        """Run when the distribution starts (under the manager's lock: keep it quick)."""
        if self._on_init is not None:
            self._on_init(server, self)

    def on_client_finish(self, server: Server, client: str, response: ExecutionResponse) -> None:
        """Check or use one client's result (worker thread); raise to reject it."""
        if self._on_client_finish is not None:
            self._on_client_finish(server, self, client, response)

    def on_finish(self, server: Server) -> None:
        """Run once every selected client is final (worker thread)."""
        if self._on_finish is not None:
            self._on_finish(server, self)

    def command_for_client(self, client: str, index: int) -> Command:
        """Return the command for ``client`` (override for per-client commands)."""
        command = renew_uuids(self.command)
        return command if self.customize is None else self.customize(client, index, command)

    # -- table ---------------------------------------------------------------------------------

    @property
    def done(self) -> bool:
        """Whether every selected client is final and the finish hook ran."""
        return self._done

    def statuses(self) -> dict[str, DistributionStatus]:
        """Return each client's status."""
        return {name: entry.status for name, entry in self.entries.items()}

    def finished_clients(self) -> list[str]:
        """Clients whose command finished and was accepted."""
        return [n for n in self.selected if self.entries[n].status is DistributionStatus.FINISHED]

    def failed_clients(self) -> dict[str, str]:
        """Clients that failed, with the reason."""
        return {
            n: self.entries[n].error or "failed"
            for n in self.selected
            if self.entries[n].status is DistributionStatus.FAILED
        }

    def start(self, server: Server) -> None:
        """Select the clients, build the table and run ``on_init``."""
        super().start(server)
        self.selected = self.selector.select(server.ready_clients(), server)
        for client in server.topology.clients():
            self.entries[client] = ClientEntry(DistributionStatus.EXCLUDED)
        for client in self.selected:
            self.entries[client] = ClientEntry(DistributionStatus.UNREQUESTED)
        self.on_init(server)
        self._check_complete(server)

    def command_for(self, server: Server, client: str) -> Command | None:
        """Hand out the client's command (again, if it pulls before confirming it got it)."""
        entry = self.entries.get(client)
        if entry is None:
            return None
        if entry.status is DistributionStatus.UNREQUESTED:
            entry.command = self.command_for_client(client, self.selected.index(client))
            entry.status = DistributionStatus.SEND
            entry.sent_at = time.monotonic()
            self._check_complete(server)
            return entry.command
        if entry.status is DistributionStatus.SEND:
            return entry.command  # the reply carrying it may have been lost; same uuid, idempotent
        return None

    def on_status(self, server: Server, client: str, update: StatusUpdate) -> None:
        """Apply a client's status update to its row."""
        entry = self.entries[client]
        _final_update(server, client, entry, update, name=self.name, round=self.round)
        if update.status is CommandStatus.FAILED:
            error = update.response.error if update.response is not None else None
            self._fail(server, client, error or "the client reported a failure without a message", update.response)
        elif update.status is CommandStatus.FINISHED:
            response = update.response or ExecutionResponse()
            entry.response = response
            entry.status = DistributionStatus.WAIT_FOR_RESPONSE
            server.operations.submit(lambda: self._process_result(server, client, response), f"{self.name}: {client}")

    def _process_result(self, server: Server, client: str, response: ExecutionResponse) -> None:
        """Worker thread: run the per-client hook, then make the row final."""
        error: str | None = None
        try:
            self.on_client_finish(server, client, response)
        except Exception as exc:
            error = f"result rejected by the server: {exc}"
        with server.operations.lock:
            entry = self.entries[client]
            if entry.status is not DistributionStatus.WAIT_FOR_RESPONSE:
                return  # failed meanwhile (e.g. timed out); nothing to do
            if error is None:
                entry.status = DistributionStatus.FINISHED
                _announce(server, client, entry, name=self.name, round=self.round, phase=self.phase)
                self._check_complete(server)
            else:
                self._fail(server, client, error, response)
        server.operations.changed_for(client)  # completing the distribution advances (and wakes) on its own

    def _fail(self, server: Server, client: str, error: str, response: ExecutionResponse | None = None) -> None:
        entry = self.entries[client]
        if entry.status.is_final:
            return
        entry.status = DistributionStatus.FAILED
        entry.error = error
        entry.response = response if response is not None else entry.response
        if entry.command is not None:
            _announce(server, client, entry, name=self.name, round=self.round, phase=self.phase)
        self._check_complete(server)

    def client_lost(self, server: Server, client: str, reason: str) -> None:
        """Fail the client's open command."""
        entry = self.entries.get(client)
        if entry is not None and not entry.status.is_final:
            self._fail(server, client, reason)

    def check_timeouts(self, server: Server, now: float) -> None:
        """Fail the commands handed out more than ``timeout`` seconds ago."""
        if self.timeout is None:
            return
        for client, entry in list(self.entries.items()):
            if entry.sent_at is not None and not entry.status.is_final and now - entry.sent_at > self.timeout:
                self._fail(server, client, f"no result within the distribution's timeout of {self.timeout:g} s")

    def _settled(self, entry: ClientEntry) -> bool:
        """Whether ``entry`` no longer holds the distribution open."""
        return entry.status.is_final

    def _check_complete(self, server: Server) -> None:
        # Settling is one-way, so the clients before the cursor stay settled: each call only looks
        # past it (a round of N status updates costs O(N) in all, not O(N^2)).
        while self._unsettled_from < len(self.selected) and self._settled(
            self.entries[self.selected[self._unsettled_from]]
        ):
            self._unsettled_from += 1
        if self._finishing or self._unsettled_from < len(self.selected):
            return
        self._finishing = True
        server.operations.submit(lambda: self._finish(server), f"{self.name}: finish")

    def _finish(self, server: Server) -> None:
        """Worker thread: run the finish hook, then let the queue move on."""
        self.on_finish(server)
        with server.operations.lock:
            self._done = True
            if self.completes_round:
                server.watchers.notify(
                    RoundCompletedNotification(round=self.round, model=server.global_model, phase=self.phase)
                )
        server.operations.advance()

    def describe(self) -> dict[str, Any]:
        """Return the distribution's table for logs."""
        return {**super().describe(), "round": self.round, "statuses": {k: v.value for k, v in self.statuses().items()}}
