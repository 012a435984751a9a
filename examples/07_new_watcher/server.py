"""Start the server with the user watchers: ``start_server(..., watcher=[ClientMetricsCSV(), EarlyStopping()])``.

python examples/07_new_watcher/server.py --users users.toml --port 8000
"""

from __future__ import annotations

import argparse
from pathlib import Path

from csv_watcher import ClientMetricsCSV
from early_stopping import EarlyStopping
from plan import build_instructions, run_name
from theoden_server.start import start_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TheODen server with a CSV watcher")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--patience", type=int, default=2, help="rounds without val/loss improvement before stopping")
    parser.add_argument("--min-delta", type=float, default=0.0, help="smallest decrease of val/loss that counts")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--users", type=Path, default=Path("users.toml"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs") / run_name)
    args = parser.parse_args(argv)
    server = start_server(
        build_instructions(clients=args.clients, rounds=args.rounds),
        run_name,
        # added to the built-in watchers (metrics.jsonl, best model, logging)
        watcher=[ClientMetricsCSV(), EarlyStopping("val/loss", patience=args.patience, min_delta=args.min_delta)],
        host=args.host,
        port=args.port,
        users=args.users,
        run_dir=args.run_dir,
    )
    return 1 if server.failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
