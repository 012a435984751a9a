from __future__ import annotations

import base64
import json
import os
import stat
import time
from pathlib import Path

import jwt
import pytest
from theoden_server.errors import Unauthorized
from theoden_server.security import (
    Principal,
    Role,
    SecurityConfigError,
    TokenIssuer,
    load_jwt_secret,
)

SECRET = b"s" * 32
ALICE = Principal("alice", Role.CLIENT)


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_issue_and_verify_round_trip() -> None:
    issuer = TokenIssuer(SECRET, ttl_seconds=600)

    token, expires_in = issuer.issue(Principal("admin-1", Role.ADMIN))

    assert expires_in == 600
    principal = issuer.verify(token)
    assert principal == Principal("admin-1", Role.ADMIN)
    assert principal.is_admin
    claims = jwt.decode(token, SECRET, algorithms=["HS256"], audience="theoden")
    assert set(claims) == {"sub", "role", "iat", "exp", "iss", "aud", "jti"}
    assert claims["exp"] - claims["iat"] == 600
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_every_token_has_its_own_id() -> None:
    issuer = TokenIssuer(SECRET)
    first, second = (jwt.decode(issuer.issue(ALICE)[0], options={"verify_signature": False}) for _ in range(2))
    assert first["jti"] != second["jti"]


def test_expired_token_is_refused() -> None:
    # Prepare: a 1-second token issued 10 s ago (beyond the 5 s leeway)
    past = TokenIssuer(SECRET, ttl_seconds=1, clock=lambda: time.time() - 10)
    token, _ = past.issue(ALICE)

    with pytest.raises(Unauthorized, match="^token expired, log in again$"):
        TokenIssuer(SECRET).verify(token)


def test_token_just_past_expiry_is_accepted_within_leeway() -> None:
    token, _ = TokenIssuer(SECRET, ttl_seconds=1, clock=lambda: time.time() - 3).issue(ALICE)
    assert TokenIssuer(SECRET).verify(token) == ALICE


def test_token_from_the_future_is_refused() -> None:
    token, _ = TokenIssuer(SECRET, clock=lambda: time.time() + 120).issue(ALICE)
    with pytest.raises(Unauthorized, match="clocks"):
        TokenIssuer(SECRET).verify(token)


def test_a_verified_token_is_remembered_until_it_expires() -> None:
    # Prepare: a server clock we move by hand; a 60 s token verified once
    now = [time.time()]
    issuer = TokenIssuer(SECRET, ttl_seconds=60, clock=lambda: now[0])
    token, _ = issuer.issue(ALICE)
    assert issuer.verify(token) == ALICE
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    tampered = ".".join([header, b64(json.dumps(claims).encode()), signature])

    # Execute / Assert: the remembered token still passes, a tampered sibling is checked afresh, and the
    # remembered one stops working once it expires (beyond the leeway), as an unremembered one would
    now[0] += 30
    assert issuer.verify(token) == ALICE
    with pytest.raises(Unauthorized, match="signature invalid"):
        issuer.verify(tampered)
    now[0] += 36
    with pytest.raises(Unauthorized, match="^token expired, log in again$"):
        issuer.verify(token)
    with pytest.raises(Unauthorized, match="^token expired, log in again$"):
        issuer.verify(token)


def test_the_verified_token_memory_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    import theoden_server.security as security

    monkeypatch.setattr(security, "_VERIFIED_CACHE_SIZE", 4)
    issuer = TokenIssuer(SECRET)
    tokens = [issuer.issue(Principal(f"c{i}", Role.CLIENT))[0] for i in range(10)]
    for token in tokens:
        issuer.verify(token)
    assert len(issuer._verified) == 4
    assert [issuer.verify(t).name for t in tokens] == [f"c{i}" for i in range(10)]  # evicted ones verify afresh


def test_forged_token_is_refused() -> None:
    forged, _ = TokenIssuer(b"another secret of at least 32 bytes").issue(ALICE)
    with pytest.raises(Unauthorized, match="signature invalid"):
        TokenIssuer(SECRET).verify(forged)


def test_tampered_payload_is_refused() -> None:
    # Prepare: promote a client token to admin without re-signing it
    token, _ = TokenIssuer(SECRET).issue(ALICE)
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["role"] = "admin"
    tampered = ".".join([header, b64(json.dumps(claims).encode()), signature])

    with pytest.raises(Unauthorized, match="signature invalid"):
        TokenIssuer(SECRET).verify(tampered)


def test_alg_none_is_refused() -> None:
    claims = jwt.decode(TokenIssuer(SECRET).issue(ALICE)[0], options={"verify_signature": False})
    unsigned = b64(b'{"alg":"none","typ":"JWT"}') + "." + b64(json.dumps(claims).encode()) + "."
    with pytest.raises(Unauthorized, match="signature invalid: only HS256"):
        TokenIssuer(SECRET).verify(unsigned)


def test_wrong_audience_and_issuer_are_refused() -> None:
    other_audience, _ = TokenIssuer(SECRET, audience="other-run").issue(ALICE)
    other_issuer, _ = TokenIssuer(SECRET, issuer="someone-else").issue(ALICE)
    with pytest.raises(Unauthorized, match="another audience"):
        TokenIssuer(SECRET).verify(other_audience)
    with pytest.raises(Unauthorized, match="another issuer"):
        TokenIssuer(SECRET).verify(other_issuer)


@pytest.mark.parametrize("token", ["", "garbage", "a.b.c", "x" * 10_000])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(Unauthorized, match="malformed token"):
        TokenIssuer(SECRET).verify(token)


def test_missing_claim_and_bad_role_are_refused() -> None:
    now = int(time.time())
    base = {"sub": "alice", "role": "client", "iat": now, "exp": now + 60, "iss": "theoden", "aud": "theoden"}
    without_jti = jwt.encode(base, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="missing claim 'jti'"):
        TokenIssuer(SECRET).verify(without_jti)
    bad_role = jwt.encode({**base, "jti": "1", "role": "root"}, SECRET, algorithm="HS256")
    with pytest.raises(Unauthorized, match="bad subject or role"):
        TokenIssuer(SECRET).verify(bad_role)


def test_issuer_refuses_weak_configuration() -> None:
    with pytest.raises(SecurityConfigError, match="at least 32"):
        TokenIssuer(b"short")
    with pytest.raises(SecurityConfigError, match="at least 64"):
        TokenIssuer(SECRET, algorithm="HS512")
    with pytest.raises(ValueError, match="unsupported JWT algorithm"):
        TokenIssuer(SECRET, algorithm="none")
    assert "sss" not in repr(TokenIssuer(SECRET))


# --- load_jwt_secret -------------------------------------------------------------------------------------------


@pytest.fixture
def no_env_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("THEODEN_JWT_SECRET", raising=False)


def test_secret_priority(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    file = tmp_path / "jwt-secret"
    file.write_text("f" * 40 + "\n")
    monkeypatch.setenv("THEODEN_JWT_SECRET", "e" * 40)

    assert load_jwt_secret("x" * 40, secret_file=file) == b"x" * 40
    assert load_jwt_secret(b"y" * 32, secret_file=file) == b"y" * 32
    assert load_jwt_secret(secret_file=file) == b"e" * 40
    monkeypatch.delenv("THEODEN_JWT_SECRET")
    assert load_jwt_secret(secret_file=file) == b"f" * 40  # trailing newline stripped
    monkeypatch.setenv("MY_SECRET", "m" * 40)
    assert load_jwt_secret(env_var="MY_SECRET", secret_file=file) == b"m" * 40


@pytest.mark.usefixtures("no_env_secret")
def test_secret_file_is_created_private_and_reused_so_tokens_survive_a_restart(tmp_path: Path) -> None:
    # Prepare: first server start creates the secret
    file = tmp_path / "state" / "jwt-secret"
    first = load_jwt_secret(secret_file=file)
    token, _ = TokenIssuer(first).issue(ALICE)

    # Execute: "restart" -- a new issuer from the same file
    second = load_jwt_secret(secret_file=file)

    # Assert
    assert first == second
    assert len(first) >= 32
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert TokenIssuer(second).verify(token) == ALICE
    assert [p.name for p in file.parent.iterdir()] == ["jwt-secret"]
    assert load_jwt_secret(secret_file=tmp_path / "other") != first  # random, never a fixed default


@pytest.mark.usefixtures("no_env_secret")
def test_no_secret_at_all_is_a_clear_error() -> None:
    with pytest.raises(SecurityConfigError, match="no JWT secret configured: set \\$THEODEN_JWT_SECRET"):
        load_jwt_secret()


@pytest.mark.usefixtures("no_env_secret")
def test_short_secrets_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SecurityConfigError, match="too short \\(5 bytes; at least 32"):
        load_jwt_secret("short")
    file = tmp_path / "s"
    file.write_text("tiny\n")
    with pytest.raises(SecurityConfigError, match=f"secret file {file} is too short"):
        load_jwt_secret(secret_file=file)
    monkeypatch.setenv("THEODEN_JWT_SECRET", "abc")
    with pytest.raises(SecurityConfigError, match="THEODEN_JWT_SECRET is too short"):
        load_jwt_secret()


@pytest.mark.usefixtures("no_env_secret")
def test_unreadable_secret_file_is_a_clear_error(tmp_path: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads every file")
    file = tmp_path / "s"
    file.write_text("z" * 40)
    file.chmod(0)
    with pytest.raises(SecurityConfigError, match="cannot read JWT secret file"):
        load_jwt_secret(secret_file=file)
