"""Reconnect policy: capped exponential back-off with jitter, kept apart from the client loop."""

from __future__ import annotations

import random

__all__ = ["Backoff"]


class Backoff:
    """Delays between reconnect attempts: ``initial * multiplier**n``, capped at ``maximum``, jittered.

    Jitter spreads many clients that lost the same server over time instead of having them all
    return at once: each delay is drawn from ``[(1 - jitter) * d, d]``.

    Args:
        initial: The first delay in seconds.
        maximum: The largest delay in seconds.
        multiplier: Growth factor per failed attempt.
        jitter: Fraction of each delay that is randomised (0: none, 1: anything from 0 to the delay).
        rng: Random source (seed it in tests).
    """

    def __init__(
        self,
        *,
        initial: float = 0.5,
        maximum: float = 30.0,
        multiplier: float = 2.0,
        jitter: float = 0.5,
        rng: random.Random | None = None,
    ) -> None:
        if initial <= 0 or maximum < initial or multiplier < 1 or not 0 <= jitter <= 1:
            raise ValueError("need 0 < initial <= maximum, multiplier >= 1 and 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.multiplier = multiplier
        self.jitter = jitter
        self.attempts = 0
        self._rng = rng or random.Random()

    def next_delay(self) -> float:
        """Return the delay before the next attempt and count the attempt."""
        ceiling = min(self.maximum, self.initial * self.multiplier ** min(self.attempts, 64))
        self.attempts += 1
        return ceiling * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start over after a successful connection."""
        self.attempts = 0
