"""Encode and decode every TheODen message as JSON (HTTP) or MessagePack (RabbitMQ).

Decoders are built once per (type, format) and reused; they are rebuilt only after a user
registers a new message type. Every decoding failure raises `ProtocolError` whose message
names the JSON path of the offending value.
"""

from __future__ import annotations

import threading
from typing import Any, Final, Literal, TypeVar, overload

import msgspec

from theoden_protocol._base import _PATH_SUFFIX, family_union, registry_generation
from theoden_protocol.commands import ClientCondition, Command
from theoden_protocol.errors import ProtocolError
from theoden_protocol.requests import ServerRequest
from theoden_protocol.responses import ServerResponse
from theoden_protocol.specs import PartitionSpec
from theoden_protocol.status import StatusUpdate

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Format",
    "decode",
    "decode_command",
    "decode_request",
    "decode_response",
    "decode_status",
    "encode",
    "json_schema",
]

Format = Literal["json", "msgpack"]
T = TypeVar("T")

#: Largest message a decoder accepts unless told otherwise (blobs travel apart from messages).
DEFAULT_MAX_BYTES: Final = 16 * 1024 * 1024

_json_encoder: Final = msgspec.json.Encoder()
_msgpack_encoder: Final = msgspec.msgpack.Encoder()
_FAMILIES: Final = frozenset({Command, ServerRequest, ServerResponse, ClientCondition, PartitionSpec})
_decoders: dict[tuple[Any, Format], Any] = {}
_decoders_generation = -1
_lock = threading.Lock()


def encode(message: Any, format: Format = "json") -> bytes:
    """Encode any protocol message (or plain data) as JSON or MessagePack bytes."""
    if format == "json":
        return _json_encoder.encode(message)
    if format == "msgpack":
        return _msgpack_encoder.encode(message)
    raise ValueError(f"unknown format {format!r}; use 'json' or 'msgpack'")


def _decoder(target: Any, format: Format) -> Any:
    global _decoders_generation
    generation = registry_generation()
    key = (target, format)
    decoder = _decoders.get(key) if generation == _decoders_generation else None
    if decoder is None:
        with _lock:
            if generation != _decoders_generation:
                _decoders.clear()
                _decoders_generation = generation
            resolved = family_union(target) if target in _FAMILIES else target
            if format == "json":
                decoder = msgspec.json.Decoder(resolved)
            elif format == "msgpack":
                decoder = msgspec.msgpack.Decoder(resolved)
            else:
                raise ValueError(f"unknown format {format!r}; use 'json' or 'msgpack'")
            _decoders[key] = decoder
    return decoder


def _split_path(message: str) -> tuple[str, str | None]:
    match = _PATH_SUFFIX.search(message)
    if match is None:
        return message, None
    return message, "$" + match.group("path")


@overload
def decode(data: bytes | bytearray | memoryview, type: type[T], format: Format = ..., *, max_bytes: int = ...) -> T: ...
@overload
def decode(data: bytes | bytearray | memoryview, type: Any, format: Format = ..., *, max_bytes: int = ...) -> Any: ...


def decode(
    data: bytes | bytearray | memoryview,
    type: Any,
    format: Format = "json",
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Any:
    """Decode ``data`` as ``type`` (a struct, or a family base such as `Command` for its whole union).

    Raises:
        ProtocolError: the bytes are not valid ``format``, are larger than ``max_bytes``, or do
            not match the type; the message names the JSON path of the offending value.
    """
    if len(data) > max_bytes:
        raise ProtocolError(f"message of {len(data)} bytes is larger than the limit of {max_bytes} bytes")
    try:
        return _decoder(type, format).decode(data)
    except msgspec.ValidationError as exc:
        detail, path = _split_path(str(exc))
        raise ProtocolError(f"invalid message: {detail}", path=path) from None
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"malformed {format}: {exc}") from None
    except RecursionError:
        raise ProtocolError("message is nested too deeply") from None


def decode_command(data: bytes | bytearray | memoryview, format: Format = "json") -> Command:
    """Decode any registered command."""
    return decode(data, Command, format)


def decode_request(data: bytes | bytearray | memoryview, format: Format = "json") -> ServerRequest:
    """Decode any registered server request (status updates included)."""
    return decode(data, ServerRequest, format)


def decode_response(data: bytes | bytearray | memoryview, format: Format = "json") -> ServerResponse:
    """Decode any registered server response."""
    return decode(data, ServerResponse, format)


def decode_status(data: bytes | bytearray | memoryview, format: Format = "json") -> StatusUpdate:
    """Decode a status update."""
    return decode(data, StatusUpdate, format)


def json_schema(type: Any) -> dict[str, Any]:
    """Return the JSON schema of a message type or family (e.g. for documentation)."""
    resolved = family_union(type) if type in _FAMILIES else type
    schema: dict[str, Any] = msgspec.json.schema(resolved)
    return schema
