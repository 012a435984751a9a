"""Long-polling over the broker: park empty pulls until the server signals a command or their wait expires.

A parked pull holds no worker thread and no unacknowledged message: its message was processed
(the answer was "nothing yet") and acknowledged; only its reply is delayed. Each client has a
generation counter that every notification bumps; a pull remembers the generation it saw
*before* asking the server, so a notification that arrives between the check and the parking is
never missed.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["ParkedPull", "PullParking"]

logger = logging.getLogger("theoden.server.amqp")


@dataclass(eq=False)
class ParkedPull:
    """A pull waiting for a command: who asked, until when, and what to reply to."""

    client: str
    deadline: float
    generation: int
    payload: Any
    """What the consumer needs to answer (the request and the reply address)."""
    ready: bool = field(default=False)


class PullParking:
    """Holds parked pulls and hands each to ``on_ready`` once notified or expired (from its own thread).

    Args:
        on_ready: Called with a pull that should be re-checked (notified) or answered (expired).
        clock: Monotonic clock (tests pass a fake one).
    """

    def __init__(self, on_ready: Callable[[ParkedPull], None], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._on_ready = on_ready
        self._clock = clock
        self._cond = threading.Condition()
        self._global = 0
        self._generations: defaultdict[str, int] = defaultdict(int)
        self._parked: defaultdict[str, set[ParkedPull]] = defaultdict(set)
        self._deadlines: list[tuple[float, int, ParkedPull]] = []
        self._counter = itertools.count()
        self._ready: list[ParkedPull] = []
        self._closed = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the thread that releases notified and expired pulls."""
        self._thread = threading.Thread(target=self._run, name="theoden-amqp-longpoll", daemon=True)
        self._thread.start()

    def close(self) -> list[ParkedPull]:
        """Stop the thread and return the pulls still parked (they are not released)."""
        with self._cond:
            self._closed = True
            left = [p for group in self._parked.values() for p in group]
            self._parked.clear()
            self._deadlines.clear()
            self._cond.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5.0)
        return left

    def generation(self, client: str) -> int:
        """The notification count for ``client`` so far (take it *before* asking the server)."""
        with self._cond:
            return self._global + self._generations[client]

    def notify(self, client: str | None) -> None:
        """A command may be available for ``client`` (``None``: for anybody); thread-safe, never blocks long."""
        with self._cond:
            if client is None:
                self._global += 1
                groups = list(self._parked.values())
                self._parked.clear()
            else:
                self._generations[client] += 1
                group = self._parked.pop(client, None)
                groups = [group] if group else []
            for group in groups:
                for pull in group:
                    pull.ready = True
                    self._ready.append(pull)
            if groups:
                self._cond.notify_all()

    def park(self, pull: ParkedPull) -> None:
        """Park ``pull``; it is released at once if a notification came after it took its generation."""
        with self._cond:
            if self._closed:
                return
            if self._global + self._generations[pull.client] != pull.generation or pull.deadline <= self._clock():
                pull.ready = True
                self._ready.append(pull)
            else:
                self._parked[pull.client].add(pull)
                heapq.heappush(self._deadlines, (pull.deadline, next(self._counter), pull))
            self._cond.notify_all()

    @property
    def waiting(self) -> int:
        """Number of parked pulls."""
        with self._cond:
            return sum(len(group) for group in self._parked.values())

    def _take(self) -> list[ParkedPull]:
        """Wait for ready or expired pulls and return them (empty list when closed)."""
        with self._cond:
            while not self._closed:
                now = self._clock()
                while self._deadlines and (self._deadlines[0][2].ready or self._deadlines[0][0] <= now):
                    _, _, pull = heapq.heappop(self._deadlines)
                    if not pull.ready:
                        pull.ready = True
                        self._parked[pull.client].discard(pull)
                        if not self._parked[pull.client]:
                            del self._parked[pull.client]
                        self._ready.append(pull)
                if self._ready:
                    ready, self._ready = self._ready, []
                    return ready
                timeout = self._deadlines[0][0] - now if self._deadlines else None
                self._cond.wait(timeout if timeout is None else max(0.001, min(timeout, 1.0)))
            return []

    def _run(self) -> None:
        while True:
            ready = self._take()
            if not ready:
                return
            for pull in ready:
                try:
                    self._on_ready(pull)
                except Exception:
                    logger.exception("could not release a parked pull of %s", pull.client)
