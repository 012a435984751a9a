from __future__ import annotations

from typing import Annotated

import msgspec
import pytest
import theoden_protocol as tp
from theoden_protocol import codec


@tp.register
class Calibrate(tp.Command, tag="test_calibrate", kw_only=True):
    """A site-specific command defined outside the protocol package."""

    temperature: Annotated[float, msgspec.Meta(gt=0)]
    layers: list[str] = msgspec.field(default_factory=list)


@tp.register
class ByHospital(tp.PartitionSpec, tag="test_by_hospital", kw_only=True):
    """A user partition scheme."""

    column: str


@tp.register
class Ping(tp.ServerRequest, tag="test_ping", kw_only=True):
    """A user server request."""

    note: str = ""


def test_user_command_decodes_on_its_own_and_nested(proto: str) -> None:
    # Prepare
    command = tp.Sequential(commands=[Calibrate(temperature=1.5, layers=["fc"]), tp.Train(steps=1)])
    # Execute
    decoded = codec.decode_command(codec.encode(command, proto), proto)  # type: ignore[arg-type]
    # Assert
    assert decoded == command
    assert isinstance(decoded, tp.Sequential)
    assert isinstance(decoded.commands[0], Calibrate)


def test_user_command_fields_are_validated_with_paths() -> None:
    with pytest.raises(tp.ProtocolError, match=r"Expected `float` > 0.0") as info:
        codec.decode_command(b'{"type": "sequential", "commands": [{"type": "test_calibrate", "temperature": -1}]}')
    assert info.value.path == "$.commands[0].temperature"


def test_user_partition_spec_and_request_are_accepted(proto: str) -> None:
    partition = tp.SetPartition(partition=ByHospital(column="site"), part=2)
    assert codec.decode_command(codec.encode(partition, proto), proto) == partition  # type: ignore[arg-type]
    ping = Ping(note="hi")
    assert codec.decode_request(codec.encode(ping, proto), proto) == ping  # type: ignore[arg-type]


def test_user_command_in_a_command_response() -> None:
    response = tp.CommandResponse(command=Calibrate(temperature=2.0))
    assert codec.decode_response(codec.encode(response)) == response


def test_registration_invalidates_cached_decoders() -> None:
    data = b'{"type": "test_late", "uuid": "u1"}'
    with pytest.raises(tp.ProtocolError, match="Invalid value 'test_late'"):
        codec.decode_command(data)

    @tp.register
    class Late(tp.Command, tag="test_late"):
        """Registered after a decoder was already built."""

    assert codec.decode_command(data) == Late(uuid="u1")


def test_registering_twice_is_harmless_but_a_taken_tag_is_refused() -> None:
    assert tp.register(Calibrate) is Calibrate

    class Impostor(tp.Command, tag="train"):
        """Tries to take a built-in tag."""

    with pytest.raises(tp.RegistrationError, match="'train' is already taken by theoden_protocol.commands.Train"):
        tp.register(Impostor)


def test_a_class_without_explicit_tag_or_base_is_refused() -> None:
    class NoTag(tp.Command):
        """Tag defaults to the class name, which is not a wire tag."""

    with pytest.raises(tp.RegistrationError, match="explicit snake_case wire tag"):
        tp.register(NoTag)

    class Stranger(msgspec.Struct, tag="stranger"):
        """Not a protocol message."""

    with pytest.raises(tp.RegistrationError, match="must subclass one of"):
        tp.register(Stranger)


def test_unregistered_subclass_instances_are_refused_inside_meta_commands() -> None:
    class Sneaky(tp.Command, tag="test_sneaky"):
        """Never registered."""

    with pytest.raises(ValueError, match="not a registered command type"):
        tp.Sequential(commands=[Sneaky()])


def test_identifiers_are_unique_version_4_uuids_across_threads_and_forks() -> None:
    import os
    import threading
    import uuid

    from theoden_protocol._base import new_uuid

    seen: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(new_uuid() for _ in range(2000))  # several batches each, drawn concurrently

    threads = [threading.Thread(target=draw, args=(out,)) for out in seen]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    ids = [i for out in seen for i in out]
    assert len(set(ids)) == len(ids) == 8000
    assert all(uuid.UUID(hex=i).version == 4 and len(i) == 32 for i in ids[:100])

    if hasattr(os, "fork"):  # a forked child must not repeat what its parent will hand out next
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            os.write(write, new_uuid().encode())
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        child = os.read(read, 64).decode()
        os.close(read)
        assert child != new_uuid()
        assert len(child) == 32
