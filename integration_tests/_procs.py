"""Real server and client processes for the integration tests, and the plans they run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

HERE = Path(__file__).resolve().parent

#: A FedAvg plan: every client loads a synthetic data set, takes its partition, builds an MLP;
#: the global model comes from one client; then ``rounds`` rounds of FedAvg.
PLAN = """
from theoden_protocol import (
    DatasetSpec, IndexPartition, InitModel, LoadDataset, LossSpec, MetricSpec, ModelSpec, OptimizerSpec,
    SetDataloader, SetLocalPartition, SetLosses, SetOptimizer, SetPartition,
)
from theoden_server.operations import (
    InitGlobalModelFromClient, MultiRoundTraining, OpenDistribution, RequireNumberOfClients, replace_nested,
)
from theoden_server.watchers import BestModelDetector, BestModelSaver, MetricCollector

run_name = {run_name!r}
open_distribution = OpenDistribution(
    [
        LoadDataset(dataset=DatasetSpec(name="synthetic", kwargs={{"n_samples": 240, "n_features": 16, "num_classes": 2}})),
        SetPartition(partition=IndexPartition(num_parts={clients})),
        SetLocalPartition(splits={{"train": 0.75, "val": 0.25}}),
        SetDataloader(split="train", batch_size=16),
        SetDataloader(split="val", batch_size=32, shuffle=False),
        InitModel(model=ModelSpec(name="mlp", kwargs={{"in_features": 16, "hidden": {hidden!r}, "num_classes": 2}})),
        SetOptimizer(optimizer=OptimizerSpec(name="sgd", kwargs={{"lr": 0.05}})),
        SetLosses(losses=[LossSpec(name="cross_entropy")], metrics=[MetricSpec(name="accuracy")], choosing_metric="accuracy"),
    ],
    customize=lambda client, index, command: replace_nested(command, SetPartition, part=index),
)
instructions = [
    RequireNumberOfClients({clients}),
    InitGlobalModelFromClient(),
    MultiRoundTraining({rounds}, steps={steps}, batch_size=16, min_successful_clients={clients}, timeout=240),
]
watchers = [MetricCollector(), BestModelDetector("val/accuracy"), BestModelSaver()]
"""

#: Hidden layers of an MLP on 16 features with about 10.4 MB of float32 weights.
BIG_HIDDEN = [1600, 1600]
TINY_HIDDEN = [32]


def write_plan(
    path: Path, *, run_name: str, clients: int = 3, rounds: int = 3, steps: int = 2, hidden: list[int]
) -> Path:
    path.write_text(PLAN.format(run_name=run_name, clients=clients, rounds=rounds, steps=steps, hidden=hidden))
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1"}


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait(self, timeout: float) -> int:
        return self.popen.wait(timeout)

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class ServerProc(Proc):
    run_dir: Path = field(default_factory=Path)
    url: str = ""

    def metrics(self) -> list[dict[str, object]]:
        path = self.run_dir / "metrics.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def start_server(tmp: Path, plan: Path, *, rabbitmq: str | None, users: Path) -> ServerProc:
    run_dir = tmp / "run"
    command = [
        sys.executable,
        "-m",
        "theoden_server",
        "run",
        str(plan),
        "--port",
        "0",
        "--users",
        str(users),
        "--run-dir",
        str(run_dir),
    ]
    if rabbitmq is not None:
        command += ["--rabbitmq", rabbitmq]
    log = tmp / "server.out"
    with log.open("wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=_env(), cwd=tmp)
    proc = ServerProc(name="server", popen=popen, log=log, run_dir=run_dir)
    endpoint = run_dir / "endpoint.json"
    deadline = time.monotonic() + 60
    while not endpoint.exists():
        if popen.poll() is not None or time.monotonic() > deadline:
            proc.stop()
            raise AssertionError(f"server did not start:\n{proc.output()}")
        time.sleep(0.05)
    proc.url = msgspec.json.decode(endpoint.read_bytes())["url"]
    return proc


def start_client(
    tmp: Path, name: str, *, rabbitmq: str | None = None, rest: str | None = None, password: str | None = None
) -> Proc:
    command = [sys.executable, str(HERE / "_client_main.py"), "--data-root", str(tmp)]
    env = _env()
    if rabbitmq is not None:
        command += ["--rabbitmq", rabbitmq]
    else:
        assert rest is not None
        assert password is not None
        command += ["--rest", rest, "--username", name]
        env["THEODEN_TEST_PASSWORD"] = password
    log = tmp / f"client-{name}.out"
    with log.open("wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return Proc(name=name, popen=popen, log=log)


def start_cli_client(
    tmp: Path, name: str, *, rabbitmq: str | None = None, rest: str | None = None, password: str | None = None
) -> Proc:
    """A client started exactly as a site would: the `theoden-client` command line, password from the env."""
    from urllib.parse import unquote, urlsplit, urlunsplit

    env = _env()
    if rabbitmq is not None:
        parts = urlsplit(rabbitmq)
        password = unquote(parts.password or "")
        bare = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{parts.port}"))
        target = ["--rabbitmq", bare]
    else:
        assert rest is not None
        target = ["--server", rest]
    assert password
    env["THEODEN_SITE_PASSWORD"] = password
    command = [
        sys.executable,
        "-m",
        "theoden_client",
        *target,
        "--username",
        name,
        "--password-env",
        "THEODEN_SITE_PASSWORD",
        "--data-root",
        str(tmp),
        "--poll-wait",
        "5",
    ]
    log = tmp / f"client-{name}.out"
    with log.open("wb") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp)
    return Proc(name=name, popen=popen, log=log)


def wait_for(condition, timeout: float, what: str, procs: list[Proc] = ()) -> None:  # type: ignore[no-untyped-def, assignment]
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            if proc.popen.poll() is not None and proc.popen.returncode != 0:
                raise AssertionError(
                    f"{proc.name} exited with {proc.popen.returncode} while waiting for {what}:\n{proc.output()[-4000:]}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
