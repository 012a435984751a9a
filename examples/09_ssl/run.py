"""Run the HTTPS tutorial: a throw-away CA and server certificate, a server on HTTPS, clients that verify it.

hatch run python examples/09_ssl/run.py
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from _launcher import PLAN_SERVER, LocalRun, base_parser  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    args = base_parser(__doc__.splitlines()[0], clients=2).parse_args(argv)
    from theoden_server.certs import create_test_pki

    run = LocalRun(
        "ssl",
        [],
        run_dir=args.run_dir,
        clients=[f"site-{i}" for i in range(1, args.clients + 1)],
        env={"EXAMPLE_CLIENTS": str(args.clients), "EXAMPLE_ROUNDS": str(args.rounds)},
        # clients connect by name: the certificate is checked against "localhost"
        server_url=lambda url: url.replace("127.0.0.1", "localhost"),
    )
    # the same as `theoden-server certs create --out <run_dir>/pki --host localhost --host 127.0.0.1`
    pki = create_test_pki(run.dir / "pki", hosts=("localhost", "127.0.0.1"))
    run.server_command = [*PLAN_SERVER, str(HERE / "plan.py"), "--ssl-certfile", str(pki["cert"]),
                          "--ssl-keyfile", str(pki["key"])]  # fmt: skip
    # every client gets only the CA certificate (public), never the server's key
    run.client_args = lambda name: ["--ca-cert", str(pki["ca"])]
    return run.run(args.timeout)


if __name__ == "__main__":
    raise SystemExit(main())
