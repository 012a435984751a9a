"""Model weights as safetensors files: save, hash, and load strictly with clear mismatch errors.

Nothing here unpickles: weights are read with `safetensors.torch.load_file` only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from theoden_client.errors import WeightsMismatchError

__all__ = ["CHUNK_BYTES", "file_sha256", "load_weights", "save_weights"]

#: Bytes read or written per chunk when hashing or streaming a file.
CHUNK_BYTES = 1024 * 1024


@contextmanager
def _one_thread() -> Iterator[None]:
    """Run torch ops single-threaded (restoring the thread count afterwards).

    Copying weights is memory-bound; waking the intra-op pool for it costs more CPU than the copy itself,
    as the pool's threads spin after every parallel region.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def file_sha256(path: Path) -> tuple[str, int]:
    """Return the SHA-256 hex digest and size of the file at ``path``, reading it in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def save_weights(model: nn.Module, path: Path) -> None:
    """Write ``model.state_dict()`` to ``path`` as safetensors.

    Tensors that share storage (tied weights) are copied so the file holds each under its own name.
    """
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    with _one_thread():
        for name, tensor in model.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            ptr = t.untyped_storage().data_ptr()
            if ptr in seen:
                t = t.clone()
            seen.add(ptr)
            tensors[name] = t
        save_file(tensors, str(path))


def load_weights(model: nn.Module, path: Path, *, strict: bool = True) -> None:
    """Load the safetensors file at ``path`` into ``model``.

    Args:
        model: The model to update in place.
        path: A safetensors file (already verified against its digest).
        strict: Refuse missing and unexpected tensor names (shapes must always match).

    Raises:
        WeightsMismatchError: The file is not safetensors, a tensor's shape differs (the message
            names it and both shapes), or with ``strict`` a tensor is missing or unexpected.
    """
    try:
        received = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsMismatchError(f"the weights are not a readable safetensors file: {exc}") from exc
    expected = model.state_dict()
    shape_errors = [
        f"{name}: model has {tuple(expected[name].shape)}, weights have {tuple(t.shape)}"
        for name, t in received.items()
        if name in expected and expected[name].shape != t.shape
    ]
    if shape_errors:
        raise WeightsMismatchError("weights do not fit the model; shape mismatch in " + "; ".join(shape_errors))
    if strict:
        missing = sorted(set(expected) - set(received))
        unexpected = sorted(set(received) - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing tensors {missing[:10]}{' ...' if len(missing) > 10 else ''}")
            if unexpected:
                parts.append(f"unexpected tensors {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
            raise WeightsMismatchError("weights do not fit the model: " + "; ".join(parts))
    with _one_thread():
        model.load_state_dict(received, strict=strict)
