"""Fixtures of the server-core tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from theoden_server.server import Server
from theoden_server.storage import BlobStore

from ._harness import tiny_model, write_model


@pytest.fixture
def store(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "store")


@pytest.fixture
def make_server(tmp_path: Path, store: BlobStore) -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def factory(**kwargs: Any) -> Server:
        kwargs.setdefault("run_name", "test-run")
        kwargs.setdefault("store", store)
        kwargs.setdefault("run_dir", tmp_path / "run")
        kwargs.setdefault("instructions", [])
        server = Server(**kwargs)
        servers.append(server)
        server.start()
        return server

    yield factory
    for server in servers:
        server.stop()


@pytest.fixture
def global_file(tmp_path: Path) -> Path:
    return write_model(tmp_path / "init.safetensors", tiny_model(0))
