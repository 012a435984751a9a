"""Shared helpers of the benchmark suite: real server and client processes, round timing, RSS sampling."""

from __future__ import annotations

import itertools
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
PLANS = BENCH / "plans"
MB = 1024 * 1024

#: float32 MLP sizes (in_features, hidden) for the synthetic 2-class problem: params = hidden*(in+3)+2.
MODEL_1MB = (16, 13797)  # 262,145 parameters = 1.0 MB
MODEL_100MB = (16, 1_379_680)  # 26,213,922 parameters = 100.0 MB


#: torch intra-op threads of the server process (``THEODEN_TORCH_THREADS``), ``None``: one per core (torch's default).
#: The server's tensor work (folding uploads, writing the new model) is memory-bound and done in 1 MiB-scale
#: slices; with the default pool every slice wakes the OpenMP threads, which then spin, costing more CPU than
#: the work on a 2-core machine (see RESULTS.md, figure 1). Requested as the server's default in start.py.
SERVER_TORCH_THREADS: int | None = (
    int(os.environ.get("BENCH_SERVER_THREADS", "1"))
    if os.environ.get("BENCH_SERVER_THREADS", "1") != "default"
    else None
)


def model_bytes(in_features: int, hidden: int) -> int:
    return 4 * (hidden * (in_features + 3) + 2)


def machine_facts() -> dict[str, Any]:
    import torch

    facts: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "cpu_model": platform.processor() or "",
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "loadavg_at_start": os.getloadavg(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                facts["cpu_model"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return facts


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


class RssSampler:
    """Sample the RSS of some processes every ``interval`` seconds on a thread; keep peaks and windows."""

    def __init__(self, pids: dict[str, int], interval: float = 0.02) -> None:
        self.procs = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.samples: dict[str, list[tuple[float, int]]] = {name: [] for name in pids}
        self.cpu: dict[str, list[tuple[float, float]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            for name, proc in self.procs.items():
                try:
                    self.samples[name].append((now, proc.memory_info().rss))
                    times = proc.cpu_times()
                    self.cpu[name].append((now, times.user + times.system))
                except psutil.Error:
                    pass
            self._stop.wait(self.interval)

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, name: str, start: float = 0.0, end: float = float("inf")) -> int:
        values = [rss for t, rss in self.samples[name] if start <= t <= end]
        return max(values) if values else 0

    def cpu_between(self, name: str, start: float, end: float) -> float:
        """CPU seconds (user + system) the process used between two instants (nearest samples)."""
        inside = [c for t, c in self.cpu[name] if start <= t <= end]
        return inside[-1] - inside[0] if len(inside) > 1 else 0.0

    def before(self, name: str, t: float) -> int:
        """Last sample at or before ``t`` (the idle RSS before something started)."""
        values = [rss for ts, rss in self.samples[name] if ts <= t]
        return values[-1] if values else 0


def _spawn(command: list[str], log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    profile_dir = os.environ.get("BENCH_PYSPY")
    if profile_dir:  # profile every process: collapsed stacks (flamegraph input) per process
        import shutil

        out_file = Path(profile_dir) / f"{log.parent.parent.name}-{log.stem}.txt"
        command = [
            shutil.which("py-spy") or "py-spy",
            "record",
            "--format",
            "raw",
            "-r",
            "250",
            "--threads",
            "-o",
            str(out_file),
            "--",
            *command,
        ]
    out = open(log, "wb")  # noqa: SIM115 - owned by the child
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env, start_new_session=True)


def stop_all(procs: list[subprocess.Popen[bytes]]) -> None:
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


#: Run directories made by this process (`run.py` deletes them after each figure unless ``--keep-runs``).
RUN_DIRS: list[Path] = []


def new_run_dir(name: str) -> Path:
    base = Path(os.environ.get("BENCH_RUNS", tempfile.gettempdir())) / "theoden-bench"
    base.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base))
    RUN_DIRS.append(path)
    return path


def make_users(run_dir: Path, names: list[str]) -> Path:
    from theoden_server.security import UsersFile, write_private_file

    users = UsersFile(run_dir / "users.toml")
    for name in names:
        password = users.add(name)
        write_private_file(run_dir / "secrets" / f"{name}.password", password.encode())
    users.save()
    return users.path


def password(run_dir: Path, name: str) -> str:
    return (run_dir / "secrets" / f"{name}.password").read_text().strip()


def start_server(
    run_dir: Path, plan: Path, users: Path, env: dict[str, str], extra: list[str] | None = None
) -> tuple[subprocess.Popen[bytes], str]:
    (run_dir / "logs").mkdir(exist_ok=True)
    server = _spawn(
        [
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
            *(extra or []),
        ],
        run_dir / "logs" / "server.log",
        env,
    )
    endpoint = run_dir / "endpoint.json"
    deadline = time.monotonic() + 120
    while not endpoint.exists():
        if server.poll() is not None:
            raise RuntimeError(f"server exited early; see {run_dir / 'logs' / 'server.log'}")
        if time.monotonic() > deadline:
            stop_all([server])
            raise RuntimeError("server did not start")
        time.sleep(0.02)
    time.sleep(0.05)
    return server, str(json.loads(endpoint.read_text())["url"])


def start_client(
    run_dir: Path, url: str, name: str, extra: list[str] | None = None, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    data_root = run_dir / "sites" / name
    data_root.mkdir(parents=True, exist_ok=True)
    return _spawn(
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
            "30",
            "--log-level",
            "WARNING",
            *(extra or []),
        ],
        run_dir / "logs" / f"{name}.log",
        env,
    )


@dataclass
class FlRun:
    """Result of one federated run of the zero-training plan."""

    run_dir: Path
    events: list[dict[str, Any]]
    wall: float
    rss: RssSampler | None = None
    server_pid: int = 0
    client_pids: dict[str, int] = field(default_factory=dict)

    def round_ends(self) -> list[float]:
        return [e["mono"] for e in self.events if e["event"] == "round"]

    def round_times(self) -> list[float]:
        """Durations of rounds 1..n (round k: completion of k-1 to completion of k).

        Round 0's start is the end of the global-model initialisation, which has no event; it is dropped.
        """
        ends = self.round_ends()
        return [b - a for a, b in itertools.pairwise(ends)]


def distinct_uploads() -> dict[str, Any]:
    """`run_zero_train` options that make every client's upload different (as after training), see
    ``distinct_uploads.py``; the clients find the plugin on ``PYTHONPATH`` (kept in front if set)."""
    path = os.pathsep.join(p for p in (os.environ.get("PYTHONPATH", ""), str(BENCH)) if p)
    return {"client_extra": ["--plugin", "distinct_uploads"], "client_env": {"PYTHONPATH": path}}


def run_zero_train(
    name: str,
    *,
    clients: int,
    rounds: int,
    model: tuple[int, int],
    timeout: float = 600,
    sample_rss: bool = False,
    rss_interval: float = 0.02,
    client_extra: list[str] | None = None,
    server_threads: int | None = SERVER_TORCH_THREADS,
    client_env: dict[str, str] | None = None,
    server_extra: list[str] | None = None,
) -> FlRun:
    """Run the zero-training plan with real processes; return the watcher's events."""
    run_dir = new_run_dir(name)
    names = [f"c{i:03d}" for i in range(clients)]
    users = make_users(run_dir, names)
    times = run_dir / "times.jsonl"
    env = {
        "BENCH_CLIENTS": str(clients),
        "BENCH_ROUNDS": str(rounds),
        "BENCH_IN": str(model[0]),
        "BENCH_HIDDEN": str(model[1]),
        "BENCH_TIMES": str(times),
    }
    # the server asks torch for THEODEN_TORCH_THREADS intra-op threads (1 unless set); None: one per core
    env["THEODEN_TORCH_THREADS"] = str(server_threads if server_threads is not None else os.cpu_count() or 1)
    if server_threads is not None:
        env["OMP_NUM_THREADS"] = str(server_threads)
    procs: list[subprocess.Popen[bytes]] = []
    sampler = None
    started = time.monotonic()
    try:
        server, url = start_server(run_dir, PLANS / "zero_train.py", users, env, server_extra)
        procs.append(server)
        for n in names:
            procs.append(start_client(run_dir, url, n, client_extra, client_env))
        if sample_rss:
            pids = {"server": server.pid, **{n: p.pid for n, p in zip(names, procs[1:], strict=False)}}
            sampler = RssSampler(pids, rss_interval).start()
        spies: list[subprocess.Popen[bytes]] = []
        profile = os.environ.get("BENCH_PROFILE")  # DIR: py-spy the server and the first client in steady state
        deadline = time.monotonic() + timeout
        while server.poll() is None:
            if profile and not spies and times.exists() and '"round"' in times.read_text():
                import shutil

                spy = shutil.which("py-spy") or "py-spy"
                duration = os.environ.get("BENCH_PROFILE_SECONDS", "5")
                for label, pid in (("server", server.pid), ("client", procs[1].pid)):
                    spies.append(
                        subprocess.Popen(
                            [
                                spy,
                                "record",
                                "--format",
                                "raw",
                                "-r",
                                "200",
                                "--threads",
                                *([] if os.environ.get("BENCH_PROFILE_NATIVE") == "0" else ["--native"]),
                                "-d",
                                duration,
                                "-p",
                                str(pid),
                                "-o",
                                str(Path(profile) / f"{name}-{label}.txt"),
                            ],
                            stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL,
                        )
                    )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name}: run did not finish in {timeout:.0f} s; see {run_dir}")
            for p in procs[1:]:
                if p.poll() not in (None, 0):
                    raise RuntimeError(f"{name}: a client failed (code {p.returncode}); see {run_dir / 'logs'}")
            time.sleep(0.05)
        for spy_proc in spies:
            spy_proc.wait(30)
        if server.returncode != 0:
            raise RuntimeError(f"{name}: server exited with {server.returncode}; see {run_dir / 'logs' / 'server.log'}")
    finally:
        if sampler is not None:
            sampler.stop()
        stop_all(procs)
    events = [json.loads(line) for line in times.read_text().splitlines()] if times.exists() else []
    return FlRun(
        run_dir=run_dir,
        events=events,
        wall=time.monotonic() - started,
        rss=sampler,
        server_pid=procs[0].pid if procs else 0,
        client_pids={n: p.pid for n, p in zip(names, procs[1:], strict=False)},
    )


def metric(
    figure: str,
    name: str,
    value: float | None,
    unit: str,
    target: str | None = None,
    ok: bool | None = None,
    **extra: Any,
) -> dict[str, Any]:
    return {"figure": figure, "name": name, "value": value, "unit": unit, "target": target, "ok": ok, **extra}
