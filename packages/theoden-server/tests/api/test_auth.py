from __future__ import annotations

import time

import jwt
import msgspec
from theoden_protocol import PROTOCOL_VERSION, RegisterRequest, codec
from theoden_server.security import Principal, Role, TokenIssuer

from .conftest import PASSWORDS, Api


async def test_password_flow_returns_a_bearer_token_that_works(api: Api) -> None:
    # Execute
    response = await api.client.post(
        "/api/v1/auth/token", data={"grant_type": "password", "username": "alice", "password": PASSWORDS["alice"]}
    )
    # Assert
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["expires_in"] > 0
    registered = await api.client.post(
        "/api/v1/requests",
        content=codec.encode(RegisterRequest()),
        headers={"Authorization": f"Bearer {body['access_token']}", "Content-Type": "application/json"},
    )
    assert registered.status_code == 200, registered.text
    assert registered.json()["client_name"] == "alice"
    assert registered.json()["protocol_version"] == PROTOCOL_VERSION


async def test_wrong_password_and_unknown_user_get_the_same_401(api: Api) -> None:
    wrong = await api.client.post("/api/v1/auth/token", data={"username": "alice", "password": "nope-nope-nope"})
    unknown = await api.client.post("/api/v1/auth/token", data={"username": "mallory", "password": "nope-nope-nope"})
    assert wrong.status_code == unknown.status_code == 401
    assert wrong.json() == unknown.json()
    assert wrong.json()["code"] == "unauthorized"


async def test_token_endpoint_refuses_other_grants_and_missing_fields(api: Api) -> None:
    other = await api.client.post(
        "/api/v1/auth/token", data={"grant_type": "client_credentials", "username": "a", "password": "b"}
    )
    assert other.status_code == 400
    assert "grant_type" in other.json()["detail"]
    missing = await api.client.post("/api/v1/auth/token", data={"username": "alice"})
    assert missing.status_code == 400
    assert "password" in missing.json()["detail"]


async def test_requests_without_or_with_bad_tokens_are_401(api: Api) -> None:
    body = codec.encode(RegisterRequest())
    none = await api.client.post("/api/v1/requests", content=body)
    assert none.status_code == 401
    assert "missing bearer token" in none.json()["detail"]
    assert none.headers["www-authenticate"] == "Bearer"
    basic = await api.client.post("/api/v1/requests", content=body, headers={"Authorization": "Basic YTpi"})
    assert basic.status_code == 401


async def test_forged_and_expired_tokens_are_refused(api: Api) -> None:
    body = codec.encode(RegisterRequest())
    forged_issuer = TokenIssuer(b"x" * 32, audience="api-test")
    forged, _ = forged_issuer.issue(Principal(name="alice", role=Role.ADMIN))
    response = await api.client.post("/api/v1/requests", content=body, headers={"Authorization": f"Bearer {forged}"})
    assert response.status_code == 401
    assert "signature" in response.json()["detail"]

    now = time.time()
    expired = jwt.encode(
        {
            "sub": "alice",
            "role": "client",
            "iat": now - 7200,
            "exp": now - 3600,
            "iss": "theoden",
            "aud": "api-test",
            "jti": "j1",
        },
        b"k" * 32,
        algorithm="HS256",
    )
    response = await api.client.post("/api/v1/requests", content=body, headers={"Authorization": f"Bearer {expired}"})
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


async def test_token_of_a_removed_user_is_refused(api: Api) -> None:
    headers = api.auth("bob")
    api.built.users.remove("bob")
    response = await api.client.post("/api/v1/requests", content=codec.encode(RegisterRequest()), headers=headers)
    assert response.status_code == 401
    assert "no longer exists" in response.json()["detail"]


async def test_health_needs_no_token_and_schema_is_served(api: Api) -> None:
    health = await api.client.get("/api/v1/health")
    assert health.status_code == 200
    assert health.json()["run_name"] == "api-test"
    schema = await api.client.get("/api/v1/schema/openapi.json")
    assert schema.status_code == 200
    paths = msgspec.json.decode(schema.content)["paths"]
    assert {"/api/v1/auth/token", "/api/v1/requests", "/api/v1/status", "/api/v1/storage/{blob_id}"} <= set(paths)
    ui = await api.client.get("/api/v1/schema/swagger")
    assert ui.status_code == 200
