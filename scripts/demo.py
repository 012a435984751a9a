"""TheODen's demo: a server and three clients, as separate processes on loopback, train together.

``hatch run demo`` runs it. The server and each client are real processes talking REST with
authentication on (credentials generated for this run); the scikit-learn digits are split across the
clients; five rounds of FedAvg with validation each round; the final global model is scored on data no
client ever saw. Everything lands in the run directory; every process is stopped at the end, also on
Ctrl-C or failure.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLAN = Path(__file__).resolve().parent / "demo_plan.py"


class DemoError(RuntimeError):
    """The demo could not complete; the message says where to look."""


def _spawn(command: list[str], log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "wb")  # noqa: SIM115 - owned by the child for its lifetime
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)


def _stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in procs:
        try:
            proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _setup_credentials(run_dir: Path, names: list[str]) -> Path:
    from theoden_server.security import UsersFile, write_private_file

    users = UsersFile(run_dir / "users.toml")
    for name in names:
        password = users.add(name)
        write_private_file(run_dir / "secrets" / f"{name}.password", password.encode())
    users.save()
    return users.path


def _wait_for_endpoint(run_dir: Path, server: subprocess.Popen[bytes], timeout: float = 60) -> str:
    endpoint = run_dir / "endpoint.json"
    deadline = time.monotonic() + timeout
    while not endpoint.exists():
        if server.poll() is not None:
            raise DemoError(
                f"the server exited early (code {server.returncode}); see {run_dir / 'logs' / 'server.log'}"
            )
        if time.monotonic() > deadline:
            raise DemoError("the server did not start within a minute")
        time.sleep(0.05)
    return str(json.loads(endpoint.read_text())["url"])


def _print_rounds(metrics: Path, seen: int, started: float, last: list[float]) -> int:
    if not metrics.exists():
        return seen
    lines = metrics.read_text().splitlines()
    for line in lines[seen:]:
        record = json.loads(line)
        if record.get("phase") != "round":
            continue
        values = record.get("metrics", {})
        now = record.get("time", time.time())
        seconds = now - (last[0] if last else started)
        last[:] = [now]
        loss = values.get("train/loss", float("nan"))
        accuracy = values.get("val/accuracy", float("nan"))
        print(f"{record['round'] + 1:>5}  {loss:>15.4f}  {accuracy:>17.3f}  {seconds:>8.2f}", flush=True)
    return len(lines)


def _held_out_accuracy(run_dir: Path) -> tuple[float, int, str]:
    import numpy as np
    import torch
    from safetensors.torch import load_file
    from theoden_client.datasets import build_dataset
    from theoden_client.models import build_model
    from theoden_client.partitions import partition
    from theoden_protocol import DatasetSpec

    sys.path.insert(0, str(PLAN.parent))
    import demo_plan

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    model_id = next(r["model"] for r in reversed(records) if r.get("model"))
    weights = load_file(str(run_dir / "blobs" / "blobs" / model_id[:2] / model_id))
    model = build_model(demo_plan.MODEL)
    model.load_state_dict(weights, strict=True)
    model.eval()

    from theoden_client.data import DataRoot

    dataset = build_dataset(DatasetSpec(name="digits"), DataRoot(run_dir))
    labels = np.asarray([int(dataset[i][1]) for i in range(len(dataset))])
    used = np.concatenate(partition(labels, demo_plan.PARTITION))
    held_out = np.setdiff1d(np.arange(len(labels)), used)
    x = torch.stack([torch.as_tensor(dataset[int(i)][0]) for i in held_out]).float()
    y = torch.as_tensor(labels[held_out])
    with torch.no_grad():
        accuracy = float((model(x).argmax(dim=1) == y).float().mean())
    return accuracy, len(held_out), model_id


def main(argv: list[str] | None = None) -> int:
    """Run the demo; return the process exit code."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", type=Path, help="where to put the run (default: runs/demo-<time>)")
    parser.add_argument("--timeout", type=float, default=300, help="give up after this many seconds")
    args = parser.parse_args(argv)
    run_dir = (args.run_dir or ROOT / "runs" / f"demo-{datetime.now():%Y%m%d-%H%M%S}").resolve()
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    names = ["site-1", "site-2", "site-3"]
    procs: list[subprocess.Popen[bytes]] = []
    started = time.time()
    try:
        print(f"TheODen demo: 1 server + {len(names)} clients on loopback; run directory {run_dir}", flush=True)
        users = _setup_credentials(run_dir, names)
        server = _spawn(
            [
                sys.executable,
                "-m",
                "theoden_server",
                "run",
                str(PLAN),
                "--port",
                "0",
                "--users",
                str(users),
                "--run-dir",
                str(run_dir),
            ],
            run_dir / "logs" / "server.log",
        )
        procs.append(server)
        url = _wait_for_endpoint(run_dir, server)
        print(f"server listening at {url}; starting clients {', '.join(names)}", flush=True)
        for name in names:
            data_root = run_dir / "sites" / name
            data_root.mkdir(parents=True, exist_ok=True)
            procs.append(
                _spawn(
                    [
                        sys.executable,
                        "-m",
                        "theoden_client",
                        "--server",
                        url,
                        "--username",
                        name,
                        "--password-file",
                        str(run_dir / "secrets" / f"{name}.password"),
                        "--data-root",
                        str(data_root),
                        "--poll-wait",
                        "10",
                    ],
                    run_dir / "logs" / f"{name}.log",
                )
            )
        print(f"\n{'round':>5}  {'mean train loss':>15}  {'val accuracy (agg)':>17}  {'seconds':>8}", flush=True)
        seen, last = 0, [time.time()]
        deadline = time.monotonic() + args.timeout
        while server.poll() is None:
            seen = _print_rounds(run_dir / "metrics.jsonl", seen, started, last)
            if time.monotonic() > deadline:
                raise DemoError(f"the run did not finish within {args.timeout:.0f} s; see {run_dir / 'logs'}")
            for proc, name in zip(procs[1:], names, strict=True):
                if proc.poll() not in (None, 0):
                    raise DemoError(f"client {name} failed (code {proc.returncode}); see {run_dir / 'logs' / name}.log")
            time.sleep(0.1)
        _print_rounds(run_dir / "metrics.jsonl", seen, started, last)
        if server.returncode != 0:
            raise DemoError(f"the server exited with code {server.returncode}; see {run_dir / 'logs' / 'server.log'}")
        for proc in procs[1:]:
            proc.wait(30)
        accuracy, n, model_id = _held_out_accuracy(run_dir)
        print(f"\nglobal model {model_id[:12]}…: accuracy {accuracy:.3f} on {n} held-out digits no client saw")
        print(f"total {time.time() - started:.1f} s; metrics, best model and logs of every process in {run_dir}")
        return 0
    except KeyboardInterrupt:
        print("\ninterrupted; stopping every process", file=sys.stderr)
        return 130
    except DemoError as error:
        print(f"\ndemo failed: {error}", file=sys.stderr)
        return 1
    finally:
        _stop_all(procs)


if __name__ == "__main__":
    raise SystemExit(main())
