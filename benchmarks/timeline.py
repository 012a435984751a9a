"""Profile helper (not a figure): where the wall time of a zero-training round goes, server and clients merged.

``python benchmarks/timeline.py [CLIENTS] [--rounds N] [--show K] [--distinct]``. Runs figure 1's plan with the
`server_trace` and `timeline_client` plugins, then prints, for the K rounds closest to the median, every
span relative to the previous round's completion (ms), and the median over all rounds of each step's
start and end. Spans are ``CLOCK_MONOTONIC`` times, comparable across the processes of one machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common


def _label(span: dict[str, Any], clients: dict[int, str]) -> str:
    who = span["who"]
    name = "server" if who == "server" else clients.get(who, str(who))
    extra = span.get("client") or span.get("status") or span.get("path") or ""
    return f"{name:>7} {span['kind']:<18} {extra}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("clients", type=int, nargs="?", default=3)
    parser.add_argument("--rounds", type=int, default=21)
    parser.add_argument("--show", type=int, default=2)
    parser.add_argument("--distinct", action="store_true", help="every upload different (--plugin distinct_uploads)")
    args = parser.parse_args()
    trace_dir = Path(common.new_run_dir("timeline"))
    server_file = trace_dir / "server.jsonl"
    client_file = trace_dir / "clients.jsonl"
    os.environ["PYTHONPATH"] = os.pathsep.join([str(common.BENCH), os.environ.get("PYTHONPATH", "")])
    os.environ["BENCH_SERVER_TRACE"] = str(server_file)
    os.environ["BENCH_CLIENT_TIMES"] = str(client_file)
    run = common.run_zero_train(
        "timeline",
        clients=args.clients,
        rounds=args.rounds,
        model=common.MODEL_1MB,
        client_extra=["--plugin", "timeline_client", *(["--plugin", "distinct_uploads"] if args.distinct else [])],
    )
    clients = {pid: name for name, pid in run.client_pids.items()}
    spans = [json.loads(line) for f in (server_file, client_file) for line in f.read_text().splitlines()]
    ends = run.round_ends()
    times = run.round_times()
    print(f"{len(times)} rounds, median {statistics.median(times) * 1000:.1f} ms")
    steps: dict[str, list[tuple[float, float]]] = defaultdict(list)
    by_round = []
    for start, end in itertools.pairwise(ends):
        inside = sorted((s for s in spans if start <= s["start"] < end), key=lambda s: s["start"])
        by_round.append((end - start, start, inside))
        for s in inside:
            steps[_label(s, {})[:7] + " " + s["kind"]].append(((s["start"] - start) * 1000, (s["end"] - start) * 1000))
    med = statistics.median(times)
    for duration, start, inside in sorted(by_round, key=lambda r: abs(r[0] - med))[: args.show]:
        print(f"\n-- round of {duration * 1000:.1f} ms (0 = previous round completed)")
        for s in inside:
            print(f"{(s['start'] - start) * 1000:7.2f} {(s['end'] - start) * 1000:7.2f}  {_label(s, clients)}")
    print("\n-- medians over rounds: first start, last end (ms)")
    for name, values in sorted(steps.items(), key=lambda kv: statistics.median(v[0] for v in kv[1])):
        print(f"{statistics.median(v[0] for v in values):7.2f} {statistics.median(v[1] for v in values):7.2f}  {name}")


if __name__ == "__main__":
    main()
