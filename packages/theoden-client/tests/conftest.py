from __future__ import annotations

from pathlib import Path

import pytest
import torch
from theoden_client.data import DataRoot
from theoden_client.executors import ExecutionContext, default_executors

from ._fakes import FakeTransport


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture
def fake() -> FakeTransport:
    return FakeTransport()


@pytest.fixture
def data_root(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    root.mkdir()
    return root


@pytest.fixture
def ctx(tmp_path: Path, data_root: Path, fake: FakeTransport) -> ExecutionContext:
    return ExecutionContext(
        executors=default_executors(),
        data_root=DataRoot(data_root),
        workdir=tmp_path / "work",
        transport=fake,
        progress="off",
    )
