"""Run the CIFAR-10 tutorial on this machine: the server and three clients as separate processes.

    hatch run python examples/01_cifar10_run/run.py --data-root ~/data

``--data-root`` must hold the standard ``cifar-10-batches-py`` folder; every client reads it
(each keeps its own share). Nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _launcher import LocalRun, base_parser, print_summary  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--data-root", type=Path, required=True, help="folder holding cifar-10-batches-py")
    parser.add_argument("--model", choices=["cnn", "resnet18"], default="cnn")
    parser.add_argument("--width", type=int, help="channels of the first layer (cnn: 32, resnet18: 64)")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round (default: 1)")
    parser.add_argument("--steps", type=int, help="local optimizer steps per round instead of epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args(argv)
    data_root = args.data_root.expanduser().resolve()
    if not (data_root / "cifar-10-batches-py" / "data_batch_1").is_file():
        print(
            f"{data_root / 'cifar-10-batches-py'} not found: unpack cifar-10-python.tar.gz "
            "(https://www.cs.toronto.edu/~kriz/cifar.html) into the data root first",
            file=sys.stderr,
        )
        return 2
    server = [sys.executable, str(HERE / "server.py"), "--clients", str(args.clients), "--rounds", str(args.rounds),
              "--model", args.model, "--batch-size", str(args.batch_size), "--epochs", str(args.epochs)]  # fmt: skip
    if args.width:
        server += ["--width", str(args.width)]
    if args.steps:
        server += ["--steps", str(args.steps)]
    run = LocalRun(
        "cifar10",
        server,
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
        client_args=lambda name: ["--data-root", str(data_root)],
    )
    code = run.run(args.timeout)
    if code == 0:
        print_summary(run.dir)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
