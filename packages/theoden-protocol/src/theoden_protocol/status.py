"""Status updates: what a client reports about a command, with the command's results."""

from __future__ import annotations

import enum
import time
from typing import Annotated

import msgspec

from theoden_protocol._base import WireStruct, _register_builtin
from theoden_protocol._types import KwargValue, Metrics, Name, Uuid
from theoden_protocol.blobs import BlobRef
from theoden_protocol.requests import ServerRequest

__all__ = ["CommandStatus", "ExecutionResponse", "StatusUpdate"]


class CommandStatus(enum.StrEnum):
    """Where a command stands on a client."""

    RECEIVED = "received"
    """The client has the command and will run it."""
    STARTED = "started"
    """The client began running it."""
    FINISHED = "finished"
    """It ran to completion; the execution response holds its results."""
    FAILED = "failed"
    """It failed or was refused; ``error`` says why."""

    @property
    def is_final(self) -> bool:
        """Whether no further update can follow this one."""
        return self in (CommandStatus.FINISHED, CommandStatus.FAILED)


class ExecutionResponse(WireStruct, frozen=True):
    """The results of a command.

    ``metrics`` are name → float (``val/accuracy``); ``blobs`` name uploaded blobs (``model``);
    ``num_samples`` is the sample count the results stand for (the FedAvg weight);
    ``counts`` holds integer tallies (e.g. samples per label); ``details`` small extra facts
    (e.g. resource keys); ``error`` the failure text.
    """

    metrics: Metrics = msgspec.field(default_factory=dict)
    blobs: Annotated[dict[Name, BlobRef], msgspec.Meta(max_length=256)] = msgspec.field(default_factory=dict)
    num_samples: Annotated[int, msgspec.Meta(ge=0)] | None = None
    counts: Annotated[dict[Name, Annotated[int, msgspec.Meta(ge=0)]], msgspec.Meta(max_length=100_000)] = msgspec.field(
        default_factory=dict
    )
    details: Annotated[dict[Name, KwargValue], msgspec.Meta(max_length=1024)] = msgspec.field(default_factory=dict)
    error: Annotated[str, msgspec.Meta(max_length=65536)] | None = None


class StatusUpdate(ServerRequest, tag="status_update", kw_only=True, frozen=True):
    """A client's report that command ``command_uuid`` reached ``status``.

    ``client_name`` must be the name the client authenticated as; the server refuses an update
    that names another client.
    """

    client_name: Name
    command_uuid: Uuid
    status: CommandStatus
    response: ExecutionResponse | None = None
    timestamp: float = msgspec.field(default_factory=time.time)


_register_builtin([StatusUpdate])
