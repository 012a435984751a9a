"""Augmentation registry: batch transforms a dataloader applies to its inputs.

An augmentation factory returns ``fn(batch) -> batch`` working on the input tensor of one batch.
Random ones only act while training; ``normalize`` acts in validation too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from theoden_protocol import AugmentationSpec

from theoden_client.registry import Registry

__all__ = ["AUGMENTATIONS", "Augmentation", "build_augmentations", "register_augmentation"]

AugmentationFactory = Callable[..., "Augmentation"]

#: Every augmentation the client can apply, by name.
AUGMENTATIONS: Registry[AugmentationFactory] = Registry("augmentation")


@dataclass(frozen=True, slots=True)
class Augmentation:
    """A batch transform and whether it also applies outside training."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    train_only: bool = True

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Return the transformed batch."""
        return self.fn(batch)


def register_augmentation(name: str, *, override: bool = False) -> Callable[[AugmentationFactory], AugmentationFactory]:
    """Decorator: register ``fn(**kwargs) -> Augmentation`` as ``name``."""
    return AUGMENTATIONS.register(name, override=override)


def build_augmentations(specs: Sequence[AugmentationSpec]) -> list[Augmentation]:
    """Create every augmentation in ``specs``."""
    return [AUGMENTATIONS.get(s.name)(**s.kwargs) for s in specs]


@register_augmentation("horizontal_flip")
def horizontal_flip(*, p: float = 0.5) -> Augmentation:
    """Mirror each image (last axis) with probability ``p``."""

    def fn(batch: torch.Tensor) -> torch.Tensor:
        flip = torch.rand(batch.shape[0], device=batch.device) < p
        out = batch.clone()
        out[flip] = batch[flip].flip(-1)
        return out

    return Augmentation(fn)


@register_augmentation("random_crop")
def random_crop(*, padding: int = 4) -> Augmentation:
    """Zero-pad each image by ``padding`` pixels and crop it back to its size at a random offset."""

    def fn(batch: torch.Tensor) -> torch.Tensor:
        h, w = batch.shape[-2:]
        padded = torch.nn.functional.pad(batch, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (batch.shape[0], 2))
        return torch.stack([padded[i, ..., dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])

    return Augmentation(fn)


@register_augmentation("gaussian_noise")
def gaussian_noise(*, std: float = 0.05) -> Augmentation:
    """Add zero-mean Gaussian noise of standard deviation ``std``."""
    return Augmentation(lambda batch: batch + std * torch.randn_like(batch))


@register_augmentation("normalize")
def normalize(*, mean: Sequence[float] | float, std: Sequence[float] | float) -> Augmentation:
    """Subtract ``mean`` and divide by ``std`` per channel (axis 1); applies in validation too."""

    def fn(batch: torch.Tensor) -> torch.Tensor:
        shape: Any = (1, -1) + (1,) * (batch.ndim - 2)
        m = torch.as_tensor(mean, dtype=batch.dtype, device=batch.device).reshape(shape)
        s = torch.as_tensor(std, dtype=batch.dtype, device=batch.device).reshape(shape)
        return (batch - m) / s

    return Augmentation(fn, train_only=False)
