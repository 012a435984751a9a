"""Run the new-watcher tutorial: client metrics to ``client_metrics.csv``, and early stopping on ``val/loss``.

hatch run python examples/07_new_watcher/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _launcher import LocalRun, base_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], clients=2)
    parser.add_argument("--patience", type=int, default=2, help="rounds without val/loss improvement before stopping")
    parser.add_argument("--min-delta", type=float, default=0.0, help="smallest decrease of val/loss that counts")
    args = parser.parse_args(argv)
    run = LocalRun(
        "new-watcher",
        [
            sys.executable,
            str(HERE / "server.py"),
            "--clients",
            str(args.clients),
            "--rounds",
            str(args.rounds),
            "--patience",
            str(args.patience),
            "--min-delta",
            str(args.min_delta),
        ],
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
    )
    code = run.run(args.timeout)
    if code == 0:
        rows = (run.dir / "client_metrics.csv").read_text().splitlines()
        print(f"{len(rows) - 1} rows in {run.dir / 'client_metrics.csv'}; the first ones:")
        print("\n".join(rows[:6]))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
