from __future__ import annotations

import struct

import msgspec
import pytest
from theoden_protocol import ProtocolError
from theoden_protocol.safetensors import SafetensorsError, build_header, header_length, parse_header


def _file(header: dict[str, object], data_bytes: int) -> bytes:
    raw = msgspec.json.encode(header)
    return struct.pack("<Q", len(raw)) + raw + b"\0" * data_bytes


def _parse(blob: bytes):  # type: ignore[no-untyped-def]
    length = header_length(blob[:8], len(blob))
    return parse_header(blob[8 : 8 + length], len(blob))


def test_a_built_header_parses_back_with_its_layout_and_metadata() -> None:
    head = build_header([("b", "F32", (2, 3)), ("a", "I64", ()), ("e", "BF16", (0,))], {"round": "3"})
    assert len(head) % 8 == 0  # data starts aligned
    parsed = _parse(head + b"\0" * (24 + 8))
    assert parsed.data_start == len(head)
    assert parsed.metadata == {"round": "3"}
    assert list(parsed.tensors) == ["b", "a", "e"]
    assert parsed.tensors["b"] == ("F32", (2, 3), 0, 24)
    assert parsed.tensors["a"] == ("I64", (), 24, 32)
    assert parsed.tensors["e"] == ("BF16", (0,), 32, 32)


@pytest.mark.parametrize(
    ("header", "data", "message"),
    [
        ({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, 4, "does not match shape"),
        ({"w": {"dtype": "C64", "shape": [1], "data_offsets": [0, 8]}}, 8, "supported dtypes"),
        ({"w": {"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}}, 4, "malformed header entry"),
        ({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}}, 4, "malformed header entry"),
        ({"w": {"dtype": "F32", "shape": [1]}}, 4, "malformed header entry"),
        (
            {
                "a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                "b": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]},
            },
            6,
            "gap or overlap",
        ),
        ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [2, 6]}}, 6, "gap or overlap"),
        ({"w": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]}}, 9, "data section is 9 bytes"),
        ({"__metadata__": {"n": 3}}, 0, "__metadata__"),
    ],
)
def test_malformed_headers_are_refused_with_what_is_wrong(header: dict[str, object], data: int, message: str) -> None:
    with pytest.raises(SafetensorsError, match=message) as caught:
        _parse(_file(header, data))
    assert isinstance(caught.value, ProtocolError)


def test_impossible_lengths_and_non_json_are_refused() -> None:
    with pytest.raises(SafetensorsError, match="too short"):
        header_length(b"\1\0", 2)
    with pytest.raises(SafetensorsError, match="impossible"):
        header_length(struct.pack("<Q", 1000), 100)
    with pytest.raises(SafetensorsError, match="not valid JSON"):
        parse_header(b"{nope", 13)
    with pytest.raises(SafetensorsError, match="not a JSON object"):
        parse_header(b"[1]", 11)


def test_building_refuses_unknown_dtypes_and_repeated_names() -> None:
    with pytest.raises(SafetensorsError, match="cannot be stored"):
        build_header([("w", "C64", (1,))])
    with pytest.raises(SafetensorsError, match="used twice"):
        build_header([("w", "F32", (1,)), ("w", "F32", (1,))])
