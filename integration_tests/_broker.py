"""A RabbitMQ broker for the integration tests: a testcontainers container, a private local node, or a URL.

`Broker` hides which one it is behind `ctl` (run ``rabbitmqctl``) and `restart`. Users, vhosts
and permissions are applied with ``rabbitmqctl import_definitions`` in one call (passwords are
hashed here the way RabbitMQ does: base64(salt + sha256(salt + password))).
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")

#: Broker permissions of a client: its own server-named reply queue, and publishing requests.
CLIENT_PERMISSIONS = {"configure": r"^amq\.gen-.*", "write": r"^theoden\.requests$", "read": r"^amq\.gen-.*"}
#: Broker permissions of the server: declare and consume its topology, reply through the default exchange.
SERVER_PERMISSIONS = {"configure": r"^theoden\..*", "write": r"^(theoden\..*|amq\.default)$", "read": r"^theoden\..*"}


def password_hash(password: str) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 of ``password``."""
    salt = secrets.token_bytes(4)
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tool(name: str) -> str:
    local = RABBITMQ_BIN / name
    if local.exists():
        return str(local)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(name)
    return found


@dataclass
class Broker:
    """A running broker the tests may administer (``kind``: ``container``, ``node`` or ``url``)."""

    kind: str
    host: str
    port: int
    admin_url: str | None = None
    node: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    container: Any = None
    workdir: Path | None = None

    @property
    def manageable(self) -> bool:
        return self.kind in ("container", "node")

    def url(self, user: str, password: str, vhost: str = "/") -> str:
        return (
            f"amqp://{quote(user, safe='')}:{quote(password, safe='')}@{self.host}:{self.port}/{quote(vhost, safe='')}"
        )

    def ctl(self, *args: str, timeout: float = 60) -> str:
        if self.kind == "node":
            result = subprocess.run(
                [_tool("rabbitmqctl"), "-n", str(self.node), *args],
                env=self.env,
                capture_output=True,
                text=True,
                timeout=timeout,
            )
            if result.returncode != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stdout}{result.stderr}")
            return result.stdout
        if self.kind == "container":
            code, output = self.container.exec(["rabbitmqctl", *args])
            if code != 0:
                raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {output!r}")
            return output.decode() if isinstance(output, bytes) else str(output)
        raise RuntimeError("this broker was given as a URL and cannot be administered")

    def apply(self, definitions: dict[str, Any]) -> None:
        """Import users / vhosts / permissions in one rabbitmqctl call."""
        text = json.dumps({"rabbit_version": "3.10.0", **definitions})
        if self.kind == "node":
            assert self.workdir is not None
            path = self.workdir / f"defs-{secrets.token_hex(4)}.json"
            path.write_text(text)
            self.ctl("import_definitions", str(path))
            path.unlink()
        else:
            code, output = self.container.exec(
                [
                    "sh",
                    "-c",
                    f"printf %s {shlex.quote(text)} > /tmp/defs.json && rabbitmqctl import_definitions /tmp/defs.json",
                ]
            )
            if code != 0:
                raise RuntimeError(f"import_definitions failed: {output!r}")

    def add_users(self, users: dict[str, tuple[str, dict[str, str]]], vhost: str) -> None:
        """Create ``vhost`` and ``users`` (name -> (password, permissions)) with their permissions on it."""
        self.apply(
            {
                "users": [
                    {
                        "name": name,
                        "password_hash": password_hash(pw),
                        "hashing_algorithm": "rabbit_password_hashing_sha256",
                        "tags": [],
                    }
                    for name, (pw, _) in users.items()
                ],
                "vhosts": [{"name": vhost}],
                "permissions": [{"user": name, "vhost": vhost, **perms} for name, (_, perms) in users.items()],
            }
        )

    def list_queue(self, vhost: str, queue: str) -> int:
        """Messages ready in ``queue`` (``-1`` if it does not exist)."""
        for line in self.ctl(
            "list_queues", "-p", vhost, "name", "messages", "--quiet", "--no-table-headers"
        ).splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[0] == queue:
                return int(parts[1])
        return -1

    # -- lifecycle -----------------------------------------------------------------------------

    def stop(self) -> None:
        if self.kind == "node":
            pid = _node_pid(self)
            self.ctl("stop", timeout=120)
            _wait_process_gone(pid)  # the old VM must be gone before a node of the same name starts
            _wait_port_closed(self.host, self.port)
            _wait_port_closed(self.host, int(self.env["RABBITMQ_DIST_PORT"]))
        elif self.kind == "container":
            self.ctl("stop_app")

    def start(self) -> None:
        if self.kind == "node":
            _start_node(self)
        elif self.kind == "container":
            self.ctl("start_app")
            self.ctl("await_startup")

    def restart(self, down: float = 2.0) -> None:
        self.stop()
        time.sleep(down)
        self.start()

    def shutdown(self) -> None:
        if self.kind == "node":
            with contextlib.suppress(Exception):
                self.ctl("stop", timeout=60)
            if self.workdir is not None:
                shutil.rmtree(self.workdir, ignore_errors=True)
        elif self.kind == "container":
            with contextlib.suppress(Exception):
                self.container.stop()


def _wait_port_closed(host: str, port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            sock.settimeout(0.2)
            if sock.connect_ex((host, port)) != 0:
                return
        time.sleep(0.1)


def _node_pid(broker: Broker) -> int | None:
    try:
        return int(Path(broker.env["RABBITMQ_PID_FILE"]).read_text().strip())
    except (OSError, ValueError):
        return None


def _wait_process_gone(pid: int | None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while pid is not None and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:  # pragma: no cover - someone else's process reuses the pid
            return
        time.sleep(0.1)


def _log_tail(broker: Broker, lines: int = 30) -> str:
    assert broker.workdir is not None
    out = []
    for log in sorted((broker.workdir / "log").glob("*.log")):
        text = log.read_text(errors="replace").splitlines()[-lines:]
        out.append(f"--- {log.name}\n" + "\n".join(text))
    return "\n".join(out)


def _start_node(broker: Broker, attempts: int = 3) -> None:
    assert broker.workdir is not None
    pid_file = broker.env["RABBITMQ_PID_FILE"]
    for attempt in range(1, attempts + 1):
        # a node restarted right after a stop can fail to boot (its name or ports not yet released): retry
        subprocess.run(
            [_tool("rabbitmq-server"), "-detached"], env=broker.env, check=True, capture_output=True, timeout=60
        )
        try:
            broker.ctl("wait", pid_file, "--timeout", "45", timeout=75)
            break
        except (RuntimeError, subprocess.TimeoutExpired) as exc:
            if attempt == attempts:
                raise RuntimeError(f"{exc}\nnode log:\n{_log_tail(broker)}") from exc
            with contextlib.suppress(Exception):
                broker.ctl("stop", timeout=60)
            _wait_process_gone(_node_pid(broker))
            time.sleep(2.0)
    deadline = time.monotonic() + 60
    while True:  # `wait` returns once the app booted; the listener follows right after
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex((broker.host, broker.port)) == 0:
                return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"the private RabbitMQ node did not listen on port {broker.port}; see {broker.workdir}/log"
            )
        time.sleep(0.1)


def private_node() -> Broker:
    """Start a private ``rabbitmq-server`` node: own name, ports and data directory under a temp dir."""
    _tool("rabbitmq-server")
    _tool("rabbitmqctl")
    workdir = Path(tempfile.mkdtemp(prefix="theoden-rabbitmq-"))
    (workdir / "mnesia").mkdir()
    (workdir / "log").mkdir()
    (workdir / "enabled_plugins").write_text("[].\n")
    port, dist = free_port(), free_port()
    (workdir / "rabbitmq.conf").write_text(f"listeners.tcp.default = 127.0.0.1:{port}\n")
    node = f"theoden-{secrets.token_hex(4)}@localhost"
    env = {
        **os.environ,
        "HOME": str(workdir),  # the Erlang cookie lives here
        "RABBITMQ_NODENAME": node,
        "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
        "RABBITMQ_NODE_PORT": str(port),
        "RABBITMQ_DIST_PORT": str(dist),
        "RABBITMQ_MNESIA_BASE": str(workdir / "mnesia"),
        "RABBITMQ_LOG_BASE": str(workdir / "log"),
        "RABBITMQ_ENABLED_PLUGINS_FILE": str(workdir / "enabled_plugins"),
        "RABBITMQ_CONFIG_FILE": str(workdir / "rabbitmq"),
        "RABBITMQ_PID_FILE": str(workdir / "rabbitmq.pid"),
    }
    broker = Broker(kind="node", host="127.0.0.1", port=port, node=node, env=env, workdir=workdir)
    try:
        _start_node(broker)
    except BaseException:
        broker.shutdown()
        raise
    return broker


def docker_reachable() -> bool:
    try:
        import docker  # type: ignore[import-not-found]

        client = docker.from_env(timeout=3)
    except Exception:
        return False
    try:
        return bool(client.ping())
    except Exception:
        return False
    finally:
        client.close()


def container_broker() -> Broker:
    """Start testcontainers' RabbitMQ container (needs the ``testcontainers[rabbitmq]`` extra and Docker)."""
    try:
        from testcontainers.community.rabbitmq import RabbitMqContainer  # type: ignore[import-not-found]
    except ImportError:  # testcontainers < 4.10
        from testcontainers.rabbitmq import RabbitMqContainer  # type: ignore[import-not-found]

    container = RabbitMqContainer("rabbitmq:3.13-alpine")
    container.start()
    host = container.get_container_host_ip()
    port = int(container.get_exposed_port(5672))
    return Broker(kind="container", host=host, port=port, container=container)


def url_broker(url: str) -> Broker:
    """A broker given by URL (``THEODEN_TEST_AMQP_URL``): usable, but no users or restarts."""
    import pika

    params = pika.URLParameters(url)
    return Broker(kind="url", host=params.host, port=params.port, admin_url=url)


@contextlib.contextmanager
def any_broker() -> Iterator[tuple[Broker | None, str]]:
    """Yield the best broker available and how it was found, or ``(None, reason)``."""
    reasons = []
    if docker_reachable():
        try:
            broker = container_broker()
        except Exception as exc:
            reasons.append(f"testcontainers failed: {exc}")
        else:
            try:
                yield broker, "testcontainers RabbitMQ container"
            finally:
                broker.shutdown()
            return
    else:
        reasons.append("no Docker engine reachable")
    try:
        broker = private_node()
    except FileNotFoundError as exc:
        reasons.append(f"rabbitmq-server not installed ({exc})")
    except Exception as exc:
        reasons.append(f"private rabbitmq-server node failed: {exc}")
    else:
        try:
            yield broker, f"private rabbitmq-server node {broker.node} on port {broker.port}"
        finally:
            broker.shutdown()
        return
    url = os.environ.get("THEODEN_TEST_AMQP_URL")
    if url:
        yield url_broker(url), "THEODEN_TEST_AMQP_URL"
        return
    reasons.append("THEODEN_TEST_AMQP_URL not set")
    yield None, "; ".join(reasons)
