"""A client survives its server going away: it backs off, reconnects to the restarted server and finishes."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

import pytest

from ._rest_util import Deployment

PLAN = Path(__file__).parent / "plans" / "digits_rest.py"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.integration
@pytest.mark.slow
def test_client_reconnects_after_the_server_restarts_and_finishes_the_new_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a first server that waits for two clients, so the one client idles in long-polls
    deploy = Deployment(root=tmp_path, clients=["site-1"], tls=False)
    port = _free_port()
    monkeypatch.setenv("THEODEN_TEST_CLIENTS", "2")
    monkeypatch.setenv("THEODEN_TEST_ROUNDS", "2")
    try:
        deploy.start_server(PLAN, port=port)
        client = deploy.start_client("site-1")
        deadline = time.monotonic() + 60
        while "client site-1 joined" not in (deploy.run_dir / "server.log").read_text():
            assert time.monotonic() < deadline, deploy.log("site-1")[-2000:]
            time.sleep(0.1)
        # Execute: the server dies hard; a new one (same users, same signing secret) comes up on the same port
        assert deploy.server is not None
        os.killpg(deploy.server.pid, signal.SIGKILL)
        deploy.server.wait()
        time.sleep(2.0)
        assert client.poll() is None, "the client must keep trying while the server is away"
        monkeypatch.setenv("THEODEN_TEST_CLIENTS", "1")
        deploy.start_server(PLAN, port=port)
        # Assert: the client reconnects, runs the new plan to the end and exits cleanly
        assert deploy.wait_server(120) == 0, deploy.log("server")[-3000:]
        assert client.wait(60) == 0, deploy.log("site-1")[-3000:]
        rounds = [r for r in deploy.metrics() if r["phase"] == "round"]
        assert [r["num_clients"] for r in rounds] == [1, 1]
        log = deploy.log("site-1").lower()
        assert "reconnect" in log or "retry" in log or "unavailable" in log, log[-2000:]
    finally:
        deploy.stop()
