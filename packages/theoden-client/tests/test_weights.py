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
