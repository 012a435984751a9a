"""Long-poll parking, back-off, error classification and topology declaration, without a broker."""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pika.exceptions
import pytest
from theoden_server.messaging import Backoff, BrokerTopology, ParkedPull, PullParking, declare_topology, is_fatal


def collecting() -> tuple[PullParking, list[ParkedPull], threading.Event]:
    released: list[ParkedPull] = []
    event = threading.Event()

    def on_ready(pull: ParkedPull) -> None:
        released.append(pull)
        event.set()

    parking = PullParking(on_ready)
    parking.start()
    return parking, released, event


def test_a_notification_releases_only_that_clients_pulls() -> None:
    parking, released, event = collecting()
    try:
        a = ParkedPull("a", time.monotonic() + 60, parking.generation("a"), None)
        b = ParkedPull("b", time.monotonic() + 60, parking.generation("b"), None)
        parking.park(a)
        parking.park(b)
        parking.notify("a")
        assert event.wait(2)
        assert released == [a]
        assert parking.waiting == 1
        event.clear()
        parking.notify(None)
        assert event.wait(2)
        assert released == [a, b]
    finally:
        parking.close()


def test_a_notification_between_check_and_park_is_not_missed() -> None:
    parking, released, event = collecting()
    try:
        generation = parking.generation("a")
        parking.notify("a")  # arrives after the server said "nothing" but before parking
        parking.park(ParkedPull("a", time.monotonic() + 60, generation, None))
        assert event.wait(2)
        assert len(released) == 1
    finally:
        parking.close()


def test_an_expired_pull_is_released() -> None:
    parking, _released, event = collecting()
    try:
        parking.park(ParkedPull("a", time.monotonic() + 0.2, parking.generation("a"), None))
        assert event.wait(3)
        assert parking.waiting == 0
    finally:
        parking.close()


def test_close_returns_what_is_still_parked() -> None:
    parking, released, _ = collecting()
    parking.park(ParkedPull("a", time.monotonic() + 60, 0, "payload"))
    left = parking.close()
    assert [p.payload for p in left] == ["payload"]
    assert released == []


def test_backoff_grows_is_capped_jittered_and_resets() -> None:
    backoff = Backoff(initial=1, maximum=4, rng=random.Random(0))
    delays = [backoff.next_delay() for _ in range(6)]
    assert all(0.5 <= d <= 4 for d in delays)
    assert max(delays[3:]) <= 4
    assert delays[0] <= 1
    backoff.reset()
    assert backoff.next_delay() <= 1
    with pytest.raises(ValueError, match="initial"):
        Backoff(initial=0)


def test_wrong_credentials_are_fatal_a_lost_broker_is_not() -> None:
    assert is_fatal(pika.exceptions.ProbableAuthenticationError(), consuming=False)
    assert not is_fatal(pika.exceptions.AMQPConnectionError(), consuming=True)
    assert not is_fatal(pika.exceptions.ConnectionClosedByBroker(320, "CONNECTION_FORCED"), consuming=True)
    assert is_fatal(pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED"), consuming=False)
    assert not is_fatal(pika.exceptions.ChannelClosedByBroker(406, "PRECONDITION_FAILED"), consuming=True)


class RecordingChannel:
    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Any:
        def record(*args: Any, **kwargs: Any) -> None:
            self.calls.append((name, args, kwargs))

        return record


def test_topology_dead_letters_the_request_queue_into_the_dlx() -> None:
    channel = RecordingChannel()
    declare_topology(channel)  # type: ignore[arg-type]
    queues = {args[0]: kwargs for name, args, kwargs in channel.calls if name == "queue_declare"}
    assert queues["theoden.requests"]["arguments"] == {"x-dead-letter-exchange": "theoden.dlx"}
    assert queues["theoden.requests"]["durable"]
    assert queues["theoden.dead"]["durable"]
    assert ("queue_bind", ("theoden.dead", "theoden.dlx"), {"routing_key": ""}) in channel.calls
    prefixed = BrokerTopology.with_prefix("lab")
    assert (prefixed.request_queue, prefixed.dead_letter_exchange) == ("lab.requests", "lab.dlx")
