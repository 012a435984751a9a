"""Run a tutorial on one machine: a server process and N client processes on loopback.

Every tutorial's ``run.py`` uses this. It does what a real deployment does by hand (see
docs/deployment.md): create one user per site with a generated password, start the server,
read its address from ``<run_dir>/endpoint.json``, and start each client with its own
credentials and data root. It prints the rounds as they complete and stops every process at the
end, also on Ctrl-C or failure. You do not need it for a real multi-machine deployment.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

__all__ = ["PLAN_SERVER", "LaunchError", "LocalRun", "base_parser", "print_summary"]

#: Start a server from a plan file with the ``theoden-server`` command line (add the plan's path).
PLAN_SERVER = [sys.executable, "-m", "theoden_server", "run"]


class LaunchError(RuntimeError):
    """The run could not complete; the message says which log to read."""


def base_parser(description: str, *, clients: int = 3) -> argparse.ArgumentParser:
    """Return a parser with the options every tutorial's ``run.py`` shares."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run-dir", type=Path, help="where the run goes (default: runs/<example>-<time>)")
    parser.add_argument("--clients", type=int, default=clients, help=f"number of client processes (default: {clients})")
    parser.add_argument("--rounds", type=int, default=3, help="communication rounds (default: 3)")
    parser.add_argument("--timeout", type=float, default=600, help="give up after this many seconds")
    return parser


@dataclass
class LocalRun:
    """A server and its clients as processes on this machine.

    Args:
        name: Name of the example (for the default run directory).
        server_command: The server's command line without ``--port``, ``--users`` and ``--run-dir``
            (the launcher adds them), e.g. ``[python, "server.py", "--rounds", "2"]``.
        run_dir: The run directory (created).
        clients: The clients' user names.
        client_args: Extra client arguments, per client name (e.g. ``--data-root``, ``--plugin``).
        pythonpath: Folders put on the ``PYTHONPATH`` of every process (for plugins and plans).
        server_url: Turn the server's endpoint URL into the URL clients use (e.g. ``localhost`` for TLS).
        env: Extra environment variables of every process (e.g. a plan's settings).
    """

    name: str
    server_command: list[str]
    run_dir: Path | None = None
    clients: list[str] = field(default_factory=lambda: ["site-1", "site-2", "site-3"])
    client_args: Callable[[str], Sequence[str]] = lambda name: ()
    pythonpath: Sequence[Path] = ()
    server_url: Callable[[str], str] = lambda url: url
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.run_dir is None:
            self.run_dir = ROOT / "runs" / f"{self.name}-{datetime.now():%Y%m%d-%H%M%S}"
        self.run_dir = self.run_dir.resolve()
        (self.run_dir / "logs").mkdir(parents=True, exist_ok=True)

    @property
    def dir(self) -> Path:
        """The run directory."""
        assert self.run_dir is not None
        return self.run_dir

    def _env(self) -> dict[str, str]:
        paths = [str(p) for p in self.pythonpath]
        if os.environ.get("PYTHONPATH"):
            paths.append(os.environ["PYTHONPATH"])
        return {**os.environ, **self.env, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(paths)}

    def _spawn(self, command: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        out = open(log, "wb")  # noqa: SIM115 - owned by the child for its lifetime
        proc = subprocess.Popen(
            list(command), stdout=out, stderr=subprocess.STDOUT, env=self._env(), start_new_session=True
        )
        out.close()
        self.procs.append(proc)
        return proc

    def create_users(self) -> Path:
        """Add one user per client to ``<run_dir>/users.toml``; passwords go to ``secrets/<name>.password``."""
        from theoden_server.security import UsersFile, write_private_file

        users = UsersFile(self.dir / "users.toml")
        for name in self.clients:
            password = users.add(name)
            write_private_file(self.dir / "secrets" / f"{name}.password", password.encode())
        users.save()
        return users.path

    def start_server(self) -> str:
        """Start the server process and return its URL (from ``endpoint.json``)."""
        users = self.create_users()
        command = [*self.server_command, "--port", "0", "--users", str(users), "--run-dir", str(self.dir)]
        server = self._spawn(command, self.dir / "logs" / "server.log")
        endpoint = self.dir / "endpoint.json"
        deadline = time.monotonic() + 120
        while not endpoint.exists():
            if server.poll() is not None:
                raise LaunchError(
                    f"the server exited early (code {server.returncode}); see {self.dir / 'logs' / 'server.log'}"
                )
            if time.monotonic() > deadline:
                raise LaunchError("the server did not start within two minutes")
            time.sleep(0.05)
        return self.server_url(str(json.loads(endpoint.read_text())["url"]))

    def start_client(self, name: str, url: str) -> subprocess.Popen[bytes]:
        """Start one client process (``python -m theoden_client``) with its own credentials."""
        command = [
            sys.executable, "-m", "theoden_client", "--server", url, "--username", name,
            "--password-file", str(self.dir / "secrets" / f"{name}.password"), "--poll-wait", "10",
            *self.client_args(name),
        ]  # fmt: skip
        return self._spawn(command, self.dir / "logs" / f"{name}.log")

    def wait(self, timeout: float, *, on_tick: Callable[[], None] = lambda: None) -> None:
        """Wait until the server exits (its plan is done); raise `LaunchError` on failure or timeout."""
        server = self.procs[0]
        deadline = time.monotonic() + timeout
        while server.poll() is None:
            on_tick()
            if time.monotonic() > deadline:
                raise LaunchError(f"the run did not finish within {timeout:.0f} s; see {self.dir / 'logs'}")
            for proc, name in zip(self.procs[1:], self.clients, strict=False):
                if proc.poll() not in (None, 0):
                    raise LaunchError(
                        f"client {name} failed (code {proc.returncode}); see {self.dir / 'logs' / name}.log"
                    )
            time.sleep(0.1)
        on_tick()
        if server.returncode != 0:
            raise LaunchError(
                f"the server exited with code {server.returncode}; see {self.dir / 'logs' / 'server.log'}"
            )
        for proc in self.procs[1:]:
            proc.wait(30)

    def stop(self) -> None:
        """Stop every process that still runs (SIGTERM, then SIGKILL after 10 s)."""
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def run(self, timeout: float = 600) -> int:
        """Start the server and the clients, print the rounds, wait; return a process exit code."""
        printer = _RoundPrinter(self.dir / "metrics.jsonl")
        try:
            print(
                f"{self.name}: 1 server + {len(self.clients)} clients on loopback; run directory {self.dir}", flush=True
            )
            url = self.start_server()
            print(f"server listening at {url}; starting clients {', '.join(self.clients)}", flush=True)
            for name in self.clients:
                self.start_client(name, url)
            self.wait(timeout, on_tick=printer.tick)
            print(f"done; metrics, models and the log of every process are in {self.dir}", flush=True)
            return 0
        except KeyboardInterrupt:
            print("\ninterrupted; stopping every process", file=sys.stderr)
            return 130
        except LaunchError as error:
            print(f"\n{self.name} failed: {error}", file=sys.stderr)
            return 1
        finally:
            self.stop()


class _RoundPrinter:
    """Prints one line per completed round from ``metrics.jsonl`` as it grows."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.seen = 0

    def tick(self) -> None:
        if not self.path.exists():
            return
        lines = self.path.read_text().splitlines()
        for line in lines[self.seen :]:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                return  # a line being written; read it next time
            shown = ", ".join(f"{k}={v:.4g}" for k, v in sorted(record.get("metrics", {}).items()))
            round_ = "-" if record["round"] is None else record["round"]  # metrics outside rounds have none
            print(f"{record['phase']:>16} {round_:>3}: {shown} ({record['num_clients']} clients)", flush=True)
            self.seen += 1


def print_summary(run_dir: Path) -> None:
    """Print where the run's best model is, if one was saved."""
    note = run_dir / "best_model.safetensors.json"
    if note.exists():
        best = json.loads(note.read_text())
        print(f"best global model: round {best['round']}, {best['metric']}={best['value']:.4g} "
              f"({run_dir / 'best_model.safetensors'})")  # fmt: skip
