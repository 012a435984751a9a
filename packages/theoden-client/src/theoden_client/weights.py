"""Model weights as safetensors: save, hash, and load strictly with clear mismatch errors.

An upload is sent from the tensors' own memory: a header plus views of each tensor (`weights_payload`),
so it is never copied, whatever the model's size. A download of up to `IN_MEMORY_BYTES` is read into
memory and loaded from there in place; larger ones go through a scratch file, so a big model never sits
in memory twice. Nothing here unpickles: headers are checked by `theoden_protocol.safetensors` (or by
`safetensors.torch.load_file` for files) and tensors are read as plain numbers.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from theoden_protocol import safetensors
from torch import nn

from theoden_client.errors import WeightsMismatchError

__all__ = [
    "CHUNK_BYTES",
    "IN_MEMORY_BYTES",
    "Payload",
    "file_sha256",
    "load_weights",
    "save_weights",
    "scratch_file",
    "weights_bytes",
    "weights_payload",
]

#: Bytes read or written per chunk when hashing or streaming a file.
CHUNK_BYTES = 1024 * 1024
#: Weights up to this size are downloaded and loaded in memory; larger ones go through a scratch file.
IN_MEMORY_BYTES = 64 * 1024 * 1024

_DTYPES: dict[str, torch.dtype] = {name: getattr(torch, attr) for name, attr in safetensors.TORCH_DTYPES.items()}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


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


class Payload(NamedTuple):
    """A model's weights as a safetensors blob that is not joined into one buffer.

    ``parts`` are the header and then each tensor's bytes, viewed in place (no copy): send or hash
    them in order, before the model changes. ``sha256`` and ``size`` describe their concatenation.
    """

    parts: list[memoryview]
    sha256: str
    size: int


def weights_payload(model: nn.Module) -> Payload:
    """Return ``model.state_dict()`` as safetensors `Payload`: a header plus views of the tensors.

    Raises:
        WeightsMismatchError: A tensor has a dtype weight blobs cannot carry (e.g. complex).
    """
    tensors: list[tuple[str, torch.Tensor]] = []
    for name, tensor in model.state_dict().items():
        if tensor.dtype not in _NAMES:
            raise WeightsMismatchError(
                f"tensor {name!r} has dtype {tensor.dtype}, which weight blobs cannot carry "
                f"(supported: {', '.join(str(d) for d in _NAMES)})"
            )
        tensors.append((name, tensor.detach().cpu().contiguous()))
    header = safetensors.build_header((name, _NAMES[t.dtype], tuple(t.shape)) for name, t in tensors)
    parts = [memoryview(header)]
    parts += [memoryview(t.reshape(-1).view(torch.uint8).numpy()) for _, t in tensors if t.numel()]  # type: ignore[arg-type]
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return Payload(parts, digest.hexdigest(), sum(part.nbytes for part in parts))


def weights_bytes(model: nn.Module) -> tuple[bytes, str]:
    """Return ``model.state_dict()`` as safetensors bytes and their SHA-256 hex digest."""
    payload = weights_payload(model)
    return b"".join(payload.parts), payload.sha256


def _tensors_from_buffer(data: memoryview) -> dict[str, torch.Tensor]:
    """Tensors viewing the safetensors bytes ``data`` in place (header checked; nothing copied when aligned)."""
    total = data.nbytes
    try:
        header = safetensors.parse_header(data[8 : 8 + safetensors.header_length(data[:8], total)], total)
    except safetensors.SafetensorsError as exc:
        raise WeightsMismatchError(f"the weights are not a readable safetensors file: {exc.detail}") from None
    tensors: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():  # a read-only buffer (bytes): the tensors are only read from
        warnings.simplefilter("ignore", UserWarning)
        for name, entry in header.tensors.items():
            dtype, offset = _DTYPES[entry.dtype], header.data_start + entry.begin
            count = entry.end - entry.begin
            if not count:
                tensors[name] = torch.empty(entry.shape, dtype=dtype)
            elif offset % dtype.itemsize:  # unaligned: a copy makes it aligned
                raw = torch.frombuffer(bytearray(data[offset : offset + count]), dtype=torch.uint8)
                tensors[name] = raw.view(dtype).view(entry.shape)
            else:
                tensors[name] = torch.frombuffer(data, dtype=dtype, count=count // dtype.itemsize, offset=offset).view(
                    entry.shape
                )
    return tensors


def load_weights(model: nn.Module, source: Path | bytes | bytearray | memoryview, *, strict: bool = True) -> None:
    """Load safetensors weights (a file, or a buffer holding one) into ``model``.

    Args:
        model: The model to update in place.
        source: A safetensors file or its bytes (already verified against their digest). A buffer is
            read in place; it must not change until this returns.
        strict: Refuse missing and unexpected tensor names (shapes must always match).

    Raises:
        WeightsMismatchError: The file is not safetensors, a tensor's shape differs (the message
            names it and both shapes), or with ``strict`` a tensor is missing or unexpected.
    """
    if isinstance(source, Path):
        try:
            received = load_file(str(source))
        except (SafetensorError, OSError, ValueError) as exc:
            raise WeightsMismatchError(f"the weights are not a readable safetensors file: {exc}") from exc
    else:
        received = _tensors_from_buffer(memoryview(source).cast("B"))
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
