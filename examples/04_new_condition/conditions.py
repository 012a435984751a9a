"""Two user conditions and a matching selector.

- `RequireClientsWithSamples`: wait until ``n`` ready sites each hold at least ``min_samples``
  samples (sizes come from the sites' own reports on the open distribution's commands).
- `DuringHours`: hand out commands only inside a daily time window (e.g. the hospital's night
  hours); use it as a *permanent* condition.
- `ClientsWithSamples`: a selector that addresses only the sites that hold enough samples.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from theoden_server import Condition, DistributionStatus, Selector, Server


def reported_samples(server: Server) -> dict[str, int]:
    """Return each ready site's sample count, as reported by the last open-distribution command that gave one."""
    open_distribution = server.operations.open_distribution
    if open_distribution is None:
        return {}
    counts: dict[str, int] = {}
    for client in server.ready_clients():
        for row in open_distribution.progress.get(client, []):
            if row.status is DistributionStatus.FINISHED and row.response and row.response.num_samples is not None:
                counts[client] = row.response.num_samples
    return counts


class RequireClientsWithSamples(Condition):
    """Resolved once at least ``n`` ready sites hold ``min_samples`` samples or more each."""

    def __init__(self, n: int, *, min_samples: int, name: str | None = None) -> None:
        super().__init__(name=name)
        self.n = n
        self.min_samples = min_samples

    def resolved(self, server: Server) -> bool:
        """Whether enough sites hold enough data (called often: cheap and without side effects)."""
        return sum(n >= self.min_samples for n in reported_samples(server).values()) >= self.n


class DuringHours(Condition):
    """Resolved while the server's local time lies in ``[start, end)``; the window may span midnight.

    Args:
        start: Opening time, e.g. ``"22:00"``.
        end: Closing time, e.g. ``"06:00"``.
        now: The clock (for tests).
    """

    def __init__(
        self, start: str, end: str, *, now: Callable[[], dt.datetime] = dt.datetime.now, name: str | None = None
    ) -> None:
        super().__init__(name=name or f"DuringHours[{start}-{end})")
        self.start = dt.time.fromisoformat(start)
        self.end = dt.time.fromisoformat(end)
        self.now = now

    def resolved(self, server: Server | None) -> bool:
        """Whether the clock is inside the window."""
        t = self.now().time()
        if self.start <= self.end:
            return self.start <= t < self.end
        return t >= self.start or t < self.end


class ClientsWithSamples(Selector):
    """The available sites that hold at least ``min_samples`` samples."""

    def __init__(self, min_samples: int) -> None:
        self.min_samples = min_samples

    def select(self, candidates: Sequence[str], server: Server | None = None) -> list[str]:
        """Return the candidates with enough samples, in join order."""
        counts = reported_samples(server) if server is not None else {}
        return [c for c in candidates if counts.get(c, 0) >= self.min_samples]
