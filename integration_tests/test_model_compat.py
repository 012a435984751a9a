"""Models the server can build must load strictly on clients: same names, same state-dict layout."""

from __future__ import annotations

import pytest
from theoden_client.models import build_model as build_client_model
from theoden_protocol import ModelSpec
from theoden_server.weights import build_model as build_server_model


@pytest.mark.parametrize(
    "kwargs",
    [{"in_features": 64, "hidden": [128, 64], "num_classes": 10}, {"in_features": 8, "hidden": [4], "num_classes": 3}],
)
def test_server_and_client_mlp_share_their_state_dict_layout(kwargs: dict) -> None:  # type: ignore[type-arg]
    spec = ModelSpec(name="mlp", kwargs=kwargs)
    server_state = build_server_model(spec).state_dict()
    client = build_client_model(spec)
    assert {k: tuple(v.shape) for k, v in server_state.items()} == {
        k: tuple(v.shape) for k, v in client.state_dict().items()
    }
    client.load_state_dict(server_state, strict=True)


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [("cnn", {"in_channels": 1, "num_classes": 10, "input_size": 8}), ("resnet18", {"num_classes": 10})],
)
def test_server_builds_client_registered_models_with_the_clients_layout(name: str, kwargs: dict) -> None:  # type: ignore[type-arg]
    spec = ModelSpec(name=name, kwargs=kwargs)
    server_state = build_server_model(spec).state_dict()
    build_client_model(spec).load_state_dict(server_state, strict=True)
