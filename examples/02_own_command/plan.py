"""Send the user command ``data_statistics`` to every site and pool the answers on the server.

    theoden-server run examples/02_own_command/plan.py --users users.toml

The plan's folder is on ``sys.path`` when the server loads it, so ``stats_command`` imports.
"""

from __future__ import annotations

import json
import logging
import os

from stats_command import DataStatistics
from theoden_protocol import BalancedPartition, DatasetSpec, LoadDataset, Sequential, SetPartition
from theoden_server import ClosedDistribution, ExitRun, RequireNumberOfClients, Server, replace_nested

run_name = "own-command"
N_CLIENTS = int(os.environ.get("EXAMPLE_CLIENTS", "3"))
logger = logging.getLogger("theoden_server.run")


def pool_statistics(server: Server, distribution: ClosedDistribution) -> None:
    """``on_finish`` hook: combine the sites' means and deviations into the federation's, weighted by size.

    mean = sum(n_i * m_i) / N;  var = sum(n_i * (s_i**2 + m_i**2)) / N - mean**2
    """
    sites = {c: distribution.entries[c].response for c in distribution.finished_clients()}
    total = sum(r.num_samples or 0 for r in sites.values() if r is not None)
    pooled: dict[str, list[float]] = {"mean": [], "std": []}
    features = sorted({int(k.split("/")[1]) for r in sites.values() if r for k in r.metrics if k.startswith("mean/")})
    for i in features:
        mean = sum((r.num_samples or 0) * r.metrics[f"mean/{i}"] for r in sites.values() if r) / total
        second = (
            sum(
                (r.num_samples or 0) * (r.metrics[f"std/{i}"] ** 2 + r.metrics[f"mean/{i}"] ** 2)
                for r in sites.values()
                if r
            )
            / total
        )
        pooled["mean"].append(mean)
        pooled["std"].append(max(second - mean * mean, 0.0) ** 0.5)
    result = {
        "num_samples": total,
        "sites": {c: {"num_samples": r.num_samples, **r.metrics} for c, r in sites.items() if r},
        "failed": distribution.failed_clients(),
        **pooled,
    }
    (server.run_dir / "data_statistics.json").write_text(json.dumps(result, indent=2))
    logger.info("pooled statistics of %d samples from %d sites: mean[0]=%.4f std[0]=%.4f",
                total, len(sites), pooled["mean"][0], pooled["std"][0])  # fmt: skip


setup = Sequential(
    commands=[
        LoadDataset(dataset=DatasetSpec(name="synthetic", kwargs={"n_samples": 600, "n_features": 8, "seed": 3})),
        SetPartition(partition=BalancedPartition(num_parts=N_CLIENTS, seed=0)),
    ]
)

instructions = [
    RequireNumberOfClients(N_CLIENTS),
    ClosedDistribution(setup, customize=lambda client, i, cmd: replace_nested(cmd, SetPartition, part=i), name="setup"),
    ClosedDistribution(DataStatistics(), on_finish=pool_statistics, phase="statistics", name="data statistics"),
    ExitRun("statistics collected"),
]
