from __future__ import annotations

import hashlib
import json
from pathlib import Path
from urllib.parse import parse_qs

import httpx
import pytest
from theoden_client.errors import (
    AuthenticationError,
    BlobIntegrityError,
    ServerRejected,
    ServerUnavailable,
    UndecodableCommandError,
)
from theoden_client.transport import RestTransport
from theoden_protocol import (
    Ack,
    BlobRef,
    Command,
    CommandResponse,
    Exit,
    Heartbeat,
    PullCommand,
    RegisterRequest,
    RegisterResponse,
    SendModel,
    Sequential,
    StatusUpdate,
    Train,
    Validate,
    codec,
)


class FakeServer:
    """A scripted REST server for httpx.MockTransport."""

    def __init__(self) -> None:
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.expires_in = 3600
        self.seen: list[httpx.Request] = []
        self.blobs: dict[str, bytes] = {}
        self.corrupt_downloads = False
        self.next_error: tuple[int, dict[str, str]] | None = None
        self.pull_answer: bytes | None = None
        self.commands: list[Command] = []
        self.statuses: list[StatusUpdate] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        path = request.url.path
        if path == "/api/v1/auth/token":
            form = parse_qs(request.content.decode())
            assert request.headers["content-type"] == "application/x-www-form-urlencoded"
            if form != {"grant_type": ["password"], "username": ["site-a"], "password": ["s3cret"]}:
                return httpx.Response(401, json={"code": "invalid_credentials", "detail": "wrong user or password"})
            self.tokens_issued += 1
            token = f"tok{self.tokens_issued}"
            self.valid_tokens.add(token)
            return httpx.Response(
                200,
                json={"type": "token", "access_token": token, "token_type": "bearer", "expires_in": self.expires_in},
            )
        auth = request.headers.get("authorization", "")
        if auth.removeprefix("Bearer ") not in self.valid_tokens:
            return httpx.Response(401, json={"code": "unauthorized", "detail": "token expired"})
        if self.next_error is not None:
            status, body = self.next_error
            self.next_error = None
            return httpx.Response(status, json=body)
        if path == "/api/v1/requests":
            req = codec.decode_request(request.content)
            if isinstance(req, RegisterRequest):
                return httpx.Response(200, content=codec.encode(RegisterResponse(client_name="site-a", run_name="r")))
            if isinstance(req, PullCommand):
                if self.pull_answer is not None:
                    return httpx.Response(200, content=self.pull_answer)
                if self.commands:
                    return httpx.Response(200, content=codec.encode(CommandResponse(command=self.commands.pop(0))))
                return httpx.Response(200, content=codec.encode(CommandResponse(command=Train(steps=3))))
            return httpx.Response(200, json={"type": "ack"})
        if path == "/api/v1/status":
            self.statuses.append(codec.decode_status(request.content))
            return httpx.Response(200, json={"type": "ack", "message": "ok"})
        if path.startswith("/api/v1/storage/"):
            blob_id = path.rsplit("/", 1)[1]
            if request.method == "PUT":
                data = request.read()
                sha = hashlib.sha256(data).hexdigest()
                if sha != blob_id or request.headers["x-content-sha256"] != sha:
                    return httpx.Response(422, json={"code": "digest_mismatch", "detail": "sha256 differs"})
                assert int(request.headers["content-length"]) == len(data)
                self.blobs[sha] = data
                return httpx.Response(201, json={"id": sha, "sha256": sha, "size": len(data)})
            data = self.blobs[blob_id]
            if self.corrupt_downloads:
                data = data[:-1] + bytes([data[-1] ^ 1])
            return httpx.Response(200, content=data, headers={"X-Content-SHA256": blob_id})
        return httpx.Response(404, json={"code": "not_found", "detail": path})


@pytest.fixture
def server() -> FakeServer:
    return FakeServer()


@pytest.fixture
def transport(server: FakeServer) -> RestTransport:
    return RestTransport(
        "https://fl.example.org:8443/",
        username="site-a",
        password="s3cret",
        http_transport=httpx.MockTransport(server.handler),
    )


def test_login_then_bearer_requests(server: FakeServer, transport: RestTransport) -> None:
    assert transport.login().access_token == "tok1"
    registered = transport.register(RegisterRequest())
    assert registered.client_name == "site-a"
    assert server.seen[-1].url == "https://fl.example.org:8443/api/v1/requests"
    assert server.seen[-1].headers["authorization"] == "Bearer tok1"


def test_requests_log_in_on_their_own(server: FakeServer, transport: RestTransport) -> None:
    transport.heartbeat()
    assert server.tokens_issued == 1


def test_a_401_logs_in_again_once_and_retries(server: FakeServer, transport: RestTransport) -> None:
    transport.login()
    server.valid_tokens.clear()  # the server forgot every token (e.g. restarted with a new key)
    assert isinstance(transport.request(Heartbeat()), Ack)
    assert server.tokens_issued == 2


def test_a_second_401_is_an_authentication_error(server: FakeServer, transport: RestTransport) -> None:
    transport.login()
    server.valid_tokens.clear()
    original = server.handler

    def never_valid(request: httpx.Request) -> httpx.Response:
        response = original(request)
        server.valid_tokens.clear()
        return response

    transport._http._transport = httpx.MockTransport(never_valid)  # type: ignore[attr-defined]
    with pytest.raises(AuthenticationError, match="token expired"):
        transport.heartbeat()


def test_wrong_password_is_an_authentication_error(server: FakeServer) -> None:
    transport = RestTransport(
        "http://x", username="site-a", password="nope", http_transport=httpx.MockTransport(server.handler)
    )
    with pytest.raises(AuthenticationError) as info:
        transport.login()
    assert info.value.status == 401
    assert info.value.code == "invalid_credentials"


def test_expired_tokens_are_renewed_before_use(server: FakeServer, transport: RestTransport) -> None:
    server.expires_in = 0
    transport.heartbeat()
    transport.heartbeat()
    assert server.tokens_issued == 2


def test_pull_read_timeout_exceeds_the_wait(server: FakeServer, transport: RestTransport) -> None:
    response = transport.pull_command(wait=40.0)
    assert isinstance(response.command, Train)
    assert response.command.steps == 3
    timeout = server.seen[-1].extensions["timeout"]
    assert timeout["read"] > 40.0
    assert json.loads(server.seen[-1].content) == {"type": "pull_command", "wait": 40.0}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (400, ServerRejected),
        (403, ServerRejected),
        (404, ServerRejected),
        (409, ServerRejected),
        (413, ServerRejected),
        (422, ServerRejected),
        (500, ServerUnavailable),
        (503, ServerUnavailable),
        (429, ServerUnavailable),
    ],
)
def test_error_statuses_map_to_client_errors(
    server: FakeServer, transport: RestTransport, status: int, error: type[Exception]
) -> None:
    server.next_error = (status, {"code": "some_code", "detail": "what went wrong"})
    with pytest.raises(error, match="what went wrong") as info:
        transport.heartbeat()
    if isinstance(info.value, ServerRejected):
        assert (info.value.status, info.value.code, info.value.detail) == (status, "some_code", "what went wrong")


def test_connection_errors_are_server_unavailable() -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    transport = RestTransport("http://x", username="u", password="p", http_transport=httpx.MockTransport(down))
    with pytest.raises(ServerUnavailable, match="connection refused"):
        transport.login()


def test_an_unknown_command_type_names_its_uuid(server: FakeServer, transport: RestTransport) -> None:
    server.pull_answer = b'{"type":"command","command":{"type":"alien_probe","uuid":"u-1"}}'
    with pytest.raises(UndecodableCommandError, match="alien_probe") as info:
        transport.pull_command(wait=0)
    assert (info.value.uuid, info.value.type) == ("u-1", "alien_probe")


def test_status_updates_are_posted(server: FakeServer, transport: RestTransport) -> None:
    ack = transport.send_status(StatusUpdate(client_name="site-a", command_uuid="c1", status="started"))  # type: ignore[arg-type]
    assert ack.message == "ok"
    assert server.seen[-1].url.path == "/api/v1/status"


def test_blob_round_trip_is_streamed_and_verified(server: FakeServer, transport: RestTransport, tmp_path: Path) -> None:
    source = tmp_path / "w.safetensors"
    payload = bytes(range(256)) * 10_000  # 2.5 MB: several chunks
    source.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()

    ref = transport.upload_blob(source, sha256=sha, size=len(payload))
    put = server.seen[-1]
    assert put.method == "PUT"
    assert put.url.path == f"/api/v1/storage/{sha}"
    assert put.headers["content-type"] == "application/vnd.safetensors"
    assert ref == BlobRef(id=sha, sha256=sha, size=len(payload))

    target = tmp_path / "down.safetensors"
    transport.download_blob(ref, target)
    assert target.read_bytes() == payload


def test_in_memory_blob_round_trip_is_verified(server: FakeServer, transport: RestTransport) -> None:
    payload = bytes(range(256)) * 10_000
    sha = hashlib.sha256(payload).hexdigest()

    ref = transport.upload_bytes(payload, sha256=sha)
    put = server.seen[-1]
    assert (put.method, put.url.path, put.headers["content-length"]) == (
        "PUT",
        f"/api/v1/storage/{sha}",
        str(len(payload)),
    )
    assert server.blobs[sha] == payload
    assert transport.download_bytes(ref) == payload

    server.corrupt_downloads = True
    with pytest.raises(BlobIntegrityError, match="failed verification"):
        transport.download_bytes(ref)
    with pytest.raises(BlobIntegrityError, match="larger than its announced 10 bytes"):
        transport.download_bytes(BlobRef(id=sha, sha256=sha, size=10))


def test_a_corrupted_download_is_refused_and_removed(
    server: FakeServer, transport: RestTransport, tmp_path: Path
) -> None:
    payload = b"weights" * 1000
    sha = hashlib.sha256(payload).hexdigest()
    server.blobs[sha] = payload
    server.corrupt_downloads = True
    target = tmp_path / "down.safetensors"
    with pytest.raises(BlobIntegrityError, match="failed verification"):
        transport.download_blob(BlobRef(id=sha, sha256=sha, size=len(payload)), target)
    assert not target.exists()


def test_a_download_longer_than_announced_is_refused(
    server: FakeServer, transport: RestTransport, tmp_path: Path
) -> None:
    payload = b"x" * 100
    sha = hashlib.sha256(payload).hexdigest()
    server.blobs[sha] = payload
    with pytest.raises(BlobIntegrityError, match="larger than its announced 10 bytes"):
        transport.download_blob(BlobRef(id=sha, sha256=sha, size=10), tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_ca_file_builds_a_verifying_context(tmp_path: Path) -> None:
    missing = tmp_path / "no-ca.pem"
    with pytest.raises(FileNotFoundError):
        RestTransport("https://x", username="u", password="p", ca_file=missing)


def test_a_client_runs_a_round_over_rest(server: FakeServer, transport: RestTransport, tmp_path: Path) -> None:
    from theoden_client import Client, default_executors

    from .test_executors import setup_commands

    round_ = Sequential(commands=[Train(steps=2), Validate(split="val"), SendModel()])
    server.commands = [setup_commands(), round_, Exit(reason="done")]
    client = Client(transport, data_root=tmp_path, executors=default_executors(), progress="off")
    with client:
        assert client.run(handle_signals=False) == "done"

    finals = {s.command_uuid: s for s in server.statuses if s.status.is_final}
    result = finals[round_.uuid]
    assert result.status == "finished"
    assert result.response is not None
    assert result.response.num_samples == 180
    assert {"train/loss", "val/loss", "val/accuracy"} <= set(result.response.metrics)
    ref = result.response.blobs["model"]
    assert hashlib.sha256(server.blobs[ref.id]).hexdigest() == ref.sha256
    assert [s.status for s in server.statuses if s.command_uuid == round_.uuid] == ["started", "finished"]
