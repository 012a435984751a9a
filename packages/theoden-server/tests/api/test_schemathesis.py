"""Property-based API testing against the app's own OpenAPI schema: nothing a client sends yields a 5xx."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from theoden_protocol import Train
from theoden_server.operations.conditions import RequireNumberOfClients
from theoden_server.operations.distributions import ClosedDistribution
from theoden_server.security import Principal, Role, UsersFile
from theoden_server.start import BuiltServer, build_server

from .conftest import PASSWORDS


@pytest.fixture
def fuzz_server(tmp_path: Path, users_file: UsersFile) -> Iterator[BuiltServer]:
    built = build_server(
        [RequireNumberOfClients(1), ClosedDistribution(Train(steps=1))],
        "fuzz",
        users=users_file,
        run_dir=tmp_path / "fuzz-run",
        jwt_secret=b"f" * 32,
        max_wait=0.05,
        max_blob_bytes=64 * 1024,
    )
    built.server.start()
    yield built
    built.server.stop()


def _fuzz(built: BuiltServer, *, authenticated: bool, examples: int) -> list[str]:
    schema = schemathesis.openapi.from_asgi("/api/v1/schema/openapi.json", built.app)
    token, _ = built.tokens.issue(Principal(name="alice", role=Role.CLIENT))
    headers = {"Authorization": f"Bearer {token}"} if authenticated else {}
    exercised = []
    for result in schema.get_all_operations():
        operation = result.ok()
        exercised.append(f"{operation.method.upper()} {operation.path}")

        @given(case=operation.as_strategy())
        @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case) -> None:
            if case.path.endswith("/auth/token") and isinstance(case.body, dict) and authenticated:
                case.body.setdefault("password", PASSWORDS["alice"])
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        check()
    return exercised


def test_no_request_produces_a_server_error(fuzz_server: BuiltServer) -> None:
    exercised = _fuzz(fuzz_server, authenticated=True, examples=30)
    assert {"POST /api/v1/requests", "POST /api/v1/status", "PUT /api/v1/storage/{blob_id}"} <= set(exercised)


def test_no_unauthenticated_request_produces_a_server_error(fuzz_server: BuiltServer) -> None:
    _fuzz(fuzz_server, authenticated=False, examples=10)
