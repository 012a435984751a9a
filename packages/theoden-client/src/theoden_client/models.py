"""Model registry and built-ins (``mlp``, ``cnn``, ``resnet18`` for 32x32 inputs), plain `torch.nn`.

Register your own with ``@register_model("name")`` on a function or class taking keyword arguments
and returning an `torch.nn.Module`; the server then asks for it with ``ModelSpec(name="name", kwargs=...)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from theoden_protocol import ModelSpec
from torch import nn

from theoden_client.registry import Registry

__all__ = ["MODELS", "MLP", "SmallCNN", "ResNet18", "build_model", "register_model"]

ModelFactory = Callable[..., nn.Module]

#: Every model the client can build, by name.
MODELS: Registry[ModelFactory] = Registry("model")


def register_model(name: str, *, override: bool = False) -> Callable[[ModelFactory], ModelFactory]:
    """Decorator: register a model factory (``**kwargs -> nn.Module``) as ``name``."""
    return MODELS.register(name, override=override)


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the model ``spec`` names with its keyword arguments."""
    model = MODELS.get(spec.name)(**spec.kwargs)
    if not isinstance(model, nn.Module):
        raise TypeError(f"model factory {spec.name!r} returned a {type(model).__name__}, not a torch.nn.Module")
    return model


@register_model("mlp")
class MLP(nn.Module):
    """A multi-layer perceptron on flattened inputs.

    Args:
        in_features: Length of the flattened input.
        hidden: Width of each hidden layer.
        num_classes: Number of outputs.
        dropout: Dropout probability after each hidden layer.
    """

    def __init__(
        self, *, in_features: int, hidden: Sequence[int] = (64,), num_classes: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of ``x``."""
        return self.net(x)  # type: ignore[no-any-return]


@register_model("cnn")
class SmallCNN(nn.Module):
    """Two or more conv-ReLU-pool blocks and a linear classifier, for small images.

    Args:
        in_channels: Channels of the input image.
        num_classes: Number of outputs.
        input_size: Height (= width) of the input image; must be divisible by ``2 ** len(channels)``.
        channels: Output channels of each conv block.
    """

    def __init__(
        self, *, in_channels: int = 3, num_classes: int = 10, input_size: int = 32, channels: Sequence[int] = (32, 64)
    ) -> None:
        super().__init__()
        if input_size % (2 ** len(channels)):
            raise ValueError(f"input_size {input_size} is not divisible by 2**{len(channels)} (one pooling per block)")
        blocks: list[nn.Module] = []
        width = in_channels
        for c in channels:
            blocks += [nn.Conv2d(width, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            width = c
        self.features = nn.Sequential(*blocks)
        side = input_size // 2 ** len(channels)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(width * side * side, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of ``x`` (shape ``(N, in_channels, input_size, input_size)``)."""
        return self.classifier(self.features(x))  # type: ignore[no-any-return]


class _BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


@register_model("resnet18")
class ResNet18(nn.Module):
    """ResNet-18 for 32x32 inputs (CIFAR variant: 3x3 stem, no initial max-pool).

    Args:
        num_classes: Number of outputs.
        in_channels: Channels of the input image.
        width: Channels of the first stage (64 in the paper; smaller for quick experiments).
    """

    def __init__(self, *, num_classes: int = 10, in_channels: int = 3, width: int = 64) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )
        stages: list[nn.Module] = []
        cin = width
        for i, mult in enumerate((1, 2, 4, 8)):
            cout = width * mult
            stride = 1 if i == 0 else 2
            stages += [_BasicBlock(cin, cout, stride), _BasicBlock(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits of ``x`` (shape ``(N, in_channels, 32, 32)``)."""
        return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))  # type: ignore[no-any-return]
