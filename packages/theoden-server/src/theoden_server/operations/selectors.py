"""Selectors: which of the available clients a distribution addresses."""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from theoden_server.server import Server

__all__ = ["AllClients", "NClients", "NamedClients", "RandomFraction", "Selector"]


class Selector(ABC):
    """Chooses clients from the available ones (online, past the open distribution), in join order."""

    @abstractmethod
    def select(self, candidates: Sequence[str], server: Server | None = None) -> list[str]:
        """Return the chosen clients (a subset of ``candidates``)."""


class AllClients(Selector):
    """Every available client."""

    def select(self, candidates: Sequence[str], server: Server | None = None) -> list[str]:
        """Return all candidates."""
        return list(candidates)


class NClients(Selector):
    """``n`` clients: the first ``n`` to join, or ``n`` drawn at random when ``seed`` is given.

    Args:
        n: How many clients (fewer if fewer are available).
        seed: Draw randomly with this seed (each call continues the same random sequence).
    """

    def __init__(self, n: int, *, seed: int | None = None) -> None:
        if n < 1:
            raise ValueError("n must be at least 1")
        self.n = n
        self._rng = None if seed is None else random.Random(seed)

    def select(self, candidates: Sequence[str], server: Server | None = None) -> list[str]:
        """Return ``n`` of the candidates."""
        if self._rng is None:
            return list(candidates[: self.n])
        chosen = set(self._rng.sample(sorted(candidates), min(self.n, len(candidates))))
        return [c for c in candidates if c in chosen]


class NamedClients(Selector):
    """The named clients that are available (the others are simply not addressed)."""

    def __init__(self, names: Sequence[str]) -> None:
        self.names = list(names)

    def select(self, candidates: Sequence[str], server: Server | None = None) -> list[str]:
        """Return the named candidates."""
        wanted = set(self.names)
        return [c for c in candidates if c in wanted]


class RandomFraction(Selector):
    """A seeded random fraction of the available clients (at least ``minimum``).

    Args:
        fraction: Share of the candidates, in ``(0, 1]``; the count is rounded up.
        seed: Seed of the random draw (each call continues the same random sequence, so a run
            is repeatable round by round).
        minimum: Fewest clients to draw when that many are available.
    """

    def __init__(self, fraction: float, *, seed: int = 0, minimum: int = 1) -> None:
        if not 0 < fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        self.fraction = fraction
        self.minimum = minimum
        self._rng = random.Random(seed)

    def select(self, candidates: Sequence[str], server: Server | None = None) -> list[str]:
        """Return a random share of the candidates, in join order."""
        count = min(len(candidates), max(self.minimum, math.ceil(self.fraction * len(candidates) - 1e-9)))
        chosen = set(self._rng.sample(sorted(candidates), count))
        return [c for c in candidates if c in chosen]
