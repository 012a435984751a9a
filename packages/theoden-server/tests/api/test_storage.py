from __future__ import annotations

import hashlib

from .conftest import Api


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_upload_then_download_own_blob(api: Api) -> None:
    data = b"weights" * 1000
    put = await api.client.put(f"/api/v1/storage/{_sha(data)}", content=data, headers=api.auth("alice"))
    assert put.status_code == 201, put.text
    assert put.json() == {
        "id": _sha(data),
        "sha256": _sha(data),
        "size": len(data),
        "media_type": "application/octet-stream",
    }
    get = await api.client.get(f"/api/v1/storage/{_sha(data)}", headers=api.auth("alice"))
    assert get.status_code == 200
    assert get.content == data
    assert get.headers["x-content-sha256"] == _sha(data)


async def test_another_clients_upload_is_forbidden_but_admin_and_public_blobs_are_readable(api: Api) -> None:
    data = b"private" * 100
    await api.client.put(f"/api/v1/storage/{_sha(data)}", content=data, headers=api.auth("alice"))
    other = await api.client.get(f"/api/v1/storage/{_sha(data)}", headers=api.auth("bob"))
    assert other.status_code == 403
    assert other.json()["code"] == "forbidden"
    admin = await api.client.get(f"/api/v1/storage/{_sha(data)}", headers=api.auth("root"))
    assert admin.status_code == 200
    api.built.store.publish(_sha(data))
    assert (await api.client.get(f"/api/v1/storage/{_sha(data)}", headers=api.auth("bob"))).status_code == 200


async def test_digest_mismatch_is_refused_and_nothing_is_stored(api: Api) -> None:
    data = b"real bytes"
    wrong = _sha(b"other bytes")
    response = await api.client.put(f"/api/v1/storage/{wrong}", content=data, headers=api.auth("alice"))
    assert response.status_code == 422
    assert response.json()["code"] == "blob_integrity"
    assert not api.built.store.exists(wrong)
    assert not api.built.store.exists(_sha(data))


async def test_invalid_ids_cannot_escape_the_store(api: Api) -> None:
    for blob_id in ["..%2F..%2Fetc%2Fpasswd", "ABC", "a" * 63, "g" * 64, "%2E%2E"]:
        response = await api.client.get(f"/api/v1/storage/{blob_id}", headers=api.auth("root"))
        assert response.status_code in (400, 404), (blob_id, response.status_code)
        response = await api.client.put(f"/api/v1/storage/{blob_id}", content=b"x", headers=api.auth("alice"))
        assert response.status_code in (400, 404), (blob_id, response.status_code)
    assert list((api.built.store.root / "tmp").iterdir()) == []


async def test_missing_blob_is_404(api: Api) -> None:
    response = await api.client.get(f"/api/v1/storage/{'0' * 64}", headers=api.auth("root"))
    assert response.status_code == 404


async def test_oversized_upload_is_413(api: Api) -> None:
    data = b"z" * (1024 * 1024 + 1)  # the fixture's limit is 1 MiB
    response = await api.client.put(f"/api/v1/storage/{_sha(data)}", content=data, headers=api.auth("alice"))
    assert response.status_code == 413
    assert response.json()["code"] == "payload_too_large"
    assert not api.built.store.exists(_sha(data))


async def test_storage_needs_a_token(api: Api) -> None:
    assert (await api.client.get(f"/api/v1/storage/{'0' * 64}")).status_code == 401
    assert (await api.client.put(f"/api/v1/storage/{'0' * 64}", content=b"x")).status_code == 401


async def test_a_small_upload_is_held_in_memory_and_still_readable_by_its_owner_only(api: Api) -> None:
    data = b"held weights" * 1000
    put = await api.client.put(f"/api/v1/storage/{_sha(data)}", content=data, headers=api.auth("alice"))
    assert put.status_code == 201, put.text

    store = api.built.store
    assert store.held(_sha(data)) == data
    assert not any(p.name == _sha(data) for p in (store.root / "blobs").rglob("*"))  # nothing written
    get = await api.client.get(f"/api/v1/storage/{_sha(data)}", headers=api.auth("alice"))
    assert get.status_code == 200 and get.content == data
    assert (await api.client.get(f"/api/v1/storage/{_sha(data)}", headers=api.auth("bob"))).status_code == 403
    assert store.held(_sha(data)) == data  # serving it did not write it


async def test_uploads_go_to_disk_when_the_server_keeps_them(api: Api) -> None:
    api.built.server.keep_uploads = True
    data = b"kept weights" * 1000
    put = await api.client.put(f"/api/v1/storage/{_sha(data)}", content=data, headers=api.auth("alice"))
    assert put.status_code == 201, put.text
    assert api.built.store.held(_sha(data)) is None
    assert (api.built.store.root / "blobs" / _sha(data)[:2] / _sha(data)).read_bytes() == data
