"""Long-polling: park pull requests until the server says a command may be ready, at no CPU cost."""

from __future__ import annotations

import asyncio
import contextlib
from collections import defaultdict
from collections.abc import Callable

__all__ = ["WAKE_BATCH", "LongPollHub"]

#: Parked pulls woken per event-loop iteration when many are woken at once.
WAKE_BATCH = 32


class LongPollHub:
    """Wakes parked pull requests when the server signals that commands may be available.

    The server calls `notify` from any thread; waiters live on one event loop. A waiter must be
    registered *before* the caller checks for a command, so a notification in between is never
    missed.
    """

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: defaultdict[str, set[asyncio.Event]] = defaultdict(set)
        self._unsubscribe: Callable[[], None] | None = None

    def bind(
        self, loop: asyncio.AbstractEventLoop, subscribe: Callable[[Callable[[str | None], None]], Callable[[], None]]
    ) -> None:
        """Attach to the running loop and subscribe to the server's notifications."""
        self._loop = loop
        self._unsubscribe = subscribe(self.notify)

    def close(self) -> None:
        """Unsubscribe and wake every waiter (they will find no command and return)."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        self._wake(None)

    def notify(self, client: str | None) -> None:
        """Thread-safe: wake the waiters of ``client`` (``None``: everyone)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # the loop is shutting down
            loop.call_soon_threadsafe(self._wake, client)

    def _wake(self, client: str | None) -> None:
        groups = list(self._waiters.values()) if client is None else [self._waiters.get(client, set())]
        self._set([event for group in groups for event in group])

    def _set(self, events: list[asyncio.Event]) -> None:
        """Wake ``events`` a batch per loop iteration, so requests that arrive meanwhile are served in between.

        Waking hundreds of parked pulls at once (a new round) would queue all their answers ahead of
        every status update and heartbeat that arrives during the burst.
        """
        for event in events[:WAKE_BATCH]:
            event.set()
        if len(events) > WAKE_BATCH and self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon(self._set, events[WAKE_BATCH:])

    def register(self, client: str) -> asyncio.Event:
        """Return a fresh event that is set when ``client`` may have a command."""
        event = asyncio.Event()
        self._waiters[client].add(event)
        return event

    def unregister(self, client: str, event: asyncio.Event) -> None:
        """Forget a waiter."""
        group = self._waiters.get(client)
        if group is not None:
            group.discard(event)
            if not group:
                del self._waiters[client]

    @property
    def waiting(self) -> int:
        """Number of parked requests (for health and benchmarks)."""
        return sum(len(g) for g in self._waiters.values())
