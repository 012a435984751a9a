from __future__ import annotations

from pathlib import Path

import pytest
import torch
from theoden_client.errors import WeightsMismatchError
from theoden_client.weights import file_sha256, load_weights, save_weights
from torch import nn


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(5, 3)
        self.out = nn.Linear(3, 5, bias=False)
        self.out.weight = self.embed.weight
        self.norm = nn.BatchNorm1d(3)


def test_tied_weights_and_buffers_round_trip(tmp_path: Path) -> None:
    source, target = Tied(), Tied()
    source.norm.running_mean.fill_(0.5)
    path = tmp_path / "w.safetensors"
    save_weights(source, path)
    load_weights(target, path)
    assert torch.equal(target.embed.weight, source.embed.weight)
    assert torch.equal(target.norm.running_mean, torch.full((3,), 0.5))
    assert path.read_bytes()[:2] != b"\x80\x04"  # never a pickle


def test_strict_loading_names_missing_and_unexpected_tensors(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    save_weights(nn.Sequential(nn.Linear(2, 2)), path)
    with pytest.raises(WeightsMismatchError, match=r"missing tensors \['1.bias', '1.weight'\]"):
        load_weights(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), path)
    load_weights(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), path, strict=False)


def test_garbage_is_not_loaded(tmp_path: Path) -> None:
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"\x80\x04not safetensors at all")
    with pytest.raises(WeightsMismatchError, match="not a readable safetensors file"):
        load_weights(nn.Linear(2, 2), path)


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    import hashlib

    path = tmp_path / "f"
    data = b"abc" * 1_000_000
    path.write_bytes(data)
    assert file_sha256(path) == (hashlib.sha256(data).hexdigest(), len(data))


class Mixed(nn.Module):
    """Every kind of state a payload must carry: bf16, half, ints, bools, a 0-d and an empty tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.register_buffer("halves", torch.arange(6, dtype=torch.float16).reshape(2, 3))
        self.register_buffer("brain", torch.linspace(-1, 1, 5, dtype=torch.bfloat16))
        self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
        self.register_buffer("mask", torch.tensor([True, False, True]))
        self.register_buffer("nothing", torch.empty(0, 4))


def test_payload_views_the_tensors_and_the_reference_library_reads_it() -> None:
    import hashlib

    import safetensors.torch
    from theoden_client.weights import weights_payload

    model = Mixed()
    payload = weights_payload(model)
    data = b"".join(payload.parts)
    assert (payload.size, payload.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    # the tensor pieces are the model's own memory, not copies
    assert any(part.obj is not None and part.nbytes == 4 * 3 * 4 for part in payload.parts)
    by_library = safetensors.torch.load(data)
    expected = model.state_dict()
    assert by_library.keys() == expected.keys()
    assert all(by_library[k].dtype == v.dtype and torch.equal(by_library[k], v) for k, v in expected.items())


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview"])
def test_weights_load_from_a_buffer_in_place(kind: str) -> None:
    from theoden_client.weights import weights_bytes

    source, target = Mixed(), Mixed()
    source.lin.weight.data.fill_(0.25)
    source.mask.fill_(False)
    data, _ = weights_bytes(source)
    buffer = {"bytes": data, "bytearray": bytearray(data), "memoryview": memoryview(bytearray(data)).toreadonly()}[kind]
    load_weights(target, buffer)
    assert all(torch.equal(target.state_dict()[k], v) for k, v in source.state_dict().items())


def test_weights_from_a_writer_that_does_not_align_are_loaded() -> None:
    # Prepare: a header of odd length puts float32 data at an address that is not a multiple of 4
    import json
    import struct

    values = torch.arange(6, dtype=torch.float32)
    header = json.dumps({"weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]}}).encode()
    header += b" " * (1 - len(header) % 2) if len(header) % 4 == 0 else b""
    assert (8 + len(header)) % 4
    data = struct.pack("<Q", len(header)) + header + values.numpy().tobytes()
    model = nn.Module()
    model.register_buffer("weight", torch.zeros(2, 3))
    load_weights(model, data)
    assert torch.equal(model.weight, values.reshape(2, 3))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x05\x00", "too short"),
        (b"\xff" * 8 + b"{}", "header length"),
        (b"\x02\x00\x00\x00\x00\x00\x00\x00[]", "not a JSON object"),
        (b"\x03\x00\x00\x00\x00\x00\x00\x00{x}", "not valid JSON"),
    ],
)
def test_a_buffer_that_is_not_safetensors_is_refused(raw: bytes, message: str) -> None:
    with pytest.raises(WeightsMismatchError, match=message):
        load_weights(nn.Linear(2, 2), raw)


def test_a_buffer_whose_shapes_do_not_fit_names_the_tensor() -> None:
    from theoden_client.weights import weights_bytes

    data, _ = weights_bytes(nn.Linear(3, 2))
    with pytest.raises(WeightsMismatchError, match=r"weight: model has \(2, 4\), weights have \(2, 3\)"):
        load_weights(nn.Linear(4, 2), data)


def test_parts_reader_reads_pieces_of_memory_as_one_stream() -> None:
    from theoden_client.transport.base import PartsReader

    pieces = [b"abc", memoryview(b""), memoryview(bytearray(b"defgh")), torch.arange(3, dtype=torch.uint8).numpy()]
    joined = b"abcdefgh\x00\x01\x02"
    for size in (1, 2, 4, 100):
        with PartsReader([memoryview(p) for p in pieces]) as reader:
            chunks = []
            while chunk := reader.read(size):
                assert len(chunk) <= size
                chunks.append(chunk)
        assert b"".join(chunks) == joined
