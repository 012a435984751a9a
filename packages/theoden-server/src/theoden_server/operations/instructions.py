"""The building blocks of a server's plan: conditions, distributions, actions and bundles.

A plan is an ordered list of instructions that the `OperationManager` works through: a
`Condition` holds the queue until it is resolved, a `Distribution` hands commands to clients
until they are all done, an `Action` does server-side work on a worker thread (aggregating,
initialising the model), and an `InstructionBundle` is unpacked in place when it reaches the
head of the queue. When an instruction finishes, its successors (see `Instruction.then`) are put
right after it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from theoden_protocol import Command, StatusUpdate

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = ["Action", "Condition", "Distribution", "Instruction", "InstructionBundle"]


class Instruction:
    """Base of every instruction in a plan.

    Args:
        name: Name for logs (defaults to the class name).
        successors: Instructions to run right after this one finishes.
    """

    def __init__(self, *, name: str | None = None, successors: Sequence[Instruction] = ()) -> None:
        self.name = name or type(self).__name__
        self._successors: list[Instruction] = list(successors)

    def then(self, *instructions: Instruction) -> Instruction:
        """Add instructions to run right after this one; returns ``self`` for chaining."""
        self._successors.extend(instructions)
        return self

    def successors(self, server: Server) -> list[Instruction]:
        """Return the instructions to insert after this one once it finished (override to decide late)."""
        return list(self._successors)

    def describe(self) -> dict[str, Any]:
        """Return a short description for logs."""
        return {"instruction": type(self).__name__, "name": self.name}

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class Condition(Instruction):
    """Holds the queue until `resolved` returns true (subclass it for your own conditions).

    `resolved` is called often and under the manager's lock: keep it quick and side-effect free.
    """

    @abstractmethod
    def resolved(self, server: Server) -> bool:
        """Whether the condition holds now."""


class Action(Instruction, ABC):
    """Server-side work (aggregation, model initialisation, ...) run on the manager's worker thread.

    Requests keep being served while `perform` runs. An exception fails the run loudly.
    """

    @abstractmethod
    def perform(self, server: Server) -> None:
        """Do the work."""


class InstructionBundle(Instruction, ABC):
    """Unpacked in place into the instructions `expand` returns, when it reaches the head of the queue.

    Because expansion happens late, a bundle can build instructions from the server's state at
    that moment (e.g. a training round that carries the current global model).
    """

    @abstractmethod
    def expand(self, server: Server) -> Sequence[Instruction]:
        """Return the instructions that replace this bundle."""


class Distribution(Instruction, ABC):
    """Hands commands to clients and follows their status until it is done.

    The manager calls these methods under its lock; each must be quick. Slow server-side work
    goes to ``server.operations.submit``.
    """

    started: bool = False
    gated: ClassVar[bool] = True
    """Whether the permanent conditions hold it back (start and hand-out); `ExitRun` is not held back."""

    @property
    @abstractmethod
    def done(self) -> bool:
        """Whether the distribution is complete and the queue may move on."""

    def start(self, server: Server) -> None:
        """Called once when the distribution reaches the head of the queue."""
        self.started = True

    @abstractmethod
    def command_for(self, server: Server, client: str) -> Command | None:
        """Return the next command for ``client`` (or ``None``); its uuid is then tracked."""

    @abstractmethod
    def on_status(self, server: Server, client: str, update: StatusUpdate) -> None:
        """Apply a status update for a command this distribution handed to ``client``.

        Raises:
            Conflict: the command is already final.
        """

    def client_lost(self, server: Server, client: str, reason: str) -> None:
        """Fail every open command of ``client`` (it went offline)."""

    def check_timeouts(self, server: Server, now: float) -> None:
        """Fail commands that have been open for too long (called periodically)."""
