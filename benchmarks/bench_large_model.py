"""Figure 2 - large model: 100 MB float32 (26M parameters), 3 clients, zero training steps.

REST: median round over real processes, beside the time to move the same bytes (one download + one upload
per client: 6 x 100 MB) through a bare loopback TCP socket pair, measured in the same run (sender and
receiver in separate processes, 1 MiB sends, no hashing). The RabbitMQ line is bench_rabbitmq.py.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Any

import common

_SENDER = r"""
import socket, sys
n, port = int(sys.argv[1]), int(sys.argv[2])
buf = bytes(1 << 20)
s = socket.create_connection(("127.0.0.1", port))
left = n
while left > 0:
    k = min(left, len(buf))
    s.sendall(memoryview(buf)[:k])
    left -= k
s.shutdown(socket.SHUT_WR)
s.recv(1)
s.close()
"""


def socket_seconds(total_bytes: int) -> float:
    """Seconds to move ``total_bytes`` from one process to another over a loopback TCP connection."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-c", _SENDER, str(total_bytes), str(port)])
    conn, _ = listener.accept()
    buf = bytearray(1 << 20)
    view = memoryview(buf)
    got = 0
    t0 = time.perf_counter()
    while got < total_bytes:
        n = conn.recv_into(view)
        if not n:
            break
        got += n
    elapsed = time.perf_counter() - t0
    conn.sendall(b"x")
    conn.close()
    listener.close()
    proc.wait(30)
    assert got == total_bytes, (got, total_bytes)
    return elapsed


def run(quick: bool, shared: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    clients = 3
    rounds = 3 if quick else 8
    size = common.model_bytes(*common.MODEL_100MB)
    result = common.run_zero_train(
        "large-rest",
        clients=clients,
        rounds=rounds,
        model=common.MODEL_100MB,
        sample_rss=True,
        rss_interval=0.05,
        timeout=1200,
    )
    if shared is not None:
        shared.setdefault("large_rest", []).append(result)  # figure 4 reads the client RSS of these runs
    times = result.round_times()
    med = common.median(times)
    sockets = [socket_seconds(2 * clients * size) for _ in range(3)]
    sock = common.median(sockets)
    ratio = med / sock
    M = common.metric
    out = [
        M(
            "2",
            f"REST {clients} clients x 100 MB: median round",
            med,
            "s",
            "<= 2.0",
            med <= 2.0,
            detail={"rounds": len(times), "all": times, "run_dir": str(result.run_dir)},
        ),
        M(
            "2",
            "bare loopback socket, same bytes (6 x 100 MB)",
            sock,
            "s",
            detail={"all": sockets, "throughput_MBps": 2 * clients * size / sock / common.MB},
        ),
        M("2", "REST round / bare socket", ratio, "x", "<= 10", ratio <= 10),
    ]
    return out  # the RabbitMQ line: bench_rabbitmq.py (figure "2r", measured last)


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
