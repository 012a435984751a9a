"""Run the new-action tutorial: FedAvg with a checkpoint of the global model after every round.

hatch run python examples/05_new_action/run.py
hatch run python examples/05_new_action/run.py --resume runs/new-action-.../checkpoints/round-002.safetensors
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _launcher import PLAN_SERVER, LocalRun, base_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0], clients=2)
    parser.add_argument("--resume", type=Path, help="start from this checkpoint instead of a client's weights")
    args = parser.parse_args(argv)
    env = {"EXAMPLE_CLIENTS": str(args.clients), "EXAMPLE_ROUNDS": str(args.rounds)}
    if args.resume:
        env["EXAMPLE_RESUME"] = str(args.resume.resolve())
    run = LocalRun(
        "new-action",
        [*PLAN_SERVER, str(HERE / "plan.py")],
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
        env=env,
    )
    code = run.run(args.timeout)
    if code == 0:
        for entry in json.loads((run.dir / "checkpoints" / "index.json").read_text()):
            print(f"checkpoint {run.dir / 'checkpoints' / entry['file']} (round {entry['round']})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
