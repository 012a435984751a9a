"""In-memory stand-ins for the server side, used by the client tests."""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from pathlib import Path

from theoden_client.errors import ServerUnavailable
from theoden_client.transport.base import BlobSink, Transport
from theoden_protocol import (
    SAFETENSORS_MEDIA_TYPE,
    Ack,
    BlobRef,
    Command,
    CommandResponse,
    Exit,
    Heartbeat,
    LoginResponse,
    PullCommand,
    RegisterRequest,
    RegisterResponse,
    ServerRequest,
    ServerResponse,
    StatusUpdate,
    codec,
)


class FakeTransport(Transport):
    """Queues commands, records statuses and blobs, and fails on demand.

    ``queue`` items are commands, exceptions (raised by the pull) or ``None`` (an empty answer).
    ``fail`` maps an operation name (``login``, ``register``, ``pull``, ``status:<status>``,
    ``heartbeat``, ``upload``, ``download``) to how many of its next calls raise `ServerUnavailable`.
    When the queue is empty the pull answers `Exit` (so a loop under test always ends).
    """

    def __init__(self, commands: list[Command | Exception | None] | None = None, *, heartbeat_interval: float = 5.0):
        self.queue: deque[Command | Exception | None] = deque(commands or [])
        self.heartbeat_interval = heartbeat_interval
        self.statuses: list[StatusUpdate] = []
        self.blobs: dict[str, bytes] = {}
        self.requests: list[ServerRequest] = []
        self.fail: dict[str, int] = {}
        self.logins = 0
        self.registrations = 0
        self.heartbeats = 0
        self.pull_delay = 0.0
        self.closed = False
        self._lock = threading.Lock()

    def _maybe_fail(self, op: str) -> None:
        with self._lock:
            left = self.fail.get(op, 0)
            if left:
                self.fail[op] = left - 1
                raise ServerUnavailable(f"fake server down ({op})")

    @staticmethod
    def _wire(message: ServerRequest) -> ServerRequest:
        """Send every message through the real codec, as a transport would."""
        return codec.decode_request(codec.encode(message))

    def login(self) -> LoginResponse:
        self._maybe_fail("login")
        self.logins += 1
        return LoginResponse(access_token="t", expires_in=3600)

    def register(self, request: RegisterRequest) -> RegisterResponse:
        self._maybe_fail("register")
        self.registrations += 1
        self.requests.append(self._wire(request))
        return RegisterResponse(
            client_name="site-a", run_name="test-run", heartbeat_interval=self.heartbeat_interval, max_wait=1.0
        )

    def request(self, request: ServerRequest, *, timeout: float | None = None) -> ServerResponse:
        if isinstance(request, Heartbeat):
            self._maybe_fail("heartbeat")
            with self._lock:
                self.heartbeats += 1
            return Ack()
        if isinstance(request, PullCommand):
            self._maybe_fail("pull")
            if self.pull_delay:
                time.sleep(self.pull_delay)
            self.requests.append(request)
            if not self.queue:
                return CommandResponse(command=Exit(reason="queue empty"))
            item = self.queue.popleft()
            if isinstance(item, Exception):
                raise item
            return CommandResponse(command=item, retry_after=0.0)
        raise NotImplementedError(type(request).__name__)

    def send_status(self, update: StatusUpdate) -> Ack:
        self._maybe_fail(f"status:{update.status}")
        self.statuses.append(codec.decode_status(codec.encode(update)))
        return Ack()

    def upload_blob(self, path: Path, *, sha256: str, size: int, media_type: str = SAFETENSORS_MEDIA_TYPE) -> BlobRef:
        self._maybe_fail("upload")
        data = path.read_bytes()
        assert hashlib.sha256(data).hexdigest() == sha256
        assert len(data) == size
        self.blobs[sha256] = data
        return BlobRef(id=sha256, sha256=sha256, size=size, media_type=media_type)

    def download_blob(self, ref: BlobRef, destination: Path) -> None:
        self._maybe_fail("download")
        sink = BlobSink(ref, destination)
        sink.write(self.blobs[ref.id])
        sink.finish()

    def close(self) -> None:
        self.closed = True

    # helpers for assertions
    def statuses_of(self, uuid: str) -> list[str]:
        return [str(s.status) for s in self.statuses if s.command_uuid == uuid]

    def final(self, uuid: str) -> StatusUpdate:
        finals = [s for s in self.statuses if s.command_uuid == uuid and s.status.is_final]
        assert len(finals) == 1, f"expected one final status for {uuid}, got {finals}"
        return finals[0]

    def add_blob(self, data: bytes) -> BlobRef:
        sha = hashlib.sha256(data).hexdigest()
        self.blobs[sha] = data
        return BlobRef(id=sha, sha256=sha, size=len(data))
