"""Figure 5 - control plane: 500 simulated clients long-polling and posting status updates concurrently.

The load comes from another process (`loadgen.py`, raw asyncio HTTP/1.1 keep-alive, one connection per
simulated client). Busy: sustained requests/s and latency of status updates and pulls over a window.
Idle: 500 parked long-polls; the server's CPU over 10 s (psutil), as a share of one core.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import psutil


def _users(run_dir: Path, names: list[str]) -> Path:
    """All simulated clients share one argon2 hash: they never log in (tokens are minted by the operator)."""
    from theoden_server.security import hash_password

    digest = hash_password("loadgen-shared-password-0123456789")
    path = run_dir / "users.toml"
    path.write_text("".join(f'[users."{n}"]\nrole = "client"\npassword_hash = "{digest}"\n\n' for n in names))
    path.chmod(0o600)
    return path


def _run(mode: str, clients: int, duration: float, rate: float = 0.0) -> dict[str, Any]:
    run_dir = common.new_run_dir(f"cp-{mode}")
    names = [f"sim{i:04d}" for i in range(clients)]
    users = _users(run_dir, names)
    env = {"BENCH_CLIENTS": str(clients), "BENCH_IDLE": "1" if mode == "idle" else "0", "BENCH_ROUNDS": "3000"}
    procs = []
    try:
        server, url = common.start_server(run_dir, common.PLANS / "control_plane.py", users, env)
        procs.append(server)
        gen = subprocess.Popen(
            [
                sys.executable,
                str(common.BENCH / "loadgen.py"),
                "--url",
                url,
                "--secret-file",
                str(run_dir / "jwt-secret"),
                "--run-name",
                "bench-control-plane",
                "--clients",
                str(clients),
                "--duration",
                str(duration),
                "--mode",
                mode,
                "--rate",
                str(rate),
            ],
            stdout=subprocess.PIPE,
            stderr=open(run_dir / "logs" / "loadgen.log", "wb"),  # noqa: SIM115 - the child's text=True, start_new_session=True,
        )
        procs.append(gen)
        sp = psutil.Process(server.pid)
        profile = os.environ.get("BENCH_PROFILE_SERVER")  # py-spy the server during the measured window
        spy = None
        result: dict[str, Any] = {}
        cpu0 = t0 = None
        assert gen.stdout is not None
        for line in gen.stdout:
            event = json.loads(line)
            if event["event"] in ("measuring", "parked"):
                if mode == "idle":
                    time.sleep(2.0)  # let registration work settle
                if profile and spy is None:
                    spy = subprocess.Popen(
                        [
                            "py-spy",
                            "record",
                            "--format",
                            "raw",
                            "-r",
                            "100",
                            "--threads",
                            "-d",
                            str(int(duration)),
                            "-p",
                            str(server.pid),
                            "-o",
                            profile,
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                cpu0, t0 = sp.cpu_times(), time.monotonic()
                if mode == "idle":
                    time.sleep(10.0)
                    cpu1, t1 = sp.cpu_times(), time.monotonic()
                    result["server_cpu_share"] = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0)
                    result["window"] = t1 - t0
            elif event["event"] == "result":
                if mode == "busy" and cpu0 is not None:
                    cpu1, t1 = sp.cpu_times(), time.monotonic()
                    result["server_cpu_share"] = ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0)
                result.update(event)
        gen.wait(60)
        if spy is not None:
            spy.wait(60)
        if gen.returncode != 0:
            raise RuntimeError(f"load generator failed; see {run_dir / 'logs' / 'loadgen.log'}")
        result["run_dir"] = str(run_dir)
        return result
    finally:
        common.stop_all(procs)


#: The load at which latency is judged (the figure's throughput target), offered by paced clients.
OFFERED = 2000.0


def run(quick: bool) -> list[dict[str, Any]]:
    clients = 500
    busy = _run("busy", clients, 8.0 if quick else 20.0)
    paced = _run("busy", clients, 8.0 if quick else 20.0, rate=OFFERED)
    idle = _run("idle", clients, 14.0)
    M = common.metric
    keys = ("requests", "elapsed", "errors", "commands", "server_cpu_share", "run_dir")
    return [
        M(
            "5",
            f"{clients} clients, closed loop (no pauses): sustained requests/s",
            busy["rps"],
            "req/s",
            ">= 2000",
            busy["rps"] >= 2000,
            detail={k: busy[k] for k in keys},
        ),
        M("5", "closed loop: status update latency p50", busy["status_p50"] * 1000, "ms"),
        M(
            "5",
            "closed loop: status update latency p99 (queueing: ~500 requests in flight / throughput)",
            busy["status_p99"] * 1000,
            "ms",
            detail={"pull_p50_ms": busy["pull_p50"] * 1000, "all_p99_ms": busy["all_p99"] * 1000},
        ),
        M(
            "5",
            f"{clients} clients paced to {OFFERED:.0f} req/s: achieved requests/s",
            paced["rps"],
            "req/s",
            detail={k: paced[k] for k in keys},
        ),
        M("5", f"at {OFFERED:.0f} req/s: status update latency p50", paced["status_p50"] * 1000, "ms"),
        M(
            "5",
            f"at {OFFERED:.0f} req/s: status update latency p99",
            paced["status_p99"] * 1000,
            "ms",
            "<= 100",
            paced["status_p99"] <= 0.1,
        ),
        M(
            "5",
            f"{clients} idle long-polls: server CPU",
            idle["server_cpu_share"] * 100,
            "% of one core",
            "< 5",
            idle["server_cpu_share"] < 0.05,
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
