"""Start the CIFAR-10 server with `start_server` (Python API); run it on the server machine.

    python examples/01_cifar10_run/server.py --users users.toml --host 0.0.0.0 --port 8000 \\
        --ssl-certfile pki/server.pem --ssl-keyfile pki/server-key.pem --rounds 20
"""

from __future__ import annotations

import argparse
from pathlib import Path

from plan import build_instructions, run_name
from theoden_server.start import start_server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="TheODen CIFAR-10 server")
    parser.add_argument("--clients", type=int, default=3, help="sites to wait for (default: 3)")
    parser.add_argument("--rounds", type=int, default=10, help="communication rounds (default: 10)")
    parser.add_argument("--model", choices=["cnn", "resnet18"], default="cnn")
    parser.add_argument("--width", type=int, help="channels of the first layer (cnn: 32, resnet18: 64)")
    parser.add_argument("--epochs", type=int, default=1, help="local epochs per round (default: 1)")
    parser.add_argument("--steps", type=int, help="local optimizer steps per round instead of epochs")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--host", default="127.0.0.1", help="0.0.0.0 to accept clients from other machines")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port (see <run-dir>/endpoint.json)")
    parser.add_argument("--users", type=Path, default=Path("users.toml"))
    parser.add_argument("--run-dir", type=Path, default=Path("runs") / run_name)
    parser.add_argument("--ssl-certfile", type=Path)
    parser.add_argument("--ssl-keyfile", type=Path)
    parser.add_argument(
        "--insecure-http", action="store_true", help="allow plain HTTP off loopback (behind a TLS proxy)"
    )
    args = parser.parse_args(argv)
    if args.ssl_certfile is None and args.host not in ("127.0.0.1", "localhost", "::1") and not args.insecure_http:
        parser.error(
            "refusing plain HTTP off loopback: passwords would travel unencrypted; give --ssl-certfile/--ssl-keyfile"
        )
    server = start_server(
        build_instructions(
            clients=args.clients,
            rounds=args.rounds,
            model=args.model,
            width=args.width,
            epochs=args.epochs,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
        ),
        run_name,
        host=args.host,
        port=args.port,
        users=args.users,
        run_dir=args.run_dir,
        ssl_certfile=args.ssl_certfile,
        ssl_keyfile=args.ssl_keyfile,
    )
    if server.failed:
        print(f"the run failed: {server.failed}")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
