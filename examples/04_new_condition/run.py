"""Run the new-condition tutorial: three sites, of which only two hold enough data to train.

hatch run python examples/04_new_condition/run.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _launcher import PLAN_SERVER, LocalRun, base_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], clients=3)
    parser.add_argument(
        "--hours", default="00:00-00:00", help="hand out commands only in this window, e.g. 22:00-06:00"
    )
    args = parser.parse_args(argv)
    run = LocalRun(
        "new-condition",
        [*PLAN_SERVER, str(HERE / "plan.py")],
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
        env={"EXAMPLE_ROUNDS": str(args.rounds), "EXAMPLE_HOURS": args.hours},
    )
    code = run.run(args.timeout)
    if code == 0:
        first = json.loads((run.dir / "metrics.jsonl").read_text().splitlines()[0])
        print(
            "trained on:", ", ".join(f"{c} ({v['num_samples']} training samples)" for c, v in first["clients"].items())
        )
    return code


if __name__ == "__main__":
    raise SystemExit(main())
