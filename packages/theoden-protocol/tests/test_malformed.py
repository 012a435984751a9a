from __future__ import annotations

import pytest
import theoden_protocol as tp
from hypothesis import given, settings
from hypothesis import strategies as st
from theoden_protocol import codec


def _json(text: str) -> bytes:
    return text.encode()


@pytest.mark.parametrize(
    ("data", "message", "path"),
    [
        ('{"type": "teleport"}', "Invalid value 'teleport'", "$.type"),
        ('{"steps": 3}', "missing required field `type`", None),
        ('{"type": "load_dataset"}', "missing required field `dataset`", None),
        ('{"type": "train", "steps": "many"}', "Expected `int | null`, got `str`", "$.steps"),
        ('{"type": "train", "steps": -1}', "Expected `int` >= 0", "$.steps"),
        ('{"type": "train"}', "exactly one of `steps` or `epochs`", None),
        ('{"type": "train", "steps": 1, "epochs": 1}', "exactly one of `steps` or `epochs`", None),
        (
            '{"type": "sequential", "commands": [{"type": "train", "steps": 1}, {"type": "validate", "split": 7}]}',
            "Expected `str`, got `int`",
            "$.commands[1].split",
        ),
        (
            '{"type": "repeat", "times": 2, "command": {"type": "sequential", "commands": [{"type": "nope"}]}}',
            "Invalid value 'nope'",
            "$.command.commands[0].type",
        ),
        (
            '{"type": "conditional", "condition": {"type": "has_resource"}, "then": {"type": "exit"}}',
            "missing required field `key`",
            "$.condition",
        ),
        (
            '{"type": "set_partition", "partition": {"type": "dirichlet", "num_parts": 3, "alpha": 0}}',
            "Expected `float` > 0.0",
            "$.partition.alpha",
        ),
        (
            '{"type": "load_weights", "blob": {"id": "../../etc/passwd", "sha256": "00", "size": 1}}',
            "`str` matching regex",
            "$.blob.id",
        ),
        ("[1, 2, 3]", "Expected `object`, got `array`", None),
    ],
)
def test_malformed_commands_raise_protocol_error_naming_the_path(data: str, message: str, path: str | None) -> None:
    with pytest.raises(
        tp.ProtocolError, match=message.replace("(", r"\(").replace(")", r"\)").replace("|", r"\|")
    ) as info:
        codec.decode_command(_json(data))
    assert info.value.path == path
    if path is not None:
        assert f"`{path}`" in info.value.detail
    assert info.value.code == "protocol_error"


def test_extra_field_is_refused_where_forbidden() -> None:
    with pytest.raises(tp.ProtocolError, match="unknown field `admin`"):
        codec.decode_request(b'{"type": "register", "admin": true}')


def test_extra_field_is_ignored_where_allowed_for_forward_compatibility() -> None:
    decoded = codec.decode_command(b'{"type": "train", "steps": 1, "added_in_v1_5": 3}')
    assert decoded == tp.Train(uuid=decoded.uuid, steps=1)


def test_oversized_collections_are_refused() -> None:
    children = ",".join('{"type": "exit"}' for _ in range(1025))
    with pytest.raises(tp.ProtocolError, match="length <= 1024") as info:
        codec.decode_command(f'{{"type": "sequential", "commands": [{children}]}}'.encode())
    assert info.value.path == "$.commands"
    metrics = ",".join(f'"m{i}": 1.0' for i in range(10_001))
    with pytest.raises(tp.ProtocolError, match="length <= 10000"):
        codec.decode_status(
            f'{{"type": "status_update", "client_name": "a", "command_uuid": "u", "status": "finished",'
            f' "response": {{"metrics": {{{metrics}}}}}}}'.encode()
        )


def test_oversized_messages_are_refused_before_decoding() -> None:
    with pytest.raises(tp.ProtocolError, match="larger than the limit of 10 bytes"):
        codec.decode(codec.encode(tp.Exit()), tp.Command, max_bytes=10)


def test_status_enum_and_request_fields_are_checked() -> None:
    with pytest.raises(tp.ProtocolError, match="Invalid enum value 'done'") as info:
        codec.decode_status(b'{"type": "status_update", "client_name": "a", "command_uuid": "u", "status": "done"}')
    assert info.value.path == "$.status"
    with pytest.raises(tp.ProtocolError, match="<= 300.0") as info:
        codec.decode_request(b'{"type": "pull_command", "wait": 1e9}')
    assert info.value.path == "$.wait"


@pytest.mark.parametrize(
    "data",
    [b"", b"{", b'{"type": "exit"', b"\xff\xfe\x00", b"null", b'"exit"', b"1e999999"],
)
def test_malformed_json_raises_protocol_error(data: bytes) -> None:
    with pytest.raises(tp.ProtocolError):
        codec.decode_command(data)


def test_deeply_nested_input_is_a_protocol_error() -> None:
    deep = b'{"type": "sequential", "commands": [' * 2000 + b"]}" * 2000
    with pytest.raises(tp.ProtocolError):
        codec.decode_command(deep)


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=256), fmt=st.sampled_from(["json", "msgpack"]))
def test_arbitrary_bytes_never_raise_anything_but_protocol_error(data: bytes, fmt: str) -> None:
    for decode in (codec.decode_command, codec.decode_request, codec.decode_response, codec.decode_status):
        try:
            decode(data, fmt)  # type: ignore[operator]
        except tp.ProtocolError:
            pass


@settings(max_examples=200, deadline=None)
@given(
    value=st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["type", "commands", "steps", "uuid", "then", "command", "condition", "times"]),
                inner,
                max_size=4,
            )
        ),
        max_leaves=20,
    ),
    tag=st.sampled_from(["sequential", "repeat", "conditional", "train", "set_partition", "status_update"]),
)
def test_well_formed_json_of_any_shape_never_crashes_the_decoder(value: object, tag: str) -> None:
    body = value if isinstance(value, dict) else {"x": value}
    body = {**body, "type": tag}
    data = codec.encode(body)
    for decode in (codec.decode_command, codec.decode_request):
        try:
            decode(data)
        except tp.ProtocolError:
            pass
