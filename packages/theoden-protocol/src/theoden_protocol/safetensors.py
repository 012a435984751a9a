"""The safetensors format of weight blobs: parse and check a header, or build one. No torch needed.

A safetensors file is an 8-byte little-endian header length, a JSON header (tensor name → dtype,
shape and byte range in the data section, plus an optional ``__metadata__`` map of strings) and
the data section. Weights are the one payload both sides exchange as raw bytes, so both check
headers with the same rules: known dtypes, byte ranges that match their shapes and tile the data
section exactly (no gap, no overlap, nothing after the last tensor). Nothing is ever unpickled.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterable, Mapping
from typing import ClassVar, Final, NamedTuple

import msgspec

from theoden_protocol.errors import ProtocolError

__all__ = [
    "DTYPE_SIZES",
    "MAX_HEADER_BYTES",
    "Header",
    "SafetensorsError",
    "TORCH_DTYPES",
    "TensorEntry",
    "build_header",
    "header_length",
    "parse_header",
]

#: Largest header accepted (the format's own limit is 100 MB).
MAX_HEADER_BYTES: Final = 100_000_000

#: Bytes per element of each dtype name the format uses (the ones torch has on every platform).
DTYPE_SIZES: Final[dict[str, int]] = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}

#: The torch dtype (an attribute of the ``torch`` module) of each dtype name: both sides map names with
#: this one table, so what one writes the other reads as the same dtype.
TORCH_DTYPES: Final[dict[str, str]] = {
    "F64": "float64",
    "F32": "float32",
    "F16": "float16",
    "BF16": "bfloat16",
    "I64": "int64",
    "I32": "int32",
    "I16": "int16",
    "I8": "int8",
    "U8": "uint8",
    "BOOL": "bool",
}


class SafetensorsError(ProtocolError):
    """Bytes that are not a well-formed safetensors file."""

    code: ClassVar[str] = "invalid_weights"


class TensorEntry(NamedTuple):
    """One tensor of a safetensors file: dtype name, shape and byte range within the data section."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


class Header(NamedTuple):
    """A parsed header: the tensors in file order, where the data section starts, and the metadata."""

    tensors: dict[str, TensorEntry]
    data_start: int
    metadata: dict[str, str]


def header_length(first8: bytes | bytearray | memoryview, total_size: int) -> int:
    """Return the JSON header's length from a file's first 8 bytes, checked against the file's size.

    Raises:
        SafetensorsError: Fewer than 8 bytes, or a length the file cannot hold.
    """
    if len(first8) < 8 or total_size < 8:
        raise SafetensorsError(f"weights of {total_size} bytes are too short to be a safetensors file")
    (length,) = struct.unpack("<Q", first8[:8])
    if length > min(MAX_HEADER_BYTES, total_size - 8):
        raise SafetensorsError(f"safetensors header length {length} is impossible for a file of {total_size} bytes")
    return int(length)


def parse_header(raw: bytes | bytearray | memoryview, total_size: int) -> Header:
    """Parse and check the JSON header ``raw`` of a safetensors file of ``total_size`` bytes.

    Raises:
        SafetensorsError: Not JSON, an unknown dtype, a malformed entry, or byte ranges that do not
            match their shapes or do not tile the data section exactly.
    """
    try:
        header = msgspec.json.decode(raw)
    except msgspec.DecodeError as exc:
        raise SafetensorsError(f"safetensors header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise SafetensorsError("safetensors header is not a JSON object")
    data_start = 8 + len(raw)
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SafetensorsError("safetensors __metadata__ must map names to strings")
    tensors: dict[str, TensorEntry] = {}
    for name, entry in header.items():
        try:
            dtype = entry["dtype"]
            size = DTYPE_SIZES[dtype]
            shape = tuple(_count(d) for d in entry["shape"])
            begin, end = (_count(o) for o in entry["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise SafetensorsError(
                f"tensor {name!r}: malformed header entry {str(entry)[:200]} "
                f"(supported dtypes: {', '.join(DTYPE_SIZES)})"
            ) from None
        if end - begin != math.prod(shape) * size:
            raise SafetensorsError(f"tensor {name!r}: byte range [{begin}, {end}) does not match shape {list(shape)}")
        tensors[name] = TensorEntry(dtype, shape, begin, end)
    position = 0
    for begin, end, name in sorted((e.begin, e.end, n) for n, e in tensors.items()):
        if begin != position:
            raise SafetensorsError(f"tensor {name!r}: data section has a gap or overlap at byte {position}")
        position = end
    if position != total_size - data_start:
        raise SafetensorsError(f"data section is {total_size - data_start} bytes but the header describes {position}")
    return Header(tensors, data_start, metadata)


def _count(value: object) -> int:
    """A JSON number that must be a non-negative integer (``True`` is not one)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(value)
    return value


def build_header(
    tensors: Iterable[tuple[str, str, tuple[int, ...]]], metadata: Mapping[str, str] | None = None
) -> bytes:
    """Return the length prefix and JSON header for tensors laid out back to back in the given order.

    Args:
        tensors: ``(name, dtype name, shape)`` per tensor, in data order.
        metadata: Strings to keep in ``__metadata__``.

    Raises:
        SafetensorsError: An unknown dtype name or a name used twice.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape in tensors:
        if dtype not in DTYPE_SIZES:
            raise SafetensorsError(f"tensor {name!r}: dtype {dtype} cannot be stored")
        if name in header:
            raise SafetensorsError(f"tensor name {name!r} is used twice")
        size = math.prod(shape) * DTYPE_SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = msgspec.json.encode(header)
    raw += b" " * (-len(raw) % 8)  # data starts 8-byte aligned, as safetensors itself writes it
    return struct.pack("<Q", len(raw)) + raw
