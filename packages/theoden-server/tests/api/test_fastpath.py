"""The lean path for POST /requests and /status answers exactly as the Litestar handlers behind it."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from theoden_protocol import CommandStatus, Heartbeat, PullCommand, RegisterRequest, StatusUpdate, codec
from theoden_server.rest.fastpath import FastPath
from theoden_server.rest.longpoll import WAKE_BATCH, LongPollHub

from .conftest import Api

BIG = b'{"type": "heartbeat", "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'


def _cases(api: Api) -> list[tuple[str, bytes, dict[str, str]]]:
    alice = {**api.auth("alice"), "Content-Type": "application/json"}
    return [
        ("/api/v1/requests", codec.encode(RegisterRequest()), alice),
        ("/api/v1/requests", codec.encode(Heartbeat()), alice),
        ("/api/v1/requests", codec.encode(PullCommand(wait=0)), alice),
        ("/api/v1/requests", codec.encode(RegisterRequest(protocol_version="9.0")), alice),
        ("/api/v1/requests", b'{"type": "teleport"}', alice),
        ("/api/v1/requests", b"{", alice),
        ("/api/v1/requests", BIG, alice),
        ("/api/v1/requests", codec.encode(Heartbeat()), {}),
        ("/api/v1/requests", codec.encode(Heartbeat()), {"Authorization": "Bearer not-a-jwt"}),
        ("/api/v1/requests", codec.encode(Heartbeat()), {"Authorization": "Basic abc"}),
        ("/api/v1/status", b'{"type": "status_update"}', alice),
        (
            "/api/v1/status",
            codec.encode(StatusUpdate(client_name="alice", command_uuid="nope", status=CommandStatus.STARTED)),
            alice,
        ),
        (
            "/api/v1/status",
            codec.encode(StatusUpdate(client_name="bob", command_uuid="nope", status=CommandStatus.STARTED)),
            alice,
        ),
    ]


@pytest.fixture
async def framework_only(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the same app with the fast path taken out (every request through Litestar)."""
    app = api.built.app
    wrapped = app.asgi_handler
    assert isinstance(wrapped, FastPath)
    inner = wrapped.app

    async def without_fast_path(scope: Any, receive: Any, send: Any) -> None:
        scope["app"] = scope["litestar_app"] = app
        scope.setdefault("state", {})
        await inner(scope, receive, send)

    transport = httpx.ASGITransport(app=without_fast_path)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def test_fast_path_answers_like_the_framework_handlers(api: Api, framework_only: httpx.AsyncClient) -> None:
    for path, body, headers in _cases(api):
        # Execute: the same request both ways (each changes nothing or the same thing twice)
        fast = await api.client.post(path, content=body, headers=headers)
        slow = await framework_only.post(path, content=body, headers=headers)

        # Assert: same status, same error code, same body type, same challenge
        where = (path, body[:60], headers.get("Authorization", "")[:12])
        assert fast.status_code == slow.status_code, (where, fast.text, slow.text)
        assert fast.headers["content-type"].startswith("application/json"), where
        fast_body, slow_body = fast.json(), slow.json()
        # a malformed body is the protocol codec's error (naming the JSON path) rather than Litestar's
        codes = (fast_body.get("code"), slow_body.get("code"))
        assert codes[0] == codes[1] or codes == ("protocol_error", "bad_request"), (where, fast_body, slow_body)
        assert fast_body.get("type") == slow_body.get("type"), (where, fast_body, slow_body)
        assert fast.headers.get("www-authenticate") == slow.headers.get("www-authenticate"), where
        assert fast_body.keys() == slow_body.keys(), (where, fast_body, slow_body)


async def test_fast_downloads_answer_like_the_framework_handler(api: Api, framework_only: httpx.AsyncClient) -> None:
    # Prepare: alice's small upload, a big public blob (streamed in pieces), and ids that fail in each way
    store = api.built.store
    small = store.put_bytes(b"w" * 1000, owner="alice")
    store.max_blob_bytes = 16 * 1024 * 1024
    big = store.put_bytes(bytes(range(256)) * 40_000, owner="alice")  # 10 MB: streamed in pieces
    cases = [
        (f"/api/v1/storage/{small.id}", api.auth("alice")),
        (f"/api/v1/storage/{big.id}", api.auth("alice")),
        (f"/api/v1/storage/{small.id}", api.auth("bob")),
        (f"/api/v1/storage/{small.id}", api.auth("root")),
        (f"/api/v1/storage/{small.id}", {}),
        (f"/api/v1/storage/{'0' * 64}", api.auth("alice")),
        ("/api/v1/storage/not-an-id", api.auth("alice")),
        ("/api/v1/storage/../../users.toml", api.auth("alice")),
    ]
    for path, headers in cases:
        # Execute
        fast = await api.client.get(path, headers=headers)
        slow = await framework_only.get(path, headers=headers)

        # Assert
        where = (path[-20:], headers.get("Authorization", "")[:12])
        assert fast.status_code == slow.status_code, (where, fast.text[:200], slow.text[:200])
        if fast.status_code == 200:
            assert fast.content == slow.content, where
            for name in ("content-type", "content-length", "x-content-sha256", "content-disposition"):
                assert fast.headers.get(name) == slow.headers.get(name), (where, name)
        else:
            assert fast.json()["code"] == slow.json()["code"], (where, fast.text, slow.text)


async def test_fast_uploads_answer_like_the_framework_handler(api: Api, framework_only: httpx.AsyncClient) -> None:
    # Prepare: each case is sent fast, then (after removing what it stored) through Litestar
    store = api.built.store
    data = bytes(range(256)) * 3000
    sha = hashlib.sha256(data).hexdigest()
    alice = api.auth("alice")
    cases = [
        (sha, data, alice),
        (sha, data[:-1], alice),  # digest mismatch
        (sha, data, {**alice, "X-Content-SHA256": "f" * 64}),
        ("not-an-id", data, alice),
        (sha, data, {}),
        (hashlib.sha256(b"x" * (2 * 1024 * 1024)).hexdigest(), b"x" * (2 * 1024 * 1024), alice),  # over the limit
    ]
    for blob_id, body, headers in cases:
        # Execute
        fast = await api.client.put(f"/api/v1/storage/{blob_id}", content=body, headers=headers)
        stored_fast = store.exists(blob_id)
        if stored_fast:
            store.delete(blob_id)
        slow = await framework_only.put(f"/api/v1/storage/{blob_id}", content=body, headers=headers)
        stored_slow = store.exists(blob_id)
        if stored_slow:
            store.delete(blob_id)

        # Assert
        where = (blob_id[:12], len(body), headers.get("X-Content-SHA256", "")[:4], bool(headers))
        assert fast.status_code == slow.status_code, (where, fast.text, slow.text)
        assert stored_fast == stored_slow, where
        if fast.status_code == 201:
            assert fast.json() == slow.json()
        else:
            assert fast.json()["code"] == slow.json()["code"], (where, fast.text, slow.text)
    assert not list((store.root / "tmp").iterdir())  # no partial upload left behind


async def test_an_upload_broken_off_stores_nothing_and_gets_no_answer(api: Api) -> None:
    store = api.built.store
    data = b"y" * 100_000
    sha = hashlib.sha256(data).hexdigest()
    messages = [
        {"type": "http.request", "body": data[:50_000], "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "PUT",
        "path": f"/api/v1/storage/{sha}",
        "headers": [
            (b"authorization", api.auth("alice")["Authorization"].encode()),
            (b"content-length", str(len(data)).encode()),
        ],
        "query_string": b"",
    }
    await api.built.app(scope, receive, send)  # type: ignore[arg-type]
    assert sent == []
    assert not store.exists(sha)
    assert not list((store.root / "tmp").iterdir())


async def test_an_announced_oversized_body_is_refused_before_it_is_read(api: Api) -> None:
    # Prepare: a body that claims 100 MB but the app would have to read to find out
    received = []
    app = api.built.app
    messages = [{"type": "http.request", "body": b"{}", "more_body": True}]

    async def receive() -> dict[str, Any]:
        received.append(1)
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    token = api.auth("alice")["Authorization"].encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/requests",
        "headers": [(b"authorization", token), (b"content-length", str(100 * 1024 * 1024).encode())],
        "query_string": b"",
    }

    # Execute
    await app(scope, receive, send)  # type: ignore[arg-type]

    # Assert
    assert received == []
    assert sent[0]["status"] == 413
    assert b"payload_too_large" in sent[1]["body"]


async def test_a_client_gone_before_its_body_arrived_gets_no_answer_and_changes_nothing(api: Api) -> None:
    app = api.built.app
    server = api.built.server
    before = server.topology.clients()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/api/v1/requests",
        "headers": [(b"authorization", api.auth("alice")["Authorization"].encode())],
        "query_string": b"",
    }
    await app(scope, receive, send)  # type: ignore[arg-type]
    assert sent == []
    assert server.topology.clients() == before


async def test_an_unexpected_error_is_a_logged_500_without_internals(
    api: Api, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(api.built.server, "process_server_request", broken)
    with caplog.at_level(logging.ERROR, logger="theoden.server.rest"):
        response = await api.client.post(
            "/api/v1/requests", content=codec.encode(Heartbeat()), headers=api.auth("alice")
        )
    assert response.status_code == 500
    assert response.json()["code"] == "internal_error"
    assert "secret" not in response.text
    assert "secret internals" in caplog.text


async def test_a_broadcast_wakes_parked_pulls_in_batches_so_other_requests_interleave() -> None:
    # Prepare: 100 parked pulls on this loop
    hub = LongPollHub()
    hub.bind(asyncio.get_running_loop(), lambda callback: lambda: None)
    events = [hub.register(f"c{i}") for i in range(100)]

    # Execute: wake everyone; count how many are set after each loop iteration
    hub._wake(None)
    counts = [sum(e.is_set() for e in events)]
    while counts[-1] < len(events):
        await asyncio.sleep(0)
        counts.append(sum(e.is_set() for e in events))

    # Assert: one batch per iteration, everyone in the end
    assert counts[0] == WAKE_BATCH
    assert all(b - a <= WAKE_BATCH for a, b in itertools.pairwise(counts))
    assert counts[-1] == 100 and len(counts) >= 100 // WAKE_BATCH
