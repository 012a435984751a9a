from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from theoden_protocol import Exit, Train
from theoden_server import security
from theoden_server.operations.conditions import RequireNumberOfClients
from theoden_server.operations.distributions import ClosedDistribution
from theoden_server.security import Principal, Role, UsersFile
from theoden_server.start import BuiltServer, build_server

PASSWORDS = {"alice": "alice-password-123", "bob": "bob-password-4567", "root": "root-password-8910"}


@pytest.fixture(autouse=True)
def cheap_hasher(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(security, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))
    security._dummy_hash.cache_clear()
    yield
    security._dummy_hash.cache_clear()


@pytest.fixture
def users_file(tmp_path: Path, cheap_hasher: None) -> UsersFile:
    users = UsersFile(tmp_path / "users.toml")
    users.add("alice", password=PASSWORDS["alice"])
    users.add("bob", password=PASSWORDS["bob"])
    users.add("root", role=Role.ADMIN, password=PASSWORDS["root"])
    users.save()
    return users


@pytest.fixture
def built(tmp_path: Path, users_file: UsersFile) -> Iterator[BuiltServer]:
    plan = [
        RequireNumberOfClients(2),
        ClosedDistribution(Train(steps=1)),
        ClosedDistribution(Exit()),
    ]
    result = build_server(
        plan,
        "api-test",
        users=users_file,
        run_dir=tmp_path / "run",
        jwt_secret=b"k" * 32,
        max_wait=10.0,
        max_blob_bytes=1024 * 1024,
    )
    result.server.start()
    yield result
    result.server.stop()


@dataclass
class Api:
    client: httpx.AsyncClient
    built: BuiltServer

    def auth(self, name: str) -> dict[str, str]:
        role = Role.ADMIN if name == "root" else Role.CLIENT
        token, _ = self.built.tokens.issue(Principal(name=name, role=role))
        return {"Authorization": f"Bearer {token}"}


@pytest.fixture
async def api(built: BuiltServer) -> AsyncIterator[Api]:
    # httpx's ASGI transport runs the app on this test's own loop, so concurrent requests (long polls)
    # really run concurrently; the hub is bound here as the app's lifespan would bind it.
    hub = built.app.state["theoden"].hub
    hub.bind(asyncio.get_running_loop(), built.server.subscribe)
    transport = httpx.ASGITransport(app=built.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield Api(client=client, built=built)
    hub.close()
