from __future__ import annotations

import pytest
from theoden_client.errors import ResourceNotFoundError, ResourceTypeError
from theoden_client.resources import ResourceManager
from torch import nn


def test_get_checks_presence_and_type() -> None:
    resources = ResourceManager()
    resources.set("model", nn.Linear(2, 2))
    assert isinstance(resources.get("model", nn.Module), nn.Linear)
    with pytest.raises(
        ResourceNotFoundError, match=r"no resource 'optimizer'; it holds: model \(torch.nn.modules.linear.Linear\)"
    ):
        resources.get("optimizer")
    with pytest.raises(ResourceTypeError, match="resource 'model' is a torch.nn.modules.linear.Linear, not a int"):
        resources.get("model", int)
    assert resources.get_optional("absent", int) is None


def test_describe_pop_and_clear() -> None:
    resources = ResourceManager()
    resources.set("b", 1)
    resources.set("a", "x")
    assert resources.describe() == {"a": "str", "b": "int"}
    assert "a" in resources
    assert len(resources) == 2
    assert resources.pop("a") == "x"
    with pytest.raises(ResourceNotFoundError):
        resources.pop("a")
    assert resources.clear() == ["b"]
    assert resources.keys() == []
