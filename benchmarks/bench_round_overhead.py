"""Figure 1 - round overhead over REST: 1 MB float32 model, zero training steps, FedAvg, authentication on.

Real processes on loopback: one server (``python -m theoden_server run``) and N clients
(``python -m theoden_client``). A watcher in the plan timestamps every completed round; the figure is the
median of the round durations (round k = completion of round k-1 to completion of round k).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import common


def run(quick: bool) -> list[dict[str, Any]]:
    out = []
    for clients, target in ((3, 0.020), (20, 0.120)):
        rounds = (8 if clients == 3 else 5) if quick else 21
        result = common.run_zero_train(
            f"round-{clients}", clients=clients, rounds=rounds, model=common.MODEL_1MB, timeout=900
        )
        times = result.round_times()
        med = common.median(times)
        out.append(
            common.metric(
                "1",
                f"{clients} clients x 1 MB: median round",
                med,
                "s",
                f"<= {target}",
                med <= target,
                detail={
                    "rounds": len(times),
                    "p90": common.percentile(times, 90),
                    "min": min(times),
                    "max": max(times),
                    "run_dir": str(result.run_dir),
                },
            )
        )
    # Side by side: every client's upload different (with zero training steps they are identical, and the
    # content-addressed store keeps one blob for all); a real run's case.
    rounds = 8 if quick else 21
    distinct = common.run_zero_train(
        "round-3-distinct",
        clients=3,
        rounds=rounds,
        model=common.MODEL_1MB,
        **common.distinct_uploads(),
    )
    times = distinct.round_times()
    out.append(
        common.metric(
            "1",
            "3 clients x 1 MB, every upload different (as after training)",
            common.median(times),
            "s",
            detail={"rounds": len(times), "run_dir": str(distinct.run_dir)},
        )
    )
    # Side by side: the same 3-client run with torch's default thread pool in the server (one thread per core;
    # the server asks for one unless THEODEN_TORCH_THREADS says otherwise).
    rounds = 8 if quick else 21
    stock = common.run_zero_train(
        "round-3-stock", clients=3, rounds=rounds, model=common.MODEL_1MB, server_threads=None
    )
    times = stock.round_times()
    out.append(
        common.metric(
            "1",
            "3 clients x 1 MB, server with one torch thread per core",
            common.median(times),
            "s",
            detail={"rounds": len(times), "run_dir": str(stock.run_dir)},
        )
    )
    return out


if __name__ == "__main__":
    print(json.dumps(run("--quick" in sys.argv), indent=2, default=str))
