"""The server core: two entry points every transport calls, safe under concurrent calls.

`Server.process_server_request` answers a client's request (register, pull a command,
heartbeat, blob transfers) and `Server.process_status_update` applies a client's status report.
Transports (REST, RabbitMQ) only decode, authenticate, call these and encode; the identity a
transport authenticated is passed as ``client_name`` and is the only identity the server trusts.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from theoden_protocol import (
    Ack,
    BlobChunk,
    BlobChunkGet,
    BlobChunkPut,
    BlobDownload,
    BlobRef,
    BlobTicket,
    BlobUpload,
    CommandResponse,
    Heartbeat,
    LoginRequest,
    PullCommand,
    RegisterRequest,
    RegisterResponse,
    ServerRequest,
    ServerResponse,
    StatusUpdate,
    check_compatible,
)

from theoden_server.errors import Conflict, Forbidden, InvalidRequest, NotFound, PayloadTooLarge
from theoden_server.operations.conditions import Condition
from theoden_server.operations.instructions import Instruction
from theoden_server.operations.manager import OperationManager
from theoden_server.operations.open_distribution import OpenDistribution
from theoden_server.protection import OperationProtection
from theoden_server.storage import BlobStore, BlobWriter, validate_blob_id
from theoden_server.topology import Topology
from theoden_server.watchers.base import (
    InitializationNotification,
    ParametersNotification,
    RunFinishedNotification,
    ServerRequestNotification,
    StatusUpdateNotification,
    TopologyChangeNotification,
    Watcher,
)
from theoden_server.watchers.pool import WatcherPool

__all__ = ["CHUNK_SIZE", "RequestHandler", "Server"]

logger = logging.getLogger(__name__)

#: Size of one blob chunk on the broker transport.
CHUNK_SIZE: Final = 4 * 1024 * 1024
#: Most uploads one client may have announced and not completed at a time.
MAX_PENDING_UPLOADS: Final = 8
#: Seconds an upload may stay held in memory unused before it is written to disk (at least twice the
#: heartbeat timeout).
HELD_UPLOAD_SECONDS: Final = 60.0

RequestHandler = Callable[["Server", ServerRequest, str], ServerResponse]


@dataclass
class _PendingUpload:
    blob_id: str
    size: int
    media_type: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    writer: BlobWriter | None = None
    next_index: int = 0

    @property
    def num_chunks(self) -> int:
        return math.ceil(self.size / CHUNK_SIZE)


class Server:
    """One federated run: topology, plan, watchers and blob store behind two entry points.

    Args:
        run_name: Name of the run (told to clients when they register).
        instructions: The plan (conditions, distributions, actions, bundles), in order.
        store: Blob store for weights.
        run_dir: Directory where everything the run produces lands.
        permanent_conditions: Checked before anything is handed out.
        open_distribution: Commands every newly joining client gets first.
        watchers: Observers of the run (metrics, best model, logging, your own).
        heartbeat_timeout: Seconds of silence after which a client is offline and its open commands fail.
        heartbeat_interval: How often clients are asked to send a heartbeat.
        max_wait: Longest a pull may long-poll (told to clients; the transport enforces it).
        min_successful_clients: Fewest usable results for a round to aggregate; fewer fail the
            run loudly. ``None``: aggregate whatever arrived (none keeps the global model).
        protection: Which request types the server processes at all (see `OperationWhitelist`).
        keep_uploads: Keep the clients' uploads once the round that received them is over (for
            auditing or your own watchers that read them). By default they are deleted then; the
            global models stay either way.
        keep_global_models: Keep only the latest N (>= 2) global models in the store; older ones are
            deleted once every watcher has seen them (the best model is kept apart by
            `BestModelSaver`). ``None`` (default) keeps every round's model.
    """

    def __init__(
        self,
        *,
        run_name: str,
        instructions: Sequence[Instruction],
        store: BlobStore,
        run_dir: Path,
        permanent_conditions: Sequence[Condition] = (),
        open_distribution: OpenDistribution | None = None,
        watchers: Sequence[Watcher] = (),
        heartbeat_timeout: float = 30.0,
        heartbeat_interval: float = 5.0,
        max_wait: float = 30.0,
        min_successful_clients: int | None = None,
        protection: OperationProtection | None = None,
        keep_uploads: bool = False,
        keep_global_models: int | None = None,
    ) -> None:
        if keep_global_models is not None and keep_global_models < 2:
            raise ValueError("keep_global_models must be at least 2 (the current and the previous model), or None")
        self.run_name = run_name
        self.keep_uploads = keep_uploads
        self.keep_global_models = keep_global_models
        self.protection = protection or OperationProtection()
        self.store = store
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.heartbeat_interval = heartbeat_interval
        self.max_wait = max_wait
        self.min_successful_clients = min_successful_clients
        self.topology = Topology(heartbeat_timeout=heartbeat_timeout)
        self.watchers = WatcherPool(watchers)
        self.finished = threading.Event()
        self.failed: str | None = None
        self.global_model: BlobRef | None = None
        self.request_handlers: dict[type[ServerRequest], RequestHandler] = {}
        self.operations = OperationManager(
            self,
            instructions,
            permanent_conditions=permanent_conditions,
            open_distribution=open_distribution,
            on_change=lambda: self._notify_available(None),
            on_client_change=self._notify_available,
        )
        self._subscribers: dict[int, Callable[[str | None], None]] = {}
        self._next_subscriber = 0
        self._subscribers_lock = threading.Lock()
        self._uploads: dict[tuple[str, str], _PendingUpload] = {}
        self._uploads_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._stop = threading.Event()
        self._checker: threading.Thread | None = None
        self._started = False
        self._global_models: list[str] = []  # ids of the global models so far, oldest first
        self._retire: queue.SimpleQueue[bool] = queue.SimpleQueue()
        self._janitor: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Start the watchers, the action worker and the heartbeat/timeout checker."""
        with self._state_lock:
            if self._started:
                return
            self._started = True
        self.watchers.start()
        self.watchers.notify(InitializationNotification(server=self))
        self.operations.start()
        self._checker = threading.Thread(target=self._check_loop, name="theoden-heartbeats", daemon=True)
        self._checker.start()
        if self.keep_global_models is not None:
            self._janitor = threading.Thread(target=self._retire_loop, name="theoden-retention", daemon=True)
            self._janitor.start()

    def stop(self) -> None:
        """Stop the background threads and drop unfinished uploads (idempotent)."""
        self._stop.set()
        checker, self._checker = self._checker, None
        if checker is not None:
            checker.join(5.0)
        janitor, self._janitor = self._janitor, None
        if janitor is not None:
            self._retire.put(False)
            janitor.join(30.0)
        self.operations.stop()
        self.watchers.stop()
        with self._uploads_lock:
            uploads, self._uploads = list(self._uploads.values()), {}
        for upload in uploads:
            if upload.writer is not None:
                upload.writer.abort()

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _check_loop(self) -> None:
        interval = max(0.01, min(self.topology.heartbeat_timeout / 4, self.heartbeat_interval, 1.0))
        # an upload held in memory this long was never used (its client died before reporting it, or its
        # round is slow): written to disk, so that such uploads cannot use up the memory budget for good
        spill_after = max(HELD_UPLOAD_SECONDS, 2 * self.topology.heartbeat_timeout)
        next_spill = time.monotonic() + spill_after / 4
        while not self._stop.wait(interval):
            try:
                for client in self.topology.expire():
                    timeout = self.topology.heartbeat_timeout
                    self.operations.client_lost(client, f"client went silent for more than {timeout:g} s")
                    self._topology_changed(client, "offline")
                self.operations.tick()
                if time.monotonic() >= next_spill:
                    next_spill = time.monotonic() + spill_after / 4
                    if spilled := self.store.spill_held(spill_after):
                        logger.info("wrote %d upload(s) unused for %.0f s from memory to disk", spilled, spill_after)
            except Exception:
                logger.exception("heartbeat check failed")

    # -- run state -----------------------------------------------------------------------------

    def ready_clients(self) -> list[str]:
        """Online clients that finished the open distribution, in join order."""
        return self.operations.ready_clients()

    def set_global_model(self, ref: BlobRef, *, round: int | None = None, source: str = "") -> None:
        """Make ``ref`` the global model (published so every client may download it)."""
        self.store.publish(ref.id)
        self.global_model = ref
        self.watchers.notify(ParametersNotification(model=ref, round=round, source=source))
        if self.keep_global_models is not None:
            with self._state_lock:
                self._global_models.append(ref.id)
            self._retire.put(True)

    def _retire_loop(self) -> None:
        """Delete global models older than the latest `keep_global_models`, once the watchers are past them.

        A model's notifications come in up to three waves (a round completes -> its metrics -> a new best
        model, which `BestModelSaver` copies), each queued while the one before is handled: after three
        flushes of the watcher pool everything about a model queued before them has been delivered.
        """
        while True:
            more = self._retire.get()
            while more and not self._retire.empty():  # several new models at once: one pass
                more = self._retire.get()
            if not more:
                return
            try:
                if all(self.watchers.flush(60.0) for _ in range(3)):
                    self._retire_global_models()
            except Exception:
                logger.exception("deleting old global models failed")

    def _retire_global_models(self) -> None:
        keep = self.keep_global_models
        assert keep is not None
        with self._state_lock:
            old, self._global_models = self._global_models[:-keep], self._global_models[-keep:]
            current = {*self._global_models, *([self.global_model.id] if self.global_model else [])}
        gone = [blob_id for blob_id in dict.fromkeys(old) if blob_id not in current]
        for blob_id in gone:
            self.store.delete(blob_id)
        if gone:
            logger.debug("deleted %d global model(s) older than the latest %d", len(gone), keep)

    def release_uploads(self, blob_ids: Sequence[str]) -> int:
        """Delete client uploads no longer needed (e.g. a finished round's), unless `keep_uploads`.

        Published blobs (global models) are never deleted here. Returns how many blobs were deleted.
        """
        if self.keep_uploads:
            return 0
        deleted = sum(self.store.discard_upload(blob_id) for blob_id in dict.fromkeys(blob_ids))
        if deleted:
            logger.debug("deleted %d client upload(s) no longer needed", deleted)
        return deleted

    def fail(self, reason: str) -> None:
        """Fail the run loudly: drop the plan, tell clients to exit, set `finished` (first reason wins)."""
        with self._state_lock:
            if self.failed is not None or self.finished.is_set():
                return
            self.failed = reason
        logger.error("run %s failed: %s", self.run_name, reason)
        self.operations.abort(reason)
        self.finished.set()
        self.watchers.notify(RunFinishedNotification(failed=reason))

    def _plan_done(self) -> None:
        """Called by the manager when the plan is complete."""
        if not self.finished.is_set():
            self.finished.set()
            self.watchers.notify(RunFinishedNotification(failed=self.failed))
            self._notify_available(None)

    # -- long-polling support ------------------------------------------------------------------

    def subscribe(self, callback: Callable[[str | None], None]) -> Callable[[], None]:
        """Call ``callback(client or None)`` whenever a command may have become available; return an unsubscriber.

        The callback is called from any thread and must not block.
        """
        with self._subscribers_lock:
            key = self._next_subscriber
            self._next_subscriber += 1
            self._subscribers[key] = callback

        def unsubscribe() -> None:
            with self._subscribers_lock:
                self._subscribers.pop(key, None)

        return unsubscribe

    def _notify_available(self, client: str | None) -> None:
        with self._subscribers_lock:
            callbacks = list(self._subscribers.values())
        for callback in callbacks:
            try:
                callback(client)
            except Exception:
                logger.exception("subscriber failed")

    # -- entry points --------------------------------------------------------------------------

    def process_server_request(
        self, request: ServerRequest, client_name: str, *, is_admin: bool = False
    ) -> ServerResponse:
        """Answer one request of the authenticated ``client_name``; never blocks on the plan.

        Raises:
            Forbidden: the request names another client, or asks for a blob it may not read.
            Conflict: the client has not registered yet.
            NotFound / InvalidRequest / PayloadTooLarge / IncompatibleVersionError: bad input
                (nothing is changed).
        """
        self._check_allowed(request)
        if isinstance(request, StatusUpdate):
            return self.process_status_update(request, client_name)
        self._check_identity(request.client_name, client_name)
        if isinstance(request, LoginRequest):
            raise InvalidRequest("log in through the transport (POST /api/v1/auth/token or the broker's credentials)")
        if isinstance(request, RegisterRequest):
            response: ServerResponse = self._register(request, client_name)
        else:
            admin_blob_access = is_admin and isinstance(request, BlobDownload | BlobChunkGet)
            if not admin_blob_access:
                self._touch(client_name)
            response = self._dispatch(request, client_name, is_admin)
        self.watchers.notify(ServerRequestNotification(client=client_name, request=request))
        return response

    def process_status_update(self, update: StatusUpdate, client_name: str) -> Ack:
        """Apply a status update of the authenticated ``client_name``.

        Raises:
            Forbidden: the update names another client.
            NotFound: no command with that uuid was handed out.
            Conflict: the command is another client's, already final, or the client never registered.
        """
        self._check_allowed(update)
        self._check_identity(update.client_name, client_name)
        self._touch(client_name)
        self.operations.handle_status(client_name, update)
        self.watchers.notify(StatusUpdateNotification(client=client_name, update=update))
        return Ack(message=f"{update.status.value} recorded")

    def _dispatch(self, request: ServerRequest, client: str, is_admin: bool) -> ServerResponse:
        if isinstance(request, PullCommand):
            command = self.operations.get_command(client)
            retry = 0.0 if command is not None else min(1.0, self.heartbeat_interval)
            return CommandResponse(command=command, retry_after=retry)
        if isinstance(request, Heartbeat):
            return Ack()
        if isinstance(request, BlobUpload):
            return self._announce_upload(request, client)
        if isinstance(request, BlobChunkPut):
            return self._put_chunk(request, client)
        if isinstance(request, BlobDownload):
            ref = self._readable(request.blob_id, client, is_admin)
            return self._ticket(ref.id, ref.size, ref=ref)
        if isinstance(request, BlobChunkGet):
            return self._get_chunk(request, client, is_admin)
        handler = self.request_handlers.get(type(request))
        if handler is not None:
            return handler(self, request, client)
        raise InvalidRequest(f"the server does not handle {type(request).__name__} requests")

    def _check_allowed(self, request: ServerRequest) -> None:
        if not self.protection.allows(request):
            tag = type(request).__struct_config__.tag
            raise Forbidden(f"this server does not accept {tag!r} requests (operation protection)")

    def _check_identity(self, claimed: str | None, client: str) -> None:
        if claimed is not None and claimed != client:
            raise Forbidden(
                f"authenticated as {client!r} but the message names {claimed!r}; a client speaks only for itself"
            )

    def _register(self, request: RegisterRequest, client: str) -> RegisterResponse:
        check_compatible(request.protocol_version, remote_role="client")
        is_new, was_offline = self.topology.join(client, request.info)
        if is_new or was_offline:
            self.operations.client_back(client)
            self._topology_changed(client, "joined" if is_new else "online")
        self._notify_available(client)
        return RegisterResponse(
            client_name=client,
            run_name=self.run_name,
            heartbeat_interval=self.heartbeat_interval,
            max_wait=self.max_wait,
        )

    def _touch(self, client: str) -> None:
        try:
            came_back = self.topology.touch(client)
        except KeyError:
            raise Conflict(
                f"client {client!r} has not registered in run {self.run_name!r}; send a RegisterRequest first"
            ) from None
        if came_back:
            self.operations.client_back(client)
            self._topology_changed(client, "online")

    def _topology_changed(self, client: str, change: str) -> None:
        self.watchers.notify(
            TopologyChangeNotification(
                client=client, change=change, online_clients=tuple(self.topology.online_clients())
            )
        )
        self._notify_available(None)

    # -- blobs ---------------------------------------------------------------------------------

    def _ticket(self, blob_id: str, size: int, *, ref: BlobRef | None = None) -> BlobTicket:
        return BlobTicket(
            blob_id=blob_id,
            ref=ref,
            url=f"/api/v1/storage/{blob_id}",
            chunk_size=CHUNK_SIZE,
            num_chunks=math.ceil(size / CHUNK_SIZE),
            max_size=self.store.max_blob_bytes,
        )

    def _readable(self, blob_id: str, client: str, is_admin: bool) -> BlobRef:
        validate_blob_id(blob_id)
        if not self.store.exists(blob_id):
            raise NotFound(f"no blob {blob_id} in run {self.run_name!r}")
        if not self.store.can_read(blob_id, client, is_admin=is_admin):
            raise Forbidden(f"client {client!r} may not read blob {blob_id}")
        return self.store.ref(blob_id)

    def _announce_upload(self, request: BlobUpload, client: str) -> BlobTicket:
        if request.size > self.store.max_blob_bytes:
            raise PayloadTooLarge(
                f"blob of {request.size} bytes is larger than the limit of {self.store.max_blob_bytes}"
            )
        if request.size == 0:
            return self._ticket(
                request.sha256, 0, ref=self.store.put_bytes(b"", media_type=request.media_type, owner=client)
            )
        with self._uploads_lock:
            mine = [key for key in self._uploads if key[0] == client]
            if (client, request.sha256) not in self._uploads and len(mine) >= MAX_PENDING_UPLOADS:
                stale = self._uploads.pop(mine[0])
                if stale.writer is not None:
                    stale.writer.abort()
            old = self._uploads.get((client, request.sha256))
            if old is not None and old.writer is not None:
                old.writer.abort()
            self._uploads[(client, request.sha256)] = _PendingUpload(request.sha256, request.size, request.media_type)
        return self._ticket(request.sha256, request.size)

    def expected_upload(self, client: str, blob_id: str) -> tuple[int, str] | None:
        """Return ``(size, media_type)`` of an upload ``client`` announced for ``blob_id`` (for transports)."""
        with self._uploads_lock:
            upload = self._uploads.get((client, blob_id))
            return None if upload is None else (upload.size, upload.media_type)

    def open_upload(self, client: str, blob_id: str) -> BlobWriter:
        """Return a writer for an announced upload (streamed transports), owned by ``client``.

        Raises:
            NotFound: ``client`` announced no upload of ``blob_id``.
        """
        with self._uploads_lock:
            upload = self._uploads.pop((client, blob_id), None)
        if upload is None:
            raise NotFound(f"client {client!r} announced no upload of blob {blob_id}; send a BlobUpload first")
        return self.store.writer(
            media_type=upload.media_type,
            owner=client,
            expected_sha256=blob_id,
            expected_size=upload.size,
            in_memory=not self.keep_uploads,
        )

    def _put_chunk(self, request: BlobChunkPut, client: str) -> BlobTicket:
        key = (client, request.blob_id)
        with self._uploads_lock:
            upload = self._uploads.get(key)
        if upload is None:
            raise NotFound(f"client {client!r} announced no upload of blob {request.blob_id}; send a BlobUpload first")
        with upload.lock:
            if request.index != upload.next_index:
                raise Conflict(
                    f"expected chunk {upload.next_index} of blob {request.blob_id}, got chunk {request.index}"
                )
            expected = min(CHUNK_SIZE, upload.size - request.index * CHUNK_SIZE)
            if len(request.data) != expected:
                raise InvalidRequest(
                    f"chunk {request.index} of blob {request.blob_id} has {len(request.data)} bytes, "
                    f"expected {expected}"
                )
            if upload.writer is None:
                upload.writer = self.store.writer(
                    media_type=upload.media_type,
                    owner=client,
                    expected_sha256=upload.blob_id,
                    expected_size=upload.size,
                    in_memory=not self.keep_uploads,
                )
            upload.writer.write(request.data)
            upload.next_index += 1
            if upload.next_index < upload.num_chunks:
                return self._ticket(upload.blob_id, upload.size)
            with self._uploads_lock:
                if self._uploads.get(key) is upload:
                    del self._uploads[key]
            ref = upload.writer.commit()
            return self._ticket(ref.id, ref.size, ref=ref)

    def _get_chunk(self, request: BlobChunkGet, client: str, is_admin: bool) -> BlobChunk:
        ref = self._readable(request.blob_id, client, is_admin)
        num_chunks = max(1, math.ceil(ref.size / CHUNK_SIZE))
        if request.index >= num_chunks:
            raise InvalidRequest(f"blob {ref.id} has {num_chunks} chunks; chunk {request.index} does not exist")
        data = self.store.read_chunk(ref.id, request.index, CHUNK_SIZE)
        return BlobChunk(blob_id=ref.id, index=request.index, data=data, last=request.index == num_chunks - 1)

    def describe(self) -> dict[str, Any]:
        """Return a summary of the run's state (for admin endpoints and logs)."""
        current = self.operations.current
        return {
            "run_name": self.run_name,
            "finished": self.finished.is_set(),
            "failed": self.failed,
            "global_model": None if self.global_model is None else self.global_model.id,
            "clients": {c.name: c.status.value for c in self.topology.snapshot()},
            "current": None if current is None else current.describe(),
        }
