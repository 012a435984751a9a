"""Run the overwrite-commands tutorial: ``site-1`` trains with gradient clipping, the others with the built-in.

hatch run python examples/03_overwrite_commands/run.py --clip-norm 0.5
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
    parser.add_argument("--clip-norm", type=float, default=1.0, help="site-1's largest gradient norm")
    args = parser.parse_args(argv)
    run = LocalRun(
        "overwrite-commands",
        [*PLAN_SERVER, str(HERE / "plan.py")],
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
        # only site-1 loads the plugin: each site decides how it runs a command
        client_args=lambda name: ["--plugin", "clipped_train"] if name == "site-1" else [],
        pythonpath=[HERE],
        env={
            "EXAMPLE_CLIENTS": str(args.clients),
            "EXAMPLE_ROUNDS": str(args.rounds),
            "THEODEN_CLIP_NORM": str(args.clip_norm),
        },
    )
    code = run.run(args.timeout)
    if code == 0:
        for line in (run.dir / "metrics.jsonl").read_text().splitlines():
            record = json.loads(line)
            for client, values in record["clients"].items():
                if "train/grad_norm" in values:
                    print(f"round {record['round']}: {client} mean gradient norm {values['train/grad_norm']:.3f}, "
                          f"{values['train/clipped']:.0%} of steps clipped")  # fmt: skip
    return code


if __name__ == "__main__":
    raise SystemExit(main())
