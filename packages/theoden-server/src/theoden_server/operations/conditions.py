"""Conditions: wait until enough (or the right) clients are available.

"Available" means online and past the open distribution (see `Server.ready_clients`).
Subclass `Condition` and implement ``resolved(server)`` for your own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from theoden_server.operations.instructions import Condition

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = [
    "Condition",
    "RequireAllClients",
    "RequireClients",
    "RequireNumberOfClients",
    "RequirePercentageOfClients",
]


class RequireNumberOfClients(Condition):
    """Resolved once at least ``n`` clients are available."""

    def __init__(self, n: int, *, name: str | None = None) -> None:
        super().__init__(name=name)
        if n < 0:
            raise ValueError("n must be >= 0")
        self.n = n

    def resolved(self, server: Server) -> bool:
        """Whether ``n`` clients are available."""
        return len(server.ready_clients()) >= self.n


class RequireClients(Condition):
    """Resolved once every named client is available."""

    def __init__(self, names: Sequence[str], *, name: str | None = None) -> None:
        super().__init__(name=name)
        self.names = list(names)

    def resolved(self, server: Server) -> bool:
        """Whether all named clients are available."""
        return set(self.names) <= set(server.ready_clients())


class RequirePercentageOfClients(Condition):
    """Resolved once ``fraction`` of the clients are available (at least one).

    Args:
        fraction: Share in ``(0, 1]``.
        total: The number of clients the run expects; ``None`` counts every client that ever registered.
    """

    def __init__(self, fraction: float, *, total: int | None = None, name: str | None = None) -> None:
        super().__init__(name=name)
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        self.fraction = fraction
        self.total = total

    def resolved(self, server: Server) -> bool:
        """Whether the share of available clients is reached."""
        total = len(server.topology.clients()) if self.total is None else self.total
        needed = max(1, math.ceil(self.fraction * total - 1e-9))
        return len(server.ready_clients()) >= needed


class RequireAllClients(Condition):
    """Resolved once every expected client is available.

    Args:
        expected: Names of the clients the run expects; ``None`` means every client that ever registered.
        minimum: Fewest clients that must be available in any case.
    """

    def __init__(self, expected: Sequence[str] | None = None, *, minimum: int = 1, name: str | None = None) -> None:
        super().__init__(name=name)
        self.expected = None if expected is None else list(expected)
        self.minimum = minimum

    def resolved(self, server: Server) -> bool:
        """Whether all expected clients are available."""
        ready = set(server.ready_clients())
        expected = set(server.topology.clients()) if self.expected is None else set(self.expected)
        return len(ready) >= self.minimum and expected <= ready
