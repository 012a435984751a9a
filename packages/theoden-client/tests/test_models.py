from __future__ import annotations

import pytest
import torch
from theoden_client.errors import RegistryError
from theoden_client.models import build_model, register_model
from theoden_protocol import ModelSpec
from torch import nn


@pytest.mark.parametrize(
    ("spec", "shape"),
    [
        (ModelSpec(name="mlp", kwargs={"in_features": 12, "hidden": [8, 8], "num_classes": 4}), (2, 3, 4)),
        (ModelSpec(name="cnn", kwargs={"in_channels": 1, "num_classes": 5, "input_size": 8}), (2, 1, 8, 8)),
        (ModelSpec(name="resnet18", kwargs={"num_classes": 7, "width": 4}), (2, 3, 32, 32)),
    ],
)
def test_builtin_models_produce_logits(spec: ModelSpec, shape: tuple[int, ...]) -> None:
    model = build_model(spec)
    out = model(torch.randn(*shape))
    assert out.shape == (2, spec.kwargs["num_classes"])


def test_resnet18_has_the_usual_depth() -> None:
    model = build_model(ModelSpec(name="resnet18", kwargs={"width": 64}))
    n_params = sum(p.numel() for p in model.parameters())
    assert 11_000_000 < n_params < 11_300_000  # ResNet-18 for CIFAR: about 11.2 M parameters


def test_cnn_checks_its_input_size() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        build_model(ModelSpec(name="cnn", kwargs={"input_size": 10}))


def test_user_models_register_by_name() -> None:
    @register_model("test_linear", override=True)
    def linear(*, n: int) -> nn.Module:
        return nn.Linear(n, 1)

    assert isinstance(build_model(ModelSpec(name="test_linear", kwargs={"n": 3})), nn.Linear)
    with pytest.raises(RegistryError, match="already registered"):
        register_model("test_linear")(lambda: nn.Identity())
    with pytest.raises(RegistryError, match=r"unknown model 'vit'; this client knows: cnn, mlp, resnet18"):
        build_model(ModelSpec(name="vit"))
