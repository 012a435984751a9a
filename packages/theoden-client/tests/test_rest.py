"""`RestTransport` against a scripted HTTP(S) server on a real socket."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import socket
import socketserver
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from theoden_client import __version__
from theoden_client.errors import (
    AuthenticationError,
    BlobIntegrityError,
    ServerRejected,
    ServerUnavailable,
    UndecodableCommandError,
)
from theoden_client.transport import RestTransport
from theoden_client.transport._http import Proxy, proxy_for
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

PROXY_VARIABLES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY")


class Seen(NamedTuple):
    """A request as the server received it."""

    method: str
    path: str  # without scheme and host, also when a proxy forwarded an absolute URL
    target: str  # as sent in the request line
    headers: Message
    body: bytes


class Answer(NamedTuple):
    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    delay: float = 0.0


def _json(status: int, body: dict[str, Any]) -> Answer:
    return Answer(status, json.dumps(body).encode(), (("Content-Type", "application/json"),))


class FakeServer:
    """A scripted REST server on a real socket; its knobs change how it answers."""

    def __init__(self) -> None:
        self.url = ""
        self.tokens_issued = 0
        self.valid_tokens: set[str] = set()
        self.forget_tokens = False  # every token is forgotten right after each answer
        self.expires_in = 3600
        self.seen: list[Seen] = []
        self.blobs: dict[str, bytes] = {}
        self.corrupt_downloads = False
        self.truncate_downloads = False  # announce the whole blob, send half, hang up
        self.next_error: tuple[int, dict[str, str]] | None = None
        self.pull_answer: bytes | None = None
        self.pull_delay = 0.0
        self.pull_arrived = threading.Event()
        self.close_after_next = False  # hang up after the next answer without announcing it
        self.drop_next = False  # hang up instead of answering the next request
        self.commands: list[Command] = []
        self.statuses: list[StatusUpdate] = []
        self.connections = 0
        self.sockets: list[socket.socket] = []
        self.lock = threading.Lock()

    def answer(self, method: str, path: str, headers: Message, body: bytes) -> Answer:
        if path == "/api/v1/auth/token":
            form = parse_qs(body.decode())
            assert headers["content-type"] == "application/x-www-form-urlencoded"
            if form != {"grant_type": ["password"], "username": ["site-a"], "password": ["s3cret"]}:
                return _json(401, {"code": "invalid_credentials", "detail": "wrong user or password"})
            self.tokens_issued += 1
            token = f"tok{self.tokens_issued}"
            self.valid_tokens.add(token)
            return _json(
                200, {"type": "token", "access_token": token, "token_type": "bearer", "expires_in": self.expires_in}
            )
        token = (headers["authorization"] or "").removeprefix("Bearer ")
        if token not in self.valid_tokens:
            return _json(401, {"code": "unauthorized", "detail": "token expired"})
        if self.next_error is not None:
            status, error = self.next_error
            self.next_error = None
            return _json(status, error)
        if path == "/api/v1/requests":
            req = codec.decode_request(body)
            if isinstance(req, RegisterRequest):
                return Answer(200, codec.encode(RegisterResponse(client_name="site-a", run_name="r")))
            if isinstance(req, PullCommand):
                self.pull_arrived.set()
                if self.pull_answer is not None:
                    return Answer(200, self.pull_answer, delay=self.pull_delay)
                command = self.commands.pop(0) if self.commands else Train(steps=3)
                return Answer(200, codec.encode(CommandResponse(command=command)), delay=self.pull_delay)
            return _json(200, {"type": "ack"})
        if path == "/api/v1/status":
            self.statuses.append(codec.decode_status(body))
            return _json(200, {"type": "ack", "message": "ok"})
        if path.startswith("/api/v1/storage/"):
            blob_id = path.rsplit("/", 1)[1]
            if method == "PUT":
                sha = hashlib.sha256(body).hexdigest()
                if sha != blob_id or headers["x-content-sha256"] != sha:
                    return _json(422, {"code": "digest_mismatch", "detail": "sha256 differs"})
                assert int(headers["content-length"]) == len(body)
                self.blobs[sha] = body
                return _json(201, {"id": sha, "sha256": sha, "size": len(body)})
            data = self.blobs[blob_id]
            if self.corrupt_downloads:
                data = data[:-1] + bytes([data[-1] ^ 1])
            return Answer(200, data, (("X-Content-SHA256", blob_id),))
        return _json(404, {"code": "not_found", "detail": path})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive
    disable_nagle_algorithm = True  # else each answer's body waits for the client's delayed ACK
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        fake = self.server.fake
        with fake.lock:
            fake.connections += 1
            fake.sockets.append(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _handle(self) -> None:
        fake = self.server.fake
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with fake.lock:
            fake.seen.append(Seen(self.command, urlsplit(self.path).path, self.path, self.headers, body))
            if fake.drop_next:
                fake.drop_next, self.close_connection = False, True
                return
            answer = fake.answer(self.command, urlsplit(self.path).path, self.headers, body)
            hang_up, fake.close_after_next = fake.close_after_next, False
            if fake.forget_tokens:
                fake.valid_tokens.clear()
            truncate = fake.truncate_downloads and self.command == "GET"
        time.sleep(answer.delay)
        self.send_response(answer.status)
        for name, value in answer.headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(answer.body)))
        self.end_headers()
        self.wfile.write(answer.body[: len(answer.body) // 2] if truncate else answer.body)
        self.close_connection = hang_up or truncate

    do_GET = do_POST = do_PUT = _handle


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeServer, tls: ssl.SSLContext | None) -> None:
        self.fake = fake
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)

    def server_bind(self) -> None:  # without HTTPServer's reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "127.0.0.1", self.server_address[1]

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients that time out or hang up are part of the tests


@contextmanager
def serving(fake: FakeServer, tls: ssl.SSLContext | None = None) -> Iterator[FakeServer]:
    """Run ``fake`` on 127.0.0.1 in threads; hang up on every connection afterwards."""
    httpd = _HTTPServer(fake, tls)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    # https by the name in the certificate
    fake.url = f"https://localhost:{httpd.server_port}" if tls else f"http://127.0.0.1:{httpd.server_port}"
    try:
        yield fake
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        for sock in fake.sockets:
            with suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


class Pki(NamedTuple):
    ca: Path
    cert: Path
    key: Path


def _certificate(
    subject: x509.Name, issuer: x509.Name, key: ec.EllipticCurvePrivateKey, signer: ec.EllipticCurvePrivateKey
) -> x509.CertificateBuilder:
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer.public_key()), critical=False)
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A private CA and a certificate it signed for ``localhost``."""
    root = tmp_path_factory.mktemp("pki")
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        _certificate(ca_name, ca_name, ca_key, ca_key)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, True, True, False, False),  # sign certificates
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    names = [x509.DNSName("localhost")]
    cert = (
        _certificate(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]), ca_name, key, ca_key)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    (root / "ca.pem").write_bytes(ca.public_bytes(pem))
    (root / "server.pem").write_bytes(cert.public_bytes(pem))
    (root / "server-key.pem").write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return Pki(root / "ca.pem", root / "server.pem", root / "server-key.pem")


def _tls(pki: Pki) -> ssl.SSLContext:
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(pki.cert, pki.key)
    return tls


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


@pytest.fixture
def server() -> Iterator[FakeServer]:
    with serving(FakeServer()) as fake:
        yield fake


@pytest.fixture
def transport(server: FakeServer) -> Iterator[RestTransport]:
    rest = RestTransport(server.url + "/", username="site-a", password="s3cret", timeout=5.0)
    yield rest
    rest.close()


@pytest.fixture
def https_server(pki: Pki) -> Iterator[FakeServer]:
    with serving(FakeServer(), _tls(pki)) as fake:
        yield fake


@pytest.fixture(params=["http", "https"])
def either_server(request: pytest.FixtureRequest, pki: Pki) -> Iterator[FakeServer]:
    with serving(FakeServer(), _tls(pki) if request.param == "https" else None) as fake:
        yield fake


def test_login_then_bearer_requests(server: FakeServer, transport: RestTransport) -> None:
    assert transport.login().access_token == "tok1"
    registered = transport.register(RegisterRequest())
    assert registered.client_name == "site-a"
    assert server.seen[-1].path == "/api/v1/requests"
    assert server.seen[-1].headers["authorization"] == "Bearer tok1"
    assert server.seen[-1].headers["user-agent"] == f"theoden-client/{__version__}"


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
    server.forget_tokens = True
    with pytest.raises(AuthenticationError, match="token expired"):
        transport.heartbeat()


def test_wrong_password_is_an_authentication_error(server: FakeServer) -> None:
    transport = RestTransport(server.url, username="site-a", password="nope")
    with pytest.raises(AuthenticationError) as info:
        transport.login()
    transport.close()
    assert info.value.status == 401
    assert info.value.code == "invalid_credentials"


def test_expired_tokens_are_renewed_before_use(server: FakeServer, transport: RestTransport) -> None:
    server.expires_in = 0
    transport.heartbeat()
    transport.heartbeat()
    assert server.tokens_issued == 2


def test_pull_read_timeout_exceeds_the_wait(server: FakeServer) -> None:
    # Prepare: the server holds the pull longer than the plain timeout, but within wait + margin
    transport = RestTransport(server.url, username="site-a", password="s3cret", timeout=0.5, poll_margin=0.5)
    transport.login()
    server.pull_delay = 1.0

    # Execute
    response = transport.pull_command(wait=1.0)
    transport.close()

    # Assert
    assert isinstance(response.command, Train)
    assert response.command.steps == 3
    assert json.loads(server.seen[-1].body) == {"type": "pull_command", "wait": 1.0}


def test_a_pull_slower_than_its_read_timeout_is_unavailable(server: FakeServer) -> None:
    transport = RestTransport(server.url, username="site-a", password="s3cret", timeout=0.2, poll_margin=0.1)
    transport.login()
    server.pull_delay = 1.5
    started = time.monotonic()
    with pytest.raises(ServerUnavailable, match=r"/api/v1/requests failed: no answer in time .*read timeout 0.4 s"):
        transport.pull_command(wait=0.1)
    assert time.monotonic() - started < 1.2
    transport.close()


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


def test_a_server_that_is_down_is_unavailable() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    transport = RestTransport(f"http://127.0.0.1:{port}", username="u", password="p")
    url = f"http://127.0.0.1:{port}/api/v1/auth/token"
    with pytest.raises(ServerUnavailable, match=f"POST {url} failed: connection refused"):
        transport.login()


def test_requests_reuse_one_connection(server: FakeServer, transport: RestTransport) -> None:
    for i in range(20):
        transport.heartbeat()
        transport.send_status(StatusUpdate(client_name="site-a", command_uuid=f"c{i}", status="started"))  # type: ignore[arg-type]
    assert len(server.seen) == 41
    assert server.connections == 1


def test_a_connection_the_server_closed_while_idle_is_replaced(either_server: FakeServer, pki: Pki) -> None:
    # Prepare: the server hangs up after the heartbeat's answer, without announcing it
    server = either_server
    transport = RestTransport(server.url, username="site-a", password="s3cret", ca_file=pki.ca)
    transport.login()
    server.close_after_next = True
    transport.heartbeat()
    time.sleep(0.1)

    # Execute
    ack = transport.request(Heartbeat())
    transport.close()

    # Assert: sent once more, over a new connection, and seen once by the server
    assert isinstance(ack, Ack)
    assert server.connections == 2
    assert [s.path for s in server.seen] == ["/api/v1/auth/token"] + ["/api/v1/requests"] * 2


def test_a_new_connection_that_fails_is_not_retried(server: FakeServer, transport: RestTransport) -> None:
    server.drop_next = True
    with pytest.raises(ServerUnavailable, match=f"POST {server.url}/api/v1/auth/token failed: RemoteDisconnected"):
        transport.login()
    assert (server.connections, len(server.seen)) == (1, 1)


def test_a_status_is_not_blocked_behind_a_long_poll(server: FakeServer, transport: RestTransport) -> None:
    # Prepare: a pull the server holds for half a second, from another thread
    transport.login()
    server.pull_delay = 0.5
    pulled: list[CommandResponse] = []
    puller = threading.Thread(target=lambda: pulled.append(transport.pull_command(wait=1.0)))
    puller.start()
    assert server.pull_arrived.wait(5)

    # Execute
    started = time.monotonic()
    ack = transport.send_status(StatusUpdate(client_name="site-a", command_uuid="c1", status="started"))  # type: ignore[arg-type]
    took = time.monotonic() - started
    puller.join(5)

    # Assert
    assert ack.message == "ok"
    assert took < 0.3
    assert isinstance(pulled[0].command, Train)
    assert server.connections == 2


def test_an_upload_that_meets_a_401_is_sent_again_from_the_file(
    server: FakeServer, transport: RestTransport, tmp_path: Path
) -> None:
    source = tmp_path / "w.safetensors"
    payload = bytes(range(256)) * 10_000  # 2.5 MB: several chunks
    source.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()
    transport.login()
    server.valid_tokens.clear()

    ref = transport.upload_blob(source, sha256=sha, size=len(payload))

    puts = [s for s in server.seen if s.method == "PUT"]
    assert [s.headers["authorization"] for s in puts] == ["Bearer tok1", "Bearer tok2"]
    assert all(s.body == payload for s in puts)
    assert ref.size == len(payload)


def test_an_unknown_command_type_names_its_uuid(server: FakeServer, transport: RestTransport) -> None:
    server.pull_answer = b'{"type":"command","command":{"type":"alien_probe","uuid":"u-1"}}'
    with pytest.raises(UndecodableCommandError, match="alien_probe") as info:
        transport.pull_command(wait=0)
    assert (info.value.uuid, info.value.type) == ("u-1", "alien_probe")


def test_status_updates_are_posted(server: FakeServer, transport: RestTransport) -> None:
    ack = transport.send_status(StatusUpdate(client_name="site-a", command_uuid="c1", status="started"))  # type: ignore[arg-type]
    assert ack.message == "ok"
    assert server.seen[-1].path == "/api/v1/status"


def test_blob_round_trip_is_streamed_and_verified(server: FakeServer, transport: RestTransport, tmp_path: Path) -> None:
    source = tmp_path / "w.safetensors"
    payload = bytes(range(256)) * 10_000  # 2.5 MB: several chunks
    source.write_bytes(payload)
    sha = hashlib.sha256(payload).hexdigest()

    ref = transport.upload_blob(source, sha256=sha, size=len(payload))
    put = server.seen[-1]
    assert put.method == "PUT"
    assert put.path == f"/api/v1/storage/{sha}"
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
    assert (put.method, put.path, put.headers["content-length"]) == (
        "PUT",
        f"/api/v1/storage/{sha}",
        str(len(payload)),
    )
    assert server.blobs[sha] == payload
    assert transport.download_bytes(ref) == payload

    server.corrupt_downloads = True
    with pytest.raises(BlobIntegrityError, match="failed verification"):
        transport.download_bytes(ref)
    # a length that differs from the reference is refused from the answer's head, before any byte is read
    with pytest.raises(BlobIntegrityError, match="as 2560000 bytes, but the reference says 10"):
        transport.download_bytes(BlobRef(id=sha, sha256=sha, size=10))


def test_upload_from_pieces_of_memory_sends_them_as_one_body(server: FakeServer, transport: RestTransport) -> None:
    # Prepare: a small header, large pieces and a run of small ones (joined before sending)
    pieces = [b"head", bytes(range(256)) * 2000, b"a" * 10, b"b" * 20, memoryview(b"c" * 300_000)]
    joined = b"".join(pieces)
    sha = hashlib.sha256(joined).hexdigest()

    ref = transport.upload_parts(pieces, sha256=sha, size=len(joined))

    assert server.blobs[sha] == joined
    assert server.seen[-1].headers["content-length"] == str(len(joined))
    assert ref == BlobRef(id=sha, sha256=sha, size=len(joined))


def test_download_buffer_is_verified_and_reused(server: FakeServer, transport: RestTransport) -> None:
    first, second = bytes(range(256)) * 4000, bytes(reversed(range(256))) * 3000
    refs = []
    for data in (first, second):
        sha = hashlib.sha256(data).hexdigest()
        server.blobs[sha] = data
        refs.append(BlobRef(id=sha, sha256=sha, size=len(data)))

    with transport.download_buffer(refs[0]) as view:
        assert view.readonly and bytes(view) == first
        address = view.obj
    with transport.download_buffer(refs[1]) as view:  # smaller: the same memory holds it
        assert bytes(view) == second and view.obj is address

    server.corrupt_downloads = True
    with pytest.raises(BlobIntegrityError, match="failed verification"), transport.download_buffer(refs[0]):
        pass
    short = BlobRef(id=refs[0].id, sha256=refs[0].sha256, size=10)
    with (
        pytest.raises(BlobIntegrityError, match="as 1024000 bytes, but the reference says 10"),
        transport.download_buffer(short),
    ):
        pass


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
    with pytest.raises(BlobIntegrityError, match="as 100 bytes, but the reference says 10"):
        transport.download_blob(BlobRef(id=sha, sha256=sha, size=10), tmp_path / "d")
    assert not (tmp_path / "d").exists()


def test_a_download_that_breaks_off_is_unavailable_and_removed(
    server: FakeServer, transport: RestTransport, tmp_path: Path
) -> None:
    payload = bytes(range(256)) * 10_000
    sha = hashlib.sha256(payload).hexdigest()
    server.blobs[sha] = payload
    server.truncate_downloads = True
    target = tmp_path / "down.safetensors"
    with pytest.raises(ServerUnavailable, match=f"GET {server.url}/api/v1/storage/{sha} failed: the answer broke off"):
        transport.download_blob(BlobRef(id=sha, sha256=sha, size=len(payload)), target)
    assert not target.exists()
    with pytest.raises(ServerUnavailable, match="broke off"):
        transport.download_bytes(BlobRef(id=sha, sha256=sha, size=len(payload)))


def test_ca_file_builds_a_verifying_context(tmp_path: Path) -> None:
    missing = tmp_path / "no-ca.pem"
    with pytest.raises(FileNotFoundError):
        RestTransport("https://x", username="u", password="p", ca_file=missing)


def test_a_client_runs_a_round_over_rest(server: FakeServer, transport: RestTransport, tmp_path: Path) -> None:
    from theoden_client import Client, default_executors

    from .test_executors import setup_commands

    round_ = Sequential(commands=[Train(steps=2), Validate(split="val"), SendModel()])
    server.commands = [setup_commands(), round_, Exit(reason="done")]
    client = Client(
        transport, data_root=tmp_path, executors=default_executors(), progress="off", report_started_after=0
    )
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


# -- HTTPS and proxies -------------------------------------------------------------------------


def test_https_is_verified_against_the_given_ca(https_server: FakeServer, pki: Pki) -> None:
    trusting = RestTransport(https_server.url, username="site-a", password="s3cret", ca_file=pki.ca)
    trusting.heartbeat()
    trusting.heartbeat()
    trusting.close()
    assert https_server.connections == 1

    system_cas = RestTransport(https_server.url, username="site-a", password="s3cret")
    with pytest.raises(ServerUnavailable, match=r"certificate is not trusted .*pass that CA's certificate as ca_file"):
        system_cas.login()
    system_cas.close()


def test_proxies_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    monkeypatch.setenv("HTTP_PROXY", "http://ann:p%40ss@proxy.example")
    monkeypatch.setenv("NO_PROXY", "fl.internal,.lan")

    assert proxy_for("https", "fl.example.org") == Proxy("proxy.example", 3128, {})
    assert proxy_for("https", "fl.internal") is None
    assert proxy_for("https", "node.lan") is None
    assert proxy_for("http", "fl.example.org") == Proxy(
        "proxy.example", 80, {"Proxy-Authorization": "Basic YW5uOnBAc3M="}
    )  # ann:p@ss
    monkeypatch.delenv("HTTP_PROXY")
    assert proxy_for("http", "fl.example.org") is None
    monkeypatch.setenv("HTTPS_PROXY", "socks5://proxy.example:1080")
    with pytest.raises(ValueError, match="use an http:// proxy"):
        RestTransport("https://fl.example.org", username="u", password="p")


def test_plain_http_goes_through_the_proxy_with_absolute_urls(
    server: FakeServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", server.url)  # the fake server plays the proxy and the server
    transport = RestTransport("http://fl.example.org:8443", username="site-a", password="s3cret")
    transport.heartbeat()
    transport.close()
    assert server.seen[-1].target == "http://fl.example.org:8443/api/v1/requests"
    assert server.seen[-1].headers["host"] == "fl.example.org:8443"


class _TunnelProxy(socketserver.ThreadingTCPServer):
    """A forward proxy that only knows CONNECT; it remembers each request's head."""

    daemon_threads = True

    def __init__(self) -> None:
        self.heads: list[list[str]] = []
        super().__init__(("127.0.0.1", 0), _TunnelHandler)


class _TunnelHandler(socketserver.StreamRequestHandler):
    server: _TunnelProxy

    def handle(self) -> None:
        head: list[str] = []
        while (line := self.rfile.readline()) not in (b"\r\n", b""):
            head.append(line.decode().rstrip())
        self.server.heads.append(head)
        host, port = head[0].split()[1].rsplit(":", 1)
        with socket.create_connection((host, int(port))) as upstream:
            self.wfile.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            back = threading.Thread(target=_pipe, args=(upstream, self.connection), daemon=True)
            back.start()
            _pipe(self.connection, upstream)
            back.join(5)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    with suppress(OSError):
        while data := source.recv(65536):
            sink.sendall(data)
    with suppress(OSError):
        sink.shutdown(socket.SHUT_WR)


def test_https_goes_through_a_connect_tunnel(
    https_server: FakeServer, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a proxy with credentials at 127.0.0.1; the server's certificate names localhost only,
    # so checking it against the proxy's address instead of the server's name would fail
    proxy = _TunnelProxy()
    threading.Thread(target=proxy.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    monkeypatch.setenv("HTTPS_PROXY", f"http://ann:secret@127.0.0.1:{proxy.server_address[1]}")
    port = urlsplit(https_server.url).port

    # Execute
    transport = RestTransport(https_server.url, username="site-a", password="s3cret", ca_file=pki.ca)
    transport.heartbeat()
    transport.close()
    proxy.shutdown()
    proxy.server_close()

    # Assert: one tunnel to the server, TLS verified against the server's name through it
    assert len(proxy.heads) == 1
    assert proxy.heads[0][0].startswith(f"CONNECT localhost:{port} HTTP/1.")
    assert "Proxy-Authorization: Basic YW5uOnNlY3JldA==" in proxy.heads[0]
    assert [s.path for s in https_server.seen] == ["/api/v1/auth/token", "/api/v1/requests"]
