from __future__ import annotations

import msgspec
import pytest
import theoden_protocol as tp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from theoden_protocol import codec

from .strategies import family_strategy, struct_strategy

FAMILIES = {
    "command": (tp.Command, codec.decode_command),
    "request": (tp.ServerRequest, codec.decode_request),
    "response": (tp.ServerResponse, codec.decode_response),
}

ALL_MESSAGE_TYPES = sorted(
    {cls for base, _ in FAMILIES.values() for cls in tp.registered_types(base).values()},
    key=lambda c: c.__name__,
)
HYPO = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@pytest.mark.parametrize("cls", ALL_MESSAGE_TYPES, ids=lambda c: c.__name__)
@HYPO
@given(data=st.data())
def test_every_message_type_round_trips_through_both_formats(cls: type[msgspec.Struct], data: st.DataObject) -> None:
    # Prepare
    message = data.draw(struct_strategy(cls))
    base = next(b for b, _ in FAMILIES.values() if issubclass(cls, b))
    for fmt in ("json", "msgpack"):
        # Execute
        decoded = codec.decode(codec.encode(message, fmt), base, fmt)
        # Assert
        assert decoded == message
        assert type(decoded) is cls


@HYPO
@given(status=struct_strategy(tp.StatusUpdate))
def test_status_update_round_trips_through_its_own_decoder(status: tp.StatusUpdate) -> None:
    for fmt in ("json", "msgpack"):
        assert codec.decode_status(codec.encode(status, fmt), fmt) == status  # type: ignore[arg-type]


@HYPO
@given(command=family_strategy(tp.Command))
def test_commands_nest_and_round_trip(command: tp.Command) -> None:
    for fmt in ("json", "msgpack"):
        assert codec.decode_command(codec.encode(command, fmt), fmt) == command  # type: ignore[arg-type]


def test_json_is_plain_json_with_type_tags() -> None:
    command = tp.Sequential(uuid="a1", commands=[tp.Train(uuid="b2", steps=5)])
    assert msgspec.json.decode(codec.encode(command)) == {
        "type": "sequential",
        "uuid": "a1",
        "commands": [{"type": "train", "uuid": "b2", "steps": 5}],
    }


def test_decoders_are_built_once_and_reused() -> None:
    codec.decode_command(codec.encode(tp.Exit()))
    first = codec._decoder(tp.Command, "json")
    codec.decode_command(codec.encode(tp.Exit()))
    assert codec._decoder(tp.Command, "json") is first


def test_blob_bytes_travel_natively_in_msgpack_and_base64_in_json() -> None:
    chunk = tp.BlobChunk(blob_id="ab", index=0, data=b"\x00\xff" * 10, last=True)
    packed = codec.encode(chunk, "msgpack")
    assert b"\x00\xff" * 10 in packed
    assert codec.decode_response(codec.encode(chunk, "json")) == chunk


def test_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        codec.encode(tp.Exit(), "xml")  # type: ignore[arg-type]


def test_json_schema_lists_every_command_tag() -> None:
    schema = codec.json_schema(tp.Command)
    text = msgspec.json.encode(schema).decode()
    for tag in tp.registered_types(tp.Command):
        assert f'"{tag}"' in text
