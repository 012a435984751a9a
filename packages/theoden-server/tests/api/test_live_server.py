"""A real `theoden-server run` process on an ephemeral loopback port, over HTTPS with a generated PKI."""

from __future__ import annotations

import hashlib
import os
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import msgspec
import psutil
import pytest
from theoden_protocol import CommandStatus, ExecutionResponse, PullCommand, RegisterRequest, StatusUpdate, codec
from theoden_server.certs import create_test_pki
from theoden_server.security import UsersFile

PLAN = """
from theoden_protocol import Exit, Train
from theoden_server.operations.conditions import RequireNumberOfClients
from theoden_server.operations.distributions import ClosedDistribution

run_name = "live"
instructions = [RequireNumberOfClients(1), ClosedDistribution(Train(steps=1)), ClosedDistribution(Exit())]
"""


@dataclass
class Live:
    url: str
    ca: Path
    proc: subprocess.Popen[bytes]
    password: str
    run_dir: Path

    def token(self, client: httpx.Client) -> str:
        response = client.post("/api/v1/auth/token", data={"username": "site-a", "password": self.password})
        response.raise_for_status()
        return str(response.json()["access_token"])


def _start(tmp_path: Path, *, tls: bool) -> Live:
    pki = create_test_pki(tmp_path / "pki")
    users = UsersFile(tmp_path / "users.toml")
    password = users.add("site-a")
    users.save()
    plan = tmp_path / "plan.py"
    plan.write_text(PLAN)
    run_dir = tmp_path / "run"
    command = [
        sys.executable,
        "-m",
        "theoden_server",
        "run",
        str(plan),
        "--port",
        "0",
        "--users",
        str(users.path),
        "--run-dir",
        str(run_dir),
    ]
    if tls:
        command += ["--ssl-certfile", str(pki["cert"]), "--ssl-keyfile", str(pki["key"])]
    log = open(tmp_path / "server.out", "wb")  # noqa: SIM115
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    endpoint = run_dir / "endpoint.json"
    deadline = time.monotonic() + 60
    while not endpoint.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError((tmp_path / "server.out").read_text())
        time.sleep(0.05)
    url = msgspec.json.decode(endpoint.read_bytes())["url"]
    # the endpoint file is written just before uvicorn starts accepting
    for _ in range(200):
        try:
            httpx.get(
                f"{url}/api/v1/health",
                verify=ssl.create_default_context(cafile=str(pki["ca"])) if tls else True,
                timeout=1,
            )
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    return Live(url=url, ca=pki["ca"], proc=proc, password=password, run_dir=run_dir)


def _stop(live: Live) -> None:
    if live.proc.poll() is None:
        live.proc.send_signal(signal.SIGTERM)
        try:
            live.proc.wait(15)
        except subprocess.TimeoutExpired:
            live.proc.kill()
            live.proc.wait()


@pytest.fixture
def https_server(tmp_path: Path) -> Iterator[Live]:
    live = _start(tmp_path, tls=True)
    yield live
    _stop(live)


@pytest.fixture
def http_server(tmp_path: Path) -> Iterator[Live]:
    live = _start(tmp_path, tls=False)
    yield live
    _stop(live)


@pytest.mark.slow
def test_a_run_over_https_completes_and_the_server_exits_on_its_own(https_server: Live) -> None:
    live = https_server
    assert live.url.startswith("https://127.0.0.1:")
    with httpx.Client(base_url=live.url, verify=ssl.create_default_context(cafile=str(live.ca)), timeout=30) as http:
        http.headers["Authorization"] = f"Bearer {live.token(http)}"

        def call(message: object, path: str = "/api/v1/requests") -> object:
            response = http.post(path, content=codec.encode(message), headers={"Content-Type": "application/json"})
            assert response.status_code == 200, response.text
            return codec.decode_response(response.content)

        assert call(RegisterRequest()).client_name == "site-a"  # type: ignore[attr-defined]
        seen = []
        while True:
            command = call(PullCommand(wait=10)).command  # type: ignore[attr-defined]
            assert command is not None
            seen.append(command.type if hasattr(command, "type") else type(command).__name__)
            status = StatusUpdate(
                client_name="site-a",
                command_uuid=command.uuid,
                status=CommandStatus.FINISHED,
                response=ExecutionResponse(num_samples=1),
            )
            call(status, "/api/v1/status")
            if type(command).__name__ == "Exit":
                break
    assert live.proc.wait(30) == 0
    assert (live.run_dir / "server.log").exists()


@pytest.mark.slow
def test_https_refuses_clients_that_do_not_trust_the_ca(https_server: Live) -> None:
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{https_server.url}/api/v1/health", verify=True)
    plain = https_server.url.replace("https://", "http://")
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{plain}/api/v1/health", timeout=5)


def _peak_rss_while(pid: int, work: threading.Thread) -> int:
    process = psutil.Process(pid)
    peak = 0
    while work.is_alive():
        peak = max(peak, process.memory_info().rss)
        time.sleep(0.01)
    return max(peak, process.memory_info().rss)


@pytest.mark.slow
def test_a_200_mb_streamed_upload_keeps_server_memory_flat(http_server: Live) -> None:
    # Prepare: 200 MB of deterministic bytes, generated on the fly on both passes
    chunk = hashlib.sha256(b"seed").digest() * 32768  # 1 MiB
    total_chunks = 200
    digest = hashlib.sha256()
    for _ in range(total_chunks):
        digest.update(chunk)
    blob_id = digest.hexdigest()

    def body() -> Iterator[bytes]:
        for _ in range(total_chunks):
            yield chunk

    with httpx.Client(base_url=http_server.url, timeout=120) as http:
        token = http_server.token(http)
        idle = psutil.Process(http_server.proc.pid).memory_info().rss
        result: dict[str, httpx.Response] = {}
        # Execute
        upload = threading.Thread(
            target=lambda: result.setdefault(
                "r",
                http.put(
                    f"/api/v1/storage/{blob_id}",
                    content=body(),
                    headers={"Authorization": f"Bearer {token}", "Content-Length": str(len(chunk) * total_chunks)},
                ),
            )
        )
        upload.start()
        peak = _peak_rss_while(http_server.proc.pid, upload)
        upload.join()
    # Assert
    assert result["r"].status_code == 201, result["r"].text
    assert result["r"].json()["size"] == 200 * 1024 * 1024
    growth = peak - idle
    assert growth < 50 * 1024 * 1024, f"server RSS grew {growth / 2**20:.1f} MiB during a 200 MiB upload"


@pytest.mark.slow
def test_sigterm_stops_the_server_gracefully_and_keeps_the_run_directory(http_server: Live) -> None:
    http_server.proc.send_signal(signal.SIGTERM)
    assert http_server.proc.wait(20) == 0
    assert (http_server.run_dir / "server.log").read_text().strip()
    assert (http_server.run_dir / "endpoint.json").exists()
    assert (http_server.run_dir / "blobs").is_dir()
