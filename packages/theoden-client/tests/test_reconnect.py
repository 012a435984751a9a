from __future__ import annotations

import random

import pytest
from theoden_client.reconnect import Backoff


def test_delays_grow_exponentially_up_to_the_cap() -> None:
    backoff = Backoff(initial=1.0, maximum=10.0, multiplier=2.0, jitter=0.0)
    assert [backoff.next_delay() for _ in range(6)] == [1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    backoff.reset()
    assert backoff.next_delay() == 1.0


def test_jitter_stays_within_its_band_and_varies() -> None:
    backoff = Backoff(initial=4.0, maximum=4.0, jitter=0.5, rng=random.Random(0))
    delays = [backoff.next_delay() for _ in range(200)]
    assert all(2.0 <= d <= 4.0 for d in delays)
    assert len(set(delays)) > 100


def test_many_attempts_do_not_overflow() -> None:
    backoff = Backoff(initial=0.5, maximum=30.0, jitter=0.0)
    backoff.attempts = 100_000
    assert backoff.next_delay() == 30.0


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=5.0, maximum=1.0)
