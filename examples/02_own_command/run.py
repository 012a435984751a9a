"""Run the own-command tutorial on this machine: a server and clients that load the ``stats_executor`` plugin.

hatch run python examples/02_own_command/run.py
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _launcher import PLAN_SERVER, LocalRun, base_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0]).parse_args(argv)
    run = LocalRun(
        "own-command",
        [*PLAN_SERVER, str(HERE / "plan.py")],
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
        client_args=lambda name: ["--plugin", "stats_executor"],
        pythonpath=[HERE],  # so the clients can import stats_executor and stats_command
        env={"EXAMPLE_CLIENTS": str(args.clients)},
    )
    code = run.run(args.timeout)
    if code == 0:
        stats = json.loads((run.dir / "data_statistics.json").read_text())
        print(f"pooled over {stats['num_samples']} samples of {len(stats['sites'])} sites:")
        print("  mean", " ".join(f"{m:+.3f}" for m in stats["mean"]))
        print("  std ", " ".join(f"{s:.3f}" for s in stats["std"]))
    return code


if __name__ == "__main__":
    raise SystemExit(main())
