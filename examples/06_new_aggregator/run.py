"""Run the new-aggregator tutorial: two sites train with FedAvgM (server momentum).

hatch run python examples/06_new_aggregator/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _launcher import PLAN_SERVER, LocalRun, base_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0], clients=2).parse_args(argv)
    run = LocalRun(
        "new-aggregator",
        [*PLAN_SERVER, str(HERE / "plan.py")],
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
        env={"EXAMPLE_CLIENTS": str(args.clients), "EXAMPLE_ROUNDS": str(args.rounds)},
    )
    return run.run(args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
