"""Model weights as safetensors: save, hash, and load strictly with clear mismatch errors.

Weights of up to `IN_MEMORY_BYTES` travel through memory (no file, one hash over the bytes); larger
ones through a scratch file, so a big model never sits in memory twice. Nothing here unpickles:
weights are read with `safetensors.torch.load` / `load_file` only.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save, save_file
from torch import nn

from theoden_client.errors import WeightsMismatchError

__all__ = [
    "CHUNK_BYTES",
    "IN_MEMORY_BYTES",
    "file_sha256",
    "load_weights",
    "model_nbytes",
    "save_weights",
    "scratch_file",
    "weights_bytes",
]

#: Bytes read or written per chunk when hashing or streaming a file.
CHUNK_BYTES = 1024 * 1024
#: Weights up to this size are saved, uploaded, downloaded and loaded in memory; larger go through a file.
IN_MEMORY_BYTES = 64 * 1024 * 1024


@contextmanager
def scratch_file(folder: Path, *, prefix: str) -> Iterator[Path]:
    """A fresh, private file in ``folder`` (created if needed), removed on exit whatever happens."""
    folder.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=folder, prefix=prefix, suffix=".safetensors")
    os.close(fd)
    path = Path(name)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def model_nbytes(model: nn.Module) -> int:
    """Bytes of the model's state dict (parameters and buffers), i.e. about its safetensors size."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


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


def _state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict as contiguous CPU tensors; tied weights are copied so each has its own name."""
    tensors: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, tensor in model.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        ptr = t.untyped_storage().data_ptr()
        if ptr in seen:
            t = t.clone()
        seen.add(ptr)
        tensors[name] = t
    return tensors


def save_weights(model: nn.Module, path: Path) -> None:
    """Write ``model.state_dict()`` to ``path`` as safetensors."""
    with _one_thread():
        save_file(_state_tensors(model), str(path))


def weights_bytes(model: nn.Module) -> tuple[bytes, str]:
    """Return ``model.state_dict()`` as safetensors bytes and their SHA-256 hex digest."""
    with _one_thread():
        data = save(_state_tensors(model))
    return data, hashlib.sha256(data).hexdigest()


def load_weights(model: nn.Module, source: Path | bytes, *, strict: bool = True) -> None:
    """Load safetensors weights (a file, or the bytes of one) into ``model``.

    Args:
        model: The model to update in place.
        source: A safetensors file or its bytes (already verified against their digest).
        strict: Refuse missing and unexpected tensor names (shapes must always match).

    Raises:
        WeightsMismatchError: The file is not safetensors, a tensor's shape differs (the message
            names it and both shapes), or with ``strict`` a tensor is missing or unexpected.
    """
    try:
        received = load(source) if isinstance(source, bytes) else load_file(str(source))
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
