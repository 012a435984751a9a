from __future__ import annotations

from collections.abc import Iterator

import pytest
from argon2 import PasswordHasher
from theoden_server import security


@pytest.fixture
def cheap_hasher(monkeypatch: pytest.MonkeyPatch) -> Iterator[PasswordHasher]:
    """Swap in a fast argon2id hasher so user-file tests do not spend seconds hashing."""
    hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    monkeypatch.setattr(security, "_HASHER", hasher)
    security._dummy_hash.cache_clear()
    yield hasher
    security._dummy_hash.cache_clear()
