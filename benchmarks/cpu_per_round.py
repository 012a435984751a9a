"""Profile helper (not a figure): CPU per round of the server (per thread) and of each client.

``python benchmarks/cpu_per_round.py [CLIENTS] [--mb 1|100] [--server-threads 1|default] [--distinct]``. Runs the zero-training
plan, and over a steady-state window (from ``--warmup`` seconds after the first round) reads every server thread's CPU time from /proc (names via ``py-spy dump``;
threads py-spy does not list are native, e.g. torch's OpenMP pool) and each client's CPU via psutil.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def _thread_cpu(pid: int) -> dict[str, float]:
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


def _thread_names(pid: int) -> dict[str, str]:
    spy = shutil.which("py-spy")
    if spy is None:
        return {}
    dump = subprocess.run([spy, "dump", "--pid", str(pid)], capture_output=True, text=True, check=False).stdout
    names = {}
    for line in dump.splitlines():
        if line.startswith("Thread ") and '"' in line:
            tid = line.split()[1]
            names[str(int(tid, 16) if tid.startswith("0x") else int(tid))] = line.split('"')[1]
    return names


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("clients", type=int, nargs="?", default=3)
    parser.add_argument("--mb", type=int, choices=[1, 100], default=1)
    parser.add_argument("--server-threads", default="1")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--window", type=float, default=8.0)
    parser.add_argument("--distinct", action="store_true", help="every upload different (--plugin distinct_uploads)")
    args = parser.parse_args()
    model = common.MODEL_1MB if args.mb == 1 else common.MODEL_100MB
    result: dict = {}
    original_start = common.RssSampler.start
    original_new_run_dir = common.new_run_dir

    def new_run_dir(name: str) -> Path:
        result["run_dir"] = original_new_run_dir(name)
        return result["run_dir"]

    common.new_run_dir = new_run_dir  # type: ignore[assignment]

    def start(self: common.RssSampler) -> common.RssSampler:
        pid = self.procs["server"].pid

        def window() -> None:
            times = result["run_dir"] / "times.jsonl"  # the rounds have begun once the first one completed
            while not (times.exists() and '"round"' in times.read_text()):
                time.sleep(0.1)
            time.sleep(args.warmup)
            before, t0 = _thread_cpu(pid), time.monotonic()
            time.sleep(args.window)
            after, t1 = _thread_cpu(pid), time.monotonic()
            names = _thread_names(pid)
            per_name: dict[str, float] = {}
            for tid in after:
                name = "event loop (main)" if tid == str(pid) else names.get(tid, f"native thread {tid}")
                per_name[name] = per_name.get(name, 0.0) + after[tid] - before.get(tid, 0.0)
            result["threads"] = per_name
            result["window"] = (t0, t1)

        threading.Thread(target=window, daemon=True).start()
        return original_start(self)

    common.RssSampler.start = start  # type: ignore[method-assign]
    threads = None if args.server_threads == "default" else int(args.server_threads)
    rounds = (1200 if args.clients <= 5 else 400) if args.mb == 1 else 12
    run = common.run_zero_train(
        "cpu",
        clients=args.clients,
        rounds=rounds,
        model=model,
        sample_rss=True,
        rss_interval=0.1,
        server_threads=threads,
        timeout=1200,
        **(common.distinct_uploads() if args.distinct else {}),
    )
    t0, t1 = result["window"]
    n = max(1, len([e for e in run.round_ends() if t0 <= e <= t1]))
    print(
        f"{args.clients} clients x {args.mb} MB, server torch threads {args.server_threads}: median round "
        f"{common.median(run.round_times()):.4f} s; {n} rounds in the {t1 - t0:.1f} s window"
    )
    print(f"server total {1000 * run.rss.cpu_between('server', t0, t1) / n:.1f} ms CPU/round")
    for name, cpu in sorted(result["threads"].items(), key=lambda x: -x[1]):
        if cpu > 0:
            print(f"  {name:28s} {1000 * cpu / n:7.1f} ms/round")
    for name in run.client_pids:
        print(f"client {name}: {1000 * run.rss.cpu_between(name, t0, t1) / n:.1f} ms CPU/round")


if __name__ == "__main__":
    main()
