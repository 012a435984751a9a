"""Figure 4 - client memory: a client's peak RSS during 100 MB rounds above its idle RSS.

Uses the 100 MB / 3 clients REST run of figure 2 when the runner already made it (same run, RSS sampled
every 50 ms), else makes its own. Idle = the client's RSS just before round 0's first command starts on any
client (model built, setup done); peak = its highest sample while the rounds run.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import common


def run(quick: bool, shared: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    runs = (shared or {}).get("large_rest") or []
    result = runs.pop(0) if runs else None  # each repeat takes the next of figure 2's runs
    if result is None:
        result = common.run_zero_train(
            "client-mem",
            clients=3,
            rounds=3,
            model=common.MODEL_100MB,
            sample_rss=True,
            rss_interval=0.05,
            timeout=1200,
        )
    clients = len(result.client_pids)
    size = common.model_bytes(*common.MODEL_100MB)
    started = [e["mono"] for e in result.events if e["event"] == "status" and e["status"] == "started"]
    round0 = started[clients + 1]
    end = result.round_ends()[-1]
    growth = {}
    for name in result.client_pids:
        growth[name] = (result.rss.peak(name, round0, end) - result.rss.before(name, round0)) / size
    worst = max(growth.values())
    return [
        common.metric(
            "4",
            "client peak RSS above idle during 100 MB rounds (worst client)",
            worst,
            "x model size",
            "<= 3",
            worst <= 3,
            detail={
                "per_client_x": growth,
                "model_MB": size / common.MB,
                "idle_MB": {n: result.rss.before(n, round0) / common.MB for n in result.client_pids},
                "run_dir": str(result.run_dir),
            },
        ),
    ]


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
