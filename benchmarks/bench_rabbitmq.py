"""Figure 2, broker line - 100 MB float32 model, 3 clients, zero training steps, over RabbitMQ.

Uses the integration tests' broker code (integration_tests/_broker.py, conftest._vhost): a private
``rabbitmq-server`` node (or a container), a fresh vhost with a server user and one broker user per client.
The server runs with ``--rabbitmq``, each client with ``python -m theoden_client --rabbitmq``; the plan and
its round watcher are the REST runs' (benchmarks/plans/zero_train.py). Measured last: it needs its own broker.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import common

INTEGRATION = common.ROOT / "integration_tests"


def run(quick: bool) -> list[dict[str, Any]]:
    M = common.metric
    sys.path.insert(0, str(INTEGRATION))
    try:
        import conftest as it  # the integration tests' broker helpers (vhost + users)
        from _broker import any_broker
    except Exception as exc:
        return [
            M(
                "2",
                "RabbitMQ 3 clients x 100 MB: median round",
                None,
                "s",
                "<= 5.0",
                None,
                note=f"broker helpers unavailable: {type(exc).__name__}: {exc}",
            )
        ]
    rounds = 3 if quick else 6
    with any_broker() as (broker, how):
        if broker is None or not broker.manageable:
            return [
                M(
                    "2",
                    "RabbitMQ 3 clients x 100 MB: median round",
                    None,
                    "s",
                    "<= 5.0",
                    None,
                    note=f"no administrable broker: {how}",
                )
            ]
        amqp = it._vhost(broker)
        run_dir = common.new_run_dir("large-amqp")
        (run_dir / "logs").mkdir(exist_ok=True)
        users = common.make_users(run_dir, ["unused-rest-user"])
        times = run_dir / "times.jsonl"
        env = {
            "BENCH_CLIENTS": "3",
            "BENCH_ROUNDS": str(rounds),
            "BENCH_IN": str(common.MODEL_100MB[0]),
            "BENCH_HIDDEN": str(common.MODEL_100MB[1]),
            "BENCH_TIMES": str(times),
        }
        if common.SERVER_TORCH_THREADS is not None:
            env["OMP_NUM_THREADS"] = str(common.SERVER_TORCH_THREADS)
        procs = []
        try:
            server, _ = common.start_server(
                run_dir, common.PLANS / "zero_train.py", users, env, ["--rabbitmq", amqp.server_url]
            )
            procs.append(server)
            for name in it.CLIENT_USERS:
                parts = urlsplit(amqp.url(name))
                bare = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{parts.port}"))
                data_root = run_dir / "sites" / name
                data_root.mkdir(parents=True, exist_ok=True)
                procs.append(
                    subprocess.Popen(
                        [
                            sys.executable,
                            "-m",
                            "theoden_client",
                            "--rabbitmq",
                            bare,
                            "--username",
                            name,
                            "--password-env",
                            "BENCH_SITE_PASSWORD",
                            "--data-root",
                            str(data_root),
                            "--poll-wait",
                            "30",
                            "--log-level",
                            "WARNING",
                        ],
                        stdout=open(run_dir / "logs" / f"{name}.log", "wb"),  # noqa: SIM115 - the child's stderr=subprocess.STDOUT,
                        env={**os.environ, "BENCH_SITE_PASSWORD": unquote(parts.password or "")},
                        start_new_session=True,
                    )
                )
            deadline = time.monotonic() + 1200
            while server.poll() is None:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"RabbitMQ run did not finish; see {run_dir}")
                for p in procs[1:]:
                    if p.poll() not in (None, 0):
                        raise RuntimeError(f"a RabbitMQ client failed ({p.returncode}); see {run_dir / 'logs'}")
                time.sleep(0.1)
        finally:
            common.stop_all(procs)
    events = [json.loads(line) for line in times.read_text().splitlines()] if times.exists() else []
    ends = [e["mono"] for e in events if e["event"] == "round"]
    durations = [b - a for a, b in itertools.pairwise(ends)]
    med = common.median(durations)
    return [
        M(
            "2",
            "RabbitMQ 3 clients x 100 MB: median round",
            med,
            "s",
            "<= 5.0",
            med <= 5.0,
            detail={"rounds": len(durations), "all": durations, "broker": how, "run_dir": str(run_dir)},
        )
    ]


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
