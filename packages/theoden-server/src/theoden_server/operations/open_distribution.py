"""The open distribution: commands every client gets first when it joins, before anything else."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from theoden_protocol import Command, CommandStatus, StatusUpdate

from theoden_server.errors import Conflict
from theoden_server.operations.distributions import (
    ClientEntry,
    Customize,
    DistributionStatus,
    _announce,
    _final_update,
    renew_uuids,
)
from theoden_server.operations.instructions import Distribution

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = ["OpenDistribution"]


class OpenDistribution(Distribution):
    """Commands every client gets first when it joins, in order, before any other command.

    A client is *ready* (may be selected and counted by conditions) once all of them finished;
    one that fails any of them stays not ready. A client that was offline and comes back, or
    registers again after being offline, runs them again (its state is unknown).

    Args:
        commands: The commands, in order.
        customize: Per-client customisation ``customize(client, index, command)``; ``index`` is
            the client's position in join order (e.g. its partition).
        name: Name for logs.
    """

    def __init__(
        self, commands: Sequence[Command], *, customize: Customize | None = None, name: str | None = None
    ) -> None:
        super().__init__(name=name)
        self.commands = list(commands)
        self.customize = customize
        self.progress: dict[str, list[ClientEntry]] = {}
        self.started = True

    @property
    def done(self) -> bool:
        """An open distribution never ends."""
        return False

    def is_ready(self, client: str) -> bool:
        """Whether ``client`` finished every command."""
        rows = self.progress.get(client)
        if rows is None:
            return not self.commands
        return len(rows) == len(self.commands) and all(r.status is DistributionStatus.FINISHED for r in rows)

    def has_failed(self, client: str) -> bool:
        """Whether one of the client's commands failed."""
        return any(r.status is DistributionStatus.FAILED for r in self.progress.get(client, []))

    def reset(self, client: str) -> None:
        """Make ``client`` run every command again."""
        self.progress.pop(client, None)

    def command_for(self, server: Server, client: str) -> Command | None:
        """Return the client's next open command, once its previous one finished."""
        rows = self.progress.setdefault(client, [])
        if rows:
            last = rows[-1]
            if last.status is DistributionStatus.SEND:
                return last.command
            if last.status is not DistributionStatus.FINISHED:
                return None
        if len(rows) >= len(self.commands):
            return None
        command = renew_uuids(self.commands[len(rows)])
        if self.customize is not None:
            clients = server.topology.clients()
            command = self.customize(client, clients.index(client) if client in clients else 0, command)
        rows.append(ClientEntry(DistributionStatus.SEND, command=command, sent_at=time.monotonic()))
        return command

    def on_status(self, server: Server, client: str, update: StatusUpdate) -> None:
        """Apply a status update to the client's open command."""
        row = next(
            (r for r in self.progress.get(client, []) if r.command and r.command.uuid == update.command_uuid), None
        )
        if row is None:
            raise Conflict(f"command {update.command_uuid} of client {client} belongs to an earlier session")
        _final_update(server, client, row, update, name=self.name, round=None)
        if update.status.is_final:
            row.response = update.response
            if update.status is CommandStatus.FINISHED:
                row.status = DistributionStatus.FINISHED
            else:
                row.status = DistributionStatus.FAILED
                row.error = (update.response.error if update.response else None) or "failed without a message"
            _announce(server, client, row, name=self.name, round=None, phase="open")

    def client_lost(self, server: Server, client: str, reason: str) -> None:
        """Forget the client's progress: it runs every command again when it is back."""
        for row in self.progress.get(client, []):
            if not row.status.is_final:
                row.status, row.error = DistributionStatus.FAILED, reason
                _announce(server, client, row, name=self.name, round=None, phase="open")
        self.reset(client)
