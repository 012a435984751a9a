"""Safetensors helpers: layouts, validation, streamed reading and writing."""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load, save
from theoden_protocol import ModelSpec
from theoden_server.errors import InvalidRequest, NotFound
from theoden_server.storage import BlobStore
from theoden_server.weights import (
    SLICE_BYTES,
    WeightsError,
    build_model,
    check_layout,
    iter_tensors,
    layout_of,
    mapped,
    mapped_tensor,
    read_layout,
    save_tensors,
)


def tensors() -> dict[str, torch.Tensor]:
    return {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.tensor(3, dtype=torch.int64),
        "c": torch.ones(4, dtype=torch.bfloat16),
        "d": torch.tensor([True, False]),
        "e": torch.zeros(0, 5),
    }


def test_streamed_roundtrip_is_readable_by_safetensors_both_ways(tmp_path: Path) -> None:
    # Prepare
    store = BlobStore(tmp_path)
    original = tensors()

    # Execute
    ref = save_tensors(store, original, metadata={"round": "1"})
    ours = dict(iter_tensors(store.path(ref.id)))
    path = tmp_path / "theirs.safetensors"
    path.write_bytes(save(original))
    theirs = dict(iter_tensors(path))

    # Assert
    for loaded in (load(store.read_bytes(ref.id)), ours, theirs):
        assert loaded.keys() == original.keys()
        for key, value in original.items():
            assert loaded[key].dtype == value.dtype
            assert torch.equal(loaded[key], value)


def test_layout_and_cast_on_write(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    layout = layout_of({"a": torch.zeros(2, dtype=torch.float16)})
    ref = save_tensors(store, {"a": torch.tensor([1.5, 2.0], dtype=torch.float64)}, layout=layout)
    assert load(store.read_bytes(ref.id))["a"].dtype == torch.float16
    with pytest.raises(WeightsError, match="shape"):
        save_tensors(store, {"a": torch.zeros(3)}, layout=layout)


def test_mapped_tensors_are_read_only_views_of_the_file(tmp_path: Path) -> None:
    # Prepare
    original = {"x": torch.randn(3, 7, dtype=torch.float64), "n": torch.tensor([4, 2]), "e": torch.zeros(0, 3)}
    path = tmp_path / "m.safetensors"
    path.write_bytes(save(original))
    layout = read_layout(path)

    # Execute
    with mapped(path, layout) as mm:
        views = {name: mapped_tensor(mm, layout, name) for name in layout}
        copies = {name: view.clone() for name, view in views.items()}
        distance = views["n"].data_ptr() - views["x"].data_ptr()
        del views

    # Assert
    for name, tensor in original.items():
        assert copies[name].dtype == tensor.dtype and torch.equal(copies[name], tensor)
    assert distance == layout["n"].begin - layout["x"].begin  # views into one mapping, not copies


def test_a_truncated_file_is_refused_before_mapping(tmp_path: Path) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(save({"x": torch.ones(100)}))
    layout = read_layout(path)
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(WeightsError, match="header describes"), mapped(path, layout):
        pass


def test_casts_and_strided_tensors_are_written_slice_by_slice(tmp_path: Path) -> None:
    # Prepare: a cast spanning several slices, and a transposed (non-contiguous) tensor
    store = BlobStore(tmp_path)
    big = torch.randn(SLICE_BYTES // 8 * 2 + 5, dtype=torch.float64)
    strided = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    layout = layout_of({"big": big.half(), "strided": strided})

    # Execute
    ref = save_tensors(store, {"big": big, "strided": strided}, layout=layout)

    # Assert
    loaded = load(store.read_bytes(ref.id))
    assert torch.equal(loaded["big"], big.half())
    assert torch.equal(loaded["strided"], strided.contiguous())


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"abc", "too short"),
        (struct.pack("<Q", 10**9) + b"{}", "impossible"),
        (struct.pack("<Q", 3) + b"{x}", "not valid JSON"),
        (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    ],
)
def test_malformed_files_are_refused(tmp_path: Path, payload: bytes, message: str) -> None:
    path = tmp_path / "bad"
    path.write_bytes(payload)
    with pytest.raises(WeightsError, match=message):
        read_layout(path)


def _file(tmp_path: Path, header: dict, data: bytes) -> Path:
    raw = json.dumps(header).encode()
    path = tmp_path / "f"
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    return path


def test_inconsistent_byte_ranges_are_refused(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="does not match shape"):
        read_layout(_file(tmp_path, {"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}}, b"\0" * 4))
    with pytest.raises(WeightsError, match="data section"):
        read_layout(_file(tmp_path, {"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 8))
    header = {
        "a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
        "b": {"dtype": "F32", "shape": [1], "data_offsets": [2, 6]},
    }
    with pytest.raises(WeightsError, match="gap or overlap"):
        read_layout(_file(tmp_path, header, b"\0" * 6))
    with pytest.raises(WeightsError, match="malformed header entry"):
        read_layout(_file(tmp_path, {"a": {"dtype": "PICKLE", "shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4))


def test_check_layout_reports_what_does_not_fit() -> None:
    reference = layout_of({"w": torch.zeros(2, 2), "n": torch.zeros(1, dtype=torch.int64)})
    check_layout(
        reference, layout_of({"w": torch.zeros(2, 2, dtype=torch.float64), "n": torch.zeros(1, dtype=torch.int64)})
    )
    with pytest.raises(WeightsError, match=r"'n' has dtype torch.float32, expected torch.int64"):
        check_layout(reference, layout_of({"w": torch.zeros(2, 2), "n": torch.zeros(1)}))


def test_server_side_model_registry() -> None:
    model = build_model(ModelSpec(name="mlp", kwargs={"in_features": 8, "hidden": [4, 4], "num_classes": 3}))
    assert model(torch.zeros(2, 8)).shape == (2, 3)
    with pytest.raises(InvalidRequest, match="unknown model 'nope'; registered models: mlp"):
        build_model(ModelSpec(name="nope"))
    with pytest.raises(InvalidRequest, match="does not accept"):
        build_model(ModelSpec(name="mlp", kwargs={"bogus": 1}))


def test_large_writes_hashed_on_a_helper_thread_get_the_right_id(tmp_path: Path) -> None:
    # Prepare: chunks below and above the size hashed in parallel, mixed
    store = BlobStore(tmp_path)
    chunks = [os.urandom(100), os.urandom(9 * 2**20), os.urandom(3), os.urandom(5 * 2**20)]

    # Execute
    with store.writer() as writer:
        for chunk in chunks:
            writer.write(memoryview(chunk))
        ref = writer.commit()

    # Assert
    assert ref.id == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert store.read_bytes(ref.id) == b"".join(chunks)


def test_batched_writes_survive_partial_system_calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: more chunks than one writev takes, and a writev that stops after at most 1000 bytes
    import theoden_server.storage as storage

    real_writev = os.writev
    calls = []

    def stingy_writev(fd: int, buffers: list[bytes]) -> int:
        calls.append(len(buffers))
        first = memoryview(buffers[0])[:1000]
        return real_writev(fd, [first])

    monkeypatch.setattr(storage.os, "writev", stingy_writev)
    store = BlobStore(tmp_path)
    chunks = [os.urandom(n) for n in [1500, 3, 999, 1000, 2001] * 300]  # 1,500 chunks

    # Execute
    with store.writer() as writer:
        writer.write_chunks(chunks)
        ref = writer.commit()

    # Assert
    assert store.read_bytes(ref.id) == b"".join(chunks)
    assert ref.id == hashlib.sha256(b"".join(chunks)).hexdigest()
    assert max(calls) <= 1024


def test_store_knows_its_blobs_from_memory_and_a_new_store_reads_them_from_disk(tmp_path: Path) -> None:
    # Prepare: one blob uploaded by two clients, one by a single client, then published
    import threading

    store = BlobStore(tmp_path / "store")
    shared, own = b"same weights" * 1000, b"alice only" * 1000
    barrier = threading.Barrier(2)

    def upload(owner: str) -> None:
        barrier.wait(5)
        store.put_bytes(shared, owner=owner)

    threads = [threading.Thread(target=upload, args=(name,)) for name in ("alice", "bob")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    mine = store.put_bytes(own, owner="alice")
    store.publish(mine.id)
    shared_id = hashlib.sha256(shared).hexdigest()

    # Assert: concurrent identical uploads keep both owners; a fresh store on the same folder agrees
    for view in (store, BlobStore(tmp_path / "store")):
        assert sorted(view.owners(shared_id)) == ["alice", "bob"]
        assert view.ref(shared_id).size == len(shared)
        assert view.can_read(mine.id, "carol") and not view.can_read(shared_id, "carol")
        assert view.is_public(mine.id) and view.exists(mine.id)
    store.delete(shared_id)
    assert not store.exists(shared_id) and not BlobStore(tmp_path / "store").exists(shared_id)
    with pytest.raises(NotFound, match="no blob"):
        store.ref(shared_id)


def test_small_blobs_are_kept_in_memory_once_read_within_a_bounded_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from theoden_server import storage

    monkeypatch.setattr(storage, "CACHE_TOTAL_BYTES", 2500)
    store = BlobStore(tmp_path / "store")
    refs = [store.put_bytes(bytes([i]) * 1000) for i in range(3)]
    big = store.put_bytes(b"x" * (storage.CACHE_BLOB_BYTES + 1))

    first = store.read_cached(refs[0].id)
    assert store.read_cached(refs[0].id) is first  # the same bytes, not read again
    store.read_cached(refs[1].id)
    store.read_cached(refs[2].id)  # over the budget: the least recently read one goes
    assert store.read_cached(refs[0].id) is not first and store.read_cached(refs[0].id) == bytes([0]) * 1000
    assert store.read_cached(big.id) is not store.read_cached(big.id)  # too large to keep
    store.delete(refs[0].id)
    with pytest.raises(NotFound):
        store.read_cached(refs[0].id)


def test_discarding_an_upload_deletes_it_everywhere_but_never_a_published_blob(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    upload = store.put_bytes(b"update" * 1000, owner="alice")
    model = store.put_bytes(b"global" * 1000, owner="alice")
    store.publish(model.id)
    assert store.read_cached(upload.id) == b"update" * 1000

    assert store.discard_upload(upload.id) is True
    assert store.discard_upload(model.id) is False  # a global model stays
    assert store.discard_upload(upload.id) is False  # already gone

    for view in (store, BlobStore(tmp_path / "store")):
        assert not view.exists(upload.id)
        assert view.exists(model.id) and view.is_public(model.id)
    with pytest.raises(NotFound):
        store.read_cached(upload.id)  # not served from memory either
    assert sorted(p.name for p in (tmp_path / "store" / "blobs").rglob("*") if p.is_file()) == sorted(
        [model.id, f"{model.id}.meta.json"]
    )


def _held_upload(store: BlobStore, data: bytes, owner: str, *, size: int | None = -1) -> object:
    with store.writer(owner=owner, expected_size=len(data) if size == -1 else size, in_memory=True) as writer:
        writer.write(data)
        return writer.commit()


def _files(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "blobs").rglob("*") if p.is_file())


def test_a_small_upload_is_held_in_memory_and_written_only_when_its_file_is_needed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store")
    data = b"update" * 1000
    ref = _held_upload(store, data, "alice")
    again = _held_upload(store, data, "bob")  # the same bytes from another client: one blob, two owners

    assert ref == again and ref.id == hashlib.sha256(data).hexdigest()
    assert _files(tmp_path / "store") == []  # nothing on disk
    assert store.held(ref.id) == data and store.read_bytes(ref.id) == data and store.read_cached(ref.id) == data
    assert store.exists(ref.id) and store.owners(ref.id) == ["alice", "bob"]
    assert store.can_read(ref.id, "bob") and not store.can_read(ref.id, "carol")
    assert not BlobStore(tmp_path / "store").exists(ref.id)  # held, so another process cannot see it

    assert store.path(ref.id).read_bytes() == data  # asking for the file writes it (with its metadata)
    assert store.held(ref.id) is None
    assert _files(tmp_path / "store") == sorted([ref.id, f"{ref.id}.meta.json"])
    assert BlobStore(tmp_path / "store").owners(ref.id) == ["alice", "bob"]

    published = _held_upload(store, b"global" * 1000, "alice")
    store.publish(published.id)  # a published blob lives on disk
    assert store.held(published.id) is None and BlobStore(tmp_path / "store").is_public(published.id)


def test_held_uploads_stay_within_their_budget_and_return_it_when_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from theoden_server import storage
    from theoden_server.errors import BlobIntegrityError, PayloadTooLarge

    monkeypatch.setattr(storage, "HOLD_TOTAL_BYTES", 2500)
    monkeypatch.setattr(storage, "HOLD_BLOB_BYTES", 1500)
    store = BlobStore(tmp_path / "store")
    first = _held_upload(store, b"a" * 1000, "alice")
    second = _held_upload(store, b"b" * 1000, "alice")
    over_budget = _held_upload(store, b"c" * 1000, "alice")  # 3000 > 2500: written instead
    too_large = _held_upload(store, b"d" * 2000, "alice")  # larger than one held blob may be
    unannounced = _held_upload(store, b"e" * 10, "alice", size=None)  # size unknown: written

    assert store.held(first.id) is not None and store.held(second.id) is not None
    assert all(store.held(r.id) is None and store.exists(r.id) for r in (over_budget, too_large, unannounced))

    # failed uploads give their reservation back; a discarded held blob gives its memory back
    wrong_digest = store.writer(owner="alice", expected_sha256="0" * 64, expected_size=100, in_memory=True)
    wrong_digest.write(b"x" * 100)
    with pytest.raises(BlobIntegrityError):
        wrong_digest.commit()
    with pytest.raises(PayloadTooLarge), store.writer(owner="alice", expected_size=100, in_memory=True) as w:
        w.write(b"x" * 101)
    assert store.discard_upload(first.id) and not store.exists(first.id)
    third = _held_upload(store, b"f" * 1000, "alice")
    assert store.held(third.id) is not None  # room again
    store.delete(second.id)
    store.delete(third.id)
    assert store._held_bytes == 0


def test_a_blob_stored_public_is_published_with_one_metadata_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "store")
    writes: list[str] = []
    original = store._write_meta
    monkeypatch.setattr(store, "_write_meta", lambda blob_id, meta: (writes.append(blob_id), original(blob_id, meta)))

    ref = save_tensors(store, tensors(), public=True)
    store.publish(ref.id)  # already public: nothing to write

    assert writes == [ref.id]
    assert BlobStore(tmp_path / "store").is_public(ref.id)
    held = _held_upload(store, b"same as a later public blob" * 10, "alice")
    with store.writer(public=True) as writer:  # the same bytes stored public: on disk now, not held
        writer.write(b"same as a later public blob" * 10)
        again = writer.commit()
    assert again.id == held.id and store.held(held.id) is None  # type: ignore[attr-defined]
    fresh = BlobStore(tmp_path / "store")
    assert fresh.is_public(held.id) and fresh.owners(held.id) == ["alice"]  # type: ignore[attr-defined]
    assert store._held_bytes == 0


def test_held_uploads_unused_for_long_are_written_to_disk_and_free_their_memory(tmp_path: Path) -> None:
    import time

    store = BlobStore(tmp_path / "store")
    data = b"never reported" * 100
    ref = _held_upload(store, data, "alice")

    assert store.spill_held(3600) == 0 and store.held(ref.id) == data  # type: ignore[attr-defined]
    time.sleep(0.01)
    assert store.spill_held(0.001) == 1
    assert store.held(ref.id) is None and store._held_bytes == 0  # type: ignore[attr-defined]
    fresh = BlobStore(tmp_path / "store")
    assert fresh.read_bytes(ref.id) == data and fresh.owners(ref.id) == ["alice"]  # type: ignore[attr-defined]
