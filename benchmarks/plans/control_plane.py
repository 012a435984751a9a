"""Control-plane plan: once ``BENCH_CLIENTS`` clients joined, hand out cheap commands round after round.

Each round is a `ClosedDistribution` of ``Train(steps=0)`` to every client (the simulated clients report
FINISHED without running anything), so clients long-poll between rounds and post status updates in bursts.
With ``BENCH_IDLE=1`` the condition asks for one client more than will ever come: every pull parks.
"""

import os

from theoden_protocol import Train
from theoden_server import ClosedDistribution, RequireNumberOfClients

N_CLIENTS = int(os.environ.get("BENCH_CLIENTS", "500"))
IDLE = os.environ.get("BENCH_IDLE") == "1"
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "400"))

run_name = "bench-control-plane"

instructions = [RequireNumberOfClients(N_CLIENTS + (1 if IDLE else 0))]
instructions += [ClosedDistribution(Train(steps=0), name=f"cheap {i}") for i in range(ROUNDS)]
