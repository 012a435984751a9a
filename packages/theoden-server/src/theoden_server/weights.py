"""Safetensors helpers: read a file's layout, stream tensors one at a time, write weights into the store.

The server never unpickles anything: weights are safetensors files. This module parses and checks
the safetensors header itself (so a malformed upload is refused with a clear message before a
single tensor is read) and reads tensors one by one with plain file reads, so aggregating a
model never needs more than one client tensor in memory at a time. It also holds a tiny model
registry (mirroring the client's names) to build an initial global model from a `ModelSpec`.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from typing import BinaryIO, Final, NamedTuple

import torch
from theoden_protocol import BlobRef, ModelSpec, safetensors
from torch import nn

from theoden_server.errors import InvalidRequest
from theoden_server.storage import BlobStore, BlobWriter

__all__ = [
    "MLP",
    "Layout",
    "TensorInfo",
    "WeightsError",
    "build_model",
    "check_layout",
    "iter_tensors",
    "layout_of",
    "layout_of_bytes",
    "load_tensors",
    "model_names",
    "read_layout",
    "mapped",
    "mapped_tensor",
    "read_tensor",
    "register_model",
    "save_tensors",
    "state_dict_of",
]

_DTYPES: Final[dict[str, torch.dtype]] = {name: getattr(torch, attr) for name, attr in safetensors.TORCH_DTYPES.items()}
_NAMES: Final = {dtype: name for name, dtype in _DTYPES.items()}


class WeightsError(InvalidRequest):
    """Weights that are not a valid safetensors file or do not fit the global model."""

    code = "invalid_weights"


class TensorInfo(NamedTuple):
    """One tensor of a safetensors file: dtype, shape and byte range in the data section."""

    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int = 0
    end: int = 0


class Layout(dict[str, TensorInfo]):
    """Tensor name → `TensorInfo` of one safetensors file; ``data_start`` is where data begins."""

    data_start: int = 0


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """Parse and check the header of the safetensors file at ``path``.

    Raises:
        WeightsError: the file is not a well-formed safetensors file (bad header, unknown dtype,
            byte ranges that do not tile the data section exactly).
    """
    with open(path, "rb") as f:
        return _parse_layout(f.read(8), f.read, os.fstat(f.fileno()).st_size)


def layout_of_bytes(data: bytes | memoryview) -> Layout:
    """Parse and check the header of a safetensors file held in memory (see `read_layout`)."""
    view = memoryview(data)
    return _parse_layout(view[:8], lambda n: view[8 : 8 + n], len(view))


def _parse_layout(first8: bytes | memoryview, read: Callable[[int], bytes | memoryview], size: int) -> Layout:
    """The layout of a safetensors file of ``size`` bytes: its first 8 bytes, then ``read(n)`` gives the header."""
    try:
        header = safetensors.parse_header(read(safetensors.header_length(first8, size)), size)
    except safetensors.SafetensorsError as exc:
        raise WeightsError(exc.detail) from None
    layout = Layout((name, TensorInfo(_DTYPES[e.dtype], e.shape, e.begin, e.end)) for name, e in header.tensors.items())
    layout.data_start = header.data_start
    return layout


def check_layout(reference: Mapping[str, TensorInfo], candidate: Mapping[str, TensorInfo]) -> None:
    """Raise `WeightsError` unless ``candidate`` has exactly the names and shapes of ``reference``.

    Floating-point tensors may differ in precision (they are cast); any other dtype must match.
    """
    problems: list[str] = []
    missing = [n for n in reference if n not in candidate]
    unknown = [n for n in candidate if n not in reference]
    if missing:
        problems.append(f"missing keys {missing[:5]}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
    if unknown:
        problems.append(f"unknown keys {unknown[:5]}" + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""))
    for name, ref in reference.items():
        got = candidate.get(name)
        if got is None:
            continue
        if got.shape != ref.shape:
            problems.append(f"{name!r} has shape {list(got.shape)}, expected {list(ref.shape)}")
        elif got.dtype != ref.dtype and not (got.dtype.is_floating_point and ref.dtype.is_floating_point):
            problems.append(f"{name!r} has dtype {got.dtype}, expected {ref.dtype}")
        if len(problems) >= 8:
            break
    if problems:
        raise WeightsError("weights do not fit the global model: " + "; ".join(problems))


def read_tensor(file: BinaryIO, layout: Layout, name: str, *, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """Read one tensor from an open safetensors file (no memory mapping, one copy).

    With ``buffer`` (a uint8 tensor at least as large as the tensor) the bytes land in it and the
    result is a view of it, so repeated reads allocate nothing.
    """
    info = layout[name]
    size = info.end - info.begin
    target = buffer[:size] if buffer is not None and buffer.numel() >= size else torch.empty(size, dtype=torch.uint8)
    file.seek(layout.data_start + info.begin)
    if size and file.readinto(target.numpy()) != size:  # type: ignore[attr-defined]
        raise WeightsError(f"tensor {name!r}: file ended early")
    return target.view(info.dtype).reshape(info.shape)


#: Bytes converted at a time when `save_tensors` casts a tensor.
SLICE_BYTES: Final = 1 << 22


@contextlib.contextmanager
def mapped(path: str | os.PathLike[str], layout: Layout) -> Iterator[mmap.mmap | None]:
    """Map a stored safetensors file read-only for `mapped_tensor` (``None`` for an empty data section).

    Stored blobs are immutable (written aside and renamed into place), so a mapping is safe and
    lets a fold read the page cache directly: no copy, no buffer. On Linux the mapping is
    populated up front (``MAP_POPULATE``), which is cheaper than faulting in page by page.

    Raises:
        WeightsError: the file is shorter than its layout says.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        needed = layout.data_start + max((info.end for info in layout.values()), default=0)
        if size < needed:
            raise WeightsError(f"weights file has {size} bytes but its header describes {needed}")
        if size == 0 or needed == layout.data_start:
            yield None
            return
        if hasattr(mmap, "MAP_SHARED"):
            flags = mmap.MAP_SHARED | getattr(mmap, "MAP_POPULATE", 0)
            mm = mmap.mmap(f.fileno(), 0, flags=flags, prot=mmap.PROT_READ)
        else:  # pragma: no cover - Windows
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        yield mm
    finally:
        with contextlib.suppress(BufferError):  # a view outlived the block: unmapped when it is collected
            mm.close()


_quiet_frombuffer = False


def mapped_tensor(mm: mmap.mmap | bytes | None, layout: Layout, name: str) -> torch.Tensor:
    """A read-only tensor view of one tensor of a `mapped` file or of a file's bytes (do not keep it past them).

    Writing to it is impossible (the pages are mapped read-only): a write would crash the process,
    so callers only read (``acc.add_(view)``, ``view.clone()``).
    """
    global _quiet_frombuffer
    info = layout[name]
    count = math.prod(info.shape)
    if mm is None or count == 0:
        return torch.empty(info.shape, dtype=info.dtype)
    if _quiet_frombuffer:
        flat = torch.frombuffer(mm, dtype=info.dtype, count=count, offset=layout.data_start + info.begin)
    else:  # torch warns once per process that the buffer is read-only: that is the point here
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            flat = torch.frombuffer(mm, dtype=info.dtype, count=count, offset=layout.data_start + info.begin)
        _quiet_frombuffer = True
    return flat.view(info.shape)


def iter_tensors(
    path: str | os.PathLike[str], layout: Layout | None = None, *, reuse_buffer: bool = False
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of a safetensors file, one at a time.

    With ``reuse_buffer`` every tensor is a view of one shared buffer, valid only until the next
    one is yielded (for streaming consumers such as a running sum; memory: the largest tensor).
    """
    layout = read_layout(path) if layout is None else layout
    buffer = None
    if reuse_buffer and layout:
        buffer = torch.empty(max(info.end - info.begin for info in layout.values()), dtype=torch.uint8)
    with open(path, "rb") as f:
        for name in layout:
            yield name, read_tensor(f, layout, name, buffer=buffer)


def load_tensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Load every tensor of a safetensors file into memory."""
    return dict(iter_tensors(path))


def layout_of(tensors: Mapping[str, torch.Tensor]) -> Layout:
    """Return the layout a mapping of tensors would have when saved."""
    layout = Layout()
    for name, tensor in tensors.items():
        layout[name] = TensorInfo(tensor.dtype, tuple(tensor.shape))
    return layout


def _header(layout: Mapping[str, TensorInfo], metadata: Mapping[str, str] | None) -> tuple[bytes, list[str]]:
    names = list(layout)
    for name in names:
        if layout[name].dtype not in _NAMES:
            raise WeightsError(f"tensor {name!r}: dtype {layout[name].dtype} cannot be stored")
    entries = ((name, _NAMES[layout[name].dtype], layout[name].shape) for name in names)
    return safetensors.build_header(entries, metadata), names


def save_tensors(
    store: BlobStore,
    tensors: Mapping[str, torch.Tensor],
    *,
    layout: Mapping[str, TensorInfo] | None = None,
    metadata: Mapping[str, str] | None = None,
    public: bool = False,
) -> BlobRef:
    """Stream ``tensors`` into ``store`` as one safetensors blob, tensor by tensor, and return its reference.

    With ``layout`` the output has exactly that layout: each tensor is looked up by name (so a
    lazy mapping can produce it just in time), checked for shape and cast to the layout's dtype.
    ``public`` publishes the blob as it is stored (a new global model).
    """
    layout = layout_of(tensors) if layout is None else layout
    head, names = _header(layout, metadata)
    with store.writer(public=public) as writer:
        writer.write(head)
        for name in names:
            info = layout[name]
            tensor = tensors[name]
            if tuple(tensor.shape) != info.shape:
                raise WeightsError(f"tensor {name!r} has shape {list(tensor.shape)}, expected {list(info.shape)}")
            _write_tensor(writer, tensor.detach().to(device="cpu"), info.dtype)
        return writer.commit()


def _write_tensor(writer: BlobWriter, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    """Write ``tensor``'s elements as ``dtype``; a cast goes slice by slice (no whole-tensor copy)."""
    flat = tensor.reshape(-1)  # a view when contiguous
    if not flat.numel():
        return
    if flat.dtype == dtype and flat.is_contiguous():
        writer.write(memoryview(flat.view(torch.uint8).numpy()))  # type: ignore[arg-type]
        return
    itemsize = torch.empty((), dtype=dtype).element_size()
    step = max(1, SLICE_BYTES // itemsize)
    scratch = torch.empty(min(step, flat.numel()), dtype=dtype)
    for start in range(0, flat.numel(), step):
        part = flat[start : start + step]
        converted = scratch[: part.numel()]
        converted.copy_(part)
        writer.write(memoryview(converted.view(torch.uint8).numpy()))  # type: ignore[arg-type]


def state_dict_of(model: nn.Module) -> dict[str, torch.Tensor]:
    """Return the model's parameters and buffers as detached CPU tensors."""
    return {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}


# -- server-side model registry ----------------------------------------------------------------

ModelFactory = Callable[..., nn.Module]
_MODELS: dict[str, ModelFactory] = {}


def register_model(name: str) -> Callable[[ModelFactory], ModelFactory]:
    """Register a model factory under ``name`` (use the same name and code as on the clients)."""

    def decorate(factory: ModelFactory) -> ModelFactory:
        _MODELS[name] = factory
        return factory

    return decorate


def model_names() -> list[str]:
    """Return the names of the registered models."""
    return sorted(_MODELS)


def _client_model_factory(name: str) -> ModelFactory | None:
    """The client package's factory for ``name``, when it is installed beside the server.

    Models registered on the client side (``cnn``, ``resnet18``, a site's own) then need no second
    registration on the server, and a global model built here has exactly the clients' layout.
    """
    try:
        from theoden_client.models import MODELS
    except ImportError:
        return None
    try:
        factory: ModelFactory = MODELS.get(name)
    except Exception:  # the client's registry raises its own "unknown name" error
        return None
    return factory


def build_model(spec: ModelSpec) -> nn.Module:
    """Build the model named by ``spec`` with its keyword arguments.

    Raises:
        InvalidRequest: the name is not registered, or the arguments do not fit the factory.
    """
    factory = _MODELS.get(spec.name) or _client_model_factory(spec.name)
    if factory is None:
        raise InvalidRequest(f"unknown model {spec.name!r}; registered models: {', '.join(model_names())}")
    try:
        return factory(**spec.kwargs)
    except TypeError as exc:
        raise InvalidRequest(f"model {spec.name!r} does not accept {dict(spec.kwargs)}: {exc}") from None


class MLP(nn.Module):
    """A multi-layer perceptron: flatten, then Linear+ReLU(+Dropout) per hidden layer, then Linear.

    Its state-dict keys are ``net.<i>.weight`` / ``net.<i>.bias`` of one ``nn.Sequential``, the same as the
    client's ``mlp``, so a global model built here loads strictly on every client.
    """

    def __init__(
        self, in_features: int = 784, hidden: list[int] | int = 64, num_classes: int = 10, dropout: float = 0.0
    ) -> None:
        super().__init__()
        sizes = [hidden] if isinstance(hidden, int) else list(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in sizes:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return the logits for a batch ``x``."""
        return self.net(x)  # type: ignore[no-any-return]


register_model("mlp")(MLP)
