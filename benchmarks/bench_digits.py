"""Figure 6 - the digits demo: how each client's wall time per round splits between training and framework.

Runs the demo's own plan (scripts/demo_plan.py: 3 clients, MLP on scikit-learn digits, 5 rounds of FedAvg
with validation) with real processes; each client loads the `client_timing` plugin, which times the
executors (train, validate, load weights, send model) and the transport calls (pull, status, download,
upload). The training window of a client runs from the end of the pull that brought round 0 to the end of
its last round's FINISHED status.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections import defaultdict
from typing import Any

import common

PLAN = common.ROOT / "scripts" / "demo_plan.py"


def run(quick: bool) -> list[dict[str, Any]]:
    run_dir = common.new_run_dir("digits")
    names = ["site-1", "site-2", "site-3"]
    users = common.make_users(run_dir, names)
    procs = []
    env_base = {"PYTHONPATH": os.pathsep.join([str(common.BENCH), os.environ.get("PYTHONPATH", "")])}
    try:
        server, url = common.start_server(run_dir, PLAN, users, {})
        procs.append(server)
        for n in names:
            procs.append(
                common.start_client(
                    run_dir,
                    url,
                    n,
                    ["--plugin", "client_timing"],
                    {**env_base, "BENCH_CLIENT_TIMES": str(run_dir / f"times-{n}.jsonl")},
                )
            )
        deadline = time.monotonic() + 600
        while server.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        if server.returncode != 0:
            raise RuntimeError(f"digits run failed; see {run_dir / 'logs'}")
    finally:
        common.stop_all(procs)
    per_client: dict[str, dict[str, float]] = {}
    rounds = 0
    for n in names:
        spans = [json.loads(line) for line in (run_dir / f"times-{n}.jsonl").read_text().splitlines()]
        trains = [s for s in spans if s["kind"] == "exec:train"]
        rounds = len(trains)
        sends = [s for s in spans if s["kind"] == "exec:send_model" and s["start"] >= trains[0]["start"]]
        pulls_before = [s for s in spans if s["kind"] == "net:pull" and s["end"] <= trains[0]["start"]]
        start = pulls_before[-1]["end"]
        end = min(
            (s["end"] for s in spans if s["kind"] == "net:status" and s["start"] >= sends[-1]["end"]),
            default=sends[-1]["end"],
        )
        totals: dict[str, float] = defaultdict(float)
        for s in spans:
            if s["thread"] != "MainThread" or s["end"] <= start or s["start"] >= end:
                continue
            totals[s["kind"]] += min(s["end"], end) - max(s["start"], start)
        wall = end - start
        t = dict(totals)
        row = {
            "wall": wall,
            "training": t.get("exec:train", 0.0),
            "validation": t.get("exec:validate", 0.0),
            "load_weights (download+load)": t.get("exec:load_weights", 0.0),
            "  of which download": t.get("net:download", 0.0),
            "send_model (save+hash+upload)": t.get("exec:send_model", 0.0),
            "  of which upload": t.get("net:upload", 0.0),
            "status posts": t.get("net:status", 0.0),
            "pull (incl. waiting for peers + aggregation)": t.get("net:pull", 0.0),
        }
        accounted = (
            row["training"]
            + row["validation"]
            + row["load_weights (download+load)"]
            + row["send_model (save+hash+upload)"]
            + row["status posts"]
            + row["pull (incl. waiting for peers + aggregation)"]
        )
        row["other (client loop, STARTED bookkeeping)"] = wall - accounted
        per_client[n] = {k: v / rounds for k, v in row.items()}
    keys = list(next(iter(per_client.values())))
    med = {k: common.median([per_client[n][k] for n in names]) for k in keys}
    framework = med["load_weights (download+load)"] + med["send_model (save+hash+upload)"] + med["status posts"]
    M = common.metric
    out = [
        M(
            "6",
            f"digits demo: client wall time per round ({rounds} rounds, median of 3 clients)",
            med["wall"],
            "s",
            detail={"per_client": per_client, "run_dir": str(run_dir)},
        )
    ]
    for k in keys[1:]:
        out.append(M("6", f"  {k}", med[k], "s/round", share=med[k] / med["wall"]))
    out.append(M("6", "  framework (load weights + send model + status) share", framework / med["wall"] * 100, "%"))
    return out


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
