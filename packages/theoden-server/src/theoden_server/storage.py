"""Content-addressed blob storage on disk, streamed in and out, with per-blob read access.

A blob's id is the SHA-256 of its bytes, so an id can never name a path outside the store and
the same weights uploaded twice are stored once. Writes go to a temporary file and are moved
into place only after the digest and size were verified; readers never see a partial blob.

A small upload that will live only for its round (a client's update, deleted once aggregated) may
be *held* in memory instead (``writer(in_memory=True)``): it is verified the same way, but written
to disk only if something asks for its file (`BlobStore.path`) or publishes it.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

import msgspec
from theoden_protocol import SAFETENSORS_MEDIA_TYPE, BlobRef

from theoden_server.errors import BadRequest, BlobIntegrityError, InvalidRequest, NotFound, PayloadTooLarge

__all__ = [
    "CACHE_BLOB_BYTES",
    "CACHE_TOTAL_BYTES",
    "DEFAULT_MAX_BLOB_BYTES",
    "HOLD_BLOB_BYTES",
    "HOLD_TOTAL_BYTES",
    "BlobStore",
    "BlobWriter",
    "validate_blob_id",
]

#: Largest blob accepted unless the server is configured otherwise (4 GiB).
DEFAULT_MAX_BLOB_BYTES: Final = 4 * 1024**3
_ID_PATTERN: Final = re.compile(r"^[0-9a-f]{64}$")
_COPY_CHUNK: Final = 1024 * 1024
#: Chunks at least this large are hashed on a helper thread while they are written.
_PARALLEL_HASH_BYTES: Final = 4 * 1024 * 1024
#: Buffers per writev call (the POSIX minimum of IOV_MAX).
_IOV_MAX: Final = 1024
#: Blobs up to this size stay in memory once read (`read_cached`): every client reads the global model.
CACHE_BLOB_BYTES: Final = 4 * 1024 * 1024
#: Memory the kept blobs may take together (least recently read ones go first).
CACHE_TOTAL_BYTES: Final = 64 * 1024 * 1024
#: Largest upload held in memory instead of written (`BlobStore.writer` with ``in_memory``).
HOLD_BLOB_BYTES: Final = 4 * 1024 * 1024
#: Memory the held uploads may take together; past it, uploads are written to disk as usual.
HOLD_TOTAL_BYTES: Final = 256 * 1024 * 1024


def validate_blob_id(blob_id: str) -> str:
    """Return ``blob_id`` if it is a lower-case hex SHA-256, else raise `BadRequest`."""
    if not isinstance(blob_id, str) or not _ID_PATTERN.match(blob_id):
        raise BadRequest(f"blob id {blob_id[:80]!r} is not a lower-case hex SHA-256 digest (64 characters 0-9a-f)")
    return blob_id


class _BlobMeta(msgspec.Struct, kw_only=True):
    media_type: str = SAFETENSORS_MEDIA_TYPE
    owners: list[str] = msgspec.field(default_factory=list)
    public: bool = False
    created: float = 0.0


class BlobWriter:
    """An upload in progress: feed it chunks with `write`, then `commit` (or `abort`)."""

    def __init__(
        self,
        store: BlobStore,
        *,
        media_type: str,
        owner: str | None,
        expected_sha256: str | None,
        expected_size: int | None,
        max_bytes: int,
        hold: bool = False,
        public: bool = False,
    ) -> None:
        self._store = store
        self._public = public
        self._media_type = media_type
        self._owner = owner
        self._expected_sha256 = expected_sha256
        self._expected_size = expected_size
        self._max_bytes = max_bytes if expected_size is None else min(max_bytes, expected_size)
        if expected_size is not None and expected_size > max_bytes:
            raise PayloadTooLarge(f"blob of {expected_size} bytes is larger than the limit of {max_bytes} bytes")
        # the temporary file is made with the first write (off the event loop: uploads write on a worker thread)
        self._file: BinaryIO | None = None
        self._tmp: Path | None = None
        self._done = False
        self._hash = hashlib.sha256()
        self.size = 0
        # held in memory (a reservation of ``expected_size`` bytes in the store's budget) instead of written
        self._held: list[bytes] | None = [] if hold else None
        self._reserved = (expected_size or 0) if hold else 0

    def _open(self) -> BinaryIO:
        if self._file is None:
            fd, name = tempfile.mkstemp(dir=self._store.root / "tmp", prefix="upload-")
            self._tmp = Path(name)
            self._file = os.fdopen(fd, "wb")
        return self._file

    def _admit(self, size: int) -> None:
        """Count ``size`` more bytes; past the limit, abort and raise `PayloadTooLarge`."""
        if self._done:
            raise RuntimeError("upload already committed or aborted")
        self.size += size
        if self.size > self._max_bytes:
            self.abort()
            limit = self._max_bytes
            what = (
                "the announced size"
                if self._expected_size is not None and limit == self._expected_size
                else "the limit"
            )
            raise PayloadTooLarge(f"upload exceeds {what} of {limit} bytes")

    def write(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append ``chunk``; raises `PayloadTooLarge` (and aborts) past the size limit."""
        self._admit(len(chunk))
        if self._held is not None:
            self._hash.update(chunk)
            self._held.append(bytes(chunk))
            return
        file = self._open()
        if len(chunk) >= _PARALLEL_HASH_BYTES:  # hash on a second core while this one writes (both drop the GIL)
            hasher = threading.Thread(target=self._hash.update, args=(chunk,), name="theoden-hash", daemon=True)
            hasher.start()
            try:
                file.write(chunk)
            finally:
                hasher.join()
        else:
            self._hash.update(chunk)
            file.write(chunk)

    def write_chunks(self, chunks: list[bytes]) -> None:
        """Append several chunks in order, in one system call where possible, without joining them first.

        One large write instead of many small ones is also what lets the page cache hold the file in
        large folios, which makes reading it back through a memory mapping (FedAvg) about 1.5x faster.
        """
        for chunk in chunks:
            self._admit(len(chunk))
        if self._held is not None:
            for chunk in chunks:
                self._hash.update(chunk)
                self._held.append(bytes(chunk))  # no copy for bytes
            return
        file = self._open()
        for chunk in chunks:
            self._hash.update(chunk)
        if not hasattr(os, "writev"):  # pragma: no cover - Windows
            for chunk in chunks:
                file.write(chunk)
            return
        file.flush()
        fd = file.fileno()
        for start in range(0, len(chunks), _IOV_MAX):
            group: list[bytes | memoryview] = list(chunks[start : start + _IOV_MAX])
            while group:
                written = os.writev(fd, group)
                while group and written >= len(group[0]):  # drop what went out; keep the rest of a partial one
                    written -= len(group[0])
                    group.pop(0)
                if group and written:
                    group[0] = memoryview(group[0])[written:]

    def commit(self) -> BlobRef:
        """Verify digest and size, move the blob into place and return its reference."""
        if self._done:
            raise RuntimeError("upload already committed or aborted")
        if self._held is None:
            self._open().close()  # an empty blob is a file too
        self._done = True
        digest = self._hash.hexdigest()
        try:
            if self._expected_size is not None and self.size != self._expected_size:
                raise BlobIntegrityError(f"received {self.size} bytes but {self._expected_size} were announced")
            if self._expected_sha256 is not None and digest != self._expected_sha256:
                raise BlobIntegrityError(
                    f"received bytes have SHA-256 {digest}, not the announced {self._expected_sha256}; "
                    "the upload was corrupted or the id is wrong"
                )
            if self._held is not None:
                data = self._held[0] if len(self._held) == 1 else b"".join(self._held)
                return self._store._adopt_held(data, digest, self._media_type, self._owner)
            assert self._tmp is not None
            return self._store._adopt(self._tmp, digest, self.size, self._media_type, self._owner, self._public)
        finally:
            self.abort()  # the file moved into place, or is dropped

    def abort(self) -> None:
        """Drop the partial upload."""
        self._done = True
        if self._held is not None:
            self._held = []
        if self._reserved:
            self._store._unreserve(self._reserved)
            self._reserved = 0
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmp is not None:
            self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None or not self._done:
            self.abort()


class BlobStore:
    """Blobs under ``root``, named by their SHA-256, each with its owners and public flag."""

    def __init__(self, root: str | os.PathLike[str], *, max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> None:
        self.root = Path(root)
        self.max_blob_bytes = max_blob_bytes
        for sub in ("blobs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for stale in (self.root / "tmp").iterdir():  # partial uploads of a previous process
            stale.unlink(missing_ok=True)
        self._lock = threading.Lock()
        self._meta_encoder = msgspec.json.Encoder()
        self._meta_decoder = msgspec.json.Decoder(_BlobMeta)
        # What is known of each blob (its metadata and size), so that access checks and references on
        # the request path need no file system call; written through to disk, read from it once per blob.
        self._known: dict[str, tuple[_BlobMeta, int]] = {}
        self._cache: OrderedDict[str, bytes] = OrderedDict()
        self._cache_bytes = 0
        self._cache_lock = threading.Lock()
        self._held: dict[str, bytes] = {}  # blobs held in memory, not (yet) on disk
        self._held_bytes = 0  # their bytes plus the reservations of held uploads in progress

    # -- writing ------------------------------------------------------------------------------

    def writer(
        self,
        *,
        media_type: str = SAFETENSORS_MEDIA_TYPE,
        owner: str | None = None,
        expected_sha256: str | None = None,
        expected_size: int | None = None,
        in_memory: bool = False,
        public: bool = False,
    ) -> BlobWriter:
        """Start a streamed upload; ``owner`` (a client name) may read the blob back.

        ``public`` publishes the blob as it is committed (one metadata write instead of two), as
        `publish` would.

        With ``in_memory``, an upload of an announced size up to `HOLD_BLOB_BYTES` is held in memory
        (while the held blobs fit `HOLD_TOTAL_BYTES`) and written to disk only when its file is asked
        for or it is published: for uploads deleted soon after (`discard_upload`).
        """
        if expected_sha256 is not None:
            validate_blob_id(expected_sha256)
        hold = in_memory and expected_size is not None and self._reserve(expected_size)
        return BlobWriter(
            self,
            media_type=media_type,
            owner=owner,
            expected_sha256=expected_sha256,
            expected_size=expected_size,
            max_bytes=self.max_blob_bytes,
            hold=hold and not public,
            public=public,
        )

    def _reserve(self, size: int) -> bool:
        if size > HOLD_BLOB_BYTES:
            return False
        with self._lock:
            if self._held_bytes + size > HOLD_TOTAL_BYTES:
                return False
            self._held_bytes += size
            return True

    def _unreserve(self, size: int) -> None:
        with self._lock:
            self._held_bytes -= size

    def put_bytes(self, data: bytes, *, media_type: str = SAFETENSORS_MEDIA_TYPE, owner: str | None = None) -> BlobRef:
        """Store ``data`` and return its reference."""
        with self.writer(media_type=media_type, owner=owner) as writer:
            writer.write(data)
            return writer.commit()

    def put_file(
        self, path: str | os.PathLike[str], *, media_type: str = SAFETENSORS_MEDIA_TYPE, owner: str | None = None
    ) -> BlobRef:
        """Store a copy of the file at ``path`` and return its reference."""
        with self.writer(media_type=media_type, owner=owner) as writer, open(path, "rb") as src:
            while chunk := src.read(_COPY_CHUNK):
                writer.write(chunk)
            return writer.commit()

    def _adopt(
        self, tmp: Path, digest: str, size: int, media_type: str, owner: str | None, public: bool = False
    ) -> BlobRef:
        with self._lock:  # looked up under the lock: two uploads of the same bytes must not both create it
            known = self._known.get(digest) or self._from_disk(digest)
            if known is None:
                meta = _BlobMeta(media_type=media_type, created=time.time(), public=public)
                self._place(tmp, digest)
            else:  # the same bytes again (e.g. another client's identical weights): stored once
                meta = known[0]
                if digest in self._held:  # published blobs live on disk: this copy replaces the held one
                    self._place(tmp, digest)
                    self._held_bytes -= len(self._held.pop(digest))
                    known = None  # its metadata is written below
            new_owner = owner if owner is not None and owner not in meta.owners else None
            if new_owner is not None:
                meta.owners.append(new_owner)
            newly_public = public and not meta.public
            meta.public = meta.public or public
            if known is None or new_owner is not None or newly_public:
                self._write_meta(digest, meta)
            self._known[digest] = (meta, size)
        return BlobRef(id=digest, sha256=digest, size=size, media_type=meta.media_type)

    def _adopt_held(self, data: bytes, digest: str, media_type: str, owner: str | None) -> BlobRef:
        """Keep verified bytes in memory as a blob (or add ``owner`` to the stored blob with that digest)."""
        with self._lock:
            known = self._known.get(digest) or self._from_disk(digest)
            if known is None:
                meta = _BlobMeta(media_type=media_type, created=time.time())
                self._held[digest] = data
                self._held_bytes += len(data)  # the writer's reservation is returned when it closes
            else:
                meta = known[0]
            if owner is not None and owner not in meta.owners:
                meta.owners.append(owner)
                if digest not in self._held:
                    self._write_meta(digest, meta)
            self._known[digest] = (meta, len(data))
        return BlobRef(id=digest, sha256=digest, size=len(data), media_type=meta.media_type)

    def _write_held(self, blob_id: str) -> None:
        """Write a blob held in memory to disk (under the lock); it is then stored like any other."""
        data = self._held.pop(blob_id, None)
        if data is None:
            return
        self._held_bytes -= len(data)
        fd, name = tempfile.mkstemp(dir=self.root / "tmp", prefix="held-")
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(data)
            self._place(Path(name), blob_id)
        except BaseException:
            Path(name).unlink(missing_ok=True)
            self._held[blob_id] = data
            self._held_bytes += len(data)
            raise
        self._write_meta(blob_id, self._known[blob_id][0])

    def spill_held(self, older_than: float) -> int:
        """Write to disk the blobs held in memory for more than ``older_than`` seconds; return how many.

        A held upload is normally used and deleted within its round; one its client never reported (it
        crashed after uploading) would otherwise keep its memory, and the budget, for good.
        """
        deadline = time.time() - older_than
        with self._lock:
            stale = [blob_id for blob_id in self._held if self._known[blob_id][0].created < deadline]
            for blob_id in stale:
                self._write_held(blob_id)
        return len(stale)

    def held(self, blob_id: str) -> bytes | None:
        """A blob's bytes if it is held in memory (not written to disk), else ``None``."""
        return self._held.get(blob_id)

    # -- reading ------------------------------------------------------------------------------

    def exists(self, blob_id: str) -> bool:
        """Whether a blob with this id is stored (invalid ids are simply absent)."""
        return bool(_ID_PATTERN.match(blob_id)) and self._lookup(blob_id) is not None

    def path(self, blob_id: str) -> Path:
        """Return the file of a stored blob (read-only use), or raise `NotFound`.

        A blob held in memory is written to disk first.
        """
        self._known_or_404(blob_id)
        if blob_id in self._held:
            with self._lock:
                self._write_held(blob_id)
        return self._blob_path(blob_id)

    def ref(self, blob_id: str) -> BlobRef:
        """Return the reference of a stored blob, or raise `NotFound`."""
        meta, size = self._known_or_404(blob_id)
        return BlobRef(id=blob_id, sha256=blob_id, size=size, media_type=meta.media_type)

    def open(self, blob_id: str) -> BinaryIO:
        """Open a stored blob for reading."""
        return open(self.path(blob_id), "rb")

    def read_bytes(self, blob_id: str) -> bytes:
        """Return a stored blob's bytes (small blobs only; prefer `iter_chunks`)."""
        held = self._held.get(blob_id)
        if held is not None:
            return held
        return self.path(blob_id).read_bytes()

    def read_cached(self, blob_id: str) -> bytes:
        """Return a stored blob's bytes, kept in memory for the next reader when small (`CACHE_BLOB_BYTES`).

        Blobs never change (their id is their digest), so a kept copy is never stale; reading the same
        global model once per client and round from the file cost a fresh buffer each time.
        """
        with self._cache_lock:
            data = self._cache.get(blob_id)
            if data is not None:
                self._cache.move_to_end(blob_id)
                return data
        held = self._held.get(blob_id)
        if held is not None:
            return held
        data = self.read_bytes(blob_id)
        if len(data) <= CACHE_BLOB_BYTES:
            with self._cache_lock:
                if blob_id not in self._cache:
                    self._cache[blob_id] = data
                    self._cache_bytes += len(data)
                while self._cache_bytes > CACHE_TOTAL_BYTES:
                    _, dropped = self._cache.popitem(last=False)
                    self._cache_bytes -= len(dropped)
        return data

    def iter_chunks(self, blob_id: str, chunk_size: int = _COPY_CHUNK) -> Iterator[bytes]:
        """Yield a stored blob in chunks of ``chunk_size`` bytes."""
        with self.open(blob_id) as src:
            while chunk := src.read(chunk_size):
                yield chunk

    def read_chunk(self, blob_id: str, index: int, chunk_size: int) -> bytes:
        """Return chunk ``index`` of a blob split into ``chunk_size``-byte chunks."""
        if index < 0 or chunk_size <= 0:
            raise InvalidRequest("chunk index must be >= 0 and chunk size > 0")
        with self.open(blob_id) as src:
            src.seek(index * chunk_size)
            return src.read(chunk_size)

    def delete(self, blob_id: str) -> None:
        """Remove a blob and its metadata (missing blobs are ignored)."""
        validate_blob_id(blob_id)
        with self._lock:
            self._forget(blob_id)

    def discard_upload(self, blob_id: str) -> bool:
        """Delete a blob unless it is published (a global model); return whether it was deleted.

        For clients' uploads once they were used: a blob that became public meanwhile (e.g. a client's
        weights taken as the global model) stays.
        """
        with self._lock:
            known = self._known.get(blob_id) or self._from_disk(validate_blob_id(blob_id))
            if known is None or known[0].public:
                return False
            self._forget(blob_id)
        return True

    def copy_to(self, blob_id: str, destination: str | os.PathLike[str]) -> Path:
        """Copy a stored blob to ``destination`` (e.g. the run directory's best model)."""
        dest = Path(destination)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.path(blob_id), dest)
        return dest

    # -- access -------------------------------------------------------------------------------

    def publish(self, blob_id: str) -> None:
        """Make a blob readable by every client of the run (e.g. the current global model)."""
        meta, _ = self._known_or_404(blob_id)
        with self._lock:
            if not meta.public:
                meta.public = True
                if blob_id in self._held:  # a published blob lives on disk (its meta is written with it)
                    self._write_held(blob_id)
                else:
                    self._write_meta(blob_id, meta)

    def is_public(self, blob_id: str) -> bool:
        """Whether every client may read the blob."""
        return self._meta(blob_id).public

    def owners(self, blob_id: str) -> list[str]:
        """Return the clients that uploaded this blob."""
        return list(self._meta(blob_id).owners)

    def can_read(self, blob_id: str, principal: str, *, is_admin: bool = False) -> bool:
        """Whether ``principal`` may read the blob: admins and the server always, clients if public or theirs."""
        if is_admin:
            return True
        meta = self._meta(blob_id)
        return meta.public or principal in meta.owners

    # -- internals ----------------------------------------------------------------------------

    def _blob_path(self, blob_id: str) -> Path:
        return self.root / "blobs" / blob_id[:2] / blob_id

    def _meta_path(self, blob_id: str) -> Path:
        return self.root / "blobs" / blob_id[:2] / f"{blob_id}.meta.json"

    def _place(self, tmp: Path, blob_id: str) -> None:
        """Move a written and verified file into place as the blob ``blob_id``."""
        target = self._blob_path(blob_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, target)

    def _forget(self, blob_id: str) -> None:
        """Remove a blob from memory and disk (under the lock)."""
        self._known.pop(blob_id, None)
        held = self._held.pop(blob_id, None)
        if held is not None:  # never written: nothing on disk
            self._held_bytes -= len(held)
        else:
            self._blob_path(blob_id).unlink(missing_ok=True)
            self._meta_path(blob_id).unlink(missing_ok=True)
        with self._cache_lock:
            dropped = self._cache.pop(blob_id, None)
            self._cache_bytes -= len(dropped or b"")

    def _lookup(self, blob_id: str) -> tuple[_BlobMeta, int] | None:
        """Metadata and size of a stored blob (from memory; from disk the first time), ``None`` if absent."""
        known = self._known.get(blob_id)
        if known is not None:
            return known
        with self._lock:
            known = self._known.get(blob_id) or self._from_disk(blob_id)
            if known is not None:
                self._known[blob_id] = known
            return known

    def _from_disk(self, blob_id: str) -> tuple[_BlobMeta, int] | None:
        try:
            size = self._blob_path(blob_id).stat().st_size
        except FileNotFoundError:
            return None
        return self._read_meta(blob_id), size

    def _known_or_404(self, blob_id: str) -> tuple[_BlobMeta, int]:
        known = self._lookup(validate_blob_id(blob_id))
        if known is None:
            raise NotFound(f"no blob {blob_id} in this run's store")
        return known

    def _meta(self, blob_id: str) -> _BlobMeta:
        """A blob's metadata; an absent blob has none (not public, no owners)."""
        known = self._lookup(validate_blob_id(blob_id))
        return _BlobMeta() if known is None else known[0]

    def _read_meta(self, blob_id: str) -> _BlobMeta:
        try:
            return self._meta_decoder.decode(self._meta_path(blob_id).read_bytes())
        except FileNotFoundError:
            return _BlobMeta()

    def _write_meta(self, blob_id: str, meta: _BlobMeta) -> None:
        path = self._meta_path(blob_id)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(self._meta_encoder.encode(meta))
        os.replace(tmp, path)
