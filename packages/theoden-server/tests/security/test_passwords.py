from __future__ import annotations

from argon2 import extract_parameters
from argon2.low_level import Type
from theoden_server.security import generate_password, hash_password, verify_password


def test_hash_is_argon2id_with_rfc9106_parameters_and_verifies() -> None:
    # Execute: the real, default hasher (one hash, one verify each way)
    hashed = hash_password("correct horse battery staple")

    # Assert
    params = extract_parameters(hashed)
    assert hashed.startswith("$argon2id$")
    assert (params.type, params.time_cost, params.memory_cost, params.parallelism) == (Type.ID, 3, 65536, 4)
    assert verify_password(hashed, "correct horse battery staple")
    assert not verify_password(hashed, "correct horse battery stapl")


def test_hash_is_salted(cheap_hasher: object) -> None:
    assert hash_password("same") != hash_password("same")


def test_unreadable_hash_never_matches() -> None:
    assert not verify_password("not-a-hash", "x")
    assert not verify_password("", "")


def test_generated_passwords_are_long_random_and_url_safe() -> None:
    passwords = {generate_password() for _ in range(50)}
    assert len(passwords) == 50
    for password in passwords:
        assert len(password) == 32
        assert set(password) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
