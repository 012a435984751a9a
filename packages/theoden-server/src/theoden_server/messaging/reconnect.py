"""Reconnect policy of the broker interface, kept apart from the consumer: when to retry and how long to wait."""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable

import pika.exceptions

__all__ = ["Backoff", "is_fatal", "run_with_reconnect"]

logger = logging.getLogger("theoden.server.amqp")


class Backoff:
    """Capped exponential back-off with jitter: ``initial * multiplier**n`` up to ``maximum``.

    Each delay is drawn from ``[(1 - jitter) * d, d]`` so many processes that lost the same broker
    do not all come back at the same instant.
    """

    def __init__(
        self,
        *,
        initial: float = 0.5,
        maximum: float = 15.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= maximum, multiplier >= 1 and 0 <= jitter <= 1")
        self.initial, self.maximum, self.multiplier, self.jitter = initial, maximum, multiplier, jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** min(self.attempts, 64))
        self.attempts += 1
        return ceiling * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start over (after a connection that consumed successfully)."""
        self.attempts = 0


def is_fatal(exc: BaseException, *, consuming: bool) -> bool:
    """Whether ``exc`` will not heal by reconnecting.

    Wrong credentials are fatal. A channel error while declaring the topology (wrong permissions,
    a queue declared with other arguments) is a configuration error and fatal too; once consuming
    a channel error is treated like a lost connection. Everything else - refused or dropped TCP
    connections, a broker that shuts down (320 CONNECTION_FORCED), missed heartbeats - is retried.
    """
    if isinstance(exc, pika.exceptions.ProbableAuthenticationError | pika.exceptions.AuthenticationError):
        return True
    if isinstance(exc, pika.exceptions.ProbableAccessDeniedError):
        return True
    if isinstance(exc, pika.exceptions.ConnectionClosedByBroker) and exc.reply_code in (403, 530):
        return True  # access refused / not allowed (vhost permissions)
    return bool(isinstance(exc, pika.exceptions.AMQPChannelError) and not consuming)


def run_with_reconnect(
    session: Callable[[Callable[[], None]], None],
    *,
    stop: threading.Event,
    backoff: Backoff,
    on_fatal: Callable[[BaseException], None],
    name: str = "broker",
) -> None:
    """Run ``session(mark_consuming)`` until ``stop`` is set, reconnecting with back-off when it fails.

    ``session`` connects, declares, consumes and returns only when ``stop`` is set or raises when
    the connection is lost; it calls ``mark_consuming()`` once it consumes, which resets the
    back-off. A fatal error (see `is_fatal`) is handed to ``on_fatal`` and ends the loop.
    """
    while not stop.is_set():
        consuming = False

        def mark_consuming() -> None:
            nonlocal consuming
            consuming = True
            backoff.reset()

        try:
            session(mark_consuming)
        except (pika.exceptions.AMQPError, OSError) as exc:
            if is_fatal(exc, consuming=consuming):
                logger.error("%s: giving up: %s: %s", name, type(exc).__name__, exc)
                on_fatal(exc)
                return
            delay = backoff.next_delay()
            logger.warning("%s: connection lost (%s: %s); reconnecting in %.1f s", name, type(exc).__name__, exc, delay)
            stop.wait(delay)
        except Exception:  # a bug: log it, keep the interface alive
            delay = backoff.next_delay()
            logger.exception("%s: unexpected error; reconnecting in %.1f s", name, delay)
            stop.wait(delay)
        else:
            if not stop.is_set():  # the session ended on its own: reconnect at once
                continue
