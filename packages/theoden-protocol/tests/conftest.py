from __future__ import annotations

import pytest


@pytest.fixture(params=["json", "msgpack"])
def proto(request: pytest.FixtureRequest) -> str:
    """Every codec test runs over both wire formats."""
    return str(request.param)
