"""Real TheODen deployments on loopback for the integration tests: a server process and client processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from theoden_server.certs import create_test_pki
from theoden_server.security import UsersFile


@dataclass
class Deployment:
    """A run directory with users (and optionally a PKI), a server process and client processes."""

    root: Path
    clients: list[str]
    tls: bool = True
    passwords: dict[str, str] = field(default_factory=dict)
    pki: dict[str, Path] = field(default_factory=dict)
    server: subprocess.Popen[bytes] | None = None
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    url: str = ""

    def __post_init__(self) -> None:
        (self.root / "logs").mkdir(parents=True, exist_ok=True)
        users = UsersFile(self.root / "users.toml")
        for name in self.clients:
            self.passwords[name] = users.add(name)
            secret = self.root / "secrets" / f"{name}.password"
            secret.parent.mkdir(exist_ok=True)
            secret.write_text(self.passwords[name])
            secret.chmod(0o600)
        users.save()
        if self.tls:
            self.pki = create_test_pki(self.root / "pki")

    @property
    def run_dir(self) -> Path:
        return self.root / "run"

    def _spawn(self, command: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.root / "logs" / f"{log_name}.log", "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        return subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)

    def start_server(self, plan: Path, *extra: str, timeout: float = 60, port: int = 0) -> str:
        command = [
            sys.executable,
            "-m",
            "theoden_server",
            "run",
            str(plan),
            "--port",
            str(port),
            "--users",
            str(self.root / "users.toml"),
            "--run-dir",
            str(self.run_dir),
            *extra,
        ]
        if self.tls:
            command += ["--ssl-certfile", str(self.pki["cert"]), "--ssl-keyfile", str(self.pki["key"])]
        endpoint = self.run_dir / "endpoint.json"
        endpoint.unlink(missing_ok=True)
        self.server = self._spawn(command, "server")
        deadline = time.monotonic() + timeout
        while not endpoint.exists():
            if self.server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start:\n{self.log('server')}")
            time.sleep(0.05)
        self.url = json.loads(endpoint.read_text())["url"]
        return self.url

    def start_client(self, name: str, *extra: str, password_file: Path | None = None) -> subprocess.Popen[bytes]:
        data_root = self.root / "sites" / name
        data_root.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "theoden_client",
            "--server",
            self.url,
            "--username",
            name,
            "--password-file",
            str(password_file or self.root / "secrets" / f"{name}.password"),
            "--data-root",
            str(data_root),
            "--poll-wait",
            "5",
            *extra,
        ]
        if self.tls:
            command += ["--ca-cert", str(self.pki["ca"])]
        self.procs[name] = self._spawn(command, name)
        return self.procs[name]

    def log(self, name: str) -> str:
        path = self.root / "logs" / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def wait_server(self, timeout: float) -> int:
        assert self.server is not None
        try:
            return self.server.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server still running after {timeout}s:\n{self.log('server')[-4000:]}") from None

    def metrics(self) -> list[dict]:  # type: ignore[type-arg]
        path = self.run_dir / "metrics.jsonl"
        return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

    def stop(self) -> None:
        procs = [p for p in [self.server, *self.procs.values()] if p is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
